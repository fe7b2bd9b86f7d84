"""What the pages show, built from records: pure functions, no database and no HTML.

The app and ``llmctx sessions export --format html`` both turn a session tree and its calls
into the same :class:`SessionView`, and a call into the same :class:`CallView`; the
templates only lay them out (and escape every string they are given).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .._humanize import duration_text
from .._humanize import local_time as when
from .._money import format_usd
from .._usage import CallRecord, Usage
from ..stores._base import SessionRecord, shown_status

__all__ = [
    "BudgetLine",
    "CallView",
    "Message",
    "MonitorLine",
    "Part",
    "SessionView",
    "TreeNode",
    "call_view",
    "duration_text",
    "money",
    "session_cost",
    "session_view",
    "when",
]


# -- small formatters (the templates' filters) ---------------------------------------------------


def money(value: Decimal | None) -> str:
    """A call's cost: dollars, or ``unpriced`` when no price was known."""
    return "unpriced" if value is None else format_usd(value)


def session_cost(cost: Decimal, unpriced: int) -> str:
    """A session's cost; with unpriced calls, the priced part and how many were not priced."""
    if not unpriced:
        return format_usd(cost)
    if not cost:
        return "unpriced"
    return f"{format_usd(cost)} + {unpriced} unpriced"


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON text (non-ASCII kept, anything else as ``str``)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- a session -----------------------------------------------------------------------------------


@dataclass
class TreeNode:
    """One scope of the tree: the session, its rolled-up totals and its children."""

    record: SessionRecord
    status: str
    wall_s: float | None
    calls: list[CallRecord] = field(default_factory=list)
    children: list[TreeNode] = field(default_factory=list)

    @property
    def usage(self) -> Usage:
        """The rolled-up usage of the node (the store keeps it on the row)."""
        return self.record.usage


@dataclass(frozen=True)
class BudgetLine:
    """One stored limit: its limit, what was spent, reserved, and left (or over)."""

    what: str
    limit: str
    spent: str
    reserved: str
    left: str
    over: bool
    fraction: float


@dataclass(frozen=True)
class MonitorLine:
    """One ``llmctx.monitor`` result attached to a session."""

    session: str
    name: str
    wall: str
    cpu: str
    rss: str
    error: str | None
    slow: bool
    at: str


@dataclass
class SessionView:
    """Everything a session page shows."""

    root: TreeNode
    nodes: list[TreeNode]
    calls: list[CallRecord]
    calls_total: int
    budgets: list[BudgetLine]
    monitors: list[MonitorLine]
    events: list[dict[str, Any]]
    resumed: int
    failed_calls: int
    cancelled_calls: int
    refused_calls: int
    names: dict[str, str]

    @property
    def record(self) -> SessionRecord:
        """The session the page is about."""
        return self.root.record


def _wall(r: SessionRecord) -> float | None:
    if r.ended_at is None:
        return None
    return (r.ended_at - r.started_at).total_seconds()


def _budgets(r: SessionRecord) -> list[BudgetLine]:
    budget = r.budget or {}
    ended = r.ended_at is not None
    out: list[BudgetLine] = []
    spent_of: dict[str, tuple[str, Decimal, Any]] = {
        "usd": ("money", r.cost, format_usd),
        "tokens": ("tokens", Decimal(r.usage.total_tokens), lambda v: f"{int(v):,}"),
        "requests": ("requests", Decimal(r.usage.requests), lambda v: f"{int(v):,}"),
    }
    for key, (what, spent, fmt) in spent_of.items():
        raw = budget.get(key)
        if raw is None:
            continue
        limit = Decimal(str(raw))
        over = spent > limit
        out.append(
            BudgetLine(
                what=what,
                limit=fmt(limit),
                spent=fmt(spent),
                # A stored session holds no reservation once it ended; a running one's live
                # reservations are not stored.
                reserved=fmt(Decimal(0)) if ended else "-",
                left=(f"{fmt(spent - limit)} over" if over else f"{fmt(limit - spent)} left"),
                over=over,
                fraction=float(spent / limit) if limit > 0 else (1.0 if spent else 0.0),
            )
        )
    return out


def _number(value: Any, unit: str, scale: float = 1.0) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * scale:,.3f}{unit}" if unit == "s" else f"{value * scale:,.1f} {unit}"


