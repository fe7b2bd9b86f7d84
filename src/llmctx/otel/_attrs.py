"""What one call or session becomes in OpenTelemetry: span names, attributes, captured content.

Shared by the live exporter (:mod:`llmctx.otel._live`) and the replay of stored sessions
(:mod:`llmctx.otel._replay`), so a call looks the same in a backend whether it was sent as it
happened or pushed later. Attribute names come from ``opentelemetry-semantic-conventions``
(the GenAI ones are still in its ``_incubating`` namespace); llmctx's own are ``llmctx.*``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv.attributes import error_attributes, server_attributes

from .._redact import redact, redact_text
from .._usage import CallRecord, Usage

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "DEFAULT_CONTENT_LIMIT",
    "Content",
    "call_attributes",
    "call_span_name",
    "content_from_env",
    "error_type",
    "operation_of",
    "request_attributes",
    "session_attributes",
    "session_end_attributes",
    "session_span_name",
    "usage_attributes",
]

#: The GenAI instrumentations' switch for prompt and response capture (the name
#: opentelemetry-util-genai reads; the semantic-conventions package has no constant for it).
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

#: Characters kept of one captured content attribute (prompt, response, tool arguments).
DEFAULT_CONTENT_LIMIT: Final = 16_384

_OFF_VALUES = frozenset({"", "0", "false", "no", "off", "no_content"})

OP_CHAT: Final = ga.GenAiOperationNameValues.CHAT.value
OP_TEXT: Final = ga.GenAiOperationNameValues.TEXT_COMPLETION.value
OP_EMBEDDINGS: Final = ga.GenAiOperationNameValues.EMBEDDINGS.value
OP_TOOL: Final = ga.GenAiOperationNameValues.EXECUTE_TOOL.value
OP_AGENT: Final = ga.GenAiOperationNameValues.INVOKE_AGENT.value

TOKEN_INPUT: Final = ga.GenAiTokenTypeValues.INPUT.value
TOKEN_OUTPUT: Final = ga.GenAiTokenTypeValues.OUTPUT.value

# llmctx's own attributes (no convention covers them).
COST_USD: Final = "llmctx.cost_usd"
SESSION_ID: Final = "llmctx.session.id"
SESSION_PARENT_ID: Final = "llmctx.session.parent_id"
SESSION_STATUS: Final = "llmctx.session.status"
SESSION_CALLS: Final = "llmctx.session.calls"
SESSION_TAG: Final = "llmctx.session.tag."
CALL_ID: Final = "llmctx.call.id"
CALL_STATUS: Final = "llmctx.call.status"
ESTIMATED: Final = "llmctx.usage.estimated"
COST_NOTE: Final = "llmctx.cost_note"
REFUSED_EVENT: Final = "llmctx.call.refused"
#: A session's rolled-up tokens: ``llmctx.usage.input_tokens``, ``llmctx.usage.output_tokens``, ...
ROLLUP_USAGE: Final = "llmctx.usage."
_GENAI_USAGE: Final = ga.GEN_AI_USAGE_INPUT_TOKENS.rsplit(".", 1)[0] + "."

_TEXT_ENDPOINTS = frozenset({"completions", "completion"})


def content_from_env() -> bool:
    """True when :data:`CAPTURE_CONTENT_ENV` asks for content (any value but false/no_content)."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() not in _OFF_VALUES


def operation_of(kind: str, metadata: Mapping[str, Any] | None) -> str:
    """The ``gen_ai.operation.name`` of a call of ``kind`` (``llm``, ``embedding``, ``tool``)."""
    if kind == "tool":
        return OP_TOOL
    if kind == "embedding":
        return OP_EMBEDDINGS
    if metadata and metadata.get("endpoint") in _TEXT_ENDPOINTS:
        return OP_TEXT
    return OP_CHAT


def call_span_name(operation: str, model: str | None) -> str:
    """``chat {model}``, ``embeddings {model}``, ``execute_tool {tool}`` (or the bare operation)."""
    return f"{operation} {model}" if model else operation


def session_span_name(name: str | None) -> str:
    """``invoke_agent {name}``: a session is the agent-like scope its calls run in."""
    return f"{OP_AGENT} {redact_text(name)}" if name else OP_AGENT


def error_type(error: str | None) -> str | None:
    """The exception class name at the front of a recorded ``"Type: message"`` error."""
    if not error:
        return None
    head = error.split(":", 1)[0].strip()
    return head or None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


_MAX_TOKEN_KEYS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_NUMBER_KEYS: Final = {
    "temperature": ga.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": ga.GEN_AI_REQUEST_TOP_P,
    "frequency_penalty": ga.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": ga.GEN_AI_REQUEST_PRESENCE_PENALTY,
}
_OTHER_KEYS: Final = ("top_k", "seed", "n", "stream", "stop", "stop_sequences")
#: Every request key :func:`request_attributes` reads: one set intersection tells a request
#: that names none of them (most carry only model, messages and max_tokens) at once.
_REQUEST_KEYS: Final = frozenset((*_MAX_TOKEN_KEYS, *_NUMBER_KEYS, *_OTHER_KEYS))


