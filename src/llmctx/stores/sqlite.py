"""The default store: one SQLite file in WAL mode, written through on every call.

Durability: WAL with ``synchronous=NORMAL``. A committed transaction survives the process
being killed at any point (SIGKILL included); after a power loss or an OS crash the last few
transactions may be rolled back, but the file is never corrupted. That is the guarantee llmctx
gives by default, and it keeps a ``save_call`` in the tens of microseconds because a commit
writes the WAL without waiting for an fsync; ``SQLiteStore(path, synchronous="FULL")`` waits
for it (a call then survives a power loss too). Checkpoints (copying the WAL back into the
database, with their fsyncs) run in a thread of the store's, not inside a caller's commit.

Async callers (:meth:`SQLiteStore.asave_call`) hand their write to the store's writer thread,
which commits the calls waiting together in one transaction; the event loop never waits on
SQLite.

Layout (``PRAGMA user_version`` holds the schema version, so later versions can migrate):

* ``sessions``: one row per session; its totals (usage, cost, call and unpriced counts) are
  the roll-up of every call stored in it and its descendants, kept by ``save_call`` in the
  call's own transaction; usage as integer columns, ``cost`` as Decimal text,
  ``tags``/``budget``/``metadata`` as JSON text, datetimes as ISO 8601 text plus an integer
  ``started_us`` (microseconds since the epoch) that orders rows whatever their time zone;
  ``pid``/``host``/``heartbeat_at`` say which process runs it and when it was last seen
  alive (see :func:`llmctx.stores.shown_status`).
* ``calls``: one row per call id (a unique index: saving the same call twice keeps the first
  row, so a write retried after a lost acknowledgement is harmless);
  ``request``/``tool_calls``/``raw_usage``/``metadata`` as JSON text. A call refused before it
  was sent has status ``refused`` and adds nothing to the totals.

Files of an older schema are migrated in place when opened (one transaction): version 1 to 2
drops duplicate call rows, 2 to 3 adds the session's ``pid``, ``host`` and ``heartbeat_at``
(NULL in old rows, which read as before).

Rows are not tied together by foreign-key constraints on purpose: a call must be kept even
when its session row was never written (a process killed between the two), and deletes walk
the tree explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from .._exceptions import ConfigError, StoreError
from .._usage import CallRecord
from . import _outbox, _sql
from ._base import (
    SessionRecord,
    _running_asyncio,
    in_thread,
    keep_abandoned_call,
    outlive_cancel,
    transient,
)
from ._open import default_sqlite_path, sqlite_path, sqlite_path_from_url

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "default_sqlite_path", "sqlite_path_from_url"]

logger = logging.getLogger("llmctx")

# 2: calls.id is unique (version 1 kept a call saved twice as two rows).
# 3: sessions.pid, host and heartbeat_at (interrupted sessions are told from running ones).
SCHEMA_VERSION = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Placeholders per IN (...) list; well under SQLite's oldest default limit of 999 variables.
_CHUNK = 500

_CALLS_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS calls_id ON calls (id)"
# The indexes `llmctx ui` filters through: calls by model, and failed calls (a partial index,
# so a call that succeeds costs it nothing). Created when a store opens a file that lacks them.
_UI_INDEXES = (
    ("calls_model", "CREATE INDEX IF NOT EXISTS calls_model ON calls (model, session_id)"),
    (
        "calls_failed",
        "CREATE INDEX IF NOT EXISTS calls_failed ON calls (session_id) WHERE status = 'error'",
    ),
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    id                 TEXT PRIMARY KEY,
    name               TEXT,
    parent_id          TEXT,
    status             TEXT NOT NULL,
    tags               TEXT NOT NULL,
    budget             TEXT,
    started_at         TEXT NOT NULL,
    started_us         INTEGER NOT NULL,
    ended_at           TEXT,
    error              TEXT,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    requests           INTEGER NOT NULL,
    cost               TEXT NOT NULL,
    unpriced_calls     INTEGER NOT NULL,
    call_count         INTEGER NOT NULL,
    metadata           TEXT NOT NULL,
    pid                INTEGER,
    host               TEXT,
    heartbeat_at       TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_us);
CREATE INDEX IF NOT EXISTS sessions_parent ON sessions (parent_id);
CREATE TABLE IF NOT EXISTS calls (
    id                 TEXT NOT NULL,
    session_id         TEXT,
    kind               TEXT NOT NULL,
    provider           TEXT,
    model              TEXT,
    request            TEXT,
    response           TEXT,
    tool_calls         TEXT,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    requests           INTEGER NOT NULL,
    raw_usage          TEXT,
    cost               TEXT,
    cost_note          TEXT,
    status             TEXT NOT NULL,
    error              TEXT,
    estimated          INTEGER NOT NULL,
    started_at         TEXT NOT NULL,
    started_us         INTEGER NOT NULL,
    latency_s          REAL,
    ttfb_s             REAL,
    ttft_s             REAL,
    metadata           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_session ON calls (session_id, started_us);
{_CALLS_ID_INDEX};
"""
# Version 2 -> 3: what a session row says about the process running it.
_ADD_LIVENESS = (
    "ALTER TABLE sessions ADD COLUMN pid INTEGER",
    "ALTER TABLE sessions ADD COLUMN host TEXT",
    "ALTER TABLE sessions ADD COLUMN heartbeat_at TEXT",
)

