"""The store at scale: sessions and calls in PostgreSQL (psycopg 3), one schema per store.

Layout (schema version kept in ``<schema>.llmctx_schema``, so later versions can migrate):

* ``sessions``: usage as ``bigint`` columns, ``cost`` as ``numeric`` (exact Decimal),
  ``tags``/``budget``/``metadata`` as ``jsonb``, datetimes as ``timestamptz``;
  ``pid``/``host``/``heartbeat_at`` say which process runs the session and when it was last
  seen alive (see :func:`llmctx.stores.shown_status`).
* ``calls``: ``id`` is the primary key (saving the same call twice keeps one row, so a write
  retried after a dropped connection is harmless); ``seq`` orders calls that started in the
  same microsecond; ``request``/``tool_calls``/``raw_usage``/``metadata`` as ``jsonb``. A
  call refused before it was sent has status ``refused`` and adds nothing to the totals.

A schema of an older version is migrated when a store opens it: version 1 to 2 adds the
session's ``pid``, ``host`` and ``heartbeat_at`` (NULL in old rows, which read as before). A
schema at the current version that lacks an index ``llmctx ui`` filters through (they came
after version 2) gets it then too: the check rides on the version query, so a schema that has
them all costs no extra round trip.

Naive datetimes are stored as UTC. Rows come back as timezone-aware datetimes (equal to the
ones saved). PostgreSQL cannot store the NUL character in text or jsonb, nor can UTF-8 hold a
lone surrogate: such strings are stored escaped and read back as they were (see
:mod:`llmctx.stores._sql`).

psycopg is imported when a store is created, so ``from llmctx.stores import PostgresStore``
works without the ``postgres`` extra installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._exceptions import ConfigError, StoreError
from .._redact import redact_dsn
from .._usage import CallRecord
from . import _outbox, _sql
from ._base import (
    SessionRecord,
    _running_asyncio,
    in_thread,
    is_transient,
    keep_abandoned_call,
    outlive_cancel,
    transient,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

# 2: sessions.pid, host and heartbeat_at (interrupted sessions are told from running ones).
SCHEMA_VERSION = 2
_T = TypeVar("_T")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError(
            "PostgresStore needs psycopg 3, which is not installed: pip install 'llmctx[postgres]'"
        ) from exc
    return psycopg


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# The shared columns in their order; a cast where the parameter is JSON text.
_SESSION_VALUES = (
    "%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s::jsonb, %s, %s, %s"
)
_CALL_VALUES = (
    "%s, %s, %s, %s, %s, %s::jsonb, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, "
    "%s, %s, %s, %s, %s, %s, %s, %s::jsonb"
)


_ZERO_TOTALS: list[Any] = [0, 0, 0, 0, 0, 0, Decimal(0), 0, 0]


def _session_params(r: SessionRecord) -> list[Any]:
    params = _sql.session_params(r, _aware, _sql.same)
    # A new row starts from zero totals, whatever the record says: its calls add up.
    params[_sql.TOTALS_AT] = _ZERO_TOTALS
    return params


def _call_params(c: CallRecord) -> list[Any]:
    return _sql.call_params(c, _aware, _sql.same)


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return _sql.session_from_row(row, _sql.unescape_tree, _utc)


def _call_from_row(row: Sequence[Any]) -> CallRecord:
    return _sql.call_from_row(row, _sql.unescape_tree, _utc)


class PostgresStore(_sql.ConnectionOwner["psycopg.Connection[Any]"]):
    """Sessions and calls in a PostgreSQL schema; thread-safe, one connection behind a lock.

    Async callers write through :meth:`asave_call` / :meth:`asave_session`, which run the
    same statements on a small pool of psycopg ``AsyncConnection``\\ s per event loop, so the
    loop is never blocked by the store.

    Every method runs in its own transaction and commits before returning. When the server
    drops the connection (a restart, an idle timeout) the next method reconnects and runs once
    more; every method is idempotent, so a retried write never doubles a row.

    Args:
        dsn: a libpq connection string, ``postgresql://user:pass@host:5432/db`` or
            ``host=... dbname=...``.
        schema: the schema holding the tables; created with them when missing.
        connect_timeout: seconds to wait for the server when connecting.
        async_pool_size: the most async connections the async faces (:meth:`asave_call`,
            :meth:`asave_session`) open per event loop; callers beyond it wait their turn.

    Raises:
        ConfigError: the DSN is malformed or ``schema`` is not a plain identifier (messages
            never contain the password).
        StoreError: psycopg is not installed, the server cannot be reached, or the schema was
            written by a newer llmctx.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "llmctx",
        connect_timeout: float = 10.0,
        async_pool_size: int = 8,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(
                f"schema {schema!r} is not a plain PostgreSQL identifier; use letters, digits "
                "and underscores (at most 63), not starting with a digit"
            )
        self._psycopg = _import_psycopg()
        try:
            params = self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.Error as exc:
            raise ConfigError(
                f"malformed PostgreSQL DSN {redact_dsn(dsn, dsn)!r}: "
                f"{redact_dsn(str(exc), dsn)}. Expected postgresql://user:password@host:port/"
                "dbname or 'host=... port=... dbname=... user=...'"
            ) from None
        self._dsn = dsn
        self.schema = schema
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        self._where = f"{host}:{port}"
        self._dbname = str(params.get("dbname") or params.get("user") or "")
        self._user = str(params.get("user") or "")
        self._connect_timeout = max(1, round(connect_timeout))
        self._has_timeout = "connect_timeout" in params
        if async_pool_size < 1:
            raise ConfigError(f"async_pool_size must be at least 1, not {async_pool_size}")
        self._async_pool_size = async_pool_size
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPool] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._sql = _Statements(schema)
        self._conn = self._connect()
        self._track_forks()
        _outbox.replay_store(self)

    @property
    def outbox_path(self) -> Path:
        """The journal of writes this database could not take yet (in the user data dir).

        Named by a hash of ``host:port/dbname/user/schema``: never by the password.
        """
        identity = f"postgresql {self._where}/{self._dbname}/{self._user}/{self.schema}"
        return _outbox.journal_in_data_dir(identity)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<PostgresStore {self._where}/{self._dbname} schema={self.schema!r}{state}>"

    # -- connection ------------------------------------------------------------------------

    def _describe(self) -> str:
        who = f", user {self._user!r}" if self._user else ""
        return f"PostgreSQL at {self._where} (database {self._dbname!r}{who})"

    def _connect(self) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {"autocommit": False}
        if not self._has_timeout:
            kwargs["connect_timeout"] = self._connect_timeout
        try:
            conn = self._psycopg.connect(self._dsn, **kwargs)
        except self._psycopg.Error as exc:
            raise self._connect_failure(exc) from None
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cast("psycopg.Connection[Any]", conn)

    def _migrate(self, conn: Any) -> None:
        sql = self._sql
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (f"{sql.q}.llmctx_schema",))
                row = cur.fetchone()
                version = 0
                have: set[str] = set()
                if row is not None and row[0] is not None:
                    cur.execute(
                        f"SELECT max(version), (SELECT array_agg(indexname::text) FROM "
                        f"pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)) "
                        f"FROM {sql.q}.llmctx_schema",
                        (self.schema, list(sql.ui_indexes)),
                    )
                    found = cur.fetchone()
                    version = int(found[0] or 0) if found else 0
                    have = set(found[1] or ()) if found else set()
                missing = [ddl for name, ddl in sql.ui_indexes.items() if name not in have]
                if version == SCHEMA_VERSION and missing:
                    self._add_indexes(conn, cur, missing)
                elif version < SCHEMA_VERSION:
                    # Serialise concurrent creators: IF NOT EXISTS alone races on the catalogs.
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.q,))
                    for statement in sql.schema_ddl:
                        cur.execute(statement)
                    cur.execute(f"SELECT max(version) FROM {sql.q}.llmctx_schema")
                    found = cur.fetchone()
                    if not found or found[0] is None or found[0] < SCHEMA_VERSION:
                        cur.execute(
                            f"INSERT INTO {sql.q}.llmctx_schema (version) VALUES (%s)",
                            (SCHEMA_VERSION,),
                        )
                    version = SCHEMA_VERSION
            conn.commit()
        except self._psycopg.Error as exc:
            conn.rollback()
            raise StoreError(
                f"cannot create or read the llmctx tables in schema {self.schema!r} of "
                f"{self._describe()}: {redact_dsn(str(exc).strip(), self._dsn)}. The user needs "
                "the CREATE privilege on the database, or create the schema beforehand"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"schema {self.schema!r} of {self._describe()} has llmctx schema version "
                f"{version}, newer than this llmctx understands ({SCHEMA_VERSION}); upgrade "
                "llmctx or use another schema"
            )

    def _add_indexes(self, conn: Any, cur: Any, missing: Sequence[str]) -> None:
        """Create the UI indexes a current schema lacks (a few seconds on a million calls).

        A user who may write the tables but does not own them cannot create indexes: the
        store then opens without them (``llmctx ui`` says which are missing, and is slower).
        """
        try:
            with conn.transaction():  # a savepoint: a refusal undoes only this step
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._sql.q,))
                for statement in missing:
                    cur.execute(statement)
        except self._psycopg.errors.InsufficientPrivilege:
            pass

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(
                f"the store on {self._describe()} is closed; open a new one "
                "(llmctx.stores.open_store)"
            )
        conn = self._conn
        if conn is None or conn.broken or conn.closed:
            self._conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = self._conn = self._connect()
        return conn

    def _run(self, action: str, body: Callable[[Any], _T]) -> _T:
        """Run ``body(cursor)`` in one transaction, reconnecting once if the link dropped."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    with conn.cursor() as cur:
                        result = body(cur)
                    conn.commit()
                    return result
                except BaseException as exc:
                    # Also on KeyboardInterrupt: the shared connection must leave the
                    # transaction before the next method uses it.
                    if not conn.broken and not conn.closed:
                        with contextlib.suppress(self._psycopg.Error):
                            conn.rollback()
                    if not isinstance(exc, self._psycopg.Error):
                        raise
                    if attempt == 1 and (conn.broken or conn.closed):
                        continue
                    raise self._failure(action, exc, conn) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, action: str, exc: Exception, conn: Any) -> StoreError:
        """The StoreError of a failed statement (the same for the sync and async faces)."""
        error = StoreError(
            f"could not {action} in schema {self.schema!r} of {self._describe()}: "
            f"{redact_dsn(str(exc).strip(), self._dsn)}"
        )
        # A dropped link, a shutdown or restart, a deadlock or serialization failure (all
        # OperationalError in psycopg): the same write can succeed.
        if conn.broken or isinstance(exc, self._psycopg.OperationalError):
            transient(error)
        return error

    def _connect_failure(self, exc: Exception) -> StoreError:
        error = StoreError(
            f"cannot connect to {self._describe()}: "
            f"{redact_dsn(str(exc).strip(), self._dsn)}. Check that the server is running "
            "and the DSN (LLMCTX_DB) is right"
        )
        # Out of reach or starting up: a server that restarts takes connections again.
        if isinstance(exc, self._psycopg.OperationalError):
            transient(error)
        return error

    # -- the async face ----------------------------------------------------------------------

    async def _arun(self, action: str, steps: _Steps) -> None:
        """Run ``steps`` in one transaction on a pooled async connection.

        The async twin of :meth:`_run`: the same statements (built I/O-free, once),
        the same reconnect-once rule, the same errors. It runs in a task of its own that the
        caller waits for through a cancellation (:func:`outlive_cancel`): a cancelled caller
        never leaves a transaction half-done or a connection checked out.
        """
        pool = self._pool_here()
        for attempt in (1, 2):
            conn = await pool.get()
            try:
                async with conn.cursor() as cur:
                    await _adrive(steps, cur)
                await conn.commit()
            except BaseException as exc:
                if not isinstance(exc, self._psycopg.Error):
                    # Not the server's answer (a cancelled loop): the link's state is unknown.
                    pool.discard(conn)
                    raise
                if not conn.broken and not conn.closed:
                    try:
                        await conn.rollback()
                    except self._psycopg.Error:
                        pool.discard(conn)
                        conn = None
                if conn is not None:
                    pool.put(conn)
                    if attempt == 1 and (conn.broken or conn.closed):
                        continue
                raise self._failure(action, exc, conn or _BROKEN) from None
            pool.put(conn)
            return

    def _pool_here(self) -> _AsyncPool:
        """The async connection pool of the running event loop (made on first use)."""
        if self._closed:
            self._connection()  # raises the closed-store error
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is None:
            # A loop that ended (asyncio.run returned) leaves its idle connections: close them.
            for other, stale in list(self._apools.items()):
                if other.is_closed():
                    stale.close()
                    self._apools.pop(other, None)
            pool = self._apools[loop] = _AsyncPool(self, self._async_pool_size)
        return pool

    async def _drain(self, pool: _AsyncPool) -> None:
        """Commit the calls waiting in ``pool``'s queue, up to :data:`_BATCH` per transaction,
        until none is left (one such task per event loop at a time); answer each caller.

        A batch the database refuses for one of its calls (not a transient failure) is
        written again call by call, so only that call's caller fails; a transient failure
        (the server out of reach) fails the batch at once, each caller then keeping its call
        in the outbox.
        """
        batch: list[_Queued] = []
        try:
            while pool.queue:
                batch = pool.queue[:_BATCH]
                del pool.queue[:_BATCH]
                planned: list[tuple[str, _Steps, asyncio.Future[None]]] = []
                # The batch's statements; a session row the batch already writes (the same
                # row object: a session's calls share one) is written once, before its first
                # call, instead of once per call.
                flat: _Steps = []
                rows: set[int] = set()
                for call, session, future in batch:
                    try:
                        steps = self._save_call_steps(call, session)
                    except Exception as exc:  # refused the same way by save_call
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    planned.append((f"save call {call.id!r}", steps, future))
                    if session is not None and id(session) in rows:
                        flat.extend(steps[1:])
                    else:
                        if session is not None:
                            rows.add(id(session))
                        flat.extend(steps)
                if not planned:
                    batch = []
                    continue
                action = planned[0][0] if len(planned) == 1 else f"save {len(planned)} calls"
                try:
                    await self._arun(action, flat)
                except StoreError as exc:
                    if len(planned) == 1 or is_transient(exc):
                        _answer_all(planned, exc)
                    else:
                        for action, item, future in planned:
                            try:
                                await self._arun(action, item)
                            except StoreError as one:
                                _answer_all([(action, item, future)], one)
                            else:
                                _answer_all([(action, item, future)], None)
                else:
                    _answer_all(planned, None)
                batch = []
        finally:
            pool.drainer = None
            left, pool.queue = [*batch, *pool.queue], []
            if left:  # only when this task was cancelled (its event loop is shutting down)
                stopped = StoreError(
                    f"the event loop stopped before these calls reached {self._describe()}"
                )
                for _, _, future in left:
                    if not future.done():
                        future.set_exception(stopped)

    async def _awrite(
        self, action: str, steps: _Steps, keep: Callable[[BaseException], None]
    ) -> None:
        if not _running_asyncio():
            # psycopg's async connections need asyncio: elsewhere (trio) the sync face runs
            # in a worker thread.
            await in_thread(lambda: self._run(action, lambda cur: _drive(steps, cur)))
            return
        await outlive_cancel(asyncio.ensure_future(self._arun(action, steps)), keep)

    async def asave_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Async face of :meth:`save_call`: the same statements on a pooled async connection.

        The event loop is never blocked: on asyncio the statements go through psycopg's
        ``AsyncConnection`` (a pool of at most ``async_pool_size`` connections per event loop),
        the calls of one loop that wait together committed in one pipelined transaction (up
        to 8; a call the database refuses fails only its own caller); elsewhere (trio)
        :meth:`save_call` runs in a worker thread. Committed before it returns.

        Cancellation while it runs lets the transaction finish (the whole call or, on
        failure, nothing, and the call kept in the outbox), then ``CancelledError``
        propagates; the connection goes back to the pool either way.

        Raises:
            StoreError: the write failed or the store is closed (as :meth:`save_call`).
        """
        keep = keep_abandoned_call(self, call, session)
        if not _running_asyncio():
            await self._awrite(f"save call {call.id!r}", self._save_call_steps(call, session), keep)
            return
        pool = self._pool_here()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The statements are built by the draining task, batch by batch: when hundreds of
        # callers finish at once, each one's own step on the loop stays this short.
        pool.queue.append((call, session, future))
        if pool.drainer is None:
            pool.drainer = asyncio.ensure_future(self._drain(pool))
        await outlive_cancel(future, keep)

    async def asave_session(self, record: SessionRecord) -> None:
        """Async face of :meth:`save_session` (see :meth:`asave_call`).

        Raises:
            StoreError: the write failed or the store is closed.
        """
        steps: _Steps = [(self._sql.upsert, _session_params(record))]
        await self._awrite(f"save session {record.id!r}", steps, lambda exc: None)

    def close(self) -> None:
        """Close the connection and every pooled async one; closing twice is harmless.

        An async connection in use when the store closes is closed when its write ends.
        """
        super().close()
        pools, self._apools = list(self._apools.values()), weakref.WeakKeyDictionary()
        for pool in pools:
            pool.close()

    async def aclose(self) -> None:
        """Async face of :meth:`close` (closing does no waiting on the server)."""
        self.close()

    def _forget_connection_after_fork(self) -> None:
        super()._forget_connection_after_fork()
        for pool in self._apools.values():
            _sql._ORPHANS.extend(pool.forget())
        self._apools = weakref.WeakKeyDictionary()

    # -- Store protocol --------------------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        """Insert or update the session row (committed before returning).

        Every field but the totals (usage, cost, unpriced and call counts) is written: those
        are the roll-up of the calls stored below the row (zero for a new row), which only
        :meth:`save_call` changes.

        Raises:
            StoreError: the write failed or the store is closed.
        """
        params = _session_params(record)
        self._run(f"save session {record.id!r}", lambda cur: cur.execute(self._sql.upsert, params))

    def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Insert one call, add it to the totals of its session and every ancestor, atomically.

        One transaction: the call row; when given, the session row's fields from ``session``
        but its totals (a new row starts from zero); then, if the call id was new, its
        usage, cost and count added to the row of ``call.session_id`` and of every ancestor
        stored (rows locked in id order, so concurrent writers neither lose an increment nor
        deadlock). A call whose id is already stored adds nothing, nor does a ``refused`` one
        (never sent). A KeyboardInterrupt or cancellation before the commit rolls all of it
        back.

        Raises:
            StoreError: the write failed or the store is closed.
        """
        steps = self._save_call_steps(call, session)
        self._run(f"save call {call.id!r}", lambda cur: _drive(steps, cur))

    def _save_call_steps(self, call: CallRecord, session: SessionRecord | None) -> _Steps:
        """The statements of one ``save_call``, parameters built once (no I/O); each face
        sends them on its own connection, as many times as it retries.

        The session row first (its header), then the call row and, in the same statement, the
        roll-up of a call that was new (``INSERT ... RETURNING`` in a CTE): no statement
        depends on another's answer, so the async face pipelines them.
        """
        call_params = _call_params(call)
        steps: _Steps = []
        if session is not None:
            steps.append((self._sql.upsert, _session_params(session)))
        if call_params[1] is not None and call.status != "refused":
            rollup = [*_sql.rollup_params(call), call.cost or Decimal(0)]
            steps.append((self._sql.insert_call_rollup, [call_params[1], *call_params, *rollup]))
        else:
            steps.append((self._sql.insert_call, call_params))
        return steps

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row, or None.

        Raises:
            StoreError: the read failed or the store is closed.
        """

        def body(cur: Any) -> SessionRecord | None:
            cur.execute(f"{self._sql.select} WHERE id = %s", (_sql.escape_text(session_id),))
            row = cur.fetchone()
            return None if row is None else _session_from_row(row)

        return self._run("read a session", body)

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
            "%s",
            status=status,
            parent_id=None if parent_id is None else _sql.escape_text(parent_id),
            roots_only=roots_only,
            name=None if name is None else _sql.escape_text(name),
            sessions=f"{self._sql.q}.sessions",
        )
        sql = f"{self._sql.select}{where} ORDER BY started_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(limit, 0))

        def body(cur: Any) -> list[SessionRecord]:
            cur.execute(sql, params)
            return [_session_from_row(r) for r in cur.fetchall()]

        return self._run("list sessions", body)

    def list_calls(self, session_ids: Sequence[str], *, refused: bool = False) -> list[CallRecord]:
        """Calls of the given sessions, oldest first (``refused``: with the refused ones).

        Raises:
            StoreError: the read failed or the store is closed.
        """
        ids = list(dict.fromkeys(_sql.escape_text(sid) for sid in session_ids))
        if not ids:
            return []
        sql = self._sql.list_all_calls if refused else self._sql.list_calls

        def body(cur: Any) -> list[CallRecord]:
            cur.execute(sql, (ids,))
            return [_call_from_row(r) for r in cur.fetchall()]

        return self._run("list calls", body)

    def touch_sessions(self, session_ids: Sequence[str], at: datetime) -> None:
        """Set the heartbeat of the given sessions that are still running (one transaction).

        Raises:
            StoreError: the write failed or the store is closed.
        """
        ids = list(dict.fromkeys(_sql.escape_text(sid) for sid in session_ids))
        if ids:
            params = (_aware(at), ids)
            self._run("record a heartbeat", lambda cur: cur.execute(self._sql.touch, params))

    def session_tree(self, session_id: str) -> list[SessionRecord]:
        """The session and all its descendants (the session first, then by start time).

        Raises:
            StoreError: the read failed or the store is closed.
        """

        def body(cur: Any) -> list[SessionRecord]:
            key = _sql.escape_text(session_id)
            cur.execute(self._sql.tree, (key, key))
            return [_session_from_row(r) for r in cur.fetchall()]

        return self._run("read a session tree", body)

    def delete_session(self, session_id: str) -> int:
        """Delete a session, its descendants and their calls in one transaction.

        Returns:
            How many sessions were deleted (0 when the id is unknown).

        Raises:
            StoreError: the write failed or the store is closed.
        """

        key = _sql.escape_text(session_id)

        def body(cur: Any) -> int:
            cur.execute(self._sql.delete_calls, (key,))
            cur.execute(self._sql.delete_sessions, (key,))
            return int(cur.rowcount)

        return self._run(f"delete session {session_id!r}", body)

    def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (for tests and teardown).

        Raises:
            StoreError: the drop failed or the store is closed.
        """
        self._run(f"drop schema {self.schema!r}", lambda cur: cur.execute(self._sql.drop))


