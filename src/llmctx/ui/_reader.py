"""Read-only SQL over a store's tables: the only code of ``llmctx ui`` that talks to a database.

The viewer never loads a whole store. Every page is a handful of bounded queries: the list
page one ``LIMIT``ed select (newest first through the ``started`` index) and one count capped
at :data:`COUNT_CAP`; a session page the tree of one session and at most
:data:`CALLS_SHOWN` of its calls; a call page one row by its unique id.

Connections are read-only: SQLite through a ``mode=ro`` URI (the viewer cannot create,
change or lock the file against writers), PostgreSQL in read-only transactions, each ended
before the connection goes back to the pool. Both dialects share one query builder; a
:class:`_Dialect` holds what differs (placeholders, time and money columns, JSON access,
case-insensitive matching).

Filters on calls (model, has-errors, text of prompts) match the sessions that hold a matching
call themselves, children included, so a root whose calls all sit in child sessions is found
through those children (the list marks them ``↳`` and links their parent).

A store an older llmctx wrote is read as it is, never migrated: session columns later schemas
added (:data:`LATER_SESSION_COLS`) are selected as NULL when the table lacks them; a table
lacking any other column the viewer reads is refused at open with the column and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .._exceptions import ConfigError, StoreError
from .._redact import redact_dsn
from .._usage import CallRecord
from ..stores import _sql
from ..stores._base import SessionRecord, shown_status
from ..stores._open import _kind, _split_schema, sqlite_file_of

__all__ = [
    "CALLS_SHOWN",
    "CHART_CALLS",
    "COUNT_CAP",
    "LATENCY_EDGES",
    "LATER_SESSION_COLS",
    "PAGE_SIZE",
    "ListPage",
    "ListQuery",
    "ListRow",
    "Overview",
    "Reader",
    "open_reader",
]

PAGE_SIZE = 50
#: The list counts matching sessions up to this many ("10,000+" beyond): an exact count of a
#: filtered 100k-session store would cost more than the page.
COUNT_CAP = 10_000
#: Calls of one session tree shown on its page (and in the timeline); the rest are counted.
CALLS_SHOWN = 1_000
#: Upper edges (seconds) of the latency histogram's bins; the last bin takes the rest.
LATENCY_EDGES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
_MODELS_SHOWN = 500
#: The list page's call charts (cost by model, latency) read at most this many calls: those of
#: the newest sessions in the range.
CHART_CALLS = 20_000
#: Session columns later schemas added (SQLite 3, PostgreSQL 2): a store an older llmctx wrote
#: lacks them, and the viewer reads them as NULL (a running row then keeps its status).
LATER_SESSION_COLS = ("pid", "host", "heartbeat_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def chart_model(kind: str | None, model: str | None) -> str | None:
    """The cost-by-model chart's row of a call: its model, or one "tool calls" row for every
    tool call (never priced), rather than one row per tool as if tools were models."""
    return "tool calls" if kind == "tool" else model


Sort = Literal["started", "cost", "tokens", "duration"]
SORTS: tuple[Sort, ...] = ("started", "cost", "tokens", "duration")


@dataclass(frozen=True)
class ListQuery:
    """What the list page asks for: search, filters, order and page (all optional)."""

    q: str = ""
    text: bool = False
    status: str = ""
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    errors: bool = False
    over_budget: bool = False
    children: bool = False
    sort: Sort = "started"
    descending: bool = True
    page: int = 1

    @property
    def call_filtered(self) -> bool:
        """True when a filter looks at calls, which lists child sessions too."""
        return bool(self.model or self.errors or (self.q and self.text))


@dataclass(frozen=True)
class ListRow:
    """One session of the list: what its row shows."""

    id: str
    name: str | None
    parent_id: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    unpriced_calls: int
    calls: int
    budget: dict[str, Any] | None
    pid: int | None = None
    host: str | None = None
    heartbeat_at: datetime | None = None

    @property
    def shown_status(self) -> str:
        """The status to show: ``interrupted`` for a running row whose process is gone."""
        if self.status != "running":
            return self.status
        return shown_status(
            SessionRecord(
                id=self.id,
                status="running",
                started_at=self.started_at,
                pid=self.pid,
                host=self.host,
                heartbeat_at=self.heartbeat_at,
            )
        )

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end; None while it has not ended."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def over_budget(self) -> bool:
        """True when a stored limit is below what the session spent."""
        b = self.budget or {}
        spent = {
            "usd": self.cost,
            "tokens": Decimal(self.input_tokens + self.output_tokens),
            "requests": None,
        }
        for key, used in spent.items():
            raw = b.get(key)
            if raw is not None and used is not None and used > Decimal(str(raw)):
                return True
        return False


@dataclass(frozen=True)
class ListPage:
    """A page of the list: its rows, whether more follow, and the (capped) match count."""

    rows: list[ListRow]
    has_next: bool
    total: int
    total_capped: bool


@dataclass
class Overview:
    """What the list page's charts draw: spend over time, cost by model, latency bins."""

    buckets: list[tuple[datetime, Decimal, int]] = field(default_factory=list)
    bucket: timedelta = timedelta(days=1)
    by_model: list[tuple[str, Decimal, int]] = field(default_factory=list)
    latency_bins: list[int] = field(default_factory=list)
    #: How many calls the call charts read, and the most they read.
    calls_read: int = 0
    calls_limit: int = 0

    @property
    def calls_capped(self) -> bool:
        """True when the call charts stopped at :attr:`calls_limit` (more calls exist)."""
        return bool(self.calls_limit) and self.calls_read >= self.calls_limit


