"""The Google Gen AI SDK (``google-genai``: ``genai.Client``, its ``.aio`` twin).

Charged: ``models.generate_content`` and ``models.generate_content_stream`` and their async
twins (and so chats, which call them), for the Gemini API and Vertex AI alike: every
``POST .../{model}:generateContent`` and ``:streamGenerateContent`` the SDK's
``BaseApiClient`` sends. Automatic function calling makes one request per model turn, each
charged. Token counting, embeddings, files, caches and the rest pass through untouched.

Usage comes from ``usageMetadata``: the prompt (plus ``toolUsePromptTokenCount``) is the
input, cached content the cache reads, and the output is the candidates plus the thinking
tokens (``thoughtsTokenCount``, also kept as reasoning tokens), as Google bills them. In a
stream each chunk repeats the running totals, so the last one wins. A stream that stops
before any usage is charged the pre-flight input plus an estimate of the text received,
marked ``estimated``.

The pre-flight count: the text of ``contents`` and ``systemInstruction`` (conservative
estimate, no Gemini tokenizer offline), tool declarations as JSON, and 258 tokens per inline
or file part (Gemini's charge for one image). The output limit is
``generationConfig.maxOutputTokens`` times ``candidateCount``; without it,
``DEFAULT_MAX_OUTPUT_TOKENS``.
"""

from __future__ import annotations

import json
import logging
import types
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final

from .._interrupt import protected
from .._usage import Usage
from ._base import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    LimiterLike,
    Outcome,
    Plan,
    StreamFeed,
    count_prompt,
    idle,
    json_tokens,
    server_metadata,
)
from ._sdk import _CHARGING, PatchRecord, _asend, _send, mark_wrappers, unwrapped

__all__ = ["CLASS_METHODS", "PROVIDER", "class_wrappers", "patch_api_client", "usage_from_google"]

logger = logging.getLogger("llmctx")

PROVIDER: Final = "google"

#: The methods of ``google.genai._api_client.BaseApiClient`` every model call goes through.
CLASS_METHODS: Final = ("request", "request_streamed", "async_request", "async_request_streamed")

_MEDIA_PART_TOKENS: Final = 258
_CHARGED: Final = frozenset({"generateContent", "streamGenerateContent"})


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else None


