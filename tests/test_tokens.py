"""Offline token counting: the labelled estimate's guarantees and the exact tokenizer path."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmctx._exceptions import ConfigError
from llmctx._tokens import (
    ESTIMATE_METHOD,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    TokenCount,
    count_tokens,
    estimate_text_tokens,
    register_tokenizer,
    unregister_tokenizer,
)

PROSE = "The quick brown fox jumps over the lazy dog. It was 1,234 metres away!"
CODE = 'def f(x: int) -> dict[str, int]:\n    return {"x": x ** 2, "y": [1, 2, 3]}\n'


def words(text: str) -> int:
    """A real, deterministic tokenizer: whitespace-separated words."""
    return len(text.split())


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Prefixes registered by a test, unregistered afterwards."""
    prefixes: list[str] = []
    yield prefixes
    for prefix in prefixes:
        unregister_tokenizer(prefix)


def test_estimate_is_labelled() -> None:
    """Without a tokenizer the count says it is an estimate and how it was made."""
    result = count_tokens(PROSE)
    assert result == TokenCount(estimate_text_tokens(PROSE), False, ESTIMATE_METHOD)
    assert result.method.startswith("estimate:")


def test_empty_text_is_zero_tokens() -> None:
    """The empty string and an empty message list are 0 tokens."""
    assert count_tokens("").tokens == 0
    assert count_tokens([]).tokens == 0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text())
def test_estimate_never_below_chars_over_four(text: str) -> None:
    """The estimate is >= ceil(len/4) for any text (and >= 1 when non-empty)."""
    n = estimate_text_tokens(text)
    assert n >= math.ceil(len(text) / 4)
    if text:
        assert n >= 1


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(), st.text())
def test_estimate_is_monotonic_in_length(prefix: str, suffix: str) -> None:
    """Appending text never lowers the estimate."""
    assert estimate_text_tokens(prefix + suffix) >= estimate_text_tokens(prefix)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1))
def test_cjk_counts_at_least_one_and_a_half_per_character(text: str) -> None:
    """CJK text, cheap in characters but dear in tokens, is estimated at >= 1.5 per char."""
    assert estimate_text_tokens(text) >= math.ceil(1.5 * len(text))


def test_code_estimate_is_above_the_chars_over_four_rule() -> None:
    """Symbol-heavy code is estimated well above the naive chars/4 rule."""
    assert estimate_text_tokens(CODE) > 1.5 * len(CODE) / 4


def test_known_counts() -> None:
    """Hand-checked counts pin the rules: words, digits, symbols, spaces, non-ASCII."""
    assert estimate_text_tokens("hello") == 2  # (5 + 3) / 4
    assert estimate_text_tokens("hello world") == 4  # 2 + (5 + 3) / 4, the space is free
    assert estimate_text_tokens("12345") == 3  # (5 + 2) / 3 -> 2.33 -> 3
    assert estimate_text_tokens("a\n\n\nb") == 4  # 1 + 1 + a run of 3 newlines: 1.5
    assert estimate_text_tokens("{}") == 2
    assert estimate_text_tokens("é") == 1
    assert estimate_text_tokens("😀") == 2
    assert estimate_text_tokens(" ") == 1  # never 0 for non-empty text
    assert estimate_text_tokens(" a") == 1  # a leading single space is free too
    assert estimate_text_tokens("a  b") == 4  # 1 + 1 + a run of 2 spaces (1.25) = 3.25 -> 4


def test_exact_path_calls_the_tokenizer() -> None:
    """A tokenizer callable is used for the count, which is then exact."""
    seen: list[str] = []

    def tokenizer(text: str) -> int:
        seen.append(text)
        return words(text)

    result = count_tokens(PROSE, tokenizer=tokenizer)
    assert result == TokenCount(words(PROSE), True, "tokenizer")
    assert seen == [PROSE]


def test_messages_add_documented_overhead() -> None:
    """Each message adds MESSAGE_OVERHEAD, the reply adds REPLY_PRIMING, roles are counted."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is two plus two"},
    ]
    result = count_tokens(messages, tokenizer=words)
    content = (1 + 2) + (1 + 5)  # role word + content words
    assert result.tokens == 2 * MESSAGE_OVERHEAD + content + REPLY_PRIMING
    assert result.exact
    assert result.method == "tokenizer+chat-overhead"


def test_text_parts_count_like_strings() -> None:
    """Content given as a list of text parts counts the same as the plain string."""
    as_string = [{"role": "user", "content": "alpha beta gamma"}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "alpha beta"},
                {"type": "text", "text": "gamma", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]
    assert count_tokens(as_parts, tokenizer=words) == count_tokens(as_string, tokenizer=words)


def test_images_use_the_fixed_estimate() -> None:
    """An image part adds IMAGE_TOKENS and makes the count inexact, whatever its base64 size."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
    text_only = [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]
    with_image = [{"role": "user", "content": [{"type": "text", "text": "describe"}, image]}]
    base = count_tokens(text_only, tokenizer=words)
    result = count_tokens(with_image, tokenizer=words)
    assert result.tokens == base.tokens + IMAGE_TOKENS
    assert not result.exact
    assert result.method.endswith("+image-estimate")


