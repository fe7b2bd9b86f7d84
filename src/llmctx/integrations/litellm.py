"""LiteLLM: every ``litellm.completion`` / ``acompletion`` charged, whatever provider it calls.

SDK patching is not enough for LiteLLM: it calls many providers over raw HTTP (``hosted_vllm``,
``anthropic``, ``gemini``, ...), and for those it does call through an SDK it maps every
exception to its own types, so a :class:`~llmctx.BudgetExceeded` raised inside the OpenAI SDK
would come out as ``litellm.InternalServerError`` (and be retried). So llmctx wraps LiteLLM's
two entry points instead: the call is planned from LiteLLM's own arguments, reserved before
LiteLLM runs (a refusal raises ``BudgetExceeded`` unchanged, and LiteLLM never sees it, so
its ``num_retries`` cannot repeat it), and settled with the usage of LiteLLM's response. An
SDK patch under it passes the call through, so nothing is charged twice. Streams stay
LiteLLM's ``CustomStreamWrapper`` (its class is swapped for a subclass that also feeds
llmctx) and are charged when they end, break or are collected.

Records carry ``provider`` = LiteLLM's provider name (``openai``, ``hosted_vllm``, ...) and
the model name without its provider prefix.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

from .._charge import DEFAULT_MAX_OUTPUT_TOKENS
from .._interrupt import protected
from ..providers._base import LimiterLike, Plan, StreamFeed, count_prompt, idle, json_tokens
from ..providers._sdk import _CHARGING, _asend, _send, mark_wrappers
from ..providers.openai import _chat_extract, _ChatAccumulator

__all__ = ["ENTRY_POINTS", "wrappers"]

logger = logging.getLogger("llmctx")

#: The module-level functions of ``litellm`` that are wrapped.
ENTRY_POINTS: Final = ("completion", "acompletion")

_PROVIDERS: Final = {"gemini": "google", "vertex_ai": "google", "vertex_ai_beta": "google"}


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def plan_call(litellm: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Plan | None:
    """The plan of one ``litellm.completion(model, messages, ...)`` call."""
    model = args[0] if args else kwargs.get("model")
    messages = args[1] if len(args) > 1 else kwargs.get("messages")
    if not isinstance(model, str):
        return None
    provider = kwargs.get("custom_llm_provider")
    name = model
    try:
        name, provider, _, _ = litellm.get_llm_provider(
            model=model,
            custom_llm_provider=provider,
            api_base=kwargs.get("api_base") or kwargs.get("base_url"),
        )
    except Exception:
        logger.debug("llmctx: litellm could not name the provider of %r", model, exc_info=True)
        if "/" in model:
            provider, name = model.split("/", 1)
    stream = bool(kwargs.get("stream"))
    limit = (
        _positive(kwargs.get("max_completion_tokens"))
        or _positive(kwargs.get("max_tokens"))
        or DEFAULT_MAX_OUTPUT_TOKENS
    )
    choices = _positive(kwargs.get("n")) or 1
    request = {
        k: v
        for k, v in kwargs.items()
        if k in {"messages", "tools", "tool_choice", "temperature", "max_tokens", "stream"}
        or k in {"max_completion_tokens", "response_format", "n", "top_p", "stop"}
    }
    request["model"] = model
    if messages is not None:
        request["messages"] = messages
    meta: dict[str, Any] = {"endpoint": "litellm.completion", "litellm_model": model}
    if stream:
        meta["stream"] = True
    provider_name = provider if isinstance(provider, str) and provider else "litellm"
    plan = Plan(
        provider=_PROVIDERS.get(provider_name, provider_name),
        model=name,
        request=request,
        input_tokens=count_prompt(messages if isinstance(messages, list) else None, name)
        + json_tokens(kwargs.get("tools"))
        + json_tokens(kwargs.get("response_format")),
        max_output_tokens=limit * choices,
        extract=_chat_extract,
        metadata=meta,
    )
    if stream:
        plan.accumulator = partial(_ChatAccumulator, hide_usage_chunk=False)
    return plan


def _safe_plan(litellm: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Plan | None:
    try:
        return plan_call(litellm, args, kwargs)
    except Exception:
        logger.exception("llmctx: could not plan a litellm call; sending it untracked")
        return None


# ---------------------------------------------------------------------------------------------
# Streams: LiteLLM's own wrapper, its class swapped for one that feeds llmctx.

_stream_classes: dict[type[Any], type[Any]] = {}


def _tracked_class(base: type[Any]) -> type[Any]:
    cls = _stream_classes.get(base)
    if cls is not None:
        return cls

    class Tracked(base):  # type: ignore[misc]
        def __next__(self) -> Any:
            feed: StreamFeed | None = self.__dict__.get("_llmctx_feed")
            if feed is None:
                return super().__next__()
            try:
                chunk = super().__next__()
            except StopIteration:
                feed.complete()
                raise
            except BaseException as exc:
                feed.error(exc)
                raise
            feed.chunk(chunk)
            return chunk

        async def __anext__(self) -> Any:
            feed: StreamFeed | None = self.__dict__.get("_llmctx_feed")
            if feed is None:
                return await super().__anext__()
            try:
                chunk = await super().__anext__()
            except StopAsyncIteration:
                feed.complete()
                raise
            except BaseException as exc:
                feed.error(exc)
                raise
            feed.chunk(chunk)
            return chunk

    Tracked.__name__ = base.__name__
    Tracked.__qualname__ = base.__qualname__
    Tracked.__module__ = base.__module__
    _stream_classes[base] = Tracked
    return Tracked


@protected
def _adopt(plan: Plan, call: Any, result: Any) -> Any:
    try:
        if plan.accumulator is not None and hasattr(type(result), "__next__"):
            feed = StreamFeed(call, plan, plan.accumulator(plan))
            result.__dict__["_llmctx_feed"] = feed
            result.__class__ = _tracked_class(type(result))
            call.mark_first_byte()
            finalizer = weakref.finalize(result, feed.abandon)
            finalizer.atexit = False
            return result
        plan.finish(call, plan.extract(plan, result))
    except Exception:
        logger.exception("llmctx: could not read a litellm response")
        if not call.finished:
            from ..providers._base import Outcome

            plan.finish(call, Outcome(estimated=True))
    return result


@protected
def _charge(
    litellm: Any,
    original: Callable[..., Any],
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    plan = _safe_plan(litellm, args, kwargs)
    if plan is None:
        return _send(original, args, kwargs)
    call = plan.track(limiter)
    token = _CHARGING.set(True)
    try:
        call.start()
        result = _send(original, args, kwargs)
    except BaseException as exc:
        plan.fail(call, exc, None)  # a no-op for a refused call
        raise
    finally:
        _CHARGING.reset(token)
    return _adopt(plan, call, result)


@protected
async def _acharge(
    litellm: Any,
    original: Callable[..., Any],
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    plan = _safe_plan(litellm, args, kwargs)
    if plan is None:
        return await _asend(original, args, kwargs)
    call = plan.track(limiter)
    token = _CHARGING.set(True)
    try:
        await call.astart()
        result = await _asend(original, args, kwargs)
    except BaseException as exc:
        await plan.afail(call, exc, None)
        raise
    finally:
        _CHARGING.reset(token)
    return await _aadopt(plan, call, result)


@protected
async def _aadopt(plan: Plan, call: Any, result: Any) -> Any:
    # A whole response ends its call through the async end (the store write off the loop
    # thread); a stream is adopted as in _adopt and ends the call as it is read.
    if plan.accumulator is not None and hasattr(type(result), "__next__"):
        return _adopt(plan, call, result)
    from ..providers._base import Outcome

    try:
        outcome = plan.extract(plan, result)
    except Exception:
        logger.exception("llmctx: could not read a litellm response")
        outcome = Outcome(estimated=True)
    await plan.afinish(call, outcome)
    return result


def wrappers(
    litellm: Any,
    originals: Mapping[str, Callable[..., Any]],
    get_limiter: Callable[[], LimiterLike | None],
) -> dict[str, Callable[..., Any]]:
    """``litellm.completion`` and ``litellm.acompletion``, charged."""
    completion_fn = originals["completion"]
    acompletion_fn = originals["acompletion"]

    def completion(*args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return completion_fn(*args, **kwargs)
        return _charge(litellm, completion_fn, limiter, args, kwargs)

    async def acompletion(*args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return await acompletion_fn(*args, **kwargs)
        return await _acharge(litellm, acompletion_fn, limiter, args, kwargs)

    return mark_wrappers({"completion": completion, "acompletion": acompletion}, originals)
