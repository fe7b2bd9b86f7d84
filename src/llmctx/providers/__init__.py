"""Provider instrumentation: put every call of an LLM SDK on llmctx's charge path.

::

    llmctx.instrument()                                  # every client of every supported SDK
    with llmctx.session("chat", budget=llmctx.Budget(tokens=10_000)) as s:
        openai.OpenAI().chat.completions.create(model="gpt-4o-mini", messages=[...])
    llmctx.uninstrument()                                # optional

    client = llmctx.instrument(openai.OpenAI())          # or one client only

Supported: ``openai`` (``OpenAI`` / ``AsyncOpenAI`` and subclasses such as Azure's),
``anthropic`` (``Anthropic`` / ``AsyncAnthropic``), ``google-genai`` (``genai.Client``),
``llama-cpp`` (``llama_cpp.Llama``). See ``docs/providers.md`` and ``docs/integrations.md``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, overload

from .._exceptions import ConfigError
from ._base import DEFAULT_MAX_OUTPUT_TOKENS, LimiterLike, ReservationLike
from ._local import LOCAL_MODEL_NAME, local_model, local_model_path, local_model_pool
from ._sdk import PatchRecord
from ._sdkwide import SUPPORTED_SDKS, Instrumentation, active_sdks

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "LOCAL_MODEL_NAME",
    "SUPPORTED_SDKS",
    "Instrumentation",
    "LimiterLike",
    "ReservationLike",
    "active_sdks",
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
class _ClientState:
    provider: str
    limiter: Any
    target: Any  # the object patched: the client, or a genai.Client's BaseApiClient
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
    genai = sys.modules.get("google.genai")
    if genai is not None:
        client_cls = getattr(sys.modules.get("google.genai.client"), "Client", None)
        if client_cls is not None and isinstance(client, client_cls):
            return "google", False
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


@overload
def instrument(*sdks: str, limiter: LimiterLike | None = None) -> Instrumentation: ...


@overload
def instrument(client: T, /, *, limiter: LimiterLike | None = None) -> T: ...


def instrument(*targets: Any, limiter: LimiterLike | None = None) -> Any:
    """Charge model calls to the current session (and record them): SDK-wide, or one client.

    ``llmctx.instrument()`` patches every supported SDK that is importable (``openai``,
    ``anthropic``, ``google-genai``, ``llama-cpp``); ``llmctx.instrument("openai",
    "anthropic")`` only those. The SDK classes are patched (the one request method every
    endpoint goes through), so every client is covered: made before or after, by your code
    or inside a framework (pydantic-ai, LangChain, the Agents SDK, LiteLLM, DSPy), sync or
    async, and copies from ``with_options()``. Doing it twice changes nothing;
    :func:`uninstrument` undoes it exactly. Outside any session, ``llmctx.record()`` block
    and tracer a patched call costs two context-variable reads.

    ``llmctx.instrument(client)`` patches that one client in place and returns it (``client
    = llmctx.instrument(OpenAI())``); with both on, a call is charged once.

    Each call reserves its worst case (prompt tokens + output limit, priced) on every budget
    of the current session chain, then waits for ``limiter`` if one is given, sends, settles
    with the usage the provider reported (estimated from the text where it reported none) and
    writes a :class:`~llmctx.CallRecord`. Streams keep the SDK's own types and are charged
    when they end, are closed, break or are garbage-collected, to the session that was current
    when they were opened.

    Args:
        *targets: nothing (every importable supported SDK), SDK names, or one client:
            ``openai.OpenAI``/``AsyncOpenAI``, ``anthropic.Anthropic``/``AsyncAnthropic``,
            ``google.genai.Client`` or ``llama_cpp.Llama``. Copies a client makes later with
            ``with_options(...)`` are new clients: instrument them too, or the SDK.
        limiter: an :class:`llmctx.RateLimiter` (or anything with ``reserve`` / ``areserve``
            returning a reservation with ``settle`` / ``release``); every call takes one
            request and its reserved tokens from it, waiting if needed (``areserve`` in async
            clients, so the wait is a cancellation point). SDK-wide, every call in the
            process takes from it, in a session or not.

    Returns:
        For SDKs, an :class:`Instrumentation` naming the SDKs patched (its ``uninstrument()``
        or leaving it as a ``with`` block undoes them); for a client, the client itself.

    Raises:
        ConfigError: an SDK name is unknown (the message lists the supported ones), not
            installed, or of a version outside the range llmctx supports (nothing of it is
            patched; without names such an SDK is skipped with a warning); ``client`` is not
            a supported client; ``limiter`` lacks the interface.

    Calls can raise :class:`~llmctx.BudgetExceeded` or :class:`~llmctx.UnknownPrice` before
    anything is sent (the SDK's retry loop is inside the patched method, so a refusal is never
    retried by it). Errors in llmctx's own bookkeeping after that are logged on the ``llmctx``
    logger and never reach the caller. A call cancelled or interrupted releases its
    reservations and is recorded as cancelled.
    """
    _check_limiter(limiter)
    if all(isinstance(t, str) for t in targets):
        from ._sdkwide import instrument_sdks

        return instrument_sdks(targets, limiter)
    if len(targets) != 1:
        raise ConfigError(
            "llmctx.instrument() takes SDK names (instrument('openai', 'anthropic')), nothing "
            "(every supported SDK), or one client instance; got "
            + ", ".join(type(t).__name__ for t in targets)
        )
    return _instrument_client(targets[0], limiter)


def _instrument_client(client: T, limiter: LimiterLike | None) -> T:
    existing: _ClientState | None = getattr(client, _MARK, None)
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
            "anthropic.Anthropic/AsyncAnthropic, google.genai.Client or llama_cpp.Llama "
            "instance, or an SDK name (llmctx.instrument('openai'))"
        )
    provider, is_async = kind
    records: list[PatchRecord]
    target: Any = client
    if provider == "llama-cpp":
        from .llama_cpp import patch_llama

        records = patch_llama(client, limiter=limiter)
    elif provider == "google":
        from .google_genai import patch_api_client

        target = client._api_client  # type: ignore[attr-defined]
        records = patch_api_client(client, limiter)
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
    _register(client, provider, limiter, records, target)
    return client


def _register(
    client: Any, provider: str, limiter: Any, records: list[PatchRecord], target: Any = None
) -> None:
    state = _ClientState(provider, limiter, client if target is None else target, records)
    setattr(client, _MARK, state)


def uninstrument(*targets: Any) -> bool:
    """Put back what :func:`instrument` patched: every SDK, the named SDKs, or one client.

    ``llmctx.uninstrument()`` undoes every SDK-wide patch; ``uninstrument("openai")`` that
    SDK's; ``uninstrument(client)`` one client's. Streams already opened are still charged
    when they end.

    Returns:
        True if something was instrumented.

    Raises:
        ConfigError: an SDK name is not supported.
    """
    if all(isinstance(t, str) for t in targets):
        from ._sdkwide import uninstrument_sdks

        return uninstrument_sdks(targets)
    undone = False
    for client in targets:
        state: _ClientState | None = getattr(client, _MARK, None)
        if state is None:
            continue
        from ._sdk import unpatch

        unpatch(state.target, state.records)
        with contextlib.suppress(AttributeError):  # a class-level mark set by someone else
            delattr(client, _MARK)
        undone = True
    return undone


def is_instrumented(target: Any) -> bool:
    """True when ``target`` (a client, or an SDK name such as ``"openai"``) was instrumented
    and not uninstrumented since. A client of an SDK instrumented SDK-wide is covered but
    reads False here: ask about its SDK."""
    if isinstance(target, str):
        from ._sdkwide import _canonical

        return _canonical(target) in active_sdks()
    return getattr(target, _MARK, None) is not None
