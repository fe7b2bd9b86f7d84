"""The Anthropic SDK (``anthropic.Anthropic`` / ``AsyncAnthropic``).

Charged: ``POST /v1/messages`` (``messages.create`` with or without ``stream=True``,
``messages.stream``, ``messages.parse``, and the beta namespace's messages). Token counting,
batches, models and files pass through untouched.

Streams: ``message_start`` carries the input usage, each ``message_delta`` carries
*cumulative* usage, so a later value overwrites an earlier one (never added). A stream that
stops before its ``message_delta`` is charged the input it reported plus an estimate of the
text received, marked ``estimated``. Thinking deltas count as generated tokens (and as the
first token for time-to-first-token), like text and tool-input deltas.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._usage import raw_usage_dict, usage_from_anthropic
from ._base import DEFAULT_MAX_OUTPUT_TOKENS, Outcome, Plan, clean_body
from ._sdk import header_float, header_int

__all__ = ["AnthropicAdapter"]

PROVIDER = "anthropic"

_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _tool_call(block: Any) -> dict[str, Any]:
    value = _get(block, "input")
    try:
        arguments = json.dumps(value, default=str) if not isinstance(value, str) else value
    except (TypeError, ValueError):
        arguments = str(value)
    return {"id": _get(block, "id"), "name": _get(block, "name"), "arguments": arguments}


def _meta(plan: Plan, model: Any, stop_reason: Any) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    if isinstance(model, str) and model != plan.model:
        meta["response_model"] = model
    if isinstance(stop_reason, str):
        meta["stop_reason"] = stop_reason
    return meta or None


def _extract(plan: Plan, message: Any) -> Outcome:
    """Read a whole ``Message``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _get(message, "content") or ():
        kind = _get(block, "type")
        if kind == "text":
            texts.append(_get(block, "text") or "")
        elif kind in _TOOL_BLOCKS:
            calls.append(_tool_call(block))
    raw = _get(message, "usage")
    return Outcome(
        usage=usage_from_anthropic(raw) if raw is not None else None,
        text="".join(texts) if texts else None,
        tool_calls=calls or None,
        raw_usage=raw_usage_dict(raw),
        metadata=_meta(plan, _get(message, "model"), _get(message, "stop_reason")),
    )


