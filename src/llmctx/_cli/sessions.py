"""``llmctx sessions ls|show|export|rm``: read and prune what the stores recorded.

Every command takes ``--db URL_OR_PATH`` (default: ``$LLMCTX_DB``, else the default SQLite
file) and, where a machine reading makes sense, ``--json``. Errors go to stderr with exit code
1; a session id may be given as any unique prefix.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .._exceptions import ConfigError, LLMCtxError, SessionNotFound
from .._money import format_usd
from .._usage import CallRecord
from ..stores import MemoryStore, SessionRecord, SessionStatus, Store, open_store
from ..stores._open import sqlite_file_of

__all__ = ["sessions_app"]

sessions_app = typer.Typer(
    help="List, show, export and delete recorded sessions.", no_args_is_help=True
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
    "ok": "green",
    "error": "red",
}


class ExportFormat(StrEnum):
    """File formats of ``llmctx sessions export``."""

    jsonl = "jsonl"
    csv = "csv"


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


def _money(value: Decimal | None) -> str:
    return "?" if value is None else format_usd(value)


def _session_cost(record: SessionRecord, *, compact: bool = False) -> Text:
    text = Text(_money(record.cost))
    if record.unpriced_calls:
        n = record.unpriced_calls
        text.append(
            "+?" if compact else f" + {n} call{'s' if n != 1 else ''} with unknown price",
            style="yellow",
        )
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _duration(record: SessionRecord) -> str:
    if record.ended_at is None:
        return "running" if record.status == "running" else "-"
    return _span((record.ended_at - record.started_at).total_seconds())


def _status(value: str) -> Text:
    return Text(value, style=_STATUS_STYLE.get(value, ""))


def _short(session_id: str, full: bool) -> str:
    return session_id if full or len(session_id) <= 12 else session_id[:12]


# -- ls ----------------------------------------------------------------------------------------


@sessions_app.command("ls")
def ls(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most N.")] = 50,
    status: Annotated[
        str | None,
        typer.Option("--status", help=f"Only this status ({', '.join(_STATUSES)})."),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include child sessions, not only roots.")
    ] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Show full ids.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recorded sessions, newest first."""
    if status is not None and status not in _STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(_STATUSES)}", param_hint="--status")
    with _open(db) as store:
        rows = store.list_sessions(limit=limit, status=status, roots_only=not all_)
        if as_json:
            _print_json([r.to_dict() for r in rows])
            return
        console = Console()
        if not rows:
            console.print(f"No sessions in {_where(store)}.", highlight=False)
            return
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("id", no_wrap=True, style="bold")
        table.add_column("name", overflow="fold")
        table.add_column("status")
        table.add_column("started", no_wrap=True)
        table.add_column("duration", justify="right")
        table.add_column("calls", justify="right")
        table.add_column("tokens in", justify="right")
        table.add_column("tokens out", justify="right")
        table.add_column("cost", justify="right")
        for r in rows:
            name = Text(("↳ " if r.parent_id else "") + (r.name or ""))
            table.add_row(
                Text(_short(r.id, no_trunc)),
                name,
                _status(r.status),
                _when(r.started_at),
                _duration(r),
                str(r.calls),
                f"{r.usage.input_tokens:,}",
                f"{r.usage.output_tokens:,}",
                _session_cost(r, compact=True),
            )
        if any(r.unpriced_calls for r in rows):
            table.caption = "+? some calls had no known price: the cost shown is the priced part"
        console.print(table)


# -- show --------------------------------------------------------------------------------------


def _tree(records: Sequence[SessionRecord]) -> Tree:
    children: dict[str | None, list[SessionRecord]] = {}
    for r in records[1:]:
        children.setdefault(r.parent_id, []).append(r)

    def label(r: SessionRecord) -> Text:
        text = Text(r.id, style="bold")
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


