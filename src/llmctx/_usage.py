"""Value types for what a call used, and normalisers for each provider's usage shape.

Conventions of :class:`Usage` (they match OpenAI's and genai-prices'):

* ``input_tokens`` is *all* input, cache reads and cache writes included;
* ``output_tokens`` is all output, reasoning included;
* ``cache_read_tokens``, ``cache_write_tokens`` and ``reasoning_tokens`` are subsets shown
  separately, so they can be priced differently.

Anthropic's ``input_tokens`` excludes cache tokens, so :func:`usage_from_anthropic` adds them
back in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from random import getrandbits as _getrandbits
from typing import Any, Literal

from ._money import decimal_text

__all__ = [
    "CallRecord",
    "CallTally",
    "CallStatus",
    "Usage",
    "normalize_usage",
    "raw_usage_dict",
    "usage_from_anthropic",
    "usage_from_llama_cpp",
    "usage_from_openai_chat",
    "usage_from_openai_responses",
]

CallStatus = Literal["ok", "error", "cancelled", "refused"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token and request counts of one call, or of everything under a scope."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cache and reasoning tokens are already inside them)."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.requests + other.requests,
        )

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for JSON and the stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones are 0."""
        if not data:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v or 0) for k, v in data.items() if k in names})


def raw_usage_dict(raw: Any) -> dict[str, Any] | None:
    """Turn an SDK usage object (pydantic model, dataclass, dict) into a plain dict."""
    if raw is None:
        return None
    kind = type(raw)
    fields = _SIMPLE_MODELS.get(kind, _UNSEEN)
    if type(fields) is dict:
        # A model learnt to dump as its own values: read them, no serializer (most calls).
        fast = _simple_model_dict(raw, fields)
        if fast is not None:
            return fast
    if kind is dict or isinstance(raw, Mapping):
        return {str(k): _plain(v) for k, v in raw.items()}
    dump = getattr(raw, "model_dump", None)
    if callable(dump):
        result = dump()
        if isinstance(result, dict):
            plain = {str(k): _plain(v) for k, v in result.items()}
            if fields is _UNSEEN:
                _learn_model(raw, plain)
            return plain
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return {str(k): _plain(v) for k, v in dataclasses.asdict(raw).items()}
    data = getattr(raw, "__dict__", None)
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items() if not str(k).startswith("_")}
    return None


_LEAVES = frozenset({int, str, float, bool, type(None)})
_UNSEEN: Any = object()
# Per pydantic model class seen by raw_usage_dict: None if its model_dump() may be anything
# but its own values, else for each field what a value may be for model_dump() to return it
# unchanged: its exact type (a leaf, or a nested model dumped on its own), or, for a Literal
# field, one of its strings. The serializer converts the rest (True to 1 in an int field, 2 to
# 2.0 in a float one, a subclass's model to its declared fields): those take model_dump().
_SIMPLE_MODELS: dict[type, dict[str, frozenset[Any]] | None] = {}


def _simple_model_dict(raw: Any, fields: dict[str, frozenset[Any]]) -> dict[str, Any] | None:
    # What model_dump() then _plain would make of ``raw``, or None to take that path after all.
    values = raw.__dict__
    if len(values) != len(fields):  # model_dump() skips unknown keys, misses missing ones
        return None
    out: dict[str, Any] = {}
    for key, value in values.items():
        allowed = fields.get(key)
        kind = type(value)
        if allowed is None:
            return None
        if kind in allowed:
            out[key] = value if kind in _LEAVES else raw_usage_dict(value)
        elif kind is str and value in allowed:
            out[key] = value
        else:
            return None
    extra = raw.__pydantic_extra__
    if extra:
        for key, value in extra.items():
            # Extra fields are dumped by their runtime type: a leaf is itself.
            if type(key) is not str or type(value) not in _LEAVES:
                return None
            out[key] = value
    return out


def _learn_model(raw: Any, plain: dict[str, Any]) -> None:
    # Once per class, after its first model_dump(): may the next ones be read directly?
    if len(_SIMPLE_MODELS) >= 256:  # classes made on the fly: not kept forever
        return
    try:
        fields = _model_field_types(type(raw))
        if fields is not None:
            fast = _simple_model_dict(raw, fields)
            if fast is not None and list(fast.items()) != list(plain.items()):
                fields = None  # something this does not know of changes the dump
    except Exception:
        fields = None
    _SIMPLE_MODELS[type(raw)] = fields


