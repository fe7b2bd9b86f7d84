"""What the SQL stores (SQLite, PostgreSQL) share, whatever the dialect.

The two stores keep the same columns in the same order (SQLite adds ``started_us`` after
them), so one mapping turns a record into statement parameters and a row back into a record;
each store passes in how its dialect encodes and decodes datetimes, money and JSON.

**Text no store can take is escaped, never dropped.** A lone surrogate (``"\\udcff"``, what
``surrogateescape`` decoding of invalid UTF-8 makes) cannot be encoded as UTF-8, so SQLite and
PostgreSQL refuse it; PostgreSQL also refuses NUL in ``text`` and ``jsonb``. Every string a SQL
store writes (ids, names, the response, the error, tags, and every key and string inside the
JSON columns) goes through :func:`escape_text`, and every one it reads through
:func:`unescape_text`, so a round trip gives back the same Python string:

* a string with no NUL, no lone surrogate and no U+FDD0 is stored as it is (the usual case,
  checked without copying);
* any other string is stored as U+FDD0 (a Unicode noncharacter, reserved for internal use)
  followed by the string in which each NUL, lone surrogate and U+FDD0 is written as U+FDD0
  plus its code point in four lower-case hex digits: ``"a\\x00b"`` becomes
  ``"\\ufdd0a\\ufdd00000b"``.

Reading reverses it for strings that start with U+FDD0 and leaves every other string alone,
so rows written before the escape existed read back unchanged.
"""

from __future__ import annotations

import json
import os
import re
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
    "ROLLUP_SET",
    "SESSION_COLS",
    "TOTALS_AT",
    "TOTAL_COLS",
    "ConnectionOwner",
    "LoadDatetime",
    "LoadJSON",
    "call_from_row",
    "call_params",
    "dumps",
    "dumps_opt",
    "encode_json",
    "escape_text",
    "escape_tree",
    "excluded_assignments",
    "load_json_text",
    "rollup_params",
    "same",
    "session_filter",
    "session_from_row",
    "session_params",
    "tree_cte",
    "unescape_text",
    "unescape_tree",
    "up_cte",
]

# The column order of every statement both stores run, matching the converters below.
SESSION_COLS = (
    "id, name, parent_id, status, tags, budget, started_at, ended_at, error, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, requests, cost, "
    "unpriced_calls, call_count, metadata, pid, host, heartbeat_at"
)
# The totals a store rolls up from the calls themselves (see Store.save_call): the columns
# save_session writes only when it creates a row.
TOTAL_COLS = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "requests",
        "cost",
        "unpriced_calls",
        "call_count",
    }
)
# Where they sit in session_params(): 9 .. 17.
TOTALS_AT = slice(9, 18)
CALL_COLS = (
    "id, session_id, kind, provider, model, request, response, tool_calls, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, requests, "
    "raw_usage, cost, cost_note, status, error, estimated, started_at, latency_s, ttfb_s, "
    "ttft_s, metadata"
)

# One encoder for the process: json.dumps() with options builds a new encoder on every call.
dumps = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


#: The first character of an escaped string, and the escape of one character inside it.
ESCAPE = "\ufdd0"
# What makes a string need escaping; in JSON text NUL is already written as \u0000.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff\ufdd0]")
_UNSTORABLE_IN_JSON = re.compile("[\ud800-\udfff\ufdd0]")
_ESCAPED_CHAR = re.compile("\ufdd0([0-9a-f]{4})")


def _escape_char(match: re.Match[str]) -> str:
    return f"{ESCAPE}{ord(match.group()):04x}"


