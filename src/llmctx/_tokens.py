"""Offline token counting: exact with a tokenizer, otherwise a labelled, conservative estimate.

Nothing here touches the network (tiktoken downloads its vocabularies at run time, so llmctx
does not use it). :func:`count_tokens` counts with, in order: the ``tokenizer`` callable it is
given, a tokenizer registered for the model with :func:`register_tokenizer`, or the
heuristic estimate below. The result says which (:class:`TokenCount` ``exact`` and
``method``).

The estimate (``method="estimate:heuristic-v1"``) is meant for reservations, so it errs high.
It adds up:

* a run of ASCII letters of length L: (L + 3) / 4 tokens (a common word is 1 token, a long or
  rare one about one per 3-4 letters);
* a run of digits of length L: (L + 2) / 3 (modern vocabularies group at most 3 digits);
* each ASCII punctuation or symbol character: 1;
* a run of exactly one space: 0 (BPE vocabularies glue it to the next word); any other run
  of ASCII whitespace, of length L: (L + 3) / 4;
* each non-ASCII character: half its UTF-8 length (1 for accented Latin, Greek or Cyrillic,
  1.5 for CJK, 2 for emoji);

rounded up, and at least 1 for non-empty text. By construction it is never below
``ceil(len(text) / 4)`` (the usual "4 characters per token" rule) and never decreases when
text is appended. Expected error against the OpenAI (cl100k/o200k) and Anthropic
vocabularies: English prose +10% to +40%, source code and JSON +20% to +80% (every symbol
counts as a token), CJK text +15% to +100%. It can fall *below* the real count for
tokenizers with small vocabularies or per-digit / per-byte splitting (Llama 2, SmolLM2 and
other local models): pass their tokenizer, which is what llmctx's llama.cpp integration does.

Chat messages add :data:`MESSAGE_OVERHEAD` tokens per message (role markers and separators)
and :data:`REPLY_PRIMING` once (the assistant header the reply starts with). Those figures
match ChatML templates (SmolLM2, Qwen) exactly and are one token per message above OpenAI's
documented formula (3 per message, 3 priming). An image part counts :data:`IMAGE_TOKENS`,
a fixed upper-range figure (OpenAI high detail 1024x1024 = 765; Anthropic caps near 1,600).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._exceptions import ConfigError

__all__ = [
    "ESTIMATE_METHOD",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
    "TokenCount",
    "Tokenizer",
    "count_tokens",
    "estimate_text_tokens",
    "register_tokenizer",
    "unregister_tokenizer",
]

Tokenizer = Callable[[str], int]

ESTIMATE_METHOD: Final = "estimate:heuristic-v1"
MESSAGE_OVERHEAD: Final = 4
REPLY_PRIMING: Final = 3
IMAGE_TOKENS: Final = 1_600

_IMAGE_PART_TYPES: Final = frozenset({"image", "image_url", "input_image"})
# Keys whose values are markup, not text the model reads.
_SKIPPED_KEYS: Final = frozenset({"type", "cache_control", "id", "tool_call_id", "index"})


@dataclass(frozen=True, slots=True)
class TokenCount:
    """How many tokens a text or a list of chat messages holds, and how that was found.

    Attributes:
        tokens: the count.
        exact: True when a real tokenizer counted the text (a chat template's overhead, a
            documented constant, is still added for messages); False for an estimate.
        method: ``"tokenizer"``, ``"tokenizer+chat-overhead"``, ``"estimate:heuristic-v1"``,
            ... with ``"+image-estimate"`` appended when images were counted at the fixed
            figure.
    """

    tokens: int
    exact: bool
    method: str


def _mask_table(members: bytes) -> bytes:
    return bytes(1 if i in members else 0 for i in range(256))


# Per-class masks of the text's UTF-8 bytes (1 where a byte is in the class), read as one big
# integer with byte i at bit 8*i. Then ``m & ~(m << 8)`` marks the first byte of every run,
# and int.bit_count() counts: linear, C speed, no per-match Python objects.
_LETTER_MASK: Final = _mask_table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGIT_MASK: Final = _mask_table(b"0123456789")
_WHITESPACE_MASK: Final = _mask_table(b" \t\n\r\x0b\x0c")
_SPACE_MASK: Final = _mask_table(b" ")
_NON_ASCII: Final = bytes(range(0x80, 0x100))


def estimate_text_tokens(text: str) -> int:
    """The heuristic token estimate of ``text`` (see the module docstring for the rules).

    Args:
        text: any string.

    Returns:
        0 for the empty string, else at least ``max(1, ceil(len(text) / 4))``.
    """
    if not text:
        return 0
    raw = text.encode("utf-8", "surrogatepass")
    letter = int.from_bytes(raw.translate(_LETTER_MASK), "little")
    digit = int.from_bytes(raw.translate(_DIGIT_MASK), "little")
    white = int.from_bytes(raw.translate(_WHITESPACE_MASK), "little")
    space = int.from_bytes(raw.translate(_SPACE_MASK), "little")
    letters = letter.bit_count()
    digits = digit.bit_count()
    whitespace = white.bit_count()
    ascii_len = len(raw.translate(None, _NON_ASCII))
    symbols = ascii_len - letters - digits - whitespace
    # A run of exactly one space costs nothing: BPE vocabularies glue it to the next word.
    single_spaces = (space & ~(white << 8) & ~(white >> 8)).bit_count()
    # Work in twelfths of a token so the per-class fractions add up exactly.
    twelfths = (
        3 * (letters + 3 * (letter & ~(letter << 8)).bit_count())
        + 4 * (digits + 2 * (digit & ~(digit << 8)).bit_count())
        + 6 * (len(raw) - ascii_len)
        + 12 * symbols
        + 3 * (whitespace + 3 * (white & ~(white << 8)).bit_count())
        - 12 * single_spaces
    )
    return max(1, -(-twelfths // 12))


#: Texts up to this many characters have their estimate cached by the text itself: role
#: names, tool names and short messages repeat call after call, and the cache lookup is a
#: fraction of the count.
_CACHED_TEXT_LEN: Final = 64
#: How many longer texts' estimates are remembered, by length and hash (see _estimate).
_LONG_ESTIMATES: Final = 2048


@functools.lru_cache(maxsize=1024)
def _estimate_short(text: str) -> int:
    return estimate_text_tokens(text)


# (length, hash) of a text over _CACHED_TEXT_LEN characters -> its estimate. A chat's history
# is sent again with every call, so without this each call re-counted all of it (50 messages
# of 500 characters: 0.3 ms a call, as much as the SDK's own request). Keyed by the hash, not
# the text: no prompt is kept past its call. Two texts of one length and one 64-bit hash
# would share an estimate, a reservation's worst case off by the difference (the actual
# usage is what is charged).
_long_estimates: dict[tuple[int, int], int] = {}


def _estimate(text: str) -> int:
    """:func:`estimate_text_tokens`, from a cache (the same numbers)."""
    if len(text) <= _CACHED_TEXT_LEN:
        return _estimate_short(text)
    key = (len(text), hash(text))  # a str keeps its hash: the same message hashes once
    found = _long_estimates.get(key)
    if found is None:
        found = estimate_text_tokens(text)
        if len(_long_estimates) >= _LONG_ESTIMATES:
            _long_estimates.clear()  # a bound; a clear racing another thread's insert is fine
        _long_estimates[key] = found
    return found


# --------------------------------------------------------------------------------------------
# Registered tokenizers.

_registry_lock = threading.Lock()
_registry: dict[str, Tokenizer] = {}


def register_tokenizer(model_prefix: str, fn: Tokenizer) -> None:
    """Use ``fn`` to count tokens exactly for every model whose name starts with the prefix.

    The longest matching prefix wins, compared case-insensitively; a ``"provider/model"``
    name is also tried without its ``provider/`` part.

    Args:
        model_prefix: e.g. ``"smollm2"`` or ``"gpt-4o"``.
        fn: takes a string, returns its number of tokens, e.g.
            ``lambda s: len(llm.tokenize(s.encode(), add_bos=False))`` for llama.cpp. It
            must be thread-safe if counting happens in several threads; it is called with
            no lock held.

    Raises:
        ConfigError: the prefix is empty or ``fn`` is not callable.
    """
    if not isinstance(model_prefix, str) or not model_prefix.strip():
        raise ConfigError(f"model_prefix must be a non-empty string, got {model_prefix!r}")
    if not callable(fn):
        raise ConfigError(f"fn must be a callable taking a str and returning an int, got {fn!r}")
    with _registry_lock:
        _registry[model_prefix.strip().lower()] = fn


def unregister_tokenizer(model_prefix: str) -> bool:
    """Remove the tokenizer registered for exactly ``model_prefix``.

    Returns:
        True if one was registered.
    """
    with _registry_lock:
        return _registry.pop(model_prefix.strip().lower(), None) is not None


def _registered_for(model: str | None) -> Tokenizer | None:
    if model is None or not _registry:
        return None
    name = model.strip().lower()
    names = [name, name.split("/", 1)[1]] if "/" in name else [name]
    best: tuple[int, Tokenizer] | None = None
    with _registry_lock:
        for prefix, fn in _registry.items():
            if any(n.startswith(prefix) for n in names) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), fn)
    return None if best is None else best[1]


def _checked(fn: Tokenizer) -> Tokenizer:
    def count(text: str) -> int:
        if not text:
            return 0
        n = fn(text)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(
                f"tokenizer {fn!r} returned {n!r} for a text; it must return the number of "
                "tokens as an int >= 0 (e.g. len(tokenizer.encode(text)))"
            )
        return n

    return count


# --------------------------------------------------------------------------------------------
# Counting.


class _Walker:
    """Sums the tokens of message content; remembers whether it met an image."""

    __slots__ = ("count_text", "images")

    def __init__(self, count_text: Tokenizer) -> None:
        self.count_text = count_text
        self.images = 0

    def value(self, value: Any) -> int:
        # Exact-type checks first: messages are plain dicts, lists and strs, and an ABC
        # isinstance (Mapping, Sequence) costs far more than the count of a short text.
        kind = type(value)
        if kind is str:
            return self.count_text(value)
        if kind is dict:
            if value.get("type") in _IMAGE_PART_TYPES:
                self.images += 1
                return IMAGE_TOKENS
            # A loop with the strings counted in it: a message is mostly a role and a text,
            # and a generator plus a call per value cost more than counting them.
            count_text, total = self.count_text, 0
            for k, v in value.items():
                if k not in _SKIPPED_KEYS:
                    total += count_text(v) if type(v) is str else self.value(v)
            return total
        if kind is list:
            count_text, total = self.count_text, 0
            for v in value:
                total += count_text(v) if type(v) is str else self.value(v)
            return total
        if kind is int or value is None:
            return 0
        if isinstance(value, str):
            return self.count_text(value)
        if isinstance(value, Mapping):
            if value.get("type") in _IMAGE_PART_TYPES:
                self.images += 1
                return IMAGE_TOKENS
            return sum(self.value(v) for k, v in value.items() if k not in _SKIPPED_KEYS)
        if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            return sum(self.value(v) for v in value)
        # Numbers, None, booleans: markup-sized, covered by the per-message overhead.
        return 0


def count_tokens(
    text_or_messages: str | Sequence[Mapping[str, Any]],
    model: str | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> TokenCount:
    """Count the tokens of a prompt, offline.

    Args:
        text_or_messages: a string, or chat messages (``{"role": ..., "content": ...}``)
            whose content is a string or a list of parts (``{"type": "text", "text": ...}``,
            image parts, tool calls and results: every string in them is counted).
        model: the model name, used to find a tokenizer registered with
            :func:`register_tokenizer`.
        tokenizer: counts a string's tokens exactly; wins over a registered one.

    Returns:
        A :class:`TokenCount`; ``exact`` is False when the heuristic estimate was used or an
        image was counted at the fixed :data:`IMAGE_TOKENS`.

    Raises:
        ConfigError: ``text_or_messages`` is neither a string nor a sequence of mappings, or
            the tokenizer returned something other than an int >= 0. Exceptions raised by
            the tokenizer itself propagate unchanged.
    """
    fn = tokenizer if tokenizer is not None else _registered_for(model)
    count_text: Tokenizer = _estimate if fn is None else _checked(fn)
    method = ESTIMATE_METHOD if fn is None else "tokenizer"
    if isinstance(text_or_messages, str):
        return TokenCount(count_text(text_or_messages), fn is not None, method)
    given: object = text_or_messages  # the annotation is a promise callers may break
    if type(given) is not list and (
        not isinstance(given, Sequence) or isinstance(given, bytes | bytearray)
    ):
        raise ConfigError(
            "count_tokens() takes a str or a list of chat messages (dicts with 'role' and "
            f"'content'), got {type(text_or_messages).__name__}"
        )
    walker = _Walker(count_text)
    total = 0
    for i, message in enumerate(text_or_messages):
        if type(message) is not dict and not isinstance(message, Mapping):
            raise ConfigError(
                f"message {i} is a {type(message).__name__}; chat messages are dicts with "
                "'role' and 'content'"
            )
        total += MESSAGE_OVERHEAD + walker.value(message)
    if text_or_messages:
        total += REPLY_PRIMING
    if fn is not None:
        method += "+chat-overhead"
    if walker.images:
        method += "+image-estimate"
    return TokenCount(total, fn is not None and not walker.images, method)
