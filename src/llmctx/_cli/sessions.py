"""``llmctx sessions ls|show|export|rm|prune``: read and prune what the stores recorded.

Every command takes ``--db URL_OR_PATH`` (default: ``$LLMCTX_DB``, else the default SQLite
file) and, where a machine reading makes sense, ``--json``. Errors go to stderr with exit code
1; a session id may be given as any unique prefix.

Statuses are shown as a reader should see them: a ``running`` row whose process is gone reads
``interrupted`` (:func:`llmctx.stores.shown_status`), in tables and in ``--json`` alike. Calls
refused before they were sent (status ``refused``) appear in ``show`` and ``export``.

``--json`` shapes (stable; money as plain decimal strings, never with an exponent, times as
ISO 8601): ``ls`` prints a list of sessions (``SessionRecord.to_dict()``); ``show`` prints
``{"session": ..., "descendants": [...], "calls": [CallRecord.to_dict(), ...]}``; ``rm`` and
``prune`` print ``{"deleted": [{"id", "name", "status", "sessions"}, ...],
"deleted_sessions": N}`` (``sessions``: that one with its descendants). Tables fit the terminal
(80 columns in a pipe): see ``_layout``. Dollars are written by ``_money.format_usd``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, get_args

import typer
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .._exceptions import ConfigError, LLMCtxError, SessionNotFound
from .._humanize import duration_text, local_time
from .._money import decimal_text, format_usd
from .._redact import redact_url
from .._usage import CallRecord
from ..stores import MemoryStore, SessionRecord, SessionStatus, Store, open_store, shown_status
from ..stores._open import sqlite_file_of
from ._layout import Column, PlainHelpCommand, PlainHelpGroup, print_fitted

__all__ = ["sessions_app"]

sessions_app = typer.Typer(
    help="List, show, export, delete and prune recorded sessions.",
    no_args_is_help=True,
    cls=PlainHelpGroup,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL_OR_PATH",
        help="Store to read: a SQLite path, sqlite:///path.db, postgresql://... or memory: "
        "(default: $LLMCTX_DB, else the default SQLite file).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

_STATUSES: tuple[str, ...] = get_args(SessionStatus)
_STATUS_STYLE = {
    "created": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "interrupted": "magenta",
    "ok": "green",
    "error": "red",
    "refused": "yellow",
}
# What prune deletes unless told otherwise: sessions that ended (never a live one).
_ENDED = ("completed", "failed", "cancelled", "interrupted")
_CUT = 200  # characters of a prompt or response shown without --full


class ExportFormat(StrEnum):
    """File formats of ``llmctx sessions export``."""

    jsonl = "jsonl"
    csv = "csv"
    html = "html"
    otlp = "otlp"


# -- plumbing ----------------------------------------------------------------------------------


def _err(message: str) -> None:
    Console(stderr=True, highlight=False).print(Text(message, style="red"))


@contextmanager
def _open(db: str | None, *, must_exist: bool = True) -> Iterator[Store]:
    """The store named by ``--db``; a SQLite file that does not exist reads as empty.

    Reading commands must not leave an empty database behind because of a typo in ``--db``,
    so a missing SQLite file is answered from an empty in-memory store instead of created.
    Any llmctx error inside the block is printed and turned into exit code 1.
    """
    try:
        path = sqlite_file_of(db)
        if must_exist and path is not None and path != ":memory:" and not Path(path).exists():
            Console(stderr=True, highlight=False).print(
                Text(f"no llmctx database at {path} yet", style="dim")
            )
            store: Store = MemoryStore()
        else:
            store = open_store(db)
    except LLMCtxError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    try:
        yield store
    except LLMCtxError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    finally:
        store.close()


def _where(store: Store) -> str:
    path = getattr(store, "path", None)
    if isinstance(path, str):
        return path
    if isinstance(store, MemoryStore):
        return "the (empty) store"
    return repr(store)


def _resolve(store: Store, ref: str) -> SessionRecord:
    """The session whose id is ``ref`` or, failing that, starts with ``ref``."""
    ref = ref.strip()
    if not ref:
        raise SessionNotFound(ref, _where(store))
    record = store.get_session(ref)
    if record is not None:
        return record
    matches = [r for r in store.list_sessions(limit=None) if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionNotFound(ref, _where(store))
    shown = ", ".join(r.id for r in matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise ConfigError(
        f"session id prefix {ref!r} matches {len(matches)} sessions ({shown}); give more characters"
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, ensure_ascii=False, indent=2))


def _money(value: Decimal | None) -> Text:
    """A call's cost: dollars, or ``unpriced`` when no price was known."""
    return Text("unpriced", style="yellow") if value is None else Text(format_usd(value))