def _unescape_char(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def escape_text(text: str) -> str:
    """``text`` as a SQL store keeps it: unchanged unless it holds NUL, a lone surrogate or U+FDD0.

    Args:
        text: any Python string.

    Returns:
        ``text`` itself, or its escaped form (see the module docstring); :func:`unescape_text`
        turns either back into ``text``.
    """
    if text.isascii():
        if "\x00" not in text:
            return text
    elif _UNSTORABLE.search(text) is None:
        return text
    return ESCAPE + _UNSTORABLE.sub(_escape_char, text)


def unescape_text(text: str) -> str:
    """Inverse of :func:`escape_text`; a string not starting with U+FDD0 is returned as is."""
    if not text.startswith(ESCAPE):
        return text
    return _ESCAPED_CHAR.sub(_unescape_char, text[1:])


def _escape_opt(text: str | None) -> str | None:
    # Anything but a string goes to the driver as it is, to be adapted (or refused) there.
    return escape_text(text) if isinstance(text, str) else text


def _unescape_opt(text: str | None) -> str | None:
    return None if text is None else unescape_text(text)


def escape_tree(value: Any) -> Any:
    """A copy of JSON-ready data with every string (keys included) passed through escape_text.

    Values JSON cannot hold are turned into their ``str()`` first, as :data:`dumps` would.
    """
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {
            (escape_text(k) if isinstance(k, str) else k): escape_tree(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [escape_tree(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return escape_text(str(value))


def unescape_tree(value: Any) -> Any:
    """Inverse of :func:`escape_tree` (on data read back from JSON)."""
    if isinstance(value, str):
        return unescape_text(value)
    if isinstance(value, dict):
        return {
            (unescape_text(k) if isinstance(k, str) else k): unescape_tree(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [unescape_tree(v) for v in value]
    return value


def encode_json(value: Any) -> str:
    """``value`` as JSON text every store can keep, its strings escaped where they must be."""
    text = dumps(value)
    if "\\u0000" in text or (not text.isascii() and _UNSTORABLE_IN_JSON.search(text)):
        # Rare: only a string holding NUL, a lone surrogate or U+FDD0 pays for the walk.
        text = dumps(escape_tree(value))
    return text


def load_json_text(text: str) -> Any:
    """Inverse of :func:`encode_json` for a dialect that hands back JSON as text."""
    value = json.loads(text)
    return unescape_tree(value) if ESCAPE in text else value


def dumps_opt(value: Any) -> str | None:
    """``value`` as JSON text (see :func:`encode_json`), or None (SQL NULL) for None."""
    return None if value is None else encode_json(value)


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
        escape_text(r.id),
        _escape_opt(r.name),
        _escape_opt(r.parent_id),
        r.status,
        encode_json(r.tags) if r.tags else "{}",
        dumps_opt(r.budget),
        dump_dt(r.started_at),
        None if ended is None else dump_dt(ended),
        _escape_opt(r.error),
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        dump_money(r.cost),
        r.unpriced_calls,
        r.calls,
        encode_json(r.metadata) if r.metadata else "{}",
        r.pid,
        _escape_opt(r.host),
        None if r.heartbeat_at is None else dump_dt(r.heartbeat_at),
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
        escape_text(c.id),
        _escape_opt(c.session_id),
        escape_text(c.kind),
        _escape_opt(c.provider),
        _escape_opt(c.model),
        dumps_opt(c.request),
        _escape_opt(c.response),
        dumps_opt(c.tool_calls),
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        dumps_opt(c.raw_usage),
        None if c.cost is None else dump_money(c.cost),
        _escape_opt(c.cost_note),
        c.status,
        _escape_opt(c.error),
        c.estimated,
        dump_dt(c.started_at),
        c.latency_s,
        c.ttfb_s,
        c.ttft_s,
        encode_json(c.metadata) if c.metadata else "{}",
    ]


# How a dialect's column value becomes Python data (JSON) or a datetime.
LoadJSON = Callable[[Any], Any]
LoadDatetime = Callable[[Any], datetime]


def session_from_row(
    row: Sequence[Any], load_json: LoadJSON, load_dt: LoadDatetime
) -> SessionRecord:
    """The session of a row selected with :data:`SESSION_COLS` first."""
    return SessionRecord(
        id=unescape_text(row[0]),
        name=_unescape_opt(row[1]),
        parent_id=_unescape_opt(row[2]),
        status=cast(SessionStatus, row[3]),
        tags=load_json(row[4]),
        budget=None if row[5] is None else load_json(row[5]),
        started_at=load_dt(row[6]),
        ended_at=None if row[7] is None else load_dt(row[7]),
        error=_unescape_opt(row[8]),
        usage=Usage(row[9], row[10], row[11], row[12], row[13], row[14]),
        cost=Decimal(row[15]),
        unpriced_calls=row[16],
        calls=row[17],
        metadata=load_json(row[18]),
        pid=row[19],
        host=_unescape_opt(row[20]),
        heartbeat_at=None if row[21] is None else load_dt(row[21]),
    )


def call_from_row(row: Sequence[Any], load_json: LoadJSON, load_dt: LoadDatetime) -> CallRecord:
    """The call of a row selected with :data:`CALL_COLS` first."""
    return CallRecord(
        id=unescape_text(row[0]),
        session_id=_unescape_opt(row[1]),
        kind=unescape_text(row[2]),
        provider=_unescape_opt(row[3]),
        model=_unescape_opt(row[4]),
        request=None if row[5] is None else load_json(row[5]),
        response=_unescape_opt(row[6]),
        tool_calls=None if row[7] is None else load_json(row[7]),
        usage=Usage(row[8], row[9], row[10], row[11], row[12], row[13]),
        raw_usage=None if row[14] is None else load_json(row[14]),
        cost=None if row[15] is None else Decimal(row[15]),
        cost_note=_unescape_opt(row[16]),
        status=cast(CallStatus, row[17]),
        error=_unescape_opt(row[18]),
        estimated=bool(row[19]),
        started_at=load_dt(row[20]),
        latency_s=row[21],
        ttfb_s=row[22],
        ttft_s=row[23],
        metadata=load_json(row[24]),
    )


def rollup_params(c: CallRecord) -> list[Any]:
    """What one new call adds to each session row above it: tokens, requests, unpriced.

    Returns:
        ``[input, output, cache_read, cache_write, reasoning, requests, unpriced]``, the order of
        the dialects' roll-up statements (money is added by each dialect, exactly).
    """
    u = c.usage
    return [
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.requests,
        1 if c.cost is None else 0,
    ]


# The roll-up's SET list for the integer totals; the parameters are rollup_params()'s.
ROLLUP_SET = (
    "input_tokens = input_tokens + {m}, output_tokens = output_tokens + {m}, "
    "cache_read_tokens = cache_read_tokens + {m}, cache_write_tokens = cache_write_tokens + {m}, "
    "reasoning_tokens = reasoning_tokens + {m}, requests = requests + {m}, "
    "unpriced_calls = unpriced_calls + {m}, call_count = call_count + 1"
)


def excluded_assignments(cols: str, skip: Collection[str]) -> str:
    """``c = excluded.c, ...`` for the columns of ``cols`` not in ``skip`` (an upsert's SET)."""
    names = (c.strip() for c in cols.split(","))
    return ", ".join(f"{c} = excluded.{c}" for c in names if c not in skip)


def session_filter(
    mark: str,
    *,
    status: str | None,
    parent_id: str | None,
    roots_only: bool,
    name: str | None = None,
    sessions: str = "sessions",
) -> tuple[str, list[Any]]:
    """The WHERE clause of ``list_sessions`` and its parameters.

    Args:
        mark: the dialect's parameter placeholder (``?`` or ``%s``).
        status: only sessions with this status, unless None.
        parent_id: only children of this session, unless None.
        roots_only: only sessions without a parent in this store (none, or one never stored
            here).
        name: only sessions with this (escaped) name, unless None.
        sessions: the (qualified) sessions table, for the roots' parent lookup.

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
    if name is not None:
        where.append(f"name = {mark}")
        params.append(name)
    if roots_only:
        # ids are never NULL (primary key), so NOT IN is safe.
        where.append(f"(parent_id IS NULL OR parent_id NOT IN (SELECT id FROM {sessions}))")
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


def up_cte(sessions: str, mark: str) -> str:
    """``WITH RECURSIVE up(id)``: the session whose id is the one parameter, and its ancestors.

    Args:
        sessions: the (qualified) sessions table.
        mark: the dialect's parameter placeholder (with a cast where the dialect needs one).
    """
    # UNION on the id alone: a parent_id cycle in damaged data still terminates.
    return (
        f"WITH RECURSIVE up(id) AS (SELECT {mark} UNION SELECT s.parent_id FROM {sessions} s "
        "JOIN up u ON s.id = u.id WHERE s.parent_id IS NOT NULL) "
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