# One write's statements and their parameters, none depending on another's answer.
_Steps = list[tuple[str, Sequence[Any]]]


def _drive(steps: _Steps, cur: Any) -> None:
    """Run ``steps`` on a sync cursor (the sync face; :meth:`PostgresStore._run` commits).

    Not pipelined: on a sync connection psycopg's pipeline costs more than the round trips
    it saves (290 against 219 us a call on loopback, measured side by side).
    """
    for sql, params in steps:
        cur.execute(sql, params)


async def _adrive(steps: _Steps, cur: Any) -> None:
    """Run ``steps`` and commit on an async cursor (the async face): the same statements,
    pipelined with the commit (one round trip: 474 against 670 us a call, 300 at once)."""
    conn = cur.connection
    async with conn.pipeline():
        for sql, params in steps:
            await cur.execute(sql, params)
        await conn.commit()


class _Broken:
    """Stands for a connection dropped while a failed write was being undone."""

    broken = True


_BROKEN = _Broken()


def _finish(conn: Any) -> None:
    """Close an async connection from sync code (what ``AsyncConnection.close`` does)."""
    conn._closed = True
    with contextlib.suppress(Exception):
        conn.pgconn.finish()


# The most calls one async transaction commits together. psycopg reads a pipeline's results
# in one step of the event loop when they are there, so a batch is also a pass of the loop
# spent on it: 8 calls (9 statements with their session row) keep it near a millisecond,
# where 16 took 3-6 ms in bench_loop_lag (a loaded run).
_BATCH = 8
# A queued async save: the call, its session row, the caller's future.
_Queued = tuple[CallRecord, "SessionRecord | None", "asyncio.Future[None]"]