def _model_field_types(cls: type) -> dict[str, frozenset[Any]] | None:
    from pydantic import BaseModel

    if not issubclass(cls, BaseModel) or cls.model_dump is not BaseModel.model_dump:
        return None
    if (
        getattr(cls, "__pydantic_root_model__", False)
        or not getattr(cls, "__pydantic_complete__", False)
        or cls.model_computed_fields
        or cls.__pydantic_decorators__.field_serializers
        or cls.__pydantic_decorators__.model_serializers
        or cls.model_config.get("serialize_by_alias")
        # Typed extra fields are converted to their type.
        or any(
            "__pydantic_extra__" in vars(k).get("__annotations__", {})
            for k in cls.__mro__
            if k is not BaseModel
        )
    ):
        return None
    out: dict[str, frozenset[Any]] = {}
    for name, info in cls.model_fields.items():
        if info.exclude or info.metadata or getattr(info, "exclude_if", None) is not None:
            return None
        allowed = _unchanged_values(info.annotation)
        if allowed is None:
            return None
        out[name] = allowed
    return out


def _unchanged_values(annotation: Any) -> frozenset[Any] | None:
    # What a field of this type holds that model_dump() returns as it is (None: don't know).
    import types
    import typing

    from pydantic import BaseModel

    if annotation is None or annotation is type(None):
        return frozenset({type(None)})
    if annotation in (int, str, float, bool):
        return frozenset({annotation})
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return frozenset({annotation})
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return frozenset(args) if args and all(type(a) is str for a in args) else None
    if origin in (typing.Union, types.UnionType):
        # Only ``X | None``: which member of a wider union serializes a value is subtle.
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        inner = _unchanged_values(rest[0])
        return None if inner is None else inner | {type(None)}
    return None


def _plain(value: Any) -> Any:
    if type(value) in _LEAVES:  # most of a usage: counts (before the slower checks below)
        return value
    if isinstance(value, Mapping) or hasattr(value, "model_dump"):
        return raw_usage_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _readable(raw: Any) -> Mapping[str, Any] | None:
    # What the normalisers read counts from: a mapping as it is (they only read it), anything
    # else (an SDK object) as a plain dict.
    return raw if type(raw) is dict or isinstance(raw, Mapping) else raw_usage_dict(raw)


def _int(data: Mapping[str, Any] | None, *path: str) -> int:
    value: Any = data
    for key in path:
        if type(value) is not dict and (value is None or not isinstance(value, Mapping)):
            return 0  # (None, the usual missing details, before the slower ABC check)
        value = value.get(key)
    if type(value) is int:  # the usual count: int() of it is itself
        return value if value > 0 else 0
    try:
        number = int(value or 0)
    except (TypeError, ValueError):
        return 0
    # A provider reporting a negative count must not refund a budget.
    return number if number > 0 else 0


