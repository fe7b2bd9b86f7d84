"""What the model receives: tool names, descriptions, schemas and results in each API's shape.

Providers differ in small, sharp ways: OpenAI caps a function description at 1,024
characters, its strict mode wants closed object schemas with every property required, Gemini
rejects a ``$schema`` key, and each API carries images in its own content parts. The hub keeps
the servers' full text; these helpers make the copies a provider accepts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import mcp_types as types

__all__ = [
    "OPENAI_DESCRIPTION_LIMIT",
    "TRUNCATION_MARKER",
    "content_parts",
    "export_name",
    "fit_description",
    "hashed_name",
    "strict_schema",
    "strip_keys",
]

#: OpenAI's limit on a function's description (Chat Completions and Responses).
OPENAI_DESCRIPTION_LIMIT = 1024
#: Ends a description cut to a provider's limit (the hub keeps the full text).
TRUNCATION_MARKER = " [...truncated]"

MAX_NAME = 64
SEPARATOR = "__"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_HASH = 6

# Keywords a schema map holds sub-schemas under by name: their keys are names, not keywords.
_NAMED_SCHEMAS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
# OpenAI strict mode cannot express these; a schema using them is exported non-strict.
_NOT_STRICT = (
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "dependentRequired",
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH]


def hashed_name(name: str, key: str) -> str:
    """``name`` cut to fit 64 characters with ``_<hash of key>`` at the end (stable)."""
    suffix = f"_{_digest(key)}"
    return name[: MAX_NAME - len(suffix)] + suffix


def export_name(server: str, tool: str) -> str:
    """The model-facing name of ``server.tool``: ``server__tool``, safe and at most 64 chars.

    Characters outside ``[a-zA-Z0-9_-]`` become ``_``. When the result is too long, the server
    part is shortened and given a hash of the server name, so the tool name stays readable and
    two long server names never share a prefix; a tool name too long by itself is shortened
    the same way. The name depends only on the server and tool names: it is the same in every
    run and on every re-list.
    """
    safe_server, safe_tool = _UNSAFE.sub("_", server), _UNSAFE.sub("_", tool)
    name = f"{safe_server}{SEPARATOR}{safe_tool}"
    if len(name) <= MAX_NAME:
        return name
    short_tool = safe_tool
    if len(short_tool) > MAX_NAME // 2:
        short_tool = hashed_name(safe_tool[: MAX_NAME // 2], f"{server}.{tool}")[: MAX_NAME // 2]
    room = MAX_NAME - len(SEPARATOR) - len(short_tool) - _HASH - 1
    short_server = f"{safe_server[: max(room, 1)]}_{_digest(server)}"
    return f"{short_server}{SEPARATOR}{short_tool}"[:MAX_NAME]


def fit_description(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters, ending with :data:`TRUNCATION_MARKER` if cut."""
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATION_MARKER), 0)].rstrip() + TRUNCATION_MARKER


def strip_keys(schema: Any, keys: frozenset[str] = frozenset({"$schema"})) -> Any:
    """A deep copy of a JSON schema without the given keywords (``$schema`` by default).

    Property names are not keywords: a property called ``$schema`` is kept.
    """
    if isinstance(schema, list):
        return [strip_keys(item, keys) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in keys:
            continue
        if key in _NAMED_SCHEMAS and isinstance(value, Mapping):
            out[key] = {name: strip_keys(sub, keys) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS or key in _SCHEMA_VALUES:
            out[key] = strip_keys(value, keys)
        else:
            out[key] = value
    return out


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema rewritten for OpenAI strict mode, or ``None`` when it cannot be.

    Every object gets ``additionalProperties: false`` and lists all its properties as
    required; a property that was optional becomes nullable (the model sends ``null`` for
    "not given"; :meth:`llmctx.mcp.Hub.dispatch` drops those nulls again before calling).
    ``oneOf`` becomes ``anyOf``; ``default`` and ``$schema`` go. A free-form object (no
    ``properties``, or open ``additionalProperties``) or a keyword strict mode lacks
    (``allOf``, ``not``, ``patternProperties``, ...) makes the tool non-strict.
    """
    try:
        converted: dict[str, Any] = _strict(dict(schema))
        return converted
    except _NotStrict:
        return None


class _NotStrict(Exception):
    pass


def _strict(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return schema
    if any(key in schema for key in _NOT_STRICT):
        raise _NotStrict
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("default", "$schema"):
            continue
        if key == "oneOf":
            key = "anyOf"
        if key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_strict(v) for v in value]
        elif key in ("$defs", "definitions") and isinstance(value, Mapping):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = _strict(value)
        elif key in ("properties", "additionalProperties", "required"):
            continue  # done below, for objects
        else:
            out[key] = value
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            raise _NotStrict  # a free-form object: strict mode has no way to say it
        if schema.get("additionalProperties") not in (None, False):
            raise _NotStrict
        required = set(schema.get("required") or ())
        out["properties"] = {
            name: _strict(sub) if name in required else _nullable(_strict(sub))
            for name, sub in properties.items()
        }
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return out


def _nullable(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return schema
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]} if kind != "null" else dict(schema)
    if isinstance(kind, list):
        return dict(schema) if "null" in kind else {**schema, "type": [*kind, "null"]}
    return {"anyOf": [dict(schema), {"type": "null"}]}


def content_parts(result: types.CallToolResult, fmt: str) -> str | list[dict[str, Any]]:
    """A tool result as the content of a provider's answer to the tool call.

    Args:
        result: what the server answered.
        fmt: ``"chat"`` (Chat Completions: text only, so images are named in the text),
            ``"responses"`` (``input_text`` / ``input_image`` parts) or ``"anthropic"``
            (``text`` / ``image`` blocks).

    Returns:
        A string when the result is text only (every API takes that), else a list of parts.
        Structured content with no text beside it is given as its JSON text.
    """
    parts: list[dict[str, Any]] = []
    only_text = True
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append({"kind": "text", "text": block.text})
        elif isinstance(block, types.ImageContent):
            parts.append({"kind": "image", "mime": block.mime_type, "data": block.data})
            only_text = False
        elif isinstance(block, types.EmbeddedResource):
            inner = block.resource
            text = getattr(inner, "text", None)
            blob = getattr(inner, "blob", None)
            mime = getattr(inner, "mime_type", None) or ""
            if isinstance(text, str):
                parts.append({"kind": "text", "text": text})
            elif isinstance(blob, str) and mime.startswith("image/"):
                parts.append({"kind": "image", "mime": mime, "data": blob})
                only_text = False
            else:
                parts.append({"kind": "text", "text": f"[resource {inner.uri}]"})
        elif isinstance(block, types.ResourceLink):
            parts.append({"kind": "text", "text": f"[resource link {block.uri}]"})
        else:
            mime = getattr(block, "mime_type", None)
            parts.append({"kind": "text", "text": f"[{block.type}{f' {mime}' if mime else ''}]"})
    if not any(p["kind"] == "text" for p in parts) and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        parts.insert(0, {"kind": "text", "text": text})
    if only_text or fmt == "chat":
        return "\n".join(
            p["text"]
            if p["kind"] == "text"
            else f"[image {p['mime']}: a Chat Completions tool message carries text only]"
            for p in parts
        )
    out: list[dict[str, Any]] = []
    for p in parts:
        if p["kind"] == "text":
            out.append({"type": "input_text" if fmt == "responses" else "text", "text": p["text"]})
        elif fmt == "responses":
            out.append({"type": "input_image", "image_url": f"data:{p['mime']};base64,{p['data']}"})
        else:
            out.append(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": p["mime"], "data": p["data"]},
                }
            )
    return out