def test_tool_calls_and_results_are_counted() -> None:
    """Strings inside tool calls (name, JSON arguments) and tool results count as input."""
    plain = [{"role": "assistant", "content": None}]
    with_call = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    assert count_tokens(with_call).tokens > count_tokens(plain).tokens + 10


def test_registered_tokenizer_longest_prefix_wins(registered: list[str]) -> None:
    """register_tokenizer picks the longest matching prefix, also after 'provider/'."""
    register_tokenizer("acme", lambda s: 1000)
    register_tokenizer("acme-large", words)
    registered.extend(["acme", "acme-large"])
    assert count_tokens("a b c", "acme-large-v2") == TokenCount(3, True, "tokenizer")
    assert count_tokens("a b c", "ACME-small").tokens == 1000
    assert count_tokens("a b c", "vendor/acme-large").tokens == 3
    assert not count_tokens("a b c", "other-model").exact


def test_explicit_tokenizer_beats_registered(registered: list[str]) -> None:
    """A tokenizer passed to count_tokens wins over a registered one."""
    register_tokenizer("acme", lambda s: 1000)
    registered.append("acme")
    assert count_tokens("a b", "acme", tokenizer=words).tokens == 2


def test_unregister_tokenizer(registered: list[str]) -> None:
    """unregister_tokenizer removes a prefix and says whether it was there."""
    register_tokenizer("zeta", words)
    assert unregister_tokenizer("zeta")
    assert not unregister_tokenizer("zeta")
    assert not count_tokens("a b", "zeta-1").exact


def test_tokenizer_returning_a_list_is_a_config_error() -> None:
    """A tokenizer that returns token ids instead of a count is refused with a hint."""
    with pytest.raises(ConfigError, match="len"):
        count_tokens("a b", tokenizer=lambda s: s.split())  # type: ignore[arg-type,return-value]


def test_tokenizer_errors_propagate() -> None:
    """An exception raised by the tokenizer itself reaches the caller unchanged."""

    def broken(text: str) -> int:
        raise UnicodeError("cannot tokenize")

    with pytest.raises(UnicodeError, match="cannot tokenize"):
        count_tokens("x", tokenizer=broken)


@pytest.mark.parametrize("bad", [b"bytes", 42, {"role": "user"}])
def test_bad_input_is_a_config_error(bad: object) -> None:
    """Bytes, numbers or a bare dict are refused with a message saying what is accepted."""
    with pytest.raises(ConfigError, match="chat messages"):
        count_tokens(bad)  # type: ignore[arg-type]


def test_non_mapping_message_is_a_config_error() -> None:
    """A list holding something other than dicts is refused, naming the bad message."""
    with pytest.raises(ConfigError, match="message 1"):
        count_tokens([{"role": "user", "content": "hi"}, "oops"])  # type: ignore[list-item]


def test_register_rejects_bad_arguments() -> None:
    """An empty prefix or a non-callable tokenizer is a ConfigError."""
    with pytest.raises(ConfigError):
        register_tokenizer("", words)
    with pytest.raises(ConfigError):
        register_tokenizer("x", "not callable")  # type: ignore[arg-type]


def test_a_long_text_counted_again_gets_the_same_estimate_and_is_not_kept() -> None:
    """A chat's history is counted on every call: a long message is estimated once and then
    found by its length and hash. The numbers are the heuristic's, and no prompt text stays
    in the cache (only integers), which stays bounded."""
    from llmctx import _tokens

    texts = [
        f"message {i}: " + "The quick brown fox jumps over the lazy dog. " * 12 for i in range(3)
    ]
    history = [{"role": "user", "content": t} for t in texts]
    first = count_tokens(history, "some-model").tokens
    assert count_tokens(history, "some-model").tokens == first
    assert (
        first
        == sum(estimate_text_tokens(t) for t in texts)
        + sum(estimate_text_tokens("user") for _ in texts)
        + 3 * MESSAGE_OVERHEAD
        + REPLY_PRIMING
    )
    assert all(
        type(a) is int and type(b) is int and type(n) is int
        for (a, b), n in _tokens._long_estimates.items()
    )
    for i in range(_tokens._LONG_ESTIMATES + 10):
        _tokens._estimate(f"{i:08d} " + "x" * 80)
    assert len(_tokens._long_estimates) <= _tokens._LONG_ESTIMATES