def usage_from_openai_chat(raw: Any) -> Usage:
    """Normalise an OpenAI Chat Completions ``usage`` (also llama.cpp's server, vLLM, ...)."""
    d = _readable(raw)
    return Usage(
        input_tokens=_int(d, "prompt_tokens"),
        output_tokens=_int(d, "completion_tokens"),
        cache_read_tokens=_int(d, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_int(d, "completion_tokens_details", "reasoning_tokens"),
        requests=1,
    )


def usage_from_openai_responses(raw: Any) -> Usage:
    """Normalise an OpenAI Responses API ``usage``."""
    d = _readable(raw)
    return Usage(
        input_tokens=_int(d, "input_tokens"),
        output_tokens=_int(d, "output_tokens"),
        cache_read_tokens=_int(d, "input_tokens_details", "cached_tokens"),
        reasoning_tokens=_int(d, "output_tokens_details", "reasoning_tokens"),
        requests=1,
    )


def usage_from_anthropic(raw: Any) -> Usage:
    """Normalise an Anthropic Messages ``usage``.

    Anthropic reports ``input_tokens`` *without* the cached part, so cache reads and cache
    writes are added back to make ``input_tokens`` the whole prompt, as everywhere else.
    """
    d = _readable(raw)
    cache_read = _int(d, "cache_read_input_tokens")
    cache_write = _int(d, "cache_creation_input_tokens")
    return Usage(
        input_tokens=_int(d, "input_tokens") + cache_read + cache_write,
        output_tokens=_int(d, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        requests=1,
    )


def usage_from_llama_cpp(raw: Any) -> Usage:
    """Normalise the ``usage`` of a llama-cpp-python result (OpenAI-shaped dict)."""
    return usage_from_openai_chat(raw)


_NORMALISERS = {
    "openai": usage_from_openai_chat,
    "openai-chat": usage_from_openai_chat,
    "openai-responses": usage_from_openai_responses,
    "anthropic": usage_from_anthropic,
    "llama-cpp": usage_from_llama_cpp,
}


def normalize_usage(raw: Any, api: str) -> Usage:
    """Normalise ``raw`` usage reported by ``api``.

    Args:
        raw: the SDK's usage object or dict.
        api: one of ``openai-chat``, ``openai-responses``, ``anthropic``, ``llama-cpp``.

    Raises:
        ConfigError: ``api`` is not one of those.
    """
    try:
        fn = _NORMALISERS[api]
    except KeyError:
        from ._exceptions import ConfigError

        raise ConfigError(
            f"unknown usage shape {api!r}; expected one of {', '.join(sorted(_NORMALISERS))}"
        ) from None
    return fn(raw)


def _new_id() -> str:
    # 128 random bits, like uuid4 but a quarter of the cost; `random` reseeds after fork, so
    # forked workers do not repeat ids.
    # bytes.hex() of the 16 bytes: the same 32 lowercase hex digits as f"{n:032x}" at 40 %
    # of its cost (one of the costliest single steps of a charged call in a profile).
    return _getrandbits(128).to_bytes(16, "big").hex()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class CallRecord:
    """One model or tool call as it is recorded: what was asked, what came back, what it cost.

    A record is a value: treat it as read-only (``replace()`` makes a changed copy). It is not
    ``frozen`` only because a frozen dataclass takes about three times as long to build, and
    one is built on every call.

    ``request`` is already redacted (no API keys or bearer tokens) by the time a record exists
    outside the charge path. ``cost`` is ``None`` when the call could not be priced, with the
    reason in ``cost_note``. ``estimated`` is true when usage was estimated from the text
    because the provider reported none. ``status`` is ``ok``, ``error``, ``cancelled``, or
    ``refused``: stopped before it was sent (a budget, an unknown price under a money budget,
    the rate limiter), with the reason in ``error``, no usage and no cost.
    """

    session_id: str | None
    provider: str | None = None
    model: str | None = None
    kind: str = "llm"
    request: Any = None
    response: str | None = None
    tool_calls: list[Any] | None = None
    usage: Usage = field(default_factory=Usage)
    raw_usage: dict[str, Any] | None = None
    cost: Decimal | None = None
    cost_note: str | None = None
    status: CallStatus = "ok"
    error: str | None = None
    estimated: bool = False
    started_at: datetime = field(default_factory=_now)
    latency_s: float | None = None
    ttfb_s: float | None = None
    ttft_s: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)

    def replace(self, **changes: Any) -> CallRecord:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (Decimal as string, datetime as ISO 8601)."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "kind": self.kind,
            "provider": self.provider,
            "model": self.model,
            "request": self.request,
            "response": self.response,
            "tool_calls": self.tool_calls,
            "usage": self.usage.to_dict(),
            "raw_usage": self.raw_usage,
            "cost": None if self.cost is None else decimal_text(self.cost),
            "cost_note": self.cost_note,
            "status": self.status,
            "error": self.error,
            "estimated": self.estimated,
            "started_at": self.started_at.isoformat(),
            "latency_s": self.latency_s,
            "ttfb_s": self.ttfb_s,
            "ttft_s": self.ttft_s,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        """Inverse of :meth:`to_dict`."""
        cost = data.get("cost")
        started = data.get("started_at")
        return cls(
            id=str(data["id"]),
            session_id=data.get("session_id"),
            kind=str(data.get("kind") or "llm"),
            provider=data.get("provider"),
            model=data.get("model"),
            request=data.get("request"),
            response=data.get("response"),
            tool_calls=data.get("tool_calls"),
            usage=Usage.from_dict(data.get("usage")),
            raw_usage=data.get("raw_usage"),
            cost=None if cost is None else Decimal(str(cost)),
            cost_note=data.get("cost_note"),
            status=data.get("status") or "ok",
            error=data.get("error"),
            estimated=bool(data.get("estimated")),
            started_at=(
                datetime.fromisoformat(started)
                if isinstance(started, str)
                else started
                if isinstance(started, datetime)
                else _now()
            ),
            latency_s=data.get("latency_s"),
            ttfb_s=data.get("ttfb_s"),
            ttft_s=data.get("ttft_s"),
            metadata=dict(data.get("metadata") or {}),
        )


class CallTally:
    """A running roll-up of calls, added to in place: O(1) per call, nothing kept per call.

    The one roll-up rule, shared by a live session (and each of its ancestors) and by
    :class:`~llmctx.stores.MemoryStore`'s rows. ``counts`` are in :class:`Usage`'s field order.
    """

    __slots__ = ("calls", "cost", "counts", "unpriced", "unpriced_reason")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0, 0, 0]
        self.cost = Decimal(0)
        self.unpriced = 0
        self.unpriced_reason: str | None = None
        self.calls = 0

    def add(self, record: CallRecord) -> None:
        """Count one finished call (the caller holds whatever lock guards this tally)."""
        u, c = record.usage, self.counts
        c[0] += u.input_tokens
        c[1] += u.output_tokens
        c[2] += u.cache_read_tokens
        c[3] += u.cache_write_tokens
        c[4] += u.reasoning_tokens
        c[5] += u.requests
        self.calls += 1
        if record.cost is not None:
            self.cost += record.cost
        else:
            self.unpriced += 1
            self.unpriced_reason = record.cost_note

    @property
    def usage(self) -> Usage:
        """The summed usage."""
        return Usage(*self.counts)