def _like(text: str) -> str:
    """``%text%`` with LIKE's wildcards escaped (the statements say ``ESCAPE '\\'``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


class _Dialect:
    """What one SQL dialect spells differently; subclassed by the two readers below."""

    mark = "?"
    t_sessions = "sessions"
    t_calls = "calls"
    #: A root: no parent, or a parent this store never kept (as the stores' roots_only).
    root = "(s.parent_id IS NULL OR s.parent_id NOT IN (SELECT id FROM sessions))"
    started = "s.started_us"
    cost_num = "CAST(s.cost AS REAL)"
    call_cost_num = "CAST(cost AS REAL)"
    duration = "(julianday(s.ended_at) - julianday(s.started_at))"
    ilike = "LIKE"
    tags_text = "s.tags"
    request_text = "c.request"
    over_budget = (
        "(s.budget IS NOT NULL AND ("
        "CAST(s.cost AS REAL) > CAST(json_extract(s.budget, '$.usd') AS REAL)"
        " OR (s.input_tokens + s.output_tokens) > json_extract(s.budget, '$.tokens')"
        " OR s.requests > json_extract(s.budget, '$.requests')))"
    )
    #: ``s.id`` is one of a list given as one parameter (:meth:`ids_param`).
    id_in = "s.id IN (SELECT value FROM json_each(?))"
    #: The cached call rows' order: SQLite's rowid, PostgreSQL's identity ``seq``.
    call_order = "started_us, rowid"
    tree_order = "started_us, rowid"
    #: Columns of a call row that add the dialect's own ordering (SQLite's started_us).
    call_cols = _sql.CALL_COLS

    def time_param(self, value: datetime) -> Any:
        if value.tzinfo is None:
            value = value.astimezone()
        return (value - _EPOCH) // timedelta(microseconds=1)

    def ids_param(self, ids: list[str]) -> Any:
        return json.dumps(ids)

    def bucket_expr(self, seconds: int) -> str:
        return f"(s.started_us / {seconds * 1_000_000})"

    def bucket_start(self, value: Any, seconds: int) -> datetime:
        return _EPOCH + timedelta(seconds=int(value) * seconds)

    def session_from_row(self, row: Sequence[Any]) -> SessionRecord:
        return _sql.session_from_row(row, _sql.load_json_text, datetime.fromisoformat)

    def call_from_row(self, row: Sequence[Any]) -> CallRecord:
        return _sql.call_from_row(row, _sql.load_json_text, datetime.fromisoformat)

    def load_dt(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def load_json(self, value: Any) -> Any:
        return None if value is None else _sql.load_json_text(value)


class Reader(_Dialect):
    """The queries of every page, over a pool of read-only connections.

    Thread-safe: a request borrows a connection for its queries and gives it back. Subclasses
    open connections and end each borrow; the SQL is shared.
    """

    #: Indexes the list page relies on (created by the stores when they open the file).
    expected_indexes: tuple[str, ...] = ("sessions_started", "calls_model", "calls_failed")
    where: str = "the store"
    #: The session columns every query selects, ``NULL AS name`` for those the store lacks.
    session_cols: str = _sql.SESSION_COLS
    #: :data:`LATER_SESSION_COLS` this store lacks (an older llmctx wrote it).
    old_columns: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections (per dialect) -----------------------------------------------------------

    def _connect(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _end(self, conn: Any) -> None:
        """End the borrow's transaction, if the dialect has one."""

    def _broken(self, conn: Any) -> bool:
        return False

    def _errors(self) -> tuple[type[Exception], ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the viewer's reader of {self.where} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        ok = False
        try:
            yield conn
            ok = True
        except self._errors() as exc:
            raise StoreError(f"could not read {self.where}: {self._safe(str(exc))}") from None
        finally:
            try:
                self._end(conn)
            except Exception:
                ok = False
            if ok and not self._broken(conn):
                with self._lock:
                    if not self._closed:
                        self._idle.append(conn)
                        conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _safe(self, text: str) -> str:
        return text

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._conn() as conn:
            return self._fetch(conn, sql, params)

    def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            return list(cur.fetchall())
        finally:
            cur.close()

    def close(self) -> None:
        """Close every pooled connection; closing twice is harmless."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def _adapt_columns(self, sessions: set[str], calls: set[str]) -> None:
        """Select what this store's tables hold: NULL for the later session columns it lacks.

        Raises:
            StoreError: a column the viewer cannot do without is missing (the fix named).
        """
        wanted_s = [c.strip() for c in _sql.SESSION_COLS.split(",")]
        wanted_c = [c.strip() for c in self.call_cols.split(",")]
        lacking = [f"sessions.{c}" for c in wanted_s if c not in sessions]
        lacking += [f"calls.{c}" for c in wanted_c if c not in calls]
        fatal = [c for c in lacking if c.removeprefix("sessions.") not in LATER_SESSION_COLS]
        if fatal:
            raise StoreError(
                f"{self.where} lacks columns the viewer reads ({', '.join(fatal)}); it was not "
                "written by llmctx, or by a version this one cannot read. The viewer never "
                "changes a store: open it once with this llmctx, which migrates it (for example "
                "llmctx sessions ls --db THE_SAME_STORE), then start llmctx ui again"
            )
        self.old_columns = tuple(c for c in LATER_SESSION_COLS if c not in sessions)
        if self.old_columns:
            self.session_cols = ", ".join(c if c in sessions else f"NULL AS {c}" for c in wanted_s)
            self._list_cols = ", ".join(
                f"s.{c}" if c in sessions or c not in LATER_SESSION_COLS else f"NULL AS {c}"
                for c in (x.strip().removeprefix("s.") for x in self._list_cols.split(","))
            )

    # -- the list ------------------------------------------------------------------------------

    def _models_matching(self, conn: Any, text: str) -> list[str]:
        needle = text.lower()
        return [m for m in self._models(conn) if needle in m.lower()]

    def _models(self, conn: Any) -> list[str]:
        # A loose index scan over calls_model: one index seek per distinct model, not a scan of
        # every call.
        m = self.mark
        sql = (
            f"WITH RECURSIVE m(x, n) AS (SELECT min(model), 1 FROM {self.t_calls} "
            f"UNION ALL SELECT (SELECT min(model) FROM {self.t_calls} WHERE model > m.x), n + 1 "
            f"FROM m WHERE m.x IS NOT NULL AND n < {m}) SELECT x FROM m WHERE x IS NOT NULL"
        )
        return [_sql.unescape_text(r[0]) for r in self._fetch(conn, sql, (_MODELS_SHOWN,))]

    def models(self) -> list[str]:
        """The distinct model (and tool) names of the store's calls, sorted (at most 500)."""
        with self._conn() as conn:
            return self._models(conn)

    def _where(self, conn: Any, q: ListQuery) -> tuple[str, list[Any]]:
        m = self.mark
        where: list[str] = []
        params: list[Any] = []
        # Roots only, unless asked for children or a filter looks at calls (which sit in
        # children as often as in roots); a search matches names, ids and tags of roots but
        # models and text of the sessions holding the calls.
        roots = not q.children and not q.call_filtered
        if roots and not q.q.strip():
            where.append(self.root)
        if q.status in ("running", "interrupted"):
            # Both are stored as running; the process tells them apart, as in sessions ls.
            where.append("s.status = 'running'")
            gone = self._interrupted_ids(conn)
            if q.status == "interrupted":
                where.append(self.id_in if gone else "1 = 0")
            elif gone:
                where.append(f"NOT {self.id_in}")
            if gone:
                params.append(self.ids_param(gone))
        elif q.status:
            where.append(f"s.status = {m}")
            params.append(q.status)
        if q.since is not None:
            where.append(f"{self.started} >= {m}")
            params.append(self.time_param(q.since))
        if q.until is not None:
            where.append(f"{self.started} < {m}")
            params.append(self.time_param(q.until))
        if q.model:
            # Correlated, so one probe of calls_model (model, session_id) per session scanned
            # in the page's order: the page stops at 50 matches instead of collecting every
            # call of a common model first.
            where.append(
                f"EXISTS (SELECT 1 FROM {self.t_calls} c WHERE c.model = {m} "
                "AND c.session_id = s.id)"
            )
            params.append(_sql.escape_text(q.model))
        if q.errors:
            where.append(
                f"(s.status = 'failed' OR EXISTS (SELECT 1 FROM {self.t_calls} c "
                "WHERE c.session_id = s.id AND c.status = 'error'))"
            )
        if q.over_budget:
            where.append(self.over_budget)
        text = q.q.strip()
        if text:
            like = _like(text)
            own = (
                f"s.name {self.ilike} {m} ESCAPE '\\' OR s.id {self.ilike} {m} ESCAPE '\\' "
                f"OR {self.tags_text} {self.ilike} {m} ESCAPE '\\'"
            )
            ors = [f"({self.root} AND ({own}))" if roots else f"({own})"]
            params += [like, _prefix(text), like]
            models = self._models_matching(conn, text)
            if models:
                marks = ", ".join([m] * len(models))
                ors.append(
                    f"EXISTS (SELECT 1 FROM {self.t_calls} c WHERE c.model IN ({marks}) "
                    "AND c.session_id = s.id)"
                )
                params += [_sql.escape_text(x) for x in models]
            if q.text:
                ors.append(
                    f"EXISTS (SELECT 1 FROM {self.t_calls} c WHERE c.session_id = s.id AND "
                    f"({self.request_text} {self.ilike} {m} ESCAPE '\\' OR "
                    f"c.response {self.ilike} {m} ESCAPE '\\'))"
                )
                params += [like, like]
            where.append("(" + " OR ".join(ors) + ")")
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def _interrupted_ids(self, conn: Any) -> list[str]:
        """The stored ids of running rows whose process is gone (:func:`shown_status`).

        One pass over the running rows (few, but for sessions killed before they ended),
        judged by the function ``llmctx sessions ls`` uses. A store without the liveness
        columns has none: its running rows read as running.
        """
        if self.old_columns:
            return []
        rows = self._fetch(
            conn,
            f"SELECT id, started_at, pid, host, heartbeat_at FROM {self.t_sessions} "
            "WHERE status = 'running'",
            (),
        )
        now = datetime.now(UTC)
        return [
            sid
            for sid, started, pid, host, beat in rows
            if shown_status(
                SessionRecord(
                    id=sid,
                    status="running",
                    started_at=self.load_dt(started),
                    pid=pid,
                    host=None if host is None else _sql.unescape_text(host),
                    heartbeat_at=None if beat is None else self.load_dt(beat),
                ),
                now,
            )
            == "interrupted"
        ]

    def _order(self, q: ListQuery) -> str:
        direction = "DESC" if q.descending else "ASC"
        if q.sort == "cost":
            return f"{self.cost_num} {direction}, {self.started} DESC, s.id"
        if q.sort == "tokens":
            return f"(s.input_tokens + s.output_tokens) {direction}, {self.started} DESC, s.id"
        if q.sort == "duration":
            # Running sessions (no end yet) last, whichever the direction.
            return f"({self.duration} IS NULL), {self.duration} {direction}, s.id"
        return f"{self.started} {direction}, s.id {direction}"

    _list_cols = (
        "s.id, s.name, s.parent_id, s.status, s.started_at, s.ended_at, s.input_tokens, "
        "s.output_tokens, s.cost, s.unpriced_calls, s.call_count, s.budget, s.pid, s.host, "
        "s.heartbeat_at"
    )

    def list_page(self, q: ListQuery) -> ListPage:
        """One page of sessions matching ``q``, and how many match (up to :data:`COUNT_CAP`)."""
        m = self.mark
        page = max(1, q.page)
        with self._conn() as conn:
            where, params = self._where(conn, q)
            sql = (
                f"SELECT {self._list_cols} FROM {self.t_sessions} s{where} "
                f"ORDER BY {self._order(q)} LIMIT {m} OFFSET {m}"
            )
            rows = self._fetch(conn, sql, [*params, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE])
            count_sql = (
                f"SELECT count(*) FROM (SELECT 1 FROM {self.t_sessions} s{where} LIMIT {m}) AS x"
            )
            total = int(self._fetch(conn, count_sql, [*params, COUNT_CAP + 1])[0][0])
        out = [
            ListRow(
                id=_sql.unescape_text(r[0]),
                name=None if r[1] is None else _sql.unescape_text(r[1]),
                parent_id=None if r[2] is None else _sql.unescape_text(r[2]),
                status=r[3],
                started_at=self.load_dt(r[4]),
                ended_at=None if r[5] is None else self.load_dt(r[5]),
                input_tokens=int(r[6]),
                output_tokens=int(r[7]),
                cost=Decimal(r[8]),
                unpriced_calls=int(r[9]),
                calls=int(r[10]),
                budget=self.load_json(r[11]),
                pid=r[12],
                host=None if r[13] is None else _sql.unescape_text(r[13]),
                heartbeat_at=None if r[14] is None else self.load_dt(r[14]),
            )
            for r in rows[:PAGE_SIZE]
        ]
        return ListPage(
            rows=out,
            has_next=len(rows) > PAGE_SIZE,
            total=min(total, COUNT_CAP),
            total_capped=total > COUNT_CAP,
        )

    # -- charts of the list page ---------------------------------------------------------------

    def overview(self, since: datetime | None = None, until: datetime | None = None) -> Overview:
        """Spend over time (root sessions' roll-ups), cost by model and latency bins (calls).

        ``since`` / ``until`` bound the sessions' start times. The call charts read the calls
        of the newest sessions in that range, at most :data:`CHART_CALLS` of them (through the
        start and the calls-by-session indexes), so a cold overview of a million-call store
        costs a bounded read, not a scan of every call; :attr:`Overview.calls_capped` says
        when more were left out.
        """
        m = self.mark
        out = Overview(calls_limit=CHART_CALLS)
        rng: list[str] = []
        params: list[Any] = []
        if since is not None:
            rng.append(f"{self.started} >= {m}")
            params.append(self.time_param(since))
        if until is not None:
            rng.append(f"{self.started} < {m}")
            params.append(self.time_param(until))
        in_range = (" WHERE " + " AND ".join(rng)) if rng else ""
        with self._conn() as conn:
            # Two subqueries: min and max each one index probe (together they scan).
            span = self._fetch(
                conn,
                f"SELECT (SELECT min({self.started}) FROM {self.t_sessions} s{in_range}), "
                f"(SELECT max({self.started}) FROM {self.t_sessions} s{in_range})",
                [*params, *params],
            )
            lo, hi = span[0] if span else (None, None)
            if lo is not None:
                seconds = _bucket_seconds(self._span_seconds(lo, hi))
                out.bucket = timedelta(seconds=seconds)
                key = self.bucket_expr(seconds)
                where = " AND ".join([self.root, *rng])
                rows = self._fetch(
                    conn,
                    f"SELECT {key} AS b, sum({self.cost_num}), "
                    f"sum(s.input_tokens + s.output_tokens) FROM {self.t_sessions} s "
                    f"WHERE {where} GROUP BY b ORDER BY b",
                    params,
                )
                out.buckets = [
                    (self.bucket_start(b, seconds), Decimal(str(c or 0)), int(t or 0))
                    for b, c, t in rows
                ]
            cases = " ".join(
                f"WHEN latency_s < {edge} THEN {i}" for i, edge in enumerate(LATENCY_EDGES)
            )
            rows = self._fetch(
                conn,
                f"SELECT model, kind, CASE WHEN latency_s IS NULL THEN -1 {cases} "
                f"ELSE {len(LATENCY_EDGES)} END AS b, sum({self.call_cost_num}), count(*) "
                f"FROM (SELECT c.model, c.kind, c.latency_s, c.cost FROM {self.t_sessions} s "
                f"JOIN {self.t_calls} c ON c.session_id = s.id{in_range} "
                f"ORDER BY {self.started} DESC LIMIT {m}) AS x GROUP BY model, kind, b",
                [*params, CHART_CALLS],
            )
        by_model: dict[str, tuple[Decimal, int]] = {}
        bins = [0] * (len(LATENCY_EDGES) + 1)
        for model, kind, b, c, n in rows:
            name = chart_model(
                _sql.unescape_text(kind) if kind else None,
                _sql.unescape_text(model) if model else None,
            )
            name = name or "(none)"
            cost, count = by_model.get(name, (Decimal(0), 0))
            by_model[name] = (cost + Decimal(str(c or 0)), count + int(n))
            if int(b) >= 0:
                bins[int(b)] += int(n)
            out.calls_read += int(n)
        out.by_model = sorted(
            ((name, c, n) for name, (c, n) in by_model.items()), key=lambda x: (-x[1], -x[2], x[0])
        )
        out.latency_bins = bins
        return out

    def _span_seconds(self, lo: Any, hi: Any) -> float:
        return (int(hi) - int(lo)) / 1e6

    # -- one session ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        """The id of the session named by ``ref``: its id, or a unique prefix of it."""
        m = self.mark
        ref = ref.strip()
        if not ref:
            return None
        key = _sql.escape_text(ref)
        rows = self._rows(f"SELECT id FROM {self.t_sessions} WHERE id = {m}", (key,))
        if rows:
            return ref
        rows = self._rows(
            f"SELECT id FROM {self.t_sessions} WHERE id LIKE {m} ESCAPE '\\' LIMIT 2",
            (_prefix(key),),
        )
        return _sql.unescape_text(rows[0][0]) if len(rows) == 1 else None

    def tree(self, session_id: str) -> list[SessionRecord]:
        """The session and its descendants (the session first, then by start time)."""
        m = self.mark
        cte = _sql.tree_cte(self.t_sessions, m)
        key = _sql.escape_text(session_id)
        rows = self._rows(
            f"{cte}SELECT {self.session_cols} FROM {self.t_sessions} "
            f"WHERE id IN (SELECT id FROM tree) ORDER BY id <> {m}, {self.tree_order}",
            (key, key),
        )
        return [self.session_from_row(r) for r in rows]

    def calls(
        self, session_ids: Sequence[str], limit: int = CALLS_SHOWN
    ) -> tuple[list[CallRecord], int]:
        """The first ``limit`` calls of the given sessions, oldest first, and how many exist."""
        m = self.mark
        ids = list(dict.fromkeys(_sql.escape_text(s) for s in session_ids))
        if not ids:
            return [], 0
        out: list[CallRecord] = []
        total = 0
        with self._conn() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join([m] * len(chunk))
                total += int(
                    self._fetch(
                        conn,
                        f"SELECT count(*) FROM {self.t_calls} WHERE session_id IN ({marks})",
                        chunk,
                    )[0][0]
                )
                rows = self._fetch(
                    conn,
                    f"SELECT {self.call_cols} FROM {self.t_calls} WHERE session_id IN ({marks}) "
                    f"ORDER BY {self.call_order} LIMIT {m}",
                    [*chunk, limit],
                )
                out.extend(self.call_from_row(r) for r in rows)
        if len(ids) > 500:
            out.sort(key=lambda c: c.started_at)
        return out[:limit], total

    def call(self, call_id: str) -> CallRecord | None:
        """One call by its id, or None."""
        rows = self._rows(
            f"SELECT {self.call_cols} FROM {self.t_calls} WHERE id = {self.mark}",
            (_sql.escape_text(call_id),),
        )
        return self.call_from_row(rows[0]) if rows else None

    def session(self, session_id: str) -> SessionRecord | None:
        """One session row by its id, or None."""
        rows = self._rows(
            f"SELECT {self.session_cols} FROM {self.t_sessions} WHERE id = {self.mark}",
            (_sql.escape_text(session_id),),
        )
        return self.session_from_row(rows[0]) if rows else None

    # -- live ----------------------------------------------------------------------------------

    def version(self, session_id: str | None = None) -> str:
        """A short token that changes when what a page shows may have changed.

        For a session: its tree's rows (status, calls, end). For the list: the newest call
        and session and how many sessions are running.
        """
        if session_id is not None:
            cte = _sql.tree_cte(self.t_sessions, self.mark)
            rows = self._rows(
                f"{cte}SELECT id, status, call_count, ended_at FROM {self.t_sessions} "
                "WHERE id IN (SELECT id FROM tree) ORDER BY id",
                (_sql.escape_text(session_id),),
            )
        else:
            rows = self._rows(self._list_version_sql)
        digest = hashlib.blake2b(repr(rows).encode(), digest_size=8)
        return digest.hexdigest()

    _list_version_sql = (
        "SELECT (SELECT max(rowid) FROM calls), (SELECT max(rowid) FROM sessions), "
        "(SELECT count(*) FROM sessions WHERE status = 'running')"
    )

    def missing_indexes(self) -> list[str]:
        """Indexes the list page needs that this store lacks (an older llmctx wrote it)."""
        return []


def _bucket_seconds(span: float) -> int:
    """A bucket width giving at most ~60 bars over ``span`` seconds, at a round size."""
    for size in (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400):
        if span / size <= 60:
            return size
    return 365 * 86400


# -- SQLite ----------------------------------------------------------------------------------------


class SQLiteReader(Reader):
    """Reads a SQLite store through read-only connections (``mode=ro``).

    Raises:
        StoreError: the file does not exist or is not an llmctx database.
    """

    call_cols = f"{_sql.CALL_COLS}, started_us"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.where = f"the SQLite store at {path}"
        if path == ":memory:" or not Path(path).is_file():
            raise StoreError(
                f"no llmctx database at {path}: run something that records sessions first "
                "(llmctx workshop, llmctx demo), or pass --db PATH_OR_URL / set LLMCTX_DB"
            )
        try:
            self._inspect()
        except BaseException:
            self.close()
            raise

    def _inspect(self) -> None:
        """Check the file holds llmctx's tables; learn its indexes and columns."""
        path = self.path
        with self._conn() as conn:
            names = {r[0] for r in self._fetch(conn, "SELECT name FROM sqlite_master", ())}
            if not {"sessions", "calls"} <= names:
                raise StoreError(
                    f"{path} is not an llmctx database (it has no sessions and calls tables); "
                    "pass the file llmctx records to (--db or LLMCTX_DB)"
                )
            columns = {
                table: {r[1] for r in self._fetch(conn, f"PRAGMA table_info({table})", ())}
                for table in ("sessions", "calls")
            }
        self._indexes = names
        self._adapt_columns(columns["sessions"], columns["calls"])

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(Path(self.path).resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
            # A reader never blocks a writer in WAL mode; this bounds the rare wait on a
            # checkpoint.
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.where} read-only: {exc}") from None
        return conn

    def _errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        return list(conn.execute(sql, params).fetchall())

    def missing_indexes(self) -> list[str]:
        return [name for name in self.expected_indexes if name not in self._indexes]


# -- PostgreSQL ------------------------------------------------------------------------------------


class PostgresReader(Reader):
    """Reads a PostgreSQL store's schema in read-only transactions.

    Raises:
        StoreError: psycopg is missing, the server is out of reach, or the schema has no
            llmctx tables.
    """

    mark = "%s"
    started = "s.started_at"
    cost_num = "s.cost"
    call_cost_num = "cost"
    duration = "(s.ended_at - s.started_at)"
    ilike = "ILIKE"
    tags_text = "s.tags::text"
    request_text = "c.request::text"
    over_budget = (
        "(s.budget IS NOT NULL AND (s.cost > (s.budget->>'usd')::numeric"
        " OR (s.input_tokens + s.output_tokens) > (s.budget->>'tokens')::numeric"
        " OR s.requests > (s.budget->>'requests')::numeric))"
    )
    call_order = "started_at, seq"
    tree_order = "started_at, id"
    id_in = "s.id = ANY(%s)"
    expected_indexes = ("sessions_started", "calls_model", "calls_failed", "calls_seq")

    def __init__(self, dsn: str, schema: str = "llmctx") -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "reading PostgreSQL needs psycopg 3, which is not installed: "
                "pip install 'llmctx[postgres]'"
            ) from None
        self._psycopg = psycopg
        self._dsn = dsn
        self.schema = schema
        q = f'"{schema}"'
        self.t_sessions = f"{q}.sessions"
        self.t_calls = f"{q}.calls"
        self.root = f"(s.parent_id IS NULL OR s.parent_id NOT IN (SELECT id FROM {q}.sessions))"
        self.where = f"schema {schema!r} of {redact_dsn(dsn, dsn)}"
        self._list_version_sql = (
            f"SELECT (SELECT max(seq) FROM {self.t_calls}), "
            f"(SELECT max(started_at) FROM {self.t_sessions}), "
            f"(SELECT count(*) FROM {self.t_sessions} WHERE status = 'running')"
        )
        try:
            self._inspect()
        except BaseException:
            self.close()
            raise

    def _inspect(self) -> None:
        """Check the schema holds llmctx's tables; learn its indexes and columns."""
        schema, q = self.schema, f'"{self.schema}"'
        with self._conn() as conn:
            found = self._fetch(
                conn,
                "SELECT to_regclass(%s), to_regclass(%s)",
                (f"{q}.sessions", f"{q}.calls"),
            )
            if not found or found[0][0] is None or found[0][1] is None:
                raise StoreError(
                    f"{self.where} has no llmctx tables; pass the store llmctx records to "
                    "(--db postgresql://...?schema=NAME or LLMCTX_DB)"
                )
            self._indexes = {
                r[0]
                for r in self._fetch(
                    conn, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
                )
            }
            columns: dict[str, set[str]] = {"sessions": set(), "calls": set()}
            for table, column in self._fetch(
                conn,
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name IN ('sessions', 'calls')",
                (schema,),
            ):
                columns[table].add(column)
        self._adapt_columns(columns["sessions"], columns["calls"])

    def _connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self._dsn, autocommit=False, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to {self.where}: {self._safe(str(exc).strip())}"
            ) from None
        conn.read_only = True
        return conn

    def _safe(self, text: str) -> str:
        return redact_dsn(text, self._dsn)

    def _end(self, conn: Any) -> None:
        if not conn.closed and not conn.broken:
            conn.rollback()

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _errors(self) -> tuple[type[Exception], ...]:
        return (self._psycopg.Error,)

    def time_param(self, value: datetime) -> Any:
        return value.astimezone() if value.tzinfo is None else value

    def ids_param(self, ids: list[str]) -> Any:
        return list(ids)

    def bucket_expr(self, seconds: int) -> str:
        return f"floor(extract(epoch FROM s.started_at) / {seconds})"

    def bucket_start(self, value: Any, seconds: int) -> datetime:
        return _EPOCH + timedelta(seconds=int(value) * seconds)

    def _span_seconds(self, lo: Any, hi: Any) -> float:
        return float((hi - lo).total_seconds())

    def session_from_row(self, row: Sequence[Any]) -> SessionRecord:
        return _sql.session_from_row(row, _sql.unescape_tree, _utc)

    def call_from_row(self, row: Sequence[Any]) -> CallRecord:
        return _sql.call_from_row(row, _sql.unescape_tree, _utc)

    def load_dt(self, value: Any) -> datetime:
        return _utc(value)

    def load_json(self, value: Any) -> Any:
        return None if value is None else _sql.unescape_tree(value)

    def missing_indexes(self) -> list[str]:
        return [name for name in self.expected_indexes if name not in self._indexes]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def open_reader(db: str | None) -> Reader:
    """A read-only reader of the store ``--db`` names (default: ``$LLMCTX_DB``, else the
    default SQLite file).

    Raises:
        ConfigError: ``db`` is not a store the viewer can read (``memory:`` holds nothing
            another process can see).
        StoreError: the store does not exist or cannot be read.
    """
    target = (db or "").strip()
    path = sqlite_file_of(target or None)
    if path is not None:
        return SQLiteReader(path)
    from ..stores._open import _env

    resolved = target or _env()
    kind = _kind(resolved)
    if kind == "memory":
        raise ConfigError(
            "a memory: store lives inside one process, so the viewer cannot read it; record to "
            "a SQLite file or PostgreSQL (LLMCTX_DB) and pass that to --db"
        )
    dsn, schema = _split_schema(resolved)
    return PostgresReader(dsn, schema)