def _monitors(
    tree: Sequence[SessionRecord], names: Mapping[str, str]
) -> tuple[list[MonitorLine], list[dict[str, Any]]]:
    monitors: list[MonitorLine] = []
    others: list[dict[str, Any]] = []
    for r in tree:
        for event in r.metadata.get("events") or ():
            if not isinstance(event, dict):
                continue
            if event.get("kind") == "monitor":
                rss = event.get("rss_delta")
                monitors.append(
                    MonitorLine(
                        session=names.get(r.id, r.id),
                        name=str(event.get("name") or "-"),
                        wall=_number(event.get("wall_s"), "s"),
                        cpu=_number(event.get("cpu_s"), "s"),
                        rss="-" if not isinstance(rss, int | float) else f"{rss / 2**20:+,.1f} MiB",
                        error=None if event.get("error") is None else str(event["error"]),
                        slow=bool(event.get("slow")),
                        at=str(event.get("at") or ""),
                    )
                )
            else:
                others.append({"session": names.get(r.id, r.id), **event})
    return monitors, others


def session_view(
    tree: Sequence[SessionRecord],
    calls: Sequence[CallRecord],
    calls_total: int | None = None,
) -> SessionView:
    """The view of a session page.

    Args:
        tree: the session first, then its descendants (a store's ``session_tree``).
        calls: calls of the tree's sessions, oldest first (possibly the first N only).
        calls_total: how many calls the tree holds (``len(calls)`` when None).
    """
    names = {r.id: r.name or r.id[:12] for r in tree}
    nodes = {r.id: TreeNode(record=r, status=shown_status(r), wall_s=_wall(r)) for r in tree}
    root = nodes[tree[0].id]
    for r in tree[1:]:
        parent = nodes.get(r.parent_id or "")
        if parent is not None and r.id != root.record.id:
            parent.children.append(nodes[r.id])
    for c in calls:
        node = nodes.get(c.session_id or "")
        if node is not None:
            node.calls.append(c)
    monitors, events = _monitors(tree, names)
    return SessionView(
        root=root,
        nodes=list(nodes.values()),
        calls=list(calls),
        calls_total=len(calls) if calls_total is None else calls_total,
        budgets=_budgets(tree[0]),
        monitors=monitors,
        events=events,
        resumed=int(tree[0].metadata.get("resumed") or 0),
        failed_calls=sum(c.status == "error" for c in calls),
        cancelled_calls=sum(c.status == "cancelled" for c in calls),
        refused_calls=sum(str(c.status) == "refused" for c in calls),
        names=names,
    )


# -- a call --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One piece of a message: text, a placeholder (image, audio, file), a tool call or result."""

    kind: str  # "text", "placeholder", "tool_call", "tool_result", "json"
    text: str
    label: str = ""


@dataclass(frozen=True)
class Message:
    """One turn of the conversation."""

    role: str
    parts: list[Part]
    name: str = ""


_PLACEHOLDERS = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "input_audio": "audio",
    "audio": "audio",
    "file": "file",
    "input_file": "file",
    "document": "document",
}


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pretty_json(value)


def _parts(content: Any) -> list[Part]:
    """The parts of one message's ``content`` in any provider's shape."""
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", content)]
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, list):
        return [Part("json", _text_of(content))]
    parts: list[Part] = []
    for block in content:
        if isinstance(block, str):
            parts.append(Part("text", block))
            continue
        if not isinstance(block, Mapping):
            parts.append(Part("json", _text_of(block)))
            continue
        kind = str(block.get("type") or "")
        if kind in {"text", "input_text", "output_text"}:
            parts.append(Part("text", str(block.get("text") or "")))
        elif kind in _PLACEHOLDERS:
            parts.append(Part("placeholder", f"[{_PLACEHOLDERS[kind]}]", label=kind))
        elif kind in {"tool_use", "function_call", "server_tool_use"}:
            args = block.get("input", block.get("arguments"))
            parts.append(
                Part("tool_call", _args_text(args), label=str(block.get("name") or "tool"))
            )
        elif kind in {"tool_result", "function_call_output"}:
            inner = block.get("content", block.get("output"))
            text = "\n".join(p.text for p in _parts(inner)) if inner is not None else ""
            parts.append(Part("tool_result", text, label=str(block.get("tool_use_id") or "")))
        elif kind in {"thinking", "reasoning"}:
            parts.append(
                Part("text", str(block.get("thinking") or block.get("text") or ""), "thinking")
            )
        else:
            parts.append(Part("json", _text_of(dict(block)), label=kind))
    return parts


def _args_text(args: Any) -> str:
    if isinstance(args, str):
        try:
            return pretty_json(json.loads(args))
        except ValueError:
            return args
    return pretty_json(args)


