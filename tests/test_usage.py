"""Usage normalisation from each provider's shape into one Usage type.

The payloads are copied from the providers' API references (OpenAI Chat Completions and
Responses "usage" objects, Anthropic Messages "usage" with prompt caching) and from what
llama-cpp-python returns; only the numbers are ours.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

import llmctx
from llmctx._usage import raw_usage_dict

OPENAI_CHAT = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 128,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
OPENAI_RESPONSES = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 256},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 380,
}
ANTHROPIC = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
    "output_tokens": 393,
    "service_tier": "standard",
}
LLAMA_CPP = {"prompt_tokens": 31, "completion_tokens": 16, "total_tokens": 47}


def test_openai_chat_usage() -> None:
    """Chat Completions: cached and reasoning tokens are shown as subsets of input/output."""
    u = llmctx.normalize_usage(OPENAI_CHAT, "openai-chat")
    assert u == llmctx.Usage(
        input_tokens=2006,
        output_tokens=300,
        cache_read_tokens=1920,
        reasoning_tokens=128,
        requests=1,
    )
    assert u.total_tokens == 2306


def test_openai_responses_usage() -> None:
    """Responses API: input/output names differ from chat, the meaning is the same."""
    u = llmctx.normalize_usage(OPENAI_RESPONSES, "openai-responses")
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) == (
        328,
        52,
        256,
        10,
    )


def test_anthropic_usage_counts_cache_tokens_into_input() -> None:
    """Anthropic's input_tokens excludes cache tokens; the normalised input includes them."""
    u = llmctx.normalize_usage(ANTHROPIC, "anthropic")
    assert u.input_tokens == 21 + 188086
    assert u.cache_write_tokens == 188086 and u.cache_read_tokens == 0
    assert u.output_tokens == 393


def test_anthropic_cache_write_is_priced_at_the_cache_write_rate() -> None:
    """A normalised Anthropic usage prices cache writes at their own (higher) rate."""
    u = llmctx.normalize_usage(ANTHROPIC, "anthropic")
    cost, note = llmctx.price_usage("claude-sonnet-4-5", u, "anthropic")
    assert note is None and cost is not None
    # $3/MTok input, $3.75/MTok cache write, $15/MTok output (Anthropic's published prices)
    assert cost == (Decimal(21) * 3 + Decimal(188086) * Decimal("3.75") + Decimal(393) * 15) / 10**6


def test_llama_cpp_usage() -> None:
    """llama-cpp-python returns OpenAI-shaped usage."""
    assert llmctx.normalize_usage(LLAMA_CPP, "llama-cpp") == llmctx.Usage(31, 16, requests=1)


def test_sdk_objects_and_missing_fields() -> None:
    """SDK pydantic objects are read like dicts; missing or null details count as zero."""

    class FakeSDKUsage:  # stands in for a pydantic model: only model_dump() is used
        def model_dump(self) -> dict[str, object]:
            return {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None}

    assert llmctx.normalize_usage(FakeSDKUsage(), "openai-chat") == llmctx.Usage(5, 2, requests=1)
    assert raw_usage_dict(FakeSDKUsage())["prompt_tokens"] == 5
    assert llmctx.normalize_usage(None, "openai-chat") == llmctx.Usage(requests=1)


def test_unknown_shape_is_a_clear_error() -> None:
    """Asking for an unknown usage shape lists the known ones."""
    with pytest.raises(llmctx.ConfigError, match="openai-chat"):
        llmctx.normalize_usage({}, "cohere")


def test_call_record_round_trips_through_dict() -> None:
    """A CallRecord survives to_dict/from_dict exactly (Decimal cost included)."""
    rec = llmctx.CallRecord(
        session_id="s",
        model="m",
        cost=Decimal("0.000123456789"),
        usage=llmctx.Usage(1, 2, 3, 4, 5, 6),
        request={"a": [1, {"b": None}]},
    )
    assert llmctx.CallRecord.from_dict(rec.to_dict()) == rec
