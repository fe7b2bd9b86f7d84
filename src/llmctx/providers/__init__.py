"""Provider instrumentation: put every call of an LLM SDK client on llmctx's charge path.

::

    client = llmctx.instrument(openai.OpenAI())          # or AsyncOpenAI, Anthropic, Llama
    with llmctx.session("chat", budget=llmctx.Budget(tokens=10_000)) as s:
        client.chat.completions.create(model="gpt-4o-mini", messages=[...], max_tokens=200)
    llmctx.uninstrument(client)                          # optional

Supported clients: ``openai.OpenAI`` / ``AsyncOpenAI`` (and subclasses such as Azure's),
``anthropic.Anthropic`` / ``AsyncAnthropic``, ``llama_cpp.Llama``. See ``docs/providers.md``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .._exceptions import ConfigError
from ._base import DEFAULT_MAX_OUTPUT_TOKENS, LimiterLike, ReservationLike
from ._local import LOCAL_MODEL_NAME, local_model, local_model_path, local_model_pool
from ._sdk import PatchRecord

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "LOCAL_MODEL_NAME",
    "LimiterLike",
    "ReservationLike",
    "instrument",
    "is_instrumented",
    "local_model",
    "local_model_path",
    "local_model_pool",
    "uninstrument",
]

logger = logging.getLogger("llmctx")

T = TypeVar("T")

_MARK: Final = "_llmctx_instrumentation"


@dataclass(slots=True)
class _Instrumentation:
    provider: str
    limiter: Any
    records: list[PatchRecord] = field(default_factory=list)


def _classify(client: Any) -> tuple[str, bool] | None:
    """(provider, is_async) for a supported client, None otherwise; never imports an SDK."""
    openai = sys.modules.get("openai")
    if openai is not None:
        base = getattr(openai, "_base_client", None)
        if base is not None:
            if isinstance(client, base.AsyncAPIClient):
                return "openai", True
            if isinstance(client, base.SyncAPIClient):
                return "openai", False
    anthropic = sys.modules.get("anthropic")
    if anthropic is not None:
        base = getattr(anthropic, "_base_client", None)
        if base is not None:
            if isinstance(client, base.AsyncAPIClient):
                return "anthropic", True
            if isinstance(client, base.SyncAPIClient):
                return "anthropic", False
    llama_cpp = sys.modules.get("llama_cpp")
    if llama_cpp is not None and isinstance(client, llama_cpp.Llama):
        return "llama-cpp", False
    return None


def _check_limiter(limiter: Any) -> None:
    if limiter is None:
        return
    if not (
        callable(getattr(limiter, "reserve", None)) and callable(getattr(limiter, "areserve", None))
    ):
        raise ConfigError(
            f"limiter={limiter!r} is not a rate limiter: it needs reserve(tokens) and "
            "async areserve(tokens) returning a reservation with settle(tokens) and release(); "
            "pass an llmctx.RateLimiter"
        )


def instrument(client: T, *, limiter: LimiterLike | None = None) -> T:
    """Charge every call ``client`` makes to the current session (and record it).

    The client is patched in place and returned, so ``client = llmctx.instrument(OpenAI())``
    works. Each call reserves its worst case (prompt tokens + output limit, priced) on every
    budget of the current session chain, then waits for ``limiter`` if one is given, sends,
    settles with the usage the provider reported (estimated from the text where it reported
    none) and writes a :class:`~llmctx.CallRecord`. Streams keep the SDK's own types and are
    charged when they end, are closed, break or are garbage-collected, to the session that was
    current when they were opened. Outside any session and ``llmctx.record()`` block, a call
    costs a few attribute lookups (plus the limiter, if given).

    Args:
        client: ``openai.OpenAI``/``AsyncOpenAI``, ``anthropic.Anthropic``/``AsyncAnthropic``
            or ``llama_cpp.Llama``. Copies made later with ``client.with_options(...)`` are
            new clients: instrument them too.
        limiter: an :class:`llmctx.RateLimiter` (or anything with ``reserve`` / ``areserve``
            returning a reservation with ``settle`` / ``release``); every call takes one
            request and its reserved tokens from it, waiting if needed (``areserve`` in async
            clients, so the wait is a cancellation point).

    Returns:
        ``client`` itself. Instrumenting an instrumented client again changes nothing.

    Raises:
        ConfigError: ``client`` is not a supported client, or ``limiter`` lacks the interface.

    Calls made through the client can raise :class:`~llmctx.BudgetExceeded` or
    :class:`~llmctx.UnknownPrice` before anything is sent. Errors in llmctx's own bookkeeping
    after that are logged on the ``llmctx`` logger and never reach the caller. A call
    cancelled or interrupted releases its reservations and is recorded as cancelled.
    """
    _check_limiter(limiter)
    existing: _Instrumentation | None = getattr(client, _MARK, None)
    if existing is not None:
        if limiter is not None and limiter is not existing.limiter:
            logger.warning(
                "llmctx: %r is already instrumented; the new limiter is ignored "
                "(uninstrument it first to change limiters)",
                type(client).__name__,
            )
        return client
    kind = _classify(client)
    if kind is None:
        raise ConfigError(
            f"llmctx.instrument() does not support {type(client).__module__}."
            f"{type(client).__qualname__}; pass an openai.OpenAI/AsyncOpenAI, "
            "anthropic.Anthropic/AsyncAnthropic or llama_cpp.Llama instance"
        )
    provider, is_async = kind
    records: list[PatchRecord]
    if provider == "llama-cpp":
        from .llama_cpp import patch_llama

        records = patch_llama(client, limiter=limiter)
    else:
        from ._sdk import patch_sdk_client

        adapter: Any
        if provider == "openai":
            from .openai import OpenAIAdapter

            adapter = OpenAIAdapter()
        else:
            from .anthropic import AnthropicAdapter

            adapter = AnthropicAdapter()
        records = patch_sdk_client(client, adapter, limiter, is_async)
    _register(client, provider, limiter, records)
    return client


def _register(client: Any, provider: str, limiter: Any, records: list[PatchRecord]) -> None:
    setattr(client, _MARK, _Instrumentation(provider, limiter, records))


def uninstrument(client: Any) -> bool:
    """Put back what :func:`instrument` patched on ``client``.

    Streams already opened are still charged when they end.

    Returns:
        True if ``client`` was instrumented.
    """
    state: _Instrumentation | None = getattr(client, _MARK, None)
    if state is None:
        return False
    from ._sdk import unpatch

    unpatch(client, state.records)
    with contextlib.suppress(AttributeError):  # a class-level mark set by someone else
        delattr(client, _MARK)
    return True


def is_instrumented(client: Any) -> bool:
    """True when ``client`` was passed to :func:`instrument` and not uninstrumented since."""
    return getattr(client, _MARK, None) is not None