def _tool_call_part(call: Any) -> Part:
    if not isinstance(call, Mapping):
        return Part("tool_call", _text_of(call), label="tool")
    fn = call.get("function")
    if isinstance(fn, Mapping):
        return Part("tool_call", _args_text(fn.get("arguments")), label=str(fn.get("name") or ""))
    args = call.get("arguments", call.get("input", call.get("args")))
    return Part("tool_call", _args_text(args), label=str(call.get("name") or "tool"))


def conversation(request: Any, kind: str = "llm") -> list[Message]:
    """The request as turns of a conversation, whatever the provider's request shape."""
    if not isinstance(request, Mapping):
        return [] if request is None else [Message("request", [Part("json", _text_of(request))])]
    if kind == "tool":
        return [Message("arguments", [Part("json", pretty_json(request))])]
    out: list[Message] = []
    system = request.get("system", request.get("instructions"))
    if system:
        out.append(Message("system", _parts(system)))
    messages = request.get("messages")
    if messages is None:
        messages = request.get("input")
    if isinstance(messages, str):
        out.append(Message("user", [Part("text", messages)]))
    elif isinstance(messages, list):
        for m in messages:
            if not isinstance(m, Mapping):
                out.append(Message("user", _parts(m)))
                continue
            role = str(m.get("role") or m.get("type") or "message")
            parts = _parts(m.get("content"))
            if m.get("type") in {"function_call", "function_call_output"} and not parts:
                parts = _parts([m])
            for tc in m.get("tool_calls") or ():
                parts.append(_tool_call_part(tc))
            name = str(m.get("name") or m.get("tool_call_id") or "")
            out.append(Message(role, parts, name=name))
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        out.append(Message("prompt", [Part("text", prompt)]))
    elif isinstance(prompt, list):
        out.append(Message("prompt", [Part("text", _text_of(p)) for p in prompt]))
    return out


@dataclass
class CallView:
    """Everything a call page shows."""

    call: CallRecord
    messages: list[Message]
    reply: list[Part]
    settings: list[tuple[str, str]]
    usage_rows: list[tuple[str, str]]
    timing_rows: list[tuple[str, str]]
    finish_reason: str
    price_source: str
    raw_json: str
    session_name: str = ""


_SETTINGS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream")


def _price_source(call: CallRecord) -> str:
    if call.cost_note:
        return call.cost_note
    if call.cost is None:
        return "no price known for this model"
    if not call.model or call.kind != "llm":
        return "-"
    from .._pricing import lookup_price

    try:
        price = lookup_price(call.model, call.provider)
    except Exception:
        price = None
    if price is None:
        return "a price set in the recording process (set_price or a free model)"
    where = price.snapshot or str(price.source)
    return f"{where} (as priced in this viewer now)"


def call_view(call: CallRecord, session_name: str = "") -> CallView:
    """The view of a call page."""
    request = call.request if isinstance(call.request, Mapping) else {}
    reply: list[Part] = []
    if call.response:
        reply.append(Part("text", call.response))
    for tc in call.tool_calls or ():
        reply.append(_tool_call_part(tc))
    u = call.usage
    approx = " (estimated)" if call.estimated else ""
    usage_rows = [
        ("input", f"{u.input_tokens:,}{approx}"),
        ("  cache read", f"{u.cache_read_tokens:,}"),
        ("  cache write", f"{u.cache_write_tokens:,}"),
        ("output", f"{u.output_tokens:,}{approx}"),
        ("  reasoning", f"{u.reasoning_tokens:,}"),
        ("requests", f"{u.requests:,}"),
    ]
    timing_rows = [
        ("started", when(call.started_at)),
        ("latency", duration_text(call.latency_s)),
        ("time to first byte", duration_text(call.ttfb_s)),
        ("time to first token", duration_text(call.ttft_s)),
    ]
    meta = call.metadata or {}
    finish = meta.get("finish_reason") or meta.get("stop_reason")
    raw = call.raw_usage or {}
    settings = [(k, _text_of(request[k])) for k in _SETTINGS if k in request and k != "model"]
    return CallView(
        call=call,
        messages=conversation(call.request, call.kind),
        reply=reply,
        settings=settings,
        usage_rows=usage_rows,
        timing_rows=timing_rows,
        finish_reason=str(finish) if finish else ("-" if not raw else "not reported"),
        price_source=_price_source(call),
        raw_json=pretty_json(call.to_dict()),
        session_name=session_name,
    )