# The shared columns, then started_us (which only SQLite has), as _session_params gives them.
_SESSION_COLS = f"{_sql.SESSION_COLS}, started_us"
_SESSION_MARKS = ", ".join("?" * (_SESSION_COLS.count(",") + 1))
# An upsert, not INSERT OR REPLACE: REPLACE deletes the old row first, which would change its
# rowid (the tie-breaker of the orderings below). A new row's totals are zero, and an update
# leaves them alone: they are the store's own roll-up of the calls (see save_call).
_UPSERT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLS}) VALUES ({_SESSION_MARKS}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + _sql.excluded_assignments(_SESSION_COLS, {"id", *_sql.TOTAL_COLS})
)
# The hot path's upsert also leaves the indexed columns alone (SQLite rewrites an index entry
# for every indexed column in SET, changed or not); when they did change it updates nothing
# and save_call falls back to the full upsert.
_UPSERT_SESSION_HEADER = (
    f"INSERT INTO sessions ({_SESSION_COLS}) VALUES ({_SESSION_MARKS}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + _sql.excluded_assignments(_SESSION_COLS, {"id", "parent_id", "started_us", *_sql.TOTAL_COLS})
    + " WHERE sessions.parent_id IS excluded.parent_id"
    " AND sessions.started_us = excluded.started_us"
)
# A new call's roll-up: the rows of its session and of every ancestor, and their money (Decimal
# text, added in Python: SQLite would add it as a float).
_UP_CTE = _sql.up_cte("sessions", "?")
_SELECT_CHAIN = f"{_UP_CTE}SELECT id, cost FROM sessions WHERE id IN (SELECT id FROM up)"
_ROLLUP = f"UPDATE sessions SET {_sql.ROLLUP_SET.format(m='?')}, cost = ? WHERE id = ?"
_TOUCH = "UPDATE sessions SET heartbeat_at = ? WHERE status = 'running' AND id IN "
_ZERO_TOTALS = [0, 0, 0, 0, 0, 0, "0", 0, 0]
_SELECT_SESSION = f"SELECT {_sql.SESSION_COLS} FROM sessions"

_CALL_COLS = f"{_sql.CALL_COLS}, started_us"
# A call id already stored is left as it is (as in PostgresStore and MemoryStore).
_INSERT_CALL = (
    f"INSERT INTO calls ({_CALL_COLS}) VALUES ({', '.join('?' * 26)}) ON CONFLICT (id) DO NOTHING"
)
# list_calls' rows end with its ordering: started_us (the last of _CALL_COLS), then rowid.
_CALL_STARTED_US = _CALL_COLS.count(",")
_CALL_ROWID = _CALL_STARTED_US + 1

_TREE_CTE = _sql.tree_cte("sessions", "?")


def _epoch_us(value: datetime) -> int:
    # Naive datetimes are taken as UTC for ordering; the ISO text keeps them as they were.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _US