def _count(data: Any, name: str) -> int:
    value = _get(data, name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_google(metadata: Any) -> Usage:
    """Normalise a Gemini ``usageMetadata`` (REST, camelCase) to :class:`~llmctx.Usage`."""
    thoughts = _count(metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=_count(metadata, "promptTokenCount")
        + _count(metadata, "toolUsePromptTokenCount"),
        output_tokens=_count(metadata, "candidatesTokenCount") + thoughts,
        cache_read_tokens=_count(metadata, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
        requests=1,
    )


# ---------------------------------------------------------------------------------------------
# Planning a request.


def _messages(request: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The prompt as chat messages (text parts), and the tokens of its non-text parts."""
    messages: list[dict[str, Any]] = []
    extra = 0

    def add(role: str, content: Any) -> None:
        nonlocal extra
        texts: list[str] = []
        for part in _get(content, "parts") or ():
            text = _get(part, "text")
            if isinstance(text, str):
                texts.append(text)
            elif _get(part, "inlineData") is not None or _get(part, "fileData") is not None:
                extra += _MEDIA_PART_TOKENS
            elif isinstance(part, Mapping):
                extra += json_tokens(part)  # function calls and responses, as JSON
        messages.append({"role": role, "content": "".join(texts)})

    system = request.get("systemInstruction")
    if system is not None:
        add("system", system)
    contents = request.get("contents")
    for content in contents if isinstance(contents, list) else ():
        role = _get(content, "role")
        add(role if isinstance(role, str) else "user", content)
    return messages, extra


def plan_request(path: Any, request: Any, stream: bool) -> Plan | None:
    """The plan of one ``BaseApiClient`` request, or None when it is not charged."""
    if not isinstance(path, str) or not isinstance(request, Mapping):
        return None
    resource, _, method = path.split("?", 1)[0].rpartition(":")
    if method not in _CHARGED:
        return None
    model = resource.rsplit("/", 1)[-1] or None
    messages, extra = _messages(request)
    config = request.get("generationConfig")
    limit = _count(config, "maxOutputTokens") or DEFAULT_MAX_OUTPUT_TOKENS
    choices = _count(config, "candidateCount") or 1
    meta: dict[str, Any] = {"endpoint": "generate_content"}
    if stream:
        meta["stream"] = True
    return Plan(
        provider=PROVIDER,
        model=model,
        request=dict(request),
        input_tokens=count_prompt(messages, model) + extra + json_tokens(request.get("tools")),
        max_output_tokens=limit * choices,
        extract=_extract,
        accumulator=_GeminiAccumulator if stream else None,
        metadata=meta,
    )


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    # (http_method, path, request_dict, http_options=None), positional or by name.
    named = ("http_method", "path", "request_dict")
    values = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(named)]
    method, path, request = values
    if not isinstance(method, str) or method.lower() != "post":
        return None, None
    return path, request


def _safe_plan(args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool) -> Plan | None:
    try:
        path, request = _split(args, kwargs)
        return plan_request(path, request, stream)
    except Exception:
        logger.exception("llmctx: could not plan a google-genai request; sending it untracked")
        return None


# ---------------------------------------------------------------------------------------------
# Reading responses.


def _body(response: Any) -> Any:
    body = getattr(response, "body", None)
    if isinstance(body, str | bytes) and body:
        return json.loads(body)
    return body if isinstance(body, Mapping) else None


def _read_parts(
    data: Any, texts: list[str], thoughts: list[str], calls: list[dict[str, Any]]
) -> None:
    for candidate in _get(data, "candidates") or ():
        for part in _get(_get(candidate, "content"), "parts") or ():
            text = _get(part, "text")
            call = _get(part, "functionCall")
            if isinstance(text, str):
                (thoughts if _get(part, "thought") else texts).append(text)
            elif call is not None:
                try:
                    arguments = json.dumps(_get(call, "args") or {}, default=str)
                except (TypeError, ValueError):
                    arguments = str(_get(call, "args"))
                calls.append(
                    {"id": _get(call, "id"), "name": _get(call, "name"), "arguments": arguments}
                )


def _meta(plan: Plan, data: Any) -> dict[str, Any] | None:
    version = _get(data, "modelVersion")
    if isinstance(version, str) and version != plan.model:
        return {"response_model": version}
    return None


def _extract(plan: Plan, response: Any) -> Outcome:
    """Read a whole ``generateContent`` response (an ``SdkHttpResponse`` with a JSON body)."""
    data = _body(response)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    _read_parts(data, texts, thoughts, calls)
    metadata = _get(data, "usageMetadata")
    return Outcome(
        usage=usage_from_google(metadata) if isinstance(metadata, Mapping) else None,
        text="".join(texts) or None,
        tool_calls=calls or None,
        raw_usage=dict(metadata) if isinstance(metadata, Mapping) else None,
        metadata=_meta(plan, data),
    )


class _GeminiAccumulator:
    """``streamGenerateContent`` chunks: text, thoughts and calls add up; usage is the latest."""

    __slots__ = ("calls", "got_token", "metadata", "plan", "response_model", "texts", "thoughts")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.got_token = False
        self.texts: list[str] = []
        self.thoughts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.metadata: dict[str, Any] | None = None
        self.response_model: dict[str, Any] | None = None

    def feed(self, chunk: Any) -> bool:
        data = _body(chunk)
        before = len(self.texts) + len(self.thoughts) + len(self.calls)
        _read_parts(data, self.texts, self.thoughts, self.calls)
        if len(self.texts) + len(self.thoughts) + len(self.calls) > before:
            self.got_token = True
        metadata = _get(data, "usageMetadata")
        if isinstance(metadata, Mapping):
            self.metadata = dict(metadata)
        if self.response_model is None:
            self.response_model = _meta(self.plan, data)
        return True

    def outcome(self, complete: bool) -> Outcome:
        text = "".join(self.texts) or None
        calls = self.calls or None
        usage = None if self.metadata is None else usage_from_google(self.metadata)
        if usage is not None and (usage.output_tokens or complete):
            return Outcome(
                usage=usage,
                text=text,
                tool_calls=calls,
                raw_usage=self.metadata,
                estimated=not complete,
                metadata=self.response_model,
            )
        generated = (text or "") + "".join(self.thoughts)
        generated += "".join(c["arguments"] for c in calls or ())
        estimate = self.plan.estimated_usage(generated)
        if usage is not None and usage.input_tokens:
            # The chunks so far reported the prompt exactly; only the output is estimated.
            estimate = Usage(
                input_tokens=usage.input_tokens,
                output_tokens=max(usage.output_tokens, estimate.output_tokens),
                cache_read_tokens=usage.cache_read_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                requests=1,
            )
        return Outcome(
            usage=estimate,
            text=text,
            tool_calls=calls,
            raw_usage=self.metadata,
            estimated=True,
            metadata=self.response_model,
        )


# ---------------------------------------------------------------------------------------------
# The charge path around the four methods.


@protected
def _charge(
    original: Callable[..., Any],
    api: Any,
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    plan = _safe_plan(args, kwargs, False)
    if plan is None:
        return _send(original, (api, *args), kwargs)
    plan.metadata.update(server_metadata(api))
    call = plan.track(limiter)
    token = _CHARGING.set(True)
    try:
        call.start()
        result = _send(original, (api, *args), kwargs)
    except BaseException as exc:
        plan.fail(call, exc, None)  # a no-op for a refused call
        raise
    finally:
        _CHARGING.reset(token)
    _finish(plan, call, result)
    return result


@protected
async def _acharge(
    original: Callable[..., Any],
    api: Any,
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    plan = _safe_plan(args, kwargs, False)
    if plan is None:
        return await _asend(original, (api, *args), kwargs)
    plan.metadata.update(server_metadata(api))
    call = plan.track(limiter)
    token = _CHARGING.set(True)
    try:
        await call.astart()
        result = await _asend(original, (api, *args), kwargs)
    except BaseException as exc:
        await plan.afail(call, exc, None)
        raise
    finally:
        _CHARGING.reset(token)
    await plan.afinish(call, _outcome(plan, result))
    return result


@protected
def _finish(plan: Plan, call: Any, result: Any) -> None:
    plan.finish(call, _outcome(plan, result))


def _outcome(plan: Plan, result: Any) -> Outcome:
    try:
        return plan.extract(plan, result)
    except Exception:
        logger.exception("llmctx: could not read a google-genai response")
        return Outcome(estimated=True)


_END: Final = object()


@protected
def _start(plan: Plan, limiter: LimiterLike | None) -> Any:
    call = plan.track(limiter)
    call.start()
    return call


def _first(call: Any, plan: Plan, inner: Iterator[Any]) -> Any:
    # The SDK's generator sends the request at its first step: an HTTP error there is a
    # failed call that used nothing (not a stream that broke after some output).
    try:
        first = _send(next, (inner, _END), {})
    except BaseException as exc:
        plan.fail(call, exc, None)
        raise
    call.mark_first_byte()
    return first


def _charged_stream(
    original: Callable[..., Any],
    api: Any,
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Iterator[Any]:
    """``request_streamed``, charged: reserves at the first step, as the SDK sends then."""
    plan = _safe_plan(args, kwargs, True)
    if plan is None:
        yield from original(api, *args, **kwargs)
        return
    plan.metadata.update(server_metadata(api))
    call = _start(plan, limiter)
    inner = original(api, *args, **kwargs)
    first = _first(call, plan, inner)
    feed = StreamFeed(call, plan, _GeminiAccumulator(plan))

    def chunks() -> Iterator[Any]:
        if first is _END:
            return
        yield first
        yield from inner

    try:
        yield from feed.relay(chunks())
    finally:
        inner.close()


@protected
async def _acharged_stream(
    original: Callable[..., Any],
    api: Any,
    limiter: LimiterLike | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    plan = _safe_plan(args, kwargs, True)
    if plan is None:
        return await _asend(original, (api, *args), kwargs)
    plan.metadata.update(server_metadata(api))
    call = plan.track(limiter)
    await call.astart()
    try:
        inner = await _asend(original, (api, *args), kwargs)
    except BaseException as exc:
        await plan.afail(call, exc, None)
        raise
    call.mark_first_byte()
    feed = StreamFeed(call, plan, _GeminiAccumulator(plan))
    stream = _arelayed(feed, inner)
    # Last resort for a stream nobody reads or closes: charge it when it is collected.
    finalizer = weakref.finalize(stream, feed.abandon)
    finalizer.atexit = False
    return stream


async def _arelayed(feed: StreamFeed, inner: Any) -> AsyncIterator[Any]:
    relayed = feed.arelay(inner)
    try:
        async for chunk in relayed:
            yield chunk
    finally:
        await relayed.aclose()
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


def class_wrappers(
    originals: Mapping[str, Callable[..., Any]], get_limiter: Callable[[], LimiterLike | None]
) -> dict[str, Callable[..., Any]]:
    """The four ``BaseApiClient`` methods, charged; ``originals`` are the unpatched functions."""
    request_fn = originals["request"]
    streamed_fn = originals["request_streamed"]
    arequest_fn = originals["async_request"]
    astreamed_fn = originals["async_request_streamed"]

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return request_fn(self, *args, **kwargs)
        return _charge(request_fn, self, limiter, args, kwargs)

    def request_streamed(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return streamed_fn(self, *args, **kwargs)
        return _charged_stream(streamed_fn, self, limiter, args, kwargs)

    async def async_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return await arequest_fn(self, *args, **kwargs)
        return await _acharge(arequest_fn, self, limiter, args, kwargs)

    async def async_request_streamed(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return await astreamed_fn(self, *args, **kwargs)
        return await _acharged_stream(astreamed_fn, self, limiter, args, kwargs)

    wrappers: dict[str, Callable[..., Any]] = {
        "request": request,
        "request_streamed": request_streamed,
        "async_request": async_request,
        "async_request_streamed": async_request_streamed,
    }
    return mark_wrappers(wrappers, originals)


def patch_api_client(client: Any, limiter: LimiterLike | None) -> list[PatchRecord]:
    """Charge one ``genai.Client``'s calls (its ``_api_client``, shared with ``client.aio``).

    The wrappers are put on the client's ``BaseApiClient`` instance, around the class's own
    (unpatched) methods, so an SDK-wide :func:`llmctx.instrument` does not charge twice.
    """
    api = client._api_client
    cls = type(api)
    originals = {}
    for name in CLASS_METHODS:
        fn = getattr(cls, name)
        originals[name] = unwrapped(fn)
    records: list[PatchRecord] = []
    for name, fn in class_wrappers(originals, lambda: limiter).items():
        had = name in vars(api)
        records.append(PatchRecord(name, had, vars(api).get(name)))
        setattr(api, name, types.MethodType(fn, api))
    return records