def _session_cost(record: SessionRecord, *, compact: bool = False) -> Text:
    """A session's cost; with unpriced calls, the priced part and how many were not priced."""
    n = record.unpriced_calls
    if not n:
        return Text(format_usd(record.cost))
    if not record.cost:
        return Text("unpriced", style="yellow")
    text = Text(format_usd(record.cost))
    text.append(f" + {n} unpriced" if compact else f" + {_plural(n, 'call')} unpriced", "yellow")
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _duration(record: SessionRecord) -> str:
    if record.ended_at is None:
        return "running" if record.status == "running" else "-"
    return duration_text((record.ended_at - record.started_at).total_seconds(), fine_below=0)


def _status(value: str) -> Text:
    return Text(value, style=_STATUS_STYLE.get(value, ""))


def _short(session_id: str, full: bool) -> str:
    return session_id if full or len(session_id) <= 12 else session_id[:12]


def _shown(rows: Sequence[SessionRecord]) -> list[SessionRecord]:
    """The rows with the status a reader should see (``interrupted`` for a dead process)."""
    now = datetime.now(UTC)
    out = []
    for r in rows:
        status = shown_status(r, now)
        out.append(r if status == r.status else r.replace(status=status))
    return out


def _listed(
    store: Store, *, limit: int | None, status: str | None, roots_only: bool
) -> list[SessionRecord]:
    """Sessions newest first, filtered by their *shown* status."""
    if status in {"running", "interrupted"}:
        # Stored as running either way: the process tells them apart.
        rows = _shown(store.list_sessions(limit=None, status="running", roots_only=roots_only))
        rows = [r for r in rows if r.status == status]
        return rows if limit is None else rows[:limit]
    return _shown(store.list_sessions(limit=limit, status=status, roots_only=roots_only))


def _check_status(value: str | None, option: str = "--status") -> None:
    if value is not None and value not in _STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(_STATUSES)}", param_hint=option)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str, option: str = "--older-than") -> timedelta:
    match = _AGE.match(text.lower())
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not an age; write a number and a unit: 45s, 90m, 12h, 30d or 2w",
            param_hint=option,
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])


# -- ls ----------------------------------------------------------------------------------------