class _MessagesAccumulator:
    """Raw message stream events: deltas for text, thinking and tool input; usage overwrites."""

    __slots__ = (
        "blocks",
        "got_token",
        "plan",
        "response_model",
        "saw_delta_usage",
        "stop_reason",
        "thinking",
        "usage",
    )

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.got_token = False
        self.blocks: dict[int, dict[str, Any]] = {}
        self.thinking: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.saw_delta_usage = False
        self.response_model: str | None = None
        self.stop_reason: str | None = None

    def feed(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            delta = event.delta
            dtype = getattr(delta, "type", None)
            block = self.blocks.setdefault(event.index, {"type": "text", "text": ""})
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.text
                self.got_token = True
            elif dtype == "input_json_delta":
                block["arguments"] = block.get("arguments", "") + delta.partial_json
                self.got_token = True
            elif dtype == "thinking_delta":
                self.thinking.append(delta.thinking)
                self.got_token = True
        elif kind == "content_block_start":
            block = event.content_block
            btype = getattr(block, "type", None)
            if btype in _TOOL_BLOCKS:
                self.blocks[event.index] = {
                    "type": "tool",
                    "id": getattr(block, "id", None),
                    "name": getattr(block, "name", None),
                    "arguments": "",
                }
            elif btype == "text":
                self.blocks[event.index] = {
                    "type": "text",
                    "text": getattr(block, "text", "") or "",
                }
        elif kind == "message_delta":
            usage = raw_usage_dict(getattr(event, "usage", None))
            if usage:
                # Cumulative counts: the latest value of each field replaces the earlier one.
                base = self.usage or {}
                base.update({k: v for k, v in usage.items() if v is not None})
                self.usage = base
                self.saw_delta_usage = True
            stop = getattr(getattr(event, "delta", None), "stop_reason", None)
            if isinstance(stop, str):
                self.stop_reason = stop
        elif kind == "message_start":
            message = event.message
            self.usage = raw_usage_dict(getattr(message, "usage", None))
            self.response_model = getattr(message, "model", None)
        return True

    def outcome(self, complete: bool) -> Outcome:
        texts = [b["text"] for _, b in sorted(self.blocks.items()) if b["type"] == "text"]
        calls = [
            {"id": b["id"], "name": b["name"], "arguments": b["arguments"]}
            for _, b in sorted(self.blocks.items())
            if b["type"] == "tool"
        ]
        text = "".join(texts) or None
        meta = _meta(self.plan, self.response_model, self.stop_reason)
        if self.usage is not None and self.saw_delta_usage:
            return Outcome(
                usage=usage_from_anthropic(self.usage),
                text=text,
                tool_calls=calls or None,
                raw_usage=dict(self.usage),
                metadata=meta,
            )
        generated = (text or "") + "".join(self.thinking) + "".join(c["arguments"] for c in calls)
        estimate = self.plan.estimated_usage(generated)
        if self.usage is not None:
            # message_start reported the input exactly; only the output is estimated.
            reported = usage_from_anthropic(self.usage)
            estimate = type(estimate)(
                input_tokens=reported.input_tokens,
                output_tokens=max(reported.output_tokens, estimate.output_tokens),
                cache_read_tokens=reported.cache_read_tokens,
                cache_write_tokens=reported.cache_write_tokens,
                requests=1,
            )
        return Outcome(
            usage=estimate,
            text=text,
            tool_calls=calls or None,
            raw_usage=None if self.usage is None else dict(self.usage),
            estimated=True,
            metadata=meta,
        )


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if isinstance(system, list):
        return [{"role": "system", "content": system}]
    return []


class AnthropicAdapter:
    """Plans Anthropic requests for :func:`llmctx.providers._sdk.patch_sdk_client`."""

    provider = PROVIDER

    def prepare(self, options: Any, stream: bool) -> tuple[Plan, Any] | None:
        method = getattr(options, "method", "")
        if not isinstance(method, str) or method.lower() != "post":
            return None
        url = getattr(options, "url", "")
        if not isinstance(url, str) or url.split("?", 1)[0].rstrip("/") != "/v1/messages":
            return None
        body = getattr(options, "json_data", None)
        if not isinstance(body, Mapping):
            return None
        extra = getattr(options, "extra_json", None)
        merged = clean_body({**body, **extra} if isinstance(extra, Mapping) else body)
        model = merged.get("model")
        model = model if isinstance(model, str) else None
        max_tokens = merged.get("max_tokens")
        # The API requires max_tokens; without a usable one the worst case is reserved (fail
        # closed), not nothing: the API refuses such a request and the hold is given back.
        limit = (
            max_tokens
            if isinstance(max_tokens, int) and max_tokens > 0
            else DEFAULT_MAX_OUTPUT_TOKENS
        )
        meta: dict[str, Any] = {"endpoint": "messages"}
        if stream or merged.get("stream"):
            meta["stream"] = True
        messages = merged.get("messages")
        prompt = _system_messages(merged.get("system")) + (
            list(messages) if isinstance(messages, list | tuple) else []
        )
        plan = Plan(
            provider=PROVIDER,
            model=model,
            request=merged,
            input_tokens=0,
            max_output_tokens=limit,
            extract=_extract,
            accumulator=_MessagesAccumulator if stream else None,
            metadata=meta,
            uncounted=((prompt,), (merged.get("tools"), merged.get("output_config"))),
        )
        return plan, options

    def limit_headers(self, headers: Any) -> tuple[float | None, int | None, int | None]:
        tokens = header_int(headers, "anthropic-ratelimit-tokens-remaining")
        if tokens is None:
            tokens = header_int(headers, "anthropic-ratelimit-input-tokens-remaining")
        return (
            header_float(headers, "retry-after"),
            header_int(headers, "anthropic-ratelimit-requests-remaining"),
            tokens,
        )