def _session_params(r: SessionRecord) -> list[Any]:
    params = _sql.session_params(r, datetime.isoformat, str)
    # A new row starts from zero totals, whatever the record says: its calls add up.
    params[_sql.TOTALS_AT] = _ZERO_TOTALS
    params.append(_epoch_us(r.started_at))
    return params


def _call_params(c: CallRecord) -> list[Any]:
    params = _sql.call_params(c, datetime.isoformat, str)
    params.append(_epoch_us(c.started_at))
    return params


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return _sql.session_from_row(row, _sql.load_json_text, datetime.fromisoformat)


def _call_from_row(row: Sequence[Any]) -> CallRecord:
    return _sql.call_from_row(row, _sql.load_json_text, datetime.fromisoformat)


def _ensure_indexes(conn: sqlite3.Connection) -> None:
    """Create the :data:`_UI_INDEXES` a file lacks (one catalog read when it has them all)."""
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [sql for name, sql in _UI_INDEXES if name not in have]
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in missing:
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class _CallPlan:
    """One ``save_call``, I/O-free: its parameters built once, applied inside a transaction."""

    __slots__ = ("call", "call_params", "rollup", "session_params")

    def __init__(self, call: CallRecord, session: SessionRecord | None) -> None:
        self.call = call
        self.call_params = _call_params(call)
        self.session_params = None if session is None else _session_params(session)
        self.rollup = _sql.rollup_params(call)

    def apply(self, conn: sqlite3.Connection) -> None:
        """Run the statements in ``conn``'s open transaction."""
        call_params = self.call_params
        session_params = self.session_params
        inserted = conn.execute(_INSERT_CALL, call_params).rowcount == 1
        if (
            session_params is not None
            and conn.execute(_UPSERT_SESSION_HEADER, session_params).rowcount == 0
        ):
            conn.execute(_UPSERT_SESSION, session_params)
        if inserted and call_params[1] is not None and self.call.status != "refused":
            added = self.call.cost
            rollup = self.rollup
            chain = conn.execute(_SELECT_CHAIN, (call_params[1],)).fetchall()
            conn.executemany(
                _ROLLUP,
                [
                    (*rollup, str(Decimal(cost) + added) if added else cost, sid)
                    for sid, cost in chain
                ],
            )


# The most calls the writer thread commits in one transaction.
_BATCH = 256
# A queued async write: the call, its session row, the caller's loop and future.
_Job = tuple[CallRecord, "SessionRecord | None", asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Writer:
    """A store's writer thread: runs async callers' writes off their event loops.

    Calls waiting together are committed in one transaction (each caller is answered after
    that commit), which is what lets hundreds of concurrent callers write through quickly.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self.pid = os.getpid()
        self._store = store
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"llmctx-sqlite-writer {store.path}", daemon=True
        )
        self._thread.start()

    def submit(
        self,
        call: CallRecord,
        session: SessionRecord | None,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[None],
    ) -> None:
        """Queue one write; ``future`` is resolved on ``loop`` once it is committed or failed.

        The statements' parameters are built here, in the writer thread: the event loop only
        queues the record.
        """
        self._queue.put((call, session, loop, future))

    def stop(self) -> None:
        """Let the writes already queued finish, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        while True:
            item = get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < _BATCH:
                try:
                    more = get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            outcomes: list[BaseException | None] = [None] * len(batch)
            plans: list[_CallPlan] = []
            planned: list[int] = []
            for i, (call, session, _, _) in enumerate(batch):
                try:
                    plans.append(_CallPlan(call, session))
                    planned.append(i)
                except Exception as exc:  # a record save_call would refuse the same way
                    outcomes[i] = exc
            try:
                written = self._store._write_batch(plans) if plans else []
            except Exception as exc:  # a bug, not a store error: fail the callers, keep running
                written = [exc] * len(plans)
            for i, outcome in zip(planned, written, strict=True):
                outcomes[i] = outcome
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for (_, _, loop, future), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_answer, answers)
            if stopping:
                return


# Commits between two nudges of the checkpoint thread, and the WAL size (in frames) past
# which it finishes a checkpoint under the store's lock (see _Checkpointer).
_CHECKPOINT_EVERY = 64
_WAL_RESTART_FRAMES = 2000


