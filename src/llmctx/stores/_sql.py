"""What the SQL stores (SQLite, PostgreSQL) share, whatever the dialect.

The two stores keep the same columns in the same order (SQLite adds ``started_us`` after
them), so one mapping turns a record into statement parameters and a row back into a record;
each store passes in how its dialect encodes and decodes datetimes, money and JSON.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar, cast

from .._usage import CallRecord, CallStatus, Usage
from ._base import SessionRecord, SessionStatus

__all__ = [
    "CALL_COLS",
    "SESSION_COLS",
    "ConnectionOwner",
    "LoadDatetime",
    "LoadJSON",
    "call_from_row",
    "call_params",
    "dumps",
    "dumps_opt",
    "excluded_assignments",
    "same",
    "session_filter",
    "session_from_row",
    "session_params",
    "tree_cte",
]

# The column order of every statement both stores run, matching the converters below.
SESSION_COLS = (
    "id, name, parent_id, status, tags, budget, started_at, ended_at, error, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, requests, cost, "
    "unpriced_calls, call_count, metadata"
)
CALL_COLS = (
    "id, session_id, kind, provider, model, request, response, tool_calls, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, requests, "
    "raw_usage, cost, cost_note, status, error, estimated, started_at, latency_s, ttfb_s, "
    "ttft_s, metadata"
)

# One encoder for the process: json.dumps() with options builds a new encoder on every call.
dumps = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


def dumps_opt(value: Any) -> str | None:
    """``value`` as JSON text, or None (SQL NULL) for None."""
    return None if value is None else dumps(value)


_V = TypeVar("_V")


def same(value: _V) -> _V:
    """``value`` unchanged: the codec of a dialect whose driver converts that type itself."""
    return value


def session_params(
    r: SessionRecord,
    dump_dt: Callable[[datetime], Any],
    dump_money: Callable[[Decimal], Any],
) -> list[Any]:
    """The parameters of a session row, in :data:`SESSION_COLS` order.

    Args:
        r: the session.
        dump_dt: how the dialect stores a datetime (never called with None).
        dump_money: how the dialect stores a Decimal.

    Returns:
        A list, so that a store may append the columns only it has.
    """
    u = r.usage
    ended = r.ended_at
    return [
        r.id,
        r.name,
        r.parent_id,
        r.status,
        dumps(r.tags) if r.tags else "{}",
        dumps_opt(r.budget),
        dump_dt(r.started_at),
        None if ended is None else dump_dt(ended),
        r.error,
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        dump_money(r.cost),
        r.unpriced_calls,
        r.calls,
        dumps(r.metadata) if r.metadata else "{}",
    ]


def call_params(
    c: CallRecord,
    dump_dt: Callable[[datetime], Any],
    dump_money: Callable[[Decimal], Any],
) -> list[Any]:
    """The parameters of a call row, in :data:`CALL_COLS` order.

    ``estimated`` stays a bool: SQLite stores it as the integer 1 or 0.

    Args:
        c: the call.
        dump_dt: how the dialect stores a datetime.
        dump_money: how the dialect stores a Decimal (never called with None).

    Returns:
        A list, so that a store may append the columns only it has.
    """
    u = c.usage
    return [
        c.id,
        c.session_id,
        c.kind,
        c.provider,
        c.model,
        dumps_opt(c.request),
        c.response,
        dumps_opt(c.tool_calls),
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        dumps_opt(c.raw_usage),
        None if c.cost is None else dump_money(c.cost),
        c.cost_note,
        c.status,
        c.error,
        c.estimated,
        dump_dt(c.started_at),
        c.latency_s,
        c.ttfb_s,
        c.ttft_s,
        dumps(c.metadata) if c.metadata else "{}",
    ]


# How a dialect's column value becomes Python data (JSON) or a datetime.
LoadJSON = Callable[[Any], Any]
LoadDatetime = Callable[[Any], datetime]


def session_from_row(
    row: Sequence[Any], load_json: LoadJSON, load_dt: LoadDatetime
) -> SessionRecord:
    """The session of a row selected with :data:`SESSION_COLS` first."""
    return SessionRecord(
        id=row[0],
        name=row[1],
        parent_id=row[2],
        status=cast(SessionStatus, row[3]),
        tags=load_json(row[4]),
        budget=None if row[5] is None else load_json(row[5]),
        started_at=load_dt(row[6]),
        ended_at=None if row[7] is None else load_dt(row[7]),
        error=row[8],
        usage=Usage(row[9], row[10], row[11], row[12], row[13], row[14]),
        cost=Decimal(row[15]),
        unpriced_calls=row[16],
        calls=row[17],
        metadata=load_json(row[18]),
    )


def call_from_row(row: Sequence[Any], load_json: LoadJSON, load_dt: LoadDatetime) -> CallRecord:
    """The call of a row selected with :data:`CALL_COLS` first."""
    return CallRecord(
        id=row[0],
        session_id=row[1],
        kind=row[2],
        provider=row[3],
        model=row[4],
        request=None if row[5] is None else load_json(row[5]),
        response=row[6],
        tool_calls=None if row[7] is None else load_json(row[7]),
        usage=Usage(row[8], row[9], row[10], row[11], row[12], row[13]),
        raw_usage=None if row[14] is None else load_json(row[14]),
        cost=None if row[15] is None else Decimal(row[15]),
        cost_note=row[16],
        status=cast(CallStatus, row[17]),
        error=row[18],
        estimated=bool(row[19]),
        started_at=load_dt(row[20]),
        latency_s=row[21],
        ttfb_s=row[22],
        ttft_s=row[23],
        metadata=load_json(row[24]),
    )


def excluded_assignments(cols: str, skip: Collection[str]) -> str:
    """``c = excluded.c, ...`` for the columns of ``cols`` not in ``skip`` (an upsert's SET)."""
    names = (c.strip() for c in cols.split(","))
    return ", ".join(f"{c} = excluded.{c}" for c in names if c not in skip)


def session_filter(
    mark: str, *, status: str | None, parent_id: str | None, roots_only: bool
) -> tuple[str, list[Any]]:
    """The WHERE clause of ``list_sessions`` and its parameters.

    Args:
        mark: the dialect's parameter placeholder (``?`` or ``%s``).
        status: only sessions with this status, unless None.
        parent_id: only children of this session, unless None.
        roots_only: only sessions without a parent.

    Returns:
        ``" WHERE ..."`` (empty when nothing is filtered) and the parameters it takes.
    """
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append(f"status = {mark}")
        params.append(status)
    if parent_id is not None:
        where.append(f"parent_id = {mark}")
        params.append(parent_id)
    if roots_only:
        where.append("parent_id IS NULL")
    return (" WHERE " + " AND ".join(where) if where else ""), params


def tree_cte(sessions: str, mark: str) -> str:
    """``WITH RECURSIVE tree(id)``: the session whose id is the one parameter, and descendants.

    Args:
        sessions: the (qualified) sessions table.
        mark: the dialect's parameter placeholder.
    """
    # UNION (not UNION ALL) on the id alone: a parent_id cycle in damaged data still terminates.
    return (
        f"WITH RECURSIVE tree(id) AS (SELECT id FROM {sessions} WHERE id = {mark} "
        f"UNION SELECT s.id FROM {sessions} s JOIN tree t ON s.parent_id = t.id) "
    )


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)

# A database connection must not be used across fork(), nor closed in the child (that could
# disturb the parent's locks or end its server session): a forked child parks the inherited
# ones here, never to be used again, and each store opens a new one when next used.
_LIVE: weakref.WeakSet[ConnectionOwner[Any]] = weakref.WeakSet()
_ORPHANS: list[object] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE):
        store._forget_connection_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionOwner(Generic[_C]):
    """A store's one connection behind a lock: closing, and letting go of it after fork().

    A subclass sets ``_lock``, ``_closed`` and ``_conn`` and then calls :meth:`_track_forks`;
    its ``_connection()`` opens a new connection when ``_conn`` is None.
    """

    _lock: threading.Lock
    _closed: bool
    _conn: _C | None

    def _track_forks(self) -> None:
        _LIVE.add(self)

    def _forget_connection_after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._conn is not None:
            _ORPHANS.append(self._conn)
            self._conn = None

    def close(self) -> None:
        """Close the connection; closing twice is harmless, using it afterwards raises."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