@sessions_app.command("ls", cls=PlainHelpCommand)
def ls(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, metavar="N", help="Show at most N.")
    ] = 50,
    status: Annotated[
        str | None,
        typer.Option("--status", help=f"Only this status ({', '.join(_STATUSES)})."),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include child sessions, not only roots.")
    ] = False,
    no_trunc: Annotated[
        bool, typer.Option("--no-trunc", help="Show full ids and names, however wide.")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recorded sessions, newest first (roots: sessions whose parent is not stored here)."""
    _check_status(status)
    with _open(db) as store:
        rows = _listed(store, limit=limit, status=status, roots_only=not all_)
        if as_json:
            _print_json([r.to_dict() for r in rows])
            return
        console = Console()
        if not rows:
            console.print(f"No sessions in {_where(store)}.", highlight=False)
            return
        columns = [
            Column("id", style="bold"),
            Column("name", free_text=True, min_width=16),
            Column("status", min_width=9),
            Column("started", drop=2),
            Column("duration", drop=3, justify="right"),
            Column("calls", drop=1, justify="right"),
            Column("tokens in", drop=4, justify="right"),
            Column("tokens out", drop=4, justify="right"),
            Column("cost", justify="right"),
        ]
        if no_trunc:  # the full name, even if the table gets wider than the terminal
            columns[1] = Column("name")
        table_rows: list[list[Text | str]] = [
            [
                Text(_short(r.id, no_trunc)),
                Text(("↳ " if all_ and r.parent_id else "") + (r.name or "")),
                _status(r.status),
                local_time(r.started_at),
                _duration(r),
                str(r.calls),
                f"{r.usage.input_tokens:,}",
                f"{r.usage.output_tokens:,}",
                _session_cost(r, compact=True),
            ]
            for r in rows
        ]
        notes = []
        if any(r.unpriced_calls for r in rows):
            notes.append(
                "unpriced: no price known for the model (llmctx prices MODEL); "
                "a cost beside it is the priced part"
            )
        interrupted = next((r for r in rows if r.status == "interrupted"), None)
        if interrupted is not None:
            ref = interrupted.name or interrupted.id
            notes.append(
                "interrupted: its process is gone; continue it where it stopped with "
                f"llmctx.session.resume({ref!r})"
            )
        print_fitted(console, columns, table_rows, notes=notes)


# -- show --------------------------------------------------------------------------------------


def _tree(records: Sequence[SessionRecord]) -> Tree:
    children: dict[str | None, list[SessionRecord]] = {}
    for r in records[1:]:
        children.setdefault(r.parent_id, []).append(r)

    def label(r: SessionRecord) -> Text:
        text = Text(r.id[:12], style="bold")
        if r.name:
            text.append(f"  {r.name}")
        text.append("  ")
        text.append_text(_status(r.status))
        text.append(f"  {_plural(r.calls, 'call')}  ")
        text.append_text(_session_cost(r, compact=True))
        return text

    root = Tree(label(records[0]))
    seen = {records[0].id}

    def grow(node: Tree, parent: str) -> None:
        for child in children.get(parent, []):
            if child.id in seen:  # a parent_id cycle in damaged data
                continue
            seen.add(child.id)
            grow(node.add(label(child)), child.id)

    grow(root, records[0].id)
    return root


@sessions_app.command("show", cls=PlainHelpCommand)
def show(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id or unique prefix.")],
    max_calls: Annotated[
        int, typer.Option("--calls", min=0, metavar="N", help="Show at most N calls (the latest).")
    ] = 50,
    full: Annotated[
        bool,
        typer.Option("--full", help=f"Show prompts and responses whole (else {_CUT} characters)."),
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one session: its details, its child sessions as a tree, its calls (refused ones
    too) and each call's prompt and response."""
    with _open(db) as store:
        record = _resolve(store, session_id)
        tree = _shown(store.session_tree(record.id) or [record])
        record = tree[0] if tree[0].id == record.id else _shown([record])[0]
        calls = store.list_calls([r.id for r in tree], refused=True)
        if as_json:
            _print_json(
                {
                    "session": record.to_dict(),
                    "descendants": [r.to_dict() for r in tree[1:]],
                    "calls": [c.to_dict() for c in calls],
                }
            )
            return
        console = Console()
        console.print(_details(record, sum("overrun" in c.metadata for c in calls)))
        if len(tree) > 1:
            console.print()
            console.print(Text("Sessions", style="bold"))
            console.print(_tree(tree))
        console.print()
        if not calls:
            console.print("No calls recorded.")
            return
        shown = _print_calls(console, calls, tree, max_calls)
        _print_texts(console, shown, full)


def _budget_text(r: SessionRecord) -> Text:
    """Each stored limit as limit / spent / reserved / left, and how far the session went
    past it (usage over a reservation is charged in full, so a budget can end over its limit).

    A stored session holds no reservations once it has ended; a running one's live
    reservations are not stored, so they read ``-``.
    """
    assert r.budget is not None
    ended = r.ended_at is not None
    text = Text()
    spent_of: dict[str, tuple[Decimal, Any]] = {
        "usd": (r.cost, format_usd),
        "tokens": (Decimal(r.usage.total_tokens), lambda v: f"{int(v):,} tokens"),
        "requests": (Decimal(r.usage.requests), lambda v: f"{int(v):,} requests"),
    }
    for key, (spent, fmt) in spent_of.items():
        raw = r.budget.get(key)
        if raw is None:
            continue
        limit = Decimal(str(raw))
        if text:
            text.append("\n")
        reserved = fmt(Decimal(0)) if ended else "-"
        text.append(f"{fmt(limit)} limit / {fmt(spent)} spent / {reserved} reserved / ")
        if spent > limit:
            text.append(f"{fmt(spent - limit)} over", style="bold red")
        else:
            text.append(f"{fmt(limit - spent)} left")
    if r.unpriced_calls and r.budget.get("usd") is not None:
        text.append(f"  (+ {_plural(r.unpriced_calls, 'call')} unpriced)", style="yellow")
    return text


def _details(r: SessionRecord, overruns: int = 0) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    u = r.usage
    rows: list[tuple[str, Text | str]] = [
        ("id", Text(r.id)),
        ("name", Text(r.name or "-")),
        ("status", _status(r.status)),
        ("parent", Text(r.parent_id or "-")),
        ("started", local_time(r.started_at)),
        ("ended", local_time(r.ended_at)),
        ("duration", _duration(r)),
        ("calls", str(r.calls)),
        (
            "tokens",
            f"{u.input_tokens:,} in / {u.output_tokens:,} out (cache read "
            f"{u.cache_read_tokens:,}, cache write {u.cache_write_tokens:,}, reasoning "
            f"{u.reasoning_tokens:,}; {u.requests:,} requests)",
        ),
        ("cost", _session_cost(r)),
    ]
    if r.budget:
        rows.append(("budget", _budget_text(r)))
    if overruns:
        rows.append(
            (
                "overruns",
                Text(
                    f"{overruns} call(s) used more than they reserved and were charged in full "
                    "(metadata.overrun in --json)",
                    style="yellow",
                ),
            )
        )
    if r.tags:
        rows.append(("tags", Text(", ".join(f"{k}={v}" for k, v in r.tags.items()))))
    if r.metadata:
        rows.append(("metadata", Text(_dumps(r.metadata))))
    if r.error:
        rows.append(("error", Text(r.error, style="red")))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _print_calls(
    console: Console, calls: Sequence[CallRecord], tree: Sequence[SessionRecord], limit: int
) -> list[tuple[int, CallRecord]]:
    """The calls table (the latest ``limit``); returns the calls shown with their numbers."""
    first = max(len(calls) - limit, 0) if limit else len(calls)
    shown = list(enumerate(calls, 1))[first:]
    hidden = len(calls) - len(shown)
    several = len(tree) > 1
    names = {r.id: r.name or r.id[:12] for r in tree}
    columns = [
        Column("#", justify="right"),
        Column("started", drop=2),
        Column("session", drop=3, free_text=True, min_width=10),
        Column("kind", drop=4),
        Column("model"),  # whole: which model ran is what a reader looks for
        Column("status", min_width=6),
        Column("in", drop=1, justify="right"),
        Column("out", drop=1, justify="right"),
        Column("cost", justify="right"),
        Column("latency", drop=4, justify="right"),
    ]
    rows: list[list[Text | str]] = []
    for n, c in shown:
        status = _status(c.status)
        if "overrun" in c.metadata:
            status += Text(" over", style="bold red")
        rows.append(
            [
                str(n),
                c.started_at.astimezone().strftime("%H:%M:%S.%f")[:-3],
                Text(names.get(c.session_id or "", c.session_id or "-")),
                Text(c.kind),
                Text("/".join(x for x in (c.provider, c.model) if x) or "-"),
                status,
                f"{c.usage.input_tokens:,}" + ("~" if c.estimated else ""),
                f"{c.usage.output_tokens:,}" + ("~" if c.estimated else ""),
                "-" if c.status == "refused" else _money(c.cost),
                "-" if c.latency_s is None else f"{c.latency_s:.2f}s",
            ]
        )
    if not several:
        del columns[2]
        for row in rows:
            del row[2]
    notes = [f"{hidden} earlier calls not shown (--calls N, --json or export)"] if hidden else []
    if any(c.status == "refused" for _, c in shown):
        notes.append("refused: stopped before it was sent (no cost); the reason is below")
    console.print(Text("Calls", style="bold"))
    print_fitted(console, columns, rows, notes=notes)
    return shown


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                parts.append(text if isinstance(text, str) else f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return " ".join(parts)
    return _dumps(content)


def prompt_text(request: Any, *, full: bool) -> str | None:
    """What a recorded request asked, for people: chat messages as ``role: text`` lines
    (only the last one unless ``full``), a completion's prompt, else the request as JSON.

    Returns:
        None when nothing was recorded (``record_content=False``).
    """
    if request is None:
        return None
    if isinstance(request, str):
        return request
    if not isinstance(request, dict):
        return _dumps(request)
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        lines = []
        system = request.get("system")  # Anthropic keeps it beside the messages
        if system:
            lines.append(f"system: {_content_text(system)}")
        for m in messages:
            if isinstance(m, dict):
                lines.append(f"{m.get('role', '?')}: {_content_text(m.get('content'))}")
            else:
                lines.append(_content_text(m))
        if full or len(lines) == 1:
            return "\n".join(lines)
        return f"({len(lines) - 1} earlier) {lines[-1]}"
    for key in ("prompt", "input"):
        value = request.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(_content_text(v) for v in value)
    return _dumps(request)


def _cut(text: str, full: bool) -> tuple[str, bool]:
    """``text`` on one line and at most ``_CUT`` characters, unless ``full``; and whether
    anything was left out."""
    if full:
        return text, False
    flat = " ".join(text.split())
    if len(flat) <= _CUT:
        return flat, False
    return flat[: _CUT - 1].rstrip() + "…", True


def _print_texts(console: Console, shown: Sequence[tuple[int, CallRecord]], full: bool) -> None:
    """Each shown call's prompt and response (or why it failed or was refused)."""
    console.print()
    console.print(Text("Prompts and responses", style="bold"))
    cut_any = False
    for n, c in shown:
        head = Text(f"#{n} ", style="bold")
        head.append("/".join(x for x in (c.provider, c.model) if x) or c.kind)
        head.append("  ")
        head.append_text(_status(c.status))
        console.print(head)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        prompt = prompt_text(c.request, full=full)
        # (label, text, style, whole): a reason (refusal, error) is never cut.
        texts: list[tuple[str, str | None, str, bool]] = [("prompt", prompt, "", False)]
        if c.status == "refused":
            texts.append(("refused", c.error, "yellow", True))
        else:
            if c.response is not None or (c.tool_calls is None and c.error is None):
                texts.append(("response", c.response, "", False))
            if c.tool_calls:
                texts.append(("tool calls", _dumps(c.tool_calls), "", False))
            if c.error:
                texts.append(("error", c.error, "red", True))
        for label, value, style, whole in texts:
            if value is None:
                grid.add_row(label, Text("(not recorded)", style="dim"))
                continue
            text, cut = _cut(value, full or whole)
            cut_any = cut_any or cut
            grid.add_row(label, Text(text, style=style))
        console.print(Padding(grid, (0, 0, 0, 2)))
    if cut_any:
        console.print(
            Text(f"prompts and responses cut at {_CUT} characters; --full shows them whole", "dim")
        )


# -- export ------------------------------------------------------------------------------------

_CSV_COLUMNS = (
    "session_id",
    "session_name",
    "call_id",
    "started_at",
    "kind",
    "provider",
    "model",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "requests",
    "estimated",
    "cost",
    "cost_note",
    "latency_s",
    "ttfb_s",
    "ttft_s",
    "error",
)


def _csv_row(call: CallRecord, names: dict[str, str | None]) -> list[Any]:
    u = call.usage
    return [
        call.session_id,
        names.get(call.session_id or ""),
        call.id,
        call.started_at.isoformat(),
        call.kind,
        call.provider,
        call.model,
        call.status,
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        call.estimated,
        "" if call.cost is None else decimal_text(call.cost),
        call.cost_note,
        call.latency_s,
        call.ttfb_s,
        call.ttft_s,
        call.error,
    ]


def _selected(store: Store, refs: Sequence[str]) -> list[SessionRecord]:
    if not refs:
        return list(reversed(store.list_sessions(limit=None)))
    out: dict[str, SessionRecord] = {}
    for ref in refs:
        for r in store.session_tree(_resolve(store, ref).id):
            out.setdefault(r.id, r)
    return list(out.values())


def _write_export(
    out: IO[str], fmt: ExportFormat, sessions: Sequence[SessionRecord], store: Store
) -> int:
    if fmt is ExportFormat.html:
        from ..ui import export_html  # jinja2 and the templates load only for this format

        return export_html(out, store, sessions)
    calls = store.list_calls([r.id for r in sessions], refused=True)
    if fmt is ExportFormat.jsonl:
        for r in sessions:
            out.write(_dumps({"type": "session", **r.to_dict()}) + "\n")
        for c in calls:
            out.write(_dumps({"type": "call", **c.to_dict()}) + "\n")
    else:
        names = {r.id: r.name for r in sessions}
        writer = csv.writer(out)
        writer.writerow(_CSV_COLUMNS)
        for c in calls:
            writer.writerow(_csv_row(c, names))
    return len(calls)


def _export_otlp(
    store: Store,
    sessions: Sequence[SessionRecord],
    fmt: ExportFormat,
    endpoint: str | None,
    output: Path | None,
) -> None:
    if fmt is not ExportFormat.otlp:
        raise ConfigError(
            f"--endpoint goes with --format otlp; --format {fmt.value} writes to stdout or "
            "--output FILE: leave --endpoint out"
        )
    if endpoint is None:
        raise ConfigError(
            "--format otlp needs --endpoint URL, the OTLP/HTTP traces URL of the backend "
            "(e.g. --endpoint http://localhost:6006/v1/traces for Phoenix)"
        )
    if output is not None:
        raise ConfigError(
            "--format otlp sends the spans to --endpoint and writes no file: leave --output "
            "out (or use --format jsonl|csv|html with --output)"
        )
    try:
        from ..otel import export_sessions
        from ..otel._replay import EXPORTER_LOGGER
    except ImportError:
        raise ConfigError("--format otlp needs OpenTelemetry: pip install 'llmctx[otel]'") from None
    # The exporter logs each retry to stderr (Python's last-resort handler); the one error
    # below says what happened instead, with the reason it kept.
    exporter_log = logging.getLogger(EXPORTER_LOGGER)
    propagate, exporter_log.propagate = exporter_log.propagate, False
    quiet = logging.NullHandler()
    exporter_log.addHandler(quiet)
    console = Console(stderr=True, highlight=False)
    try:
        # A spinner on a terminal: an endpoint that does not answer is retried for 10 s.
        with console.status(f"Sending {len(sessions)} sessions to {redact_url(endpoint)}"):
            sent = export_sessions(store, sessions, endpoint=endpoint, timeout=10.0)
    finally:
        exporter_log.removeHandler(quiet)
        exporter_log.propagate = propagate
    console.print(
        f"Sent {sent.sessions} sessions and {sent.calls} calls as {sent.spans} spans "
        f"to {redact_url(sent.endpoint or endpoint)}"
    )


@sessions_app.command("export", cls=PlainHelpCommand)
def export(
    session_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...",
            help="Sessions to export with their descendants (default: every session).",
        ),
    ] = None,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="jsonl: one object per line, type session or call; csv: one row per call; "
            "html: the session pages as one self-contained file; "
            "otlp: send them as OpenTelemetry spans to --endpoint.",
        ),
    ] = ExportFormat.jsonl,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            help="With --format otlp: the OTLP/HTTP URL, e.g. http://localhost:6006/v1/traces.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write to FILE (default: stdout)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Export sessions and their calls (refused ones too) as JSON lines or CSV, or send them
    over OTLP."""
    with _open(db) as store:
        sessions = _shown(_selected(store, session_ids or []))
        if fmt is ExportFormat.otlp or endpoint is not None:
            _export_otlp(store, sessions, fmt, endpoint, output)
            return
        if output is None:
            _write_export(sys.stdout, fmt, sessions, store)
            sys.stdout.flush()
            return
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                n_calls = _write_export(fh, fmt, sessions, store)
            os.replace(tmp, output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            _err(f"error: cannot write {output}: {exc.strerror or exc}")
            raise typer.Exit(1) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        Console(stderr=True, highlight=False).print(
            f"Exported {len(sessions)} sessions and {n_calls} calls to {output}"
        )


# -- rm ----------------------------------------------------------------------------------------


def _matching(
    store: Store,
    *,
    statuses: Sequence[str] | None,
    older_than: timedelta | None,
    name: str | None,
) -> list[SessionRecord]:
    """The root sessions (as ``ls`` lists them) that every given filter matches, oldest first."""
    rows = _shown(store.list_sessions(limit=None, roots_only=True, name=name))
    if statuses is not None:
        rows = [r for r in rows if r.status in statuses]
    if older_than is not None:
        cutoff = datetime.now(UTC) - older_than
        rows = [r for r in rows if _aware(r.started_at) < cutoff]
    return list(reversed(rows))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _delete(
    store: Store, targets: Sequence[SessionRecord], *, yes: bool, as_json: bool, what: str
) -> None:
    """Ask (unless ``yes``), then delete each target with its descendants and their calls."""
    if not targets:
        if as_json:
            _print_json({"deleted": [], "deleted_sessions": 0})
        else:
            Console(highlight=False).print(f"No sessions {what}; nothing was deleted.")
        return
    if not yes:
        trees = [store.session_tree(r.id) or [r] for r in targets]
        n_sessions = sum(len(t) for t in trees)
        n_calls = len(store.list_calls([x.id for t in trees for x in t], refused=True))
        if len(targets) == 1:
            record = targets[0]
            label = f"{record.id}" + (f" ({record.name})" if record.name else "")
            question = (
                f"Delete session {label}, {n_sessions - 1} descendant session(s) "
                f"and {n_calls} call(s)?"
            )
        else:
            shown = ", ".join(r.name or r.id[:12] for r in targets[:5])
            more = f" and {len(targets) - 5} more" if len(targets) > 5 else ""
            question = (
                f"Delete {len(targets)} sessions {what} ({shown}{more}), with their "
                f"descendants: {n_sessions} session(s) and {n_calls} call(s) in all?"
            )
        if not typer.confirm(question, default=False, err=True):
            _err("Aborted; nothing was deleted.")
            raise typer.Exit(1)
    deleted = []
    for r in targets:
        n = store.delete_session(r.id)
        deleted.append({"id": r.id, "name": r.name, "status": r.status, "sessions": n})
    total = sum(int(d["sessions"] or 0) for d in deleted)
    if as_json:
        _print_json({"deleted": deleted, "deleted_sessions": total})
    elif len(targets) == 1:
        Console(highlight=False).print(f"Deleted {total} session(s) under {targets[0].id}.")
    else:
        Console(highlight=False).print(
            f"Deleted {len(targets)} sessions {what}: {total} session(s) with descendants."
        )


StatusesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        metavar="STATUS",
        help=f"Only sessions with this status; repeat for several ({', '.join(_STATUSES)}).",
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _filter_text(statuses: Sequence[str] | None, older: str | None, name: str | None) -> str:
    parts = []
    if name is not None:
        parts.append(f"named {name!r}")
    if statuses:
        parts.append("/".join(statuses))
    if older is not None:
        parts.append(f"started over {older.strip()} ago")
    return " ".join(parts) or "matching"


@sessions_app.command("rm", cls=PlainHelpCommand)
def rm(
    session_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Session ids or unique prefixes."),
    ] = None,
    statuses: StatusesOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", metavar="AGE", help="Only sessions started longer ago (30d, 12h)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Only sessions of this name.")
    ] = None,
    yes: YesOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete sessions with all their descendant sessions and their calls: the ones named by
    id, or every root session (as ls lists them) that the filters match."""
    for status in statuses or []:
        _check_status(status)
    age = None if older_than is None else _age(older_than)
    filtered = bool(statuses) or age is not None or name is not None
    if session_ids and filtered:
        raise typer.BadParameter("give session ids or filters (--status, --older-than, --name)")
    if not session_ids and not filtered:
        raise typer.BadParameter(
            "give session ids, or filters (--status, --older-than, --name); "
            "`llmctx sessions prune` deletes old sessions",
            param_hint="ID",
        )
    with _open(db) as store:
        if session_ids:
            found = {r.id: r for r in (_resolve(store, ref) for ref in session_ids)}
            targets = _shown(list(found.values()))
            what = "named"
        else:
            targets = _matching(store, statuses=statuses, older_than=age, name=name)
            what = _filter_text(statuses, older_than, name)
        _delete(store, targets, yes=yes, as_json=as_json, what=what)


@sessions_app.command("prune", cls=PlainHelpCommand)
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Delete sessions started longer ago than this: 45s, 90m, 12h, 30d, 2w.",
        ),
    ] = "30d",
    statuses: StatusesOption = None,
    yes: YesOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old root sessions with their descendants and calls (by default those that ended:
    completed, failed, cancelled or interrupted; never a running one unless --status says so)."""
    for status in statuses or []:
        _check_status(status)
    age = _age(older_than)
    chosen = list(statuses) if statuses else list(_ENDED)
    with _open(db) as store:
        targets = _matching(store, statuses=chosen, older_than=age, name=None)
        what = _filter_text(statuses, older_than, None)
        _delete(store, targets, yes=yes, as_json=as_json, what=what)