class _Checkpointer:
    """A store's checkpoint thread: copies the WAL back into the database off the writers' path.

    SQLite's own checkpoint runs inside the commit that crosses 1,000 WAL pages, so that
    caller pays for copying the pages and for two ``fsync`` calls. Here the store's connection
    has ``wal_autocheckpoint`` off; every :data:`_CHECKPOINT_EVERY` commits this thread runs a
    ``PASSIVE`` checkpoint on a connection of its own, alongside the writers. A WAL restarts
    from its start only once a checkpoint has caught up with every frame, which a steady
    writer may never let happen: when the WAL is still over :data:`_WAL_RESTART_FRAMES`
    frames after a pass, the thread takes the store's lock for a last pass over the frames
    written meanwhile (few): the next commit then starts the WAL over, so it stays bounded.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self.pid = os.getpid()
        self._store = store
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"llmctx-sqlite-checkpoint {store.path}", daemon=True
        )
        self._thread.start()

    def nudge(self) -> None:
        """Ask for a checkpoint soon (never blocks)."""
        self._wake.set()

    def stop(self) -> None:
        """End the thread (a checkpoint under way finishes first)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        store = self._store
        try:
            conn = sqlite3.connect(store.path, timeout=store._busy_ms / 1000, isolation_level=None)
        except sqlite3.Error:
            logger.exception("llmctx: no checkpoint connection to %s", store.path)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    # frames: the WAL's length when the pass began; writers may have added
                    # more since, so only a pass under the lock is known to have caught up.
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames > _WAL_RESTART_FRAMES:
                        with store._lock:
                            if not store._closed:
                                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    # Busy or locked by another process: the next nudge tries again.
                    logger.debug("llmctx: checkpoint of %s skipped", store.path, exc_info=True)
        finally:
            conn.close()