def request_attributes(request: Any) -> dict[str, Any]:
    """Request parameters of a call as GenAI attributes (never its content).

    Read from the request payload (an OpenAI / llama.cpp body, an Anthropic message request);
    only numbers, flags and stop sequences are taken, so nothing secret can pass.
    """
    if type(request) is not dict and not isinstance(request, Mapping):
        return {}
    given = request.keys() & _REQUEST_KEYS
    out: dict[str, Any] = {}
    if not given:
        return out
    for key in _MAX_TOKEN_KEYS:  # the first positive one, in this order of precedence
        if key in given:
            max_tokens = _positive_int(request[key])
            if max_tokens is not None:
                out[ga.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
                break
    for key, attr in _NUMBER_KEYS.items():
        if key in given:
            number = _number(request[key])
            if number is not None:
                out[attr] = number
    if given.isdisjoint(_OTHER_KEYS):
        return out
    top_k = _positive_int(request.get("top_k"))
    if top_k is not None:
        out[ga.GEN_AI_REQUEST_TOP_K] = float(top_k)
    seed = request.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        out[ga.GEN_AI_REQUEST_SEED] = seed
    n = _positive_int(request.get("n"))
    if n is not None and n != 1:
        out[ga.GEN_AI_REQUEST_CHOICE_COUNT] = n
    if request.get("stream") is True:
        out[ga.GEN_AI_REQUEST_STREAM] = True
    stop = request.get("stop", request.get("stop_sequences"))
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        out[ga.GEN_AI_REQUEST_STOP_SEQUENCES] = [redact_text(s) for s in stop]
    return out


def usage_attributes(usage: Usage) -> dict[str, Any]:
    """Token counts as GenAI usage attributes; cache and reasoning counts only when non-zero."""
    out: dict[str, Any] = {
        ga.GEN_AI_USAGE_INPUT_TOKENS: usage.input_tokens,
        ga.GEN_AI_USAGE_OUTPUT_TOKENS: usage.output_tokens,
    }
    if usage.cache_read_tokens:
        out[ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        out[ga.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        out[ga.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
    return out


def _finish_reasons(metadata: Mapping[str, Any]) -> list[str] | None:
    reasons = metadata.get("finish_reasons")
    if isinstance(reasons, list) and reasons:
        for reason in reasons:
            if not isinstance(reason, str):
                break
        else:
            return list(reasons)
    for key in ("finish_reason", "stop_reason"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return [value]
    return None


def _cost(cost: Decimal | None) -> float | None:
    return None if cost is None else float(cost)


class Content:
    """Prompt and response capture: off, or on with a size cap; always after redaction."""

    __slots__ = ("limit", "on")

    def __init__(self, on: bool, limit: int = DEFAULT_CONTENT_LIMIT) -> None:
        self.on = on
        self.limit = limit

    def cap(self, text: str) -> str:
        """``text`` cut to the limit, with how much was cut said at the end."""
        if len(text) <= self.limit:
            return text
        cut = len(text) - self.limit
        return f"{text[: self.limit]}...[{cut} more characters]"

    def json(self, value: Any) -> str:
        """``value`` redacted, as JSON, capped."""
        text = json.dumps(redact(value), default=str, ensure_ascii=False)
        return self.cap(text)

    def attributes(self, record: CallRecord, operation: str) -> dict[str, Any]:
        """The content attributes of one call (empty when capture is off or nothing was kept)."""
        if not self.on:
            return {}
        out: dict[str, Any] = {}
        if operation == OP_TOOL:
            if record.request is not None:
                out[ga.GEN_AI_TOOL_CALL_ARGUMENTS] = self.json(record.request)
            if record.response is not None:
                out[ga.GEN_AI_TOOL_CALL_RESULT] = self.cap(redact_text(record.response))
            return out
        messages = _input_messages(record.request)
        if messages:
            out[ga.GEN_AI_INPUT_MESSAGES] = self.json(messages)
        if record.response is not None or record.tool_calls:
            parts: list[dict[str, Any]] = []
            if record.response is not None:
                parts.append({"type": "text", "content": record.response})
            for call in record.tool_calls or ():
                if isinstance(call, Mapping):
                    parts.append(
                        {
                            "type": "tool_call",
                            "id": call.get("id"),
                            "name": call.get("name"),
                            "arguments": call.get("arguments", call.get("input")),
                        }
                    )
            message: dict[str, Any] = {"role": "assistant", "parts": parts}
            reasons = _finish_reasons(record.metadata)
            if reasons:
                message["finish_reason"] = reasons[0]
            out[ga.GEN_AI_OUTPUT_MESSAGES] = self.json([message])
        return out


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, Sequence):
        parts: list[dict[str, Any]] = []
        for item in content:
            if isinstance(item, Mapping) and isinstance(item.get("text"), str):
                parts.append({"type": "text", "content": item["text"]})
            elif isinstance(item, Mapping):
                parts.append({"type": str(item.get("type") or "data"), "content": dict(item)})
            else:
                parts.append({"type": "text", "content": str(item)})
        return parts
    return [] if content is None else [{"type": "data", "content": content}]


def _input_messages(request: Any) -> list[dict[str, Any]] | None:
    """A request's prompt in the conventions' message shape (role + parts)."""
    if not isinstance(request, Mapping):
        return None
    given = request.get("messages")
    if given is None:
        given = request.get("input", request.get("prompt"))
    if isinstance(given, str):
        return [{"role": "user", "parts": _parts(given)}]
    if not isinstance(given, Sequence):
        return None
    out: list[dict[str, Any]] = []
    system = request.get("system")  # Anthropic's system prompt sits beside the messages
    if isinstance(system, str | list):
        out.append({"role": "system", "parts": _parts(system)})
    for message in given:
        if isinstance(message, Mapping):
            out.append(
                {
                    "role": str(message.get("role") or "user"),
                    "parts": _parts(message.get("content")),
                }
            )
        else:
            out.append({"role": "user", "parts": _parts(message)})
    return out


def call_attributes(
    record: CallRecord,
    *,
    operation: str,
    provider: str | None,
    request_model: str | None,
    content: Content,
) -> dict[str, Any]:
    """Every attribute of one finished call's span (None values are left out, never 0).

    ``llmctx.call.status`` is set only when the call did not end ``ok`` (refused, error,
    cancelled): an ok call says so by its span status, and every attribute costs the SDK a
    cleaning pass on every span.
    """
    meta = record.metadata
    status = record.status
    out: dict[str, Any] = {ga.GEN_AI_OPERATION_NAME: operation, CALL_ID: record.id}
    if record.session_id is not None:
        out[SESSION_ID] = record.session_id
    if status != "ok":
        out[CALL_STATUS] = status
    if operation == OP_TOOL:
        if record.model:
            out[ga.GEN_AI_TOOL_NAME] = record.model
        out[ga.GEN_AI_TOOL_TYPE] = "extension"  # MCP: run by an external server
    else:
        if provider:
            out[ga.GEN_AI_PROVIDER_NAME] = provider
        if request_model:
            out[ga.GEN_AI_REQUEST_MODEL] = request_model
        if status == "ok":
            response_model = meta.get("response_model") or record.model
            if isinstance(response_model, str) and response_model:
                out[ga.GEN_AI_RESPONSE_MODEL] = response_model
        request = record.request
        if request:
            out.update(request_attributes(request))
        if status != "refused":
            usage = record.usage
            out[ga.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            out[ga.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            if usage.cache_read_tokens:
                out[ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                out[ga.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                out[ga.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        if meta:
            reasons = _finish_reasons(meta)
            if reasons:
                out[ga.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
        if record.ttft_s is not None:
            out[ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = record.ttft_s
        if record.estimated:
            out[ESTIMATED] = True
        cost = record.cost
        if cost is not None:
            out[COST_USD] = float(cost)
        elif record.cost_note:
            out[COST_NOTE] = redact_text(record.cost_note)
    if meta:
        server = meta.get("server_address")
        if isinstance(server, str) and server:
            out[server_attributes.SERVER_ADDRESS] = server
        port = meta.get("server_port")
        if isinstance(port, int) and not isinstance(port, bool):
            out[server_attributes.SERVER_PORT] = port
    if status != "ok":
        out[error_attributes.ERROR_TYPE] = error_type(record.error) or status
    if content.on:
        out.update(content.attributes(record, operation))
    return out


def session_attributes(
    *,
    session_id: str,
    name: str | None,
    parent_id: str | None,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The attributes a session span has from its start."""
    out: dict[str, Any] = {ga.GEN_AI_OPERATION_NAME: OP_AGENT, SESSION_ID: session_id}
    if name:
        out[ga.GEN_AI_AGENT_NAME] = redact_text(name)
    if parent_id:
        out[SESSION_PARENT_ID] = parent_id
    for key, value in redact(dict(tags)).items():
        out[f"{SESSION_TAG}{key}"] = str(value)
    return out


def session_end_attributes(
    *, status: str, usage: Usage, cost: Decimal | None, calls: int, error: str | None
) -> dict[str, Any]:
    """What a session span learns at its end: its status and rolled-up usage and cost.

    The roll-up goes under ``llmctx.usage.*``, not ``gen_ai.usage.*``: backends (Phoenix,
    Langfuse) add up ``gen_ai.usage.*`` over every span of a trace, so the same tokens on the
    session span would be counted twice.
    """
    out: dict[str, Any] = {SESSION_STATUS: status, SESSION_CALLS: calls}
    for key, value in usage_attributes(usage).items():
        out[key.replace(_GENAI_USAGE, ROLLUP_USAGE, 1)] = value
    value = _cost(cost)
    if value is not None:
        out[COST_USD] = value
    if status not in ("completed", "running", "created"):
        out[error_attributes.ERROR_TYPE] = error_type(error) or status
    return out