def _answer_all(
    batch: Sequence[tuple[str, _Steps, asyncio.Future[None]]], outcome: BaseException | None
) -> None:
    for _, _, future in batch:
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


class _AsyncPool:
    """The async connections of one store on one event loop: at most ``size``, reused.

    Connections are opened when needed (never more than ``size``: later callers wait on a
    semaphore) and kept idle for the next write; a broken one is dropped.
    """

    def __init__(self, store: PostgresStore, size: int) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Any] = []
        self._out: set[Any] = set()
        # Calls waiting to be committed together, and the task committing them.
        self.queue: list[_Queued] = []
        self.drainer: asyncio.Future[None] | None = None

    async def get(self) -> Any:
        """A connection for one transaction (give it back with :meth:`put` or :meth:`discard`).

        Raises:
            StoreError: no connection could be opened.
        """
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    self._out.add(conn)
                    return conn
            conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        self._out.add(conn)
        return conn

    async def _connect(self) -> Any:
        store = self._store
        kwargs: dict[str, Any] = {"autocommit": False}
        if not store._has_timeout:
            kwargs["connect_timeout"] = store._connect_timeout
        try:
            return await store._psycopg.AsyncConnection.connect(store._dsn, **kwargs)
        except store._psycopg.Error as exc:
            raise store._connect_failure(exc) from None

    def put(self, conn: Any) -> None:
        """Give a connection back: kept for reuse, or closed if broken or the store is closed."""
        self._out.discard(conn)
        if conn.closed or self._store._closed:
            _finish(conn)
        else:
            self._idle.append(conn)
        self._slots.release()

    def discard(self, conn: Any) -> None:
        """Give back a connection whose state is unknown: it is closed."""
        self._out.discard(conn)
        _finish(conn)
        self._slots.release()

    def close(self) -> None:
        """Close the idle connections (those in use are closed when given back)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            _finish(conn)

    def forget(self) -> list[Any]:
        """After fork(): drop every connection unclosed (they belong to the parent)."""
        conns = [*self._idle, *self._out]
        self._idle, self._out = [], set()
        return conns


class _Statements:
    """The SQL of one schema, built once (psycopg prepares statements it sees repeatedly)."""

    def __init__(self, schema: str) -> None:
        q = f'"{schema}"'  # validated as a plain identifier by the caller
        self.q = q
        # What `llmctx ui` filters through: calls by model, failed calls (partial), and the
        # newest call (its live view polls max(seq)); added to current schemas lacking them.
        self.ui_indexes = {
            "calls_model": f"CREATE INDEX IF NOT EXISTS calls_model ON {q}.calls "
            "(model, session_id)",
            "calls_failed": f"CREATE INDEX IF NOT EXISTS calls_failed ON {q}.calls "
            "(session_id) WHERE status = 'error'",
            "calls_seq": f"CREATE INDEX IF NOT EXISTS calls_seq ON {q}.calls (seq)",
        }
        self.schema_ddl: Iterable[str] = (
            f"CREATE SCHEMA IF NOT EXISTS {q}",
            f"CREATE TABLE IF NOT EXISTS {q}.llmctx_schema (version integer NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS {q}.sessions (
                id                 text PRIMARY KEY,
                name               text,
                parent_id          text,
                status             text NOT NULL,
                tags               jsonb NOT NULL,
                budget             jsonb,
                started_at         timestamptz NOT NULL,
                ended_at           timestamptz,
                error              text,
                input_tokens       bigint NOT NULL,
                output_tokens      bigint NOT NULL,
                cache_read_tokens  bigint NOT NULL,
                cache_write_tokens bigint NOT NULL,
                reasoning_tokens   bigint NOT NULL,
                requests           bigint NOT NULL,
                cost               numeric NOT NULL,
                unpriced_calls     integer NOT NULL,
                call_count         integer NOT NULL,
                metadata           jsonb NOT NULL
            )""",
            # Version 2 (on a version 1 schema as on a new one).
            f"ALTER TABLE {q}.sessions ADD COLUMN IF NOT EXISTS pid integer, "
            "ADD COLUMN IF NOT EXISTS host text, "
            "ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz",
            f"CREATE INDEX IF NOT EXISTS sessions_started ON {q}.sessions (started_at)",
            f"CREATE INDEX IF NOT EXISTS sessions_parent ON {q}.sessions (parent_id)",
            f"""CREATE TABLE IF NOT EXISTS {q}.calls (
                id                 text PRIMARY KEY,
                seq                bigint GENERATED ALWAYS AS IDENTITY,
                session_id         text,
                kind               text NOT NULL,
                provider           text,
                model              text,
                request            jsonb,
                response           text,
                tool_calls         jsonb,
                input_tokens       bigint NOT NULL,
                output_tokens      bigint NOT NULL,
                cache_read_tokens  bigint NOT NULL,
                cache_write_tokens bigint NOT NULL,
                reasoning_tokens   bigint NOT NULL,
                requests           bigint NOT NULL,
                raw_usage          jsonb,
                cost               numeric,
                cost_note          text,
                status             text NOT NULL,
                error              text,
                estimated          boolean NOT NULL,
                started_at         timestamptz NOT NULL,
                latency_s          double precision,
                ttfb_s             double precision,
                ttft_s             double precision,
                metadata           jsonb NOT NULL
            )""",
            f"CREATE INDEX IF NOT EXISTS calls_session ON {q}.calls (session_id, started_at)",
            *self.ui_indexes.values(),
        )
        # A new row's totals are zero and an update leaves them: they are the calls' roll-up.
        header = _sql.excluded_assignments(_sql.SESSION_COLS, {"id", *_sql.TOTAL_COLS})
        self.upsert = (
            f"INSERT INTO {q}.sessions ({_sql.SESSION_COLS}) VALUES ({_SESSION_VALUES}) "
            f"ON CONFLICT (id) DO UPDATE SET {header}"
        )
        up = _sql.up_cte(f"{q}.sessions", "%s::text")
        self.insert_call = (
            f"INSERT INTO {q}.calls ({_sql.CALL_COLS}) VALUES ({_CALL_VALUES}) "
            "ON CONFLICT (id) DO NOTHING"
        )
        # The call row and, only when it was new, its roll-up into its session and every
        # ancestor: one statement. Rows are locked in id order first, so two writers rolling
        # up into one ancestor never deadlock. Parameters: the call's session id, the call's,
        # rollup_params(), then its cost.
        self.insert_call_rollup = (
            f"{up}, new_call AS ({self.insert_call} RETURNING 1) "
            f"UPDATE {q}.sessions s SET {_sql.ROLLUP_SET.format(m='%s')}, cost = cost + %s "
            f"FROM (SELECT id FROM {q}.sessions WHERE id IN (SELECT id FROM up) "
            "AND EXISTS (SELECT 1 FROM new_call) ORDER BY id FOR UPDATE) locked "
            "WHERE s.id = locked.id"
        )
        self.select = f"SELECT {_sql.SESSION_COLS} FROM {q}.sessions"
        self.list_all_calls = (
            f"SELECT {_sql.CALL_COLS} FROM {q}.calls WHERE session_id = ANY(%s) "
            "ORDER BY started_at, seq"
        )
        self.list_calls = self.list_all_calls.replace(
            " ORDER BY", " AND status <> 'refused' ORDER BY"
        )
        self.touch = (
            f"UPDATE {q}.sessions SET heartbeat_at = %s WHERE status = 'running' AND id = ANY(%s)"
        )
        cte = _sql.tree_cte(f"{q}.sessions", "%s")
        self.tree = (
            f"{cte}{self.select} WHERE id IN (SELECT id FROM tree) "
            "ORDER BY id <> %s, started_at, id"
        )
        self.delete_calls = f"{cte}DELETE FROM {q}.calls WHERE session_id IN (SELECT id FROM tree)"
        self.delete_sessions = f"{cte}DELETE FROM {q}.sessions WHERE id IN (SELECT id FROM tree)"
        self.drop = f"DROP SCHEMA IF EXISTS {q} CASCADE"