@sessions_app.command("show")
def show(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id or unique prefix.")],
    max_calls: Annotated[
        int, typer.Option("--calls", min=0, help="Show at most N calls (the latest).")
    ] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one session: its details, its child sessions as a tree, and its calls."""
    with _open(db) as store:
        record = _resolve(store, session_id)
        tree = store.session_tree(record.id) or [record]
        calls = store.list_calls([r.id for r in tree])
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
        console.print(_calls_table(calls, tree, max_calls))


def _budget_text(r: SessionRecord) -> Text:
    """The stored limits, and how far the session went past them (usage over a reservation
    is charged in full, so a budget can end up over its limit)."""
    assert r.budget is not None
    text = Text(_dumps(r.budget))
    over: list[str] = []
    limit = r.budget.get("usd")
    if limit is not None and r.cost > Decimal(str(limit)):
        over.append(f"{format_usd(r.cost - Decimal(str(limit)))} over")
    limit = r.budget.get("tokens")
    if limit is not None and r.usage.total_tokens > int(limit):
        over.append(f"{r.usage.total_tokens - int(limit):,} tokens over")
    limit = r.budget.get("requests")
    if limit is not None and r.usage.requests > int(limit):
        over.append(f"{r.usage.requests - int(limit):,} requests over")
    if over:
        text.append("  " + ", ".join(over), style="bold red")
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
        ("started", _when(r.started_at)),
        ("ended", _when(r.ended_at)),
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


def _calls_table(calls: Sequence[CallRecord], tree: Sequence[SessionRecord], limit: int) -> Table:
    shown = calls[-limit:] if limit else []
    hidden = len(calls) - len(shown)
    caption = f"{hidden} earlier calls not shown (--calls N, --json or export)" if hidden else None
    table = Table(title="Calls", title_justify="left", caption=caption, show_edge=False)
    several = len(tree) > 1
    names = {r.id: r.name or r.id[:12] for r in tree}
    table.add_column("started", no_wrap=True)
    if several:
        table.add_column("session")
    table.add_column("kind")
    table.add_column("model")
    table.add_column("status")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("latency", justify="right")
    for c in shown:
        model = "/".join(x for x in (c.provider, c.model) if x) or "-"
        cost = Text(_money(c.cost))
        if c.cost is None:
            cost.stylize("yellow")
        row: list[Text | str] = [c.started_at.astimezone().strftime("%H:%M:%S.%f")[:-3]]
        if several:
            row.append(Text(names.get(c.session_id or "", c.session_id or "-")))
        row += [
            Text(c.kind),
            Text(model),
            _status(c.status) + Text(" over", style="bold red")
            if "overrun" in c.metadata
            else _status(c.status),
            f"{c.usage.input_tokens:,}" + ("~" if c.estimated else ""),
            f"{c.usage.output_tokens:,}" + ("~" if c.estimated else ""),
            cost,
            "-" if c.latency_s is None else f"{c.latency_s:.2f}s",
        ]
        table.add_row(*row)
    return table


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
        "" if call.cost is None else str(call.cost),
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
    calls = store.list_calls([r.id for r in sessions])
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


@sessions_app.command("export")
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
            help="jsonl: one object per line, type session or call; csv: one row per call.",
        ),
    ] = ExportFormat.jsonl,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write to FILE (default: stdout)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Export sessions and their calls as JSON lines or CSV."""
    with _open(db) as store:
        sessions = _selected(store, session_ids or [])
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


@sessions_app.command("rm")
def rm(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id or unique prefix.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a session with all its descendant sessions and their calls."""
    with _open(db) as store:
        record = _resolve(store, session_id)
        tree = store.session_tree(record.id) or [record]
        if not yes:
            n_calls = len(store.list_calls([r.id for r in tree]))
            label = f"{record.id}" + (f" ({record.name})" if record.name else "")
            question = (
                f"Delete session {label}, {len(tree) - 1} descendant session(s) "
                f"and {n_calls} call(s)?"
            )
            if not typer.confirm(question, default=False, err=True):
                _err("Aborted; nothing was deleted.")
                raise typer.Exit(1)
        deleted = store.delete_session(record.id)
        if as_json:
            _print_json({"id": record.id, "deleted_sessions": deleted})
        else:
            Console(highlight=False).print(f"Deleted {deleted} session(s) under {record.id}.")