def _answer(answers: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, outcome in answers:
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


class SQLiteStore(_sql.ConnectionOwner[sqlite3.Connection]):
    """Sessions and calls in one SQLite file (WAL, ``synchronous=NORMAL``); thread-safe.

    Threads of its own, each started on first need and ended by :meth:`close`: a checkpoint
    thread (once the store has written), and a writer thread for :meth:`asave_call`.

    One connection is shared by every thread behind a lock: SQLite takes one writer at a time
    anyway, and a Python lock hands the connection over faster than SQLite's busy-wait would
    between several connections. Other processes may use the same file at the same time.

    Args:
        path: the database file; ``None`` means ``$LLMCTX_DB``, else
            ``platformdirs.user_data_dir("llmctx")/llmctx.db``. ``sqlite:`` URLs and
            ``":memory:"`` are accepted. Missing parent directories are created.
        busy_timeout: seconds a write waits for another connection's write lock before it
            fails (then it is retried briefly, and a session keeps the call in the outbox
            beside the file: ``<path>-outbox.jsonl``).
        synchronous: ``"NORMAL"`` (the default) commits without waiting for the disk: a
            committed call survives the process being killed at any point, but the last
            transactions before a power loss or an OS crash may be rolled back (the file is
            never corrupted). ``"FULL"`` ``fsync``\\ s the WAL on every commit, so a call also
            survives a power loss, at the cost of one disk flush per call.

    Raises:
        StoreError: the file cannot be created or opened for writing, is not a SQLite
            database, or was written by a newer llmctx.
        ConfigError: ``path`` is ``None`` and ``$LLMCTX_DB`` names a non-SQLite URL, or
            ``synchronous`` is neither ``"NORMAL"`` nor ``"FULL"``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout: float = 10.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(
                f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r} (see the "
                "durability notes of llmctx.stores.SQLiteStore)"
            )
        self.synchronous = synchronous
        self.path = sqlite_path(path)
        self._busy_ms = max(0, round(busy_timeout * 1000))
        self._lock = threading.Lock()
        self._closed = False
        self._writer_lock = threading.Lock()
        self._writer: _Writer | None = None
        self._checkpointer: _Checkpointer | None = None
        self._commits = 0
        self._conn = self._connect()
        self._track_forks()
        _outbox.replay_store(self)

    @property
    def outbox_path(self) -> Path | None:
        """The journal of writes this file could not take yet (None for ``:memory:``)."""
        return None if self.path == ":memory:" else Path(f"{self.path}-outbox.jsonl")

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SQLiteStore {self.path!r}{state}>"

    # -- connection ------------------------------------------------------------------------

    def _fail_open(self, problem: str) -> StoreError:
        return StoreError(
            f"cannot open the llmctx SQLite store at {self.path}: {problem}. "
            "Set LLMCTX_DB or pass a writable path"
        )

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._fail_open(
                    f"its directory {parent} cannot be created ({exc.strerror or exc})"
                ) from exc
            if Path(self.path).is_dir():
                raise self._fail_open("that path is a directory")
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_ms / 1000,
                isolation_level=None,  # transactions are begun explicitly below
                check_same_thread=False,  # guarded by self._lock
                cached_statements=64,
            )
        except sqlite3.Error as exc:
            raise self._fail_open(str(exc)) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() not in {"wal", "memory"}:
                raise self._fail_open(f"WAL mode could not be enabled (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if self.path != ":memory:":
                # Checkpoints run in the store's checkpoint thread, off the writers' path.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            _ensure_indexes(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise StoreError(
                    f"{self.path} is not a SQLite database (llmctx's store must be one). "
                    "Set LLMCTX_DB or pass the path of a new or existing llmctx database"
                ) from exc
            raise self._fail_open(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite store at {self.path} has schema version {version}, newer than "
                f"this llmctx understands ({SCHEMA_VERSION}); upgrade llmctx or use another "
                "file (set LLMCTX_DB)"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created the schema while this one waited for the lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                foreign = conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name IN ('sessions', 'calls')"
                ).fetchall()
                if foreign:
                    raise StoreError(
                        f"{self.path} already has tables named sessions/calls that llmctx did "
                        "not create; set LLMCTX_DB or pass another path"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version = SCHEMA_VERSION
            if version == 1:
                # Version 1 appended a call saved twice; keep its first row, then let the
                # unique index make every later save of that id a no-op.
                conn.execute(
                    "DELETE FROM calls WHERE rowid NOT IN "
                    "(SELECT min(rowid) FROM calls GROUP BY id)"
                )
                conn.execute(_CALLS_ID_INDEX)
                version = 2
            if version == 2:
                have = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
                for statement in _ADD_LIVENESS:
                    if statement.split()[5] not in have:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(
                f"the SQLite store at {self.path} is closed; open a new one "
                "(llmctx.stores.open_store)"
            )
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        error = StoreError(f"could not {action} in the SQLite store at {self.path}: {exc}")
        # Another connection holding the write lock past the busy timeout: it will let go.
        if getattr(exc, "sqlite_errorname", "") in {"SQLITE_BUSY", "SQLITE_LOCKED"} or any(
            word in str(exc) for word in ("database is locked", "database is busy")
        ):
            transient(error)
        return error

    @staticmethod
    def _abort(conn: sqlite3.Connection) -> None:
        # A KeyboardInterrupt between BEGIN and COMMIT must not leave the shared connection
        # inside a transaction (the next BEGIN would fail).
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]], action: str) -> None:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
                self._committed()
            except BaseException as exc:
                self._abort(conn)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(action, exc) from exc
                raise

    def _read(self, sql: str, params: Sequence[Any], action: str) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(action, exc) from exc

    # -- Store protocol --------------------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        """Insert or update the session row (committed before returning).

        Every field but the totals (usage, cost, unpriced and call counts) is written: those
        are the roll-up of the calls stored below the row (zero for a new row), which only
        :meth:`save_call` changes.

        Raises:
            StoreError: the write failed or the store is closed.
        """
        self._write([(_UPSERT_SESSION, _session_params(record))], f"save session {record.id!r}")

    def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Insert one call, add it to the totals of its session and every ancestor, atomically.

        One transaction: the call row; when given, the session row's fields from ``session``
        but its totals (a new row starts from zero); then, if the call id was new, its
        usage, cost and count added to the row of ``call.session_id`` and of every ancestor
        stored. A session row's totals therefore always equal the calls stored below it, even
        after a crash, and writers in several threads or processes never lose an increment.
        A call whose id is already stored adds nothing (a retried write is harmless), nor does
        a ``refused`` one (never sent). A KeyboardInterrupt or cancellation before the commit
        rolls all of it back.

        Raises:
            StoreError: the write failed or the store is closed.
        """
        plan = _CallPlan(call, session)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                plan.apply(conn)
                conn.execute("COMMIT")
                self._committed()
            except BaseException as exc:
                self._abort(conn)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(f"save call {call.id!r}", exc) from exc
                raise

    async def asave_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Async face of :meth:`save_call`: the same write, run off the event loop's thread.

        On asyncio the write goes to the store's writer thread (started on first use, stopped
        by :meth:`close`), which commits the calls that wait together in one transaction (a
        call is committed before its ``asave_call`` returns; a call that fails alone is
        retried in a transaction of its own, so one bad record fails only its own caller). On
        trio it runs :meth:`save_call` in a worker thread.

        Cancellation while the write runs does not stop it: the whole call is committed (or,
        on failure, rolled back and kept in the outbox), then ``CancelledError`` propagates.

        Raises:
            StoreError: the write failed or the store is closed (as :meth:`save_call`).
        """
        if not _running_asyncio():
            await in_thread(self.save_call, call, session)
            return
        if self._closed:
            self._connection()  # raises the closed-store error
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._writer_thread().submit(call, session, loop, future)
        await outlive_cancel(future, keep_abandoned_call(self, call, session))

    async def asave_session(self, record: SessionRecord) -> None:
        """Async face of :meth:`save_session`, run in a worker thread (see :meth:`asave_call`).

        Raises:
            StoreError: the write failed or the store is closed.
        """
        await in_thread(self.save_session, record)

    def _writer_thread(self) -> _Writer:
        writer = self._writer
        if writer is None or writer.pid != os.getpid():
            with self._writer_lock:
                writer = self._writer
                if writer is None or writer.pid != os.getpid():
                    writer = self._writer = _Writer(self)
        return writer

    def _write_batch(self, plans: Sequence[_CallPlan]) -> list[BaseException | None]:
        """Commit ``plans`` in one transaction (the writer thread's turn); one outcome each.

        A statement that fails rolls the batch back and each call is then written alone, so
        only the call at fault fails (with the error :meth:`save_call` would raise). A failure
        to begin or commit fails them all.
        """
        with self._lock:
            try:
                conn = self._connection()
            except StoreError as exc:
                return [exc] * len(plans)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._abort(conn)
                return [self._error("save calls", exc)] * len(plans)
            try:
                for plan in plans:
                    plan.apply(conn)
                conn.execute("COMMIT")
                self._committed()
            except Exception:
                self._abort(conn)
            else:
                return [None] * len(plans)
            outcomes: list[BaseException | None] = []
            for plan in plans:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    plan.apply(conn)
                    conn.execute("COMMIT")
                    self._committed()
                except Exception as exc:
                    self._abort(conn)
                    if isinstance(exc, sqlite3.Error):
                        exc = self._error(f"save call {plan.call.id!r}", exc)
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
            return outcomes

    def close(self) -> None:
        """Finish the writes waiting in the writer thread, stop it, close the connection.

        Closing twice is harmless; using the store afterwards raises StoreError.
        """
        with self._writer_lock:
            writer, self._writer = self._writer, None
            checkpointer, self._checkpointer = self._checkpointer, None
        if writer is not None and writer.pid == os.getpid():
            writer.stop()
        if checkpointer is not None and checkpointer.pid == os.getpid():
            checkpointer.stop()
        super().close()

    async def aclose(self) -> None:
        """Async face of :meth:`close` (it waits for the writer thread in a worker thread)."""
        await in_thread(self.close)

    def _forget_connection_after_fork(self) -> None:
        super()._forget_connection_after_fork()
        # The writer thread did not survive fork(); the next async write starts a new one.
        self._writer_lock = threading.Lock()
        self._writer = None
        self._checkpointer = None

    def _committed(self) -> None:
        """Count a commit (the caller holds the lock); every few, wake the checkpointer."""
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self.path != ":memory:":
            checkpointer = self._checkpointer
            if checkpointer is None or checkpointer.pid != os.getpid():
                with self._writer_lock:
                    if self._closed:
                        return
                    checkpointer = self._checkpointer = _Checkpointer(self)
            checkpointer.nudge()

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row, or None.

        Raises:
            StoreError: the read failed or the store is closed.
        """
        rows = self._read(
            f"{_SELECT_SESSION} WHERE id = ?", (_sql.escape_text(session_id),), "read a session"
        )
        return _session_from_row(rows[0]) if rows else None

    def list_sessions(
        self,
        *,
        limit: int | None = 50,
        status: str | None = None,
        parent_id: str | None = None,
        roots_only: bool = False,
        name: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first, filtered by status / parent / name / roots only.

        ``roots_only``: sessions without a parent in this store (a parent never stored here
        makes its child a root).

        Raises:
            StoreError: the read failed or the store is closed.
        """
        where, params = _sql.session_filter(
            "?",
            status=status,
            parent_id=None if parent_id is None else _sql.escape_text(parent_id),
            roots_only=roots_only,
            name=None if name is None else _sql.escape_text(name),
        )
        sql = f"{_SELECT_SESSION}{where} ORDER BY started_us DESC, rowid DESC LIMIT ?"
        params.append(-1 if limit is None else max(limit, 0))
        return [_session_from_row(r) for r in self._read(sql, params, "list sessions")]

    def list_calls(self, session_ids: Sequence[str], *, refused: bool = False) -> list[CallRecord]:
        """Calls of the given sessions, oldest first (``refused``: with the refused ones).

        Raises:
            StoreError: the read failed or the store is closed.
        """
        ids = list(dict.fromkeys(_sql.escape_text(sid) for sid in session_ids))
        rows: list[Any] = []
        sent = "" if refused else " AND status != 'refused'"
        for chunk in _chunks(ids):
            sql = (
                f"SELECT {_CALL_COLS}, rowid FROM calls WHERE session_id IN "
                f"({', '.join('?' * len(chunk))}){sent} ORDER BY started_us, rowid"
            )
            rows.extend(self._read(sql, chunk, "list calls"))
        if len(ids) > _CHUNK:
            rows.sort(key=lambda r: (r[_CALL_STARTED_US], r[_CALL_ROWID]))
        return [_call_from_row(r) for r in rows]

    def touch_sessions(self, session_ids: Sequence[str], at: datetime) -> None:
        """Set the heartbeat of the given sessions that are still running (one transaction).

        Raises:
            StoreError: the write failed or the store is closed.
        """
        ids = list(dict.fromkeys(_sql.escape_text(sid) for sid in session_ids))
        when = at.isoformat()
        self._write(
            [
                (f"{_TOUCH}({', '.join('?' * len(chunk))})", (when, *chunk))
                for chunk in _chunks(ids)
            ],
            "record a heartbeat",
        )

    def session_tree(self, session_id: str) -> list[SessionRecord]:
        """The session and all its descendants (the session first, then by start time).

        Raises:
            StoreError: the read failed or the store is closed.
        """
        sql = (
            f"{_TREE_CTE}{_SELECT_SESSION} WHERE id IN (SELECT id FROM tree) "
            "ORDER BY id != ?, started_us, rowid"
        )
        key = _sql.escape_text(session_id)
        rows = self._read(sql, (key, key), "read a session tree")
        return [_session_from_row(r) for r in rows]

    def delete_session(self, session_id: str) -> int:
        """Delete a session, its descendants and their calls in one transaction.

        Returns:
            How many sessions were deleted (0 when the id is unknown).

        Raises:
            StoreError: the write failed or the store is closed.
        """
        key = _sql.escape_text(session_id)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                # The CTE sits inside the IN (...) so that the statement starts with DELETE:
                # sqlite3 reports rowcount only for statements it recognises as DML.
                conn.execute(
                    f"DELETE FROM calls WHERE session_id IN ({_TREE_CTE}SELECT id FROM tree)",
                    (key,),
                )
                deleted = conn.execute(
                    f"DELETE FROM sessions WHERE id IN ({_TREE_CTE}SELECT id FROM tree)",
                    (key,),
                ).rowcount
                conn.execute("COMMIT")
            except BaseException as exc:
                self._abort(conn)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(f"delete session {session_id!r}", exc) from exc
                raise
        return int(deleted)
