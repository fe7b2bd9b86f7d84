"""The OpenAI SDK (``openai.OpenAI`` / ``AsyncOpenAI`` and subclasses such as Azure's).

Charged endpoints (``POST``, matched on the end of the URL path, so Azure deployments and
OpenAI-compatible servers such as llama.cpp's work too):

* ``/chat/completions`` (``chat.completions.create``, ``.parse``, ``.stream``),
* ``/responses`` (``responses.create``, ``.parse``, ``.stream``),
* ``/completions`` (legacy text completions),
* ``/embeddings`` (kind ``"embedding"``).

Everything else (files, models, batches, ...) passes through untouched.

Streams of chat and text completions: llmctx asks for a final usage chunk with
``stream_options.include_usage`` when the user did not set ``include_usage`` themselves (a copy
of the request options is changed; the user's arguments never are), and hides that usage-only
chunk from the user unless they asked for it. A server that ignores the option (llama.cpp's
does) or a stream that stops early is charged from the text received, marked ``estimated``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from pydantic import BaseModel

from .._usage import Usage, raw_usage_dict, usage_from_openai_chat, usage_from_openai_responses
from ._base import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Outcome,
    Plan,
    clean_body,
    count_prompt,
)
from ._sdk import header_float, header_int

__all__ = ["OpenAIAdapter"]

PROVIDER = "openai"


# Pydantic model classes _get has met: a set lookup instead of isinstance(obj, BaseModel),
# itself an ABC check (pydantic's metaclass is an ABCMeta) of every read of a response.
_MODEL_TYPES: set[type] = set()


def _get(obj: Any, name: str) -> Any:
    # The SDK's response types are pydantic models: a plain attribute read, before the
    # Mapping check (an ABC isinstance, costly on a class that is not one).
    kind = type(obj)
    if kind in _MODEL_TYPES:
        return getattr(obj, name, None)
    if isinstance(obj, BaseModel):
        # Only a real subclass (not a mock's __class__), and not every class made on the fly.
        if BaseModel in kind.__mro__ and len(_MODEL_TYPES) < 512:
            _MODEL_TYPES.add(kind)
        return getattr(obj, name, None)
    if kind is dict or isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _read_usage(
    raw: Any, normalise: Callable[[Any], Usage]
) -> tuple[Usage | None, dict[str, Any] | None]:
    """A response's usage, normalised, and its plain-dict form for the record.

    The SDK object is dumped once: the normaliser reads the plain dict (the same numbers).
    """
    if raw is None:
        return None, None
    plain = raw_usage_dict(raw)
    return normalise(plain if plain is not None else raw), plain


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _json_parts(body: Mapping[str, Any]) -> tuple[Any, ...]:
    # The structured parts of a request the model reads (counted as JSON): tools, functions,
    # the response format and the Responses API's output format (a mapping), if any.
    text = body.get("text")
    if text is not None and type(text) is not dict and not isinstance(text, Mapping):
        text = None  # (None, the usual, before the ABC check)
    return (body.get("tools"), body.get("functions"), body.get("response_format"), text)


# ---------------------------------------------------------------------------------------------
# Chat completions.


def _chat_tool_calls(message: Any) -> list[dict[str, Any]] | None:
    calls = _get(message, "tool_calls")
    out: list[dict[str, Any]] = []
    for call in calls or ():
        fn = _get(call, "function")
        custom = _get(call, "custom")
        if fn is not None:
            out.append(
                {
                    "id": _get(call, "id"),
                    "name": _get(fn, "name"),
                    "arguments": _get(fn, "arguments"),
                }
            )
        elif custom is not None:
            out.append(
                {
                    "id": _get(call, "id"),
                    "name": _get(custom, "name"),
                    "input": _get(custom, "input"),
                }
            )
    legacy = _get(message, "function_call")
    if legacy is not None:
        out.append(
            {"id": None, "name": _get(legacy, "name"), "arguments": _get(legacy, "arguments")}
        )
    return out or None


def _chat_extract(plan: Plan, result: Any) -> Outcome:
    """Read a chat (or legacy text) completion."""
    choices = _get(result, "choices") or []
    text_parts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for choice in choices:
        message = _get(choice, "message")
        if message is None:  # legacy /completions
            content = _get(choice, "text")
        else:
            content = _get(message, "content") or _get(message, "refusal")
            tool_calls.extend(_chat_tool_calls(message) or ())
        if isinstance(content, str):
            text_parts.append(content)
    usage, raw_usage = _read_usage(_get(result, "usage"), usage_from_openai_chat)
    text = "\n".join(text_parts) if text_parts else None
    reasons = [r for c in choices if isinstance(r := _get(c, "finish_reason"), str)]
    return Outcome(
        usage=usage,
        text=text,
        tool_calls=tool_calls or None,
        raw_usage=raw_usage,
        metadata=_response_meta(plan, result, reasons),
    )


def _response_meta(
    plan: Plan, result: Any, finish_reasons: list[str] | None = None
) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    model = _get(result, "model")
    if isinstance(model, str) and model != plan.model:
        meta["response_model"] = model
    if finish_reasons:
        meta["finish_reasons"] = finish_reasons  # one per choice, in choice order
    tier = _get(result, "service_tier")
    if isinstance(tier, str):
        # The tier the call was served at (a request's "auto" may be served at "priority"):
        # what it is billed, so what it is priced, at.
        meta["service_tier"] = tier
    return meta or None


class _ChatAccumulator:
    """Chat (and legacy text) completion chunks: text, tool-call deltas, the usage chunk."""

    __slots__ = (
        "finish",
        "got_token",
        "hide_usage_chunk",
        "plan",
        "raw_usage",
        "response_model",
        "service_tier",
        "text",
        "tools",
    )

    def __init__(self, plan: Plan, hide_usage_chunk: bool) -> None:
        self.plan = plan
        self.hide_usage_chunk = hide_usage_chunk
        self.got_token = False
        self.text: dict[int, list[str]] = {}
        self.tools: dict[tuple[int, int], dict[str, Any]] = {}
        self.raw_usage: Any = None
        self.response_model: str | None = None
        self.service_tier: str | None = None
        self.finish: dict[int, str] = {}

    def feed(self, chunk: Any) -> bool:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.raw_usage = usage
        if self.response_model is None:
            self.response_model = getattr(chunk, "model", None)
            tier = getattr(chunk, "service_tier", None)
            self.service_tier = tier if isinstance(tier, str) else None
        choices = getattr(chunk, "choices", None)
        if not choices:
            return not (self.hide_usage_chunk and usage is not None)
        for choice in choices:
            index = getattr(choice, "index", 0) or 0
            reason = getattr(choice, "finish_reason", None)
            if isinstance(reason, str):
                self.finish[index] = reason
            delta = getattr(choice, "delta", None)
            if delta is None:  # legacy /completions chunk
                piece = getattr(choice, "text", None)
                if piece:
                    self.text.setdefault(index, []).append(piece)
                    self.got_token = True
                continue
            piece = delta.content or getattr(delta, "refusal", None)
            if piece:
                self.text.setdefault(index, []).append(piece)
                self.got_token = True
            tool_calls = delta.tool_calls
            if tool_calls:
                self.got_token = True
                for tc in tool_calls:
                    entry = self.tools.setdefault(
                        (index, tc.index or 0), {"id": None, "name": None, "arguments": ""}
                    )
                    if tc.id:
                        entry["id"] = tc.id
                    fn = tc.function
                    if fn is not None:
                        if fn.name:
                            entry["name"] = fn.name
                        if fn.arguments:
                            entry["arguments"] += fn.arguments
            legacy = getattr(delta, "function_call", None)
            if legacy is not None:
                self.got_token = True
                entry = self.tools.setdefault(
                    (index, -1), {"id": None, "name": None, "arguments": ""}
                )
                if legacy.name:
                    entry["name"] = legacy.name
                if legacy.arguments:
                    entry["arguments"] += legacy.arguments
        return True

    def outcome(self, complete: bool) -> Outcome:
        texts = ["".join(self.text[i]) for i in sorted(self.text)]
        text = "\n".join(texts) if texts else None
        tool_calls = [self.tools[k] for k in sorted(self.tools)] or None
        found: dict[str, Any] = {}
        if self.response_model and self.response_model != self.plan.model:
            found["response_model"] = self.response_model
        if self.finish:
            found["finish_reasons"] = [self.finish[i] for i in sorted(self.finish)]
        if self.service_tier is not None:
            found["service_tier"] = self.service_tier  # as in _response_meta
        meta = found or None
        if self.raw_usage is not None:
            usage, raw_usage = _read_usage(self.raw_usage, usage_from_openai_chat)
            return Outcome(
                usage=usage,
                text=text,
                tool_calls=tool_calls,
                raw_usage=raw_usage,
                metadata=meta,
            )
        generated = (text or "") + "".join(str(t.get("arguments") or "") for t in tool_calls or ())
        return Outcome(
            usage=self.plan.estimated_usage(generated),
            text=text,
            tool_calls=tool_calls,
            estimated=True,
            metadata=meta,
        )


# ---------------------------------------------------------------------------------------------
# Responses API.


def _responses_calls(output: Any) -> list[dict[str, Any]] | None:
    calls = []
    for item in output or ():
        if _get(item, "type") in {"function_call", "custom_tool_call"}:
            calls.append(
                {
                    "id": _get(item, "call_id"),
                    "name": _get(item, "name"),
                    "arguments": _get(item, "arguments") or _get(item, "input"),
                }
            )
    return calls or None


def _responses_text(result: Any) -> str | None:
    text = getattr(result, "output_text", None)
    if isinstance(text, str):
        return text or None
    parts = []
    for item in _get(result, "output") or ():
        if _get(item, "type") == "message":
            for content in _get(item, "content") or ():
                if _get(content, "type") == "output_text":
                    parts.append(_get(content, "text") or "")
    return "".join(parts) or None


def _responses_extract(plan: Plan, result: Any) -> Outcome:
    """Read a Responses API response."""
    usage, raw_usage = _read_usage(_get(result, "usage"), usage_from_openai_responses)
    meta = _response_meta(plan, result) or {}
    status = _get(result, "status")
    if isinstance(status, str) and status != "completed":
        meta["response_status"] = status
    return Outcome(
        usage=usage,
        text=_responses_text(result),
        tool_calls=_responses_calls(_get(result, "output")),
        raw_usage=raw_usage,
        metadata=meta or None,
    )


_RESPONSE_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_TOKEN_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)


class _ResponsesAccumulator:
    """Responses API events: deltas for text and arguments, the final response for usage."""

    __slots__ = ("final", "got_token", "parts", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.got_token = False
        self.parts: list[str] = []
        self.final: Outcome | None = None

    def feed(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind in _RESPONSE_TOKEN_EVENTS:
            self.got_token = True
            delta = getattr(event, "delta", None)
            if isinstance(delta, str):
                self.parts.append(delta)
        elif kind in _RESPONSE_END_EVENTS:
            response = getattr(event, "response", None)
            if response is not None:
                self.final = _responses_extract(self.plan, response)
        return True

    def outcome(self, complete: bool) -> Outcome:
        if self.final is not None and self.final.usage is not None:
            return self.final
        text = "".join(self.parts)
        return Outcome(usage=self.plan.estimated_usage(text), text=text or None, estimated=True)


# ---------------------------------------------------------------------------------------------
# The adapter.


def _embedding_tokens(value: Any, model: str | None) -> int:
    if isinstance(value, str):
        return count_prompt(value, model)
    if isinstance(value, Sequence):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # one input given as token ids
        return sum(_embedding_tokens(v, model) for v in value)
    return 0


def _embedding_extract(plan: Plan, result: Any) -> Outcome:
    """Read an embeddings response."""
    raw = _get(result, "usage")
    tokens = _get(raw, "prompt_tokens")
    usage = None
    if isinstance(tokens, int):
        usage = Usage(input_tokens=tokens, requests=1)
    return Outcome(
        usage=usage, raw_usage=raw_usage_dict(raw), metadata=_response_meta(plan, result)
    )


class OpenAIAdapter:
    """Plans OpenAI requests for :func:`llmctx.providers._sdk.patch_sdk_client`."""

    provider = PROVIDER

    def prepare(self, options: Any, stream: bool) -> tuple[Plan, Any] | None:
        method = getattr(options, "method", "")
        if not isinstance(method, str) or method.lower() != "post":
            return None
        url = getattr(options, "url", "")
        if not isinstance(url, str):
            return None
        path = url.split("?", 1)[0].rstrip("/")
        body = getattr(options, "json_data", None)
        extra = getattr(options, "extra_json", None)
        # Exact dicts and a missing extra_json (the usual) before the ABC isinstance checks.
        if type(body) is not dict and not isinstance(body, Mapping):
            return None
        sent = body
        if extra is not None and (type(extra) is dict or isinstance(extra, Mapping)):
            sent = {**body, **extra}
        merged = clean_body(sent)
        model = merged.get("model")
        model = model if isinstance(model, str) else None
        meta: dict[str, Any] = {"stream": True} if stream else {}
        if path.endswith("/chat/completions") or path.endswith("/completions"):
            chat = path.endswith("/chat/completions")
            if chat:
                uncounted = ((merged.get("messages"),), _json_parts(merged))
                input_tokens = 0
                limit = _positive(merged.get("max_completion_tokens")) or _positive(
                    merged.get("max_tokens")
                )
                limit = limit or DEFAULT_MAX_OUTPUT_TOKENS
                meta["endpoint"] = "chat.completions"
            else:
                uncounted = None
                input_tokens = _embedding_tokens(merged.get("prompt"), model)
                limit = _positive(merged.get("max_tokens")) or 16  # the API's documented default
                meta["endpoint"] = "completions"
            choices = _positive(merged.get("n")) or 1
            plan = Plan(
                provider=PROVIDER,
                model=model,
                request=merged,
                input_tokens=input_tokens,
                max_output_tokens=limit * choices,
                extract=_chat_extract,
                metadata=meta,
                uncounted=uncounted,
            )
            if stream:
                options, hide = _ask_for_usage(options, body, extra)
                plan.accumulator = partial(_ChatAccumulator, hide_usage_chunk=hide)
            return plan, options
        if path.endswith("/responses"):
            instructions = merged.get("instructions")
            given = merged.get("input")
            prompts = (
                instructions if isinstance(instructions, str) else None,
                given if isinstance(given, str | list) else None,
            )
            meta["endpoint"] = "responses"
            plan = Plan(
                provider=PROVIDER,
                model=model,
                request=merged,
                input_tokens=0,
                max_output_tokens=_positive(merged.get("max_output_tokens"))
                or DEFAULT_MAX_OUTPUT_TOKENS,
                extract=_responses_extract,
                accumulator=_ResponsesAccumulator if stream else None,
                metadata=meta,
                uncounted=(prompts, _json_parts(merged)),
            )
            return plan, options
        if path.endswith("/embeddings"):
            meta["endpoint"] = "embeddings"
            plan = Plan(
                provider=PROVIDER,
                model=model,
                request=merged,
                input_tokens=_embedding_tokens(merged.get("input"), model),
                max_output_tokens=0,
                extract=_embedding_extract,
                kind="embedding",
                metadata=meta,
            )
            return plan, options
        return None

    def limit_headers(self, headers: Any) -> tuple[float | None, int | None, int | None]:
        retry_after = header_float(headers, "retry-after")
        retry_ms = header_float(headers, "retry-after-ms")
        if retry_ms is not None:
            retry_after = retry_ms / 1000
        return (
            retry_after,
            header_int(headers, "x-ratelimit-remaining-requests"),
            header_int(headers, "x-ratelimit-remaining-tokens"),
        )


def _ask_for_usage(
    options: Any, body: Mapping[str, Any], extra: Mapping[str, Any] | None
) -> tuple[Any, bool]:
    """Options asking for the final usage chunk, and whether to hide it from the user.

    The user's own ``stream_options.include_usage`` (in the arguments or ``extra_body``) wins:
    then nothing changes and the chunk, if any, is theirs.
    """
    in_extra = isinstance(extra, Mapping) and "stream_options" in extra
    source = extra if in_extra and extra is not None else body
    current = source.get("stream_options")
    if isinstance(current, Mapping) and "include_usage" in current:
        return options, False
    wanted = {**(current if isinstance(current, Mapping) else {}), "include_usage": True}
    changed = options.model_copy()
    if in_extra:
        changed.extra_json = {**source, "stream_options": wanted}
    else:
        changed.json_data = {**body, "stream_options": wanted}
    return changed, True
