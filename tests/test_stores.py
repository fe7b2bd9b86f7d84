"""The stores: one protocol suite run on memory, SQLite and PostgreSQL, then each store's own
guarantees (crash durability, concurrency, clear errors) and open_store/default_store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llmctx
from llmctx._exceptions import ConfigError, StoreError
from llmctx._redact import REDACTED, redact_dsn
from llmctx._usage import CallRecord, Usage
from llmctx.stores import (
    MemoryStore,
    PostgresStore,
    SessionRecord,
    SQLiteStore,
    Store,
    default_store,
    open_store,
    shown_status,
)
from llmctx.stores.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SECRET = "s3cr3t-Pa55"


def _session(sid: str, n: int = 0, **kw: Any) -> SessionRecord:
    return SessionRecord(id=sid, name=f"name-{sid}", started_at=T0 + timedelta(seconds=n), **kw)


def _call(sid: str | None, n: int = 0, **kw: Any) -> CallRecord:
    return CallRecord(session_id=sid, started_at=T0 + timedelta(milliseconds=n), **kw)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Store]:
    """Each store, empty; PostgreSQL gets a schema of its own, dropped afterwards."""
    if request.param == "memory":
        s: Store = MemoryStore()
        yield s
        s.close()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "store.db")
        yield s
        s.close()
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        pg = PostgresStore(dsn, schema=f"t_{unique}")
        try:
            yield pg
        finally:
            pg.close()
            _drop_schema(dsn, f"t_{unique}")


def _drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema through a connection of its own (the store may be closed)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _full_session() -> SessionRecord:
    return SessionRecord(
        id="sess-ü-1",
        name="données 🚀 «test»",
        parent_id="parent-0",
        status="failed",
        tags={"team": "ünïcødé", "env": "prod"},
        budget={"usd": "0.50", "tokens": 50_000, "requests": None},
        started_at=T0,
        ended_at=T0 + timedelta(seconds=3, microseconds=7),
        error="RuntimeError: boom — ✗",
        usage=Usage(1200, 340, 1000, 50, 20, 3),
        cost=Decimal("0.123456789012345678901"),
        unpriced_calls=2,
        calls=7,
        metadata={"nested": {"list": [1, 2.5, None, "x"], "flag": True}},
    )


def _full_call() -> CallRecord:
    return CallRecord(
        session_id="sess-ü-1",
        provider="openai",
        model="gpt-4o-mini",
        kind="llm",
        request={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "héllo 世界 🌍"}],
            "tools": [{"type": "function", "function": {"parameters": {"a": [1, {"b": None}]}}}],
            "temperature": 0.25,
        },
        response="réponse 👍",
        tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": '{"x": 1}'}}],
        usage=Usage(100, 20, 64, 8, 5, 1),
        raw_usage={"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 64}},
        cost=Decimal("0.000001234500"),
        cost_note=None,
        status="error",
        error="APIError: 500",
        estimated=True,
        started_at=T0 + timedelta(milliseconds=5),
        latency_s=1.234567,
        ttfb_s=0.1,
        ttft_s=0.2,
        metadata={"attempt": 2, "route": ["a", "b"]},
        id="call-ü-1",
    )


# -- the protocol, on every store ----------------------------------------------------------------


def _calls_adding_up_to(record: SessionRecord) -> list[CallRecord]:
    """Calls whose roll-up is ``record``'s totals (one carries them, the rest count)."""
    priced = record.calls - record.unpriced_calls
    return [
        _call(record.id, 0, usage=record.usage, cost=record.cost),
        *(_call(record.id, n, cost=Decimal(0)) for n in range(1, priced)),
        *(_call(record.id, priced + n) for n in range(record.unpriced_calls)),
    ]


def test_session_round_trips_every_field(store: Store) -> None:
    """A saved session reads back equal field by field, its rolled-up Decimal digits included."""
    record = _full_session()
    store.save_session(record)
    got = store.get_session(record.id)
    assert got == record.replace(usage=Usage(), cost=Decimal(0), unpriced_calls=0, calls=0)
    for call in _calls_adding_up_to(record):
        store.save_call(call)
    store.save_session(record)
    got = store.get_session(record.id)
    assert got == record
    assert got is not None
    assert str(got.cost) == "0.123456789012345678901"
    assert got.started_at == T0


def test_call_round_trips_every_field(store: Store) -> None:
    """A saved call reads back equal: nested JSON request, unicode, exact Decimal, floats."""
    call = _full_call()
    store.save_call(call)
    (got,) = store.list_calls([call.session_id or ""])
    assert got == call
    assert str(got.cost) == "0.000001234500"
    assert got.request["messages"][0]["content"] == "héllo 世界 🌍"


# Strings no SQL store can take as they are: lone surrogates (UTF-8 cannot encode them), NUL
# (PostgreSQL refuses it in text and jsonb), and the escape character itself, with neighbours.
AWKWARD = [
    "\udcff",
    "bad \udcff byte",
    "\ud800\udfff\ud83d",
    "nul\x00inside",
    "\x00",
    "\ufdd0",
    "\ufdd0looks escaped\ufdd00000",
    "mixed \x00 \udc80 \ufdd0 ü 🚀",
    "\\u0000 is only text",
]


def test_unstorable_text_round_trips_in_every_field(store: Store) -> None:
    """Lone surrogates, NUL and the escape character come back as the same Python strings."""
    for n, text in enumerate(AWKWARD):
        sid = f"s{n}{text}"
        session = _session(sid, n, status="running").replace(
            name=text,
            parent_id=f"p{text}",
            tags={text: text, "k": text},
            error=text,
            metadata={text: [text, {"nested": text}]},
            budget={"note": text},
        )
        call = _call(sid, n).replace(
            id=f"c{n}{text}",
            provider=text,
            model=text,
            kind=text,
            request={"messages": [{"role": "user", "content": text}], text: 1},
            response=text,
            tool_calls=[{"function": {"name": text, "arguments": text}}],
            raw_usage={text: text},
            cost_note=text,
            error=text,
            metadata={"m": text},
        )
        store.save_session(session)
        store.save_call(call)
        assert store.get_session(sid) == session.replace(calls=1, unpriced_calls=1)
        assert store.list_calls([sid]) == [call]
        assert [r.id for r in store.list_sessions(parent_id=f"p{text}")] == [sid]
        assert [r.id for r in store.session_tree(sid)] == [sid]
    assert store.delete_session(f"s0{AWKWARD[0]}") == 1
    assert store.list_calls([f"s0{AWKWARD[0]}"]) == []


def test_unpriced_call_keeps_none_cost_and_note(store: Store) -> None:
    """A call without a price keeps cost None and its cost_note."""
    call = _call("s", cost=None, cost_note="no price for model 'mystery-1'", request=None)
    store.save_call(call)
    (got,) = store.list_calls(["s"])
    assert got.cost is None
    assert got.cost_note == "no price for model 'mystery-1'"
    assert got.request is None


def test_save_call_with_session_writes_both(store: Store) -> None:
    """save_call(call, session) inserts the session row, then updates it on the next call."""
    s = _session("s1", status="running")
    first = _call("s1", 1, usage=Usage(10, 2, requests=1), cost=Decimal("0.01"))
    store.save_call(first, s.replace(calls=1, usage=Usage(10, 2, requests=1)))
    assert store.get_session("s1") == s.replace(
        calls=1, cost=Decimal("0.01"), usage=Usage(10, 2, requests=1)
    )
    later = s.replace(calls=2, cost=Decimal("0.02"), usage=Usage(20, 4, requests=2))
    store.save_call(_call("s1", 2, usage=Usage(10, 2, requests=1), cost=Decimal("0.01")), later)
    assert store.get_session("s1") == later
    assert len(store.list_calls(["s1"])) == 2


def test_session_totals_are_the_roll_up_of_stored_calls(store: Store) -> None:
    """A row's totals come from its calls and its descendants', whatever snapshot was passed."""
    store.save_session(_session("root", 0, status="running"))
    store.save_session(_session("mid", 1, parent_id="root", status="running"))
    leaf = _session("leaf", 2, parent_id="mid", status="running")
    # The snapshot claims 99 calls and no usage: the store counts what it stores.
    store.save_call(
        _call("leaf", 1, usage=Usage(5, 1, requests=1), cost=Decimal("0.5")),
        leaf.replace(calls=99),
    )
    store.save_call(_call("mid", 2, usage=Usage(7, 2, requests=1)))  # unpriced
    store.save_call(_call("root", 3, usage=Usage(1, 1, requests=1), cost=Decimal("0.25")))
    got = {r.id: r for r in store.session_tree("root")}
    assert (got["leaf"].calls, got["mid"].calls, got["root"].calls) == (1, 2, 3)
    assert got["leaf"].usage == Usage(5, 1, requests=1)
    assert got["mid"].usage == Usage(12, 3, requests=2)
    assert got["root"].usage == Usage(13, 4, requests=3)
    assert (got["mid"].cost, got["root"].cost) == (Decimal("0.5"), Decimal("0.75"))
    assert (got["leaf"].unpriced_calls, got["mid"].unpriced_calls) == (0, 1)
    assert got["root"].unpriced_calls == 1
    # A session row written again (its exit) keeps the roll-up, never the snapshot's totals.
    store.save_session(_session("root", 0, status="completed", calls=0))
    root = store.get_session("root")
    assert root is not None
    assert (root.status, root.calls, root.cost) == ("completed", 3, Decimal("0.75"))


def test_save_call_updates_parent_and_start_of_existing_session(store: Store) -> None:
    """A session row whose parent or start changed is fully rewritten by save_call."""
    store.save_session(_session("child", 5))
    moved = _session("child", 9, parent_id="root", status="completed")
    store.save_call(_call("child", cost=Decimal(0)), moved)
    assert store.get_session("child") == moved.replace(calls=1)
    assert [r.id for r in store.list_sessions(parent_id="root")] == ["child"]


def test_save_call_without_session_only_adds_to_the_totals(store: Store) -> None:
    """save_call(call) without a session adds the call to its row and changes nothing else."""
    s = _session("s1", status="running")
    store.save_session(s)
    store.save_call(_call("s1", usage=Usage(3, 4), cost=Decimal(1)))
    assert store.get_session("s1") == s.replace(calls=1, usage=Usage(3, 4), cost=Decimal(1))


def test_save_session_replaces(store: Store) -> None:
    """save_session on an existing id replaces the row."""
    store.save_session(_session("s1", status="running"))
    done = _session("s1", status="completed", ended_at=T0 + timedelta(minutes=1))
    store.save_session(done)
    assert store.get_session("s1") == done
    assert len(store.list_sessions(limit=None)) == 1


def test_get_unknown_session_is_none(store: Store) -> None:
    """An unknown id reads as None."""
    assert store.get_session("nope") is None


def test_list_sessions_filters_and_orders(store: Store) -> None:
    """list_sessions returns newest first and honours limit, status, parent and roots_only."""
    store.save_session(_session("a", 1, status="completed"))
    store.save_session(_session("b", 3, status="failed"))
    store.save_session(_session("c", 2, status="completed", parent_id="a"))
    store.save_session(_session("d", 4, status="completed", parent_id="a"))
    ids = lambda rows: [r.id for r in rows]  # noqa: E731
    assert ids(store.list_sessions()) == ["d", "b", "c", "a"]
    assert ids(store.list_sessions(limit=2)) == ["d", "b"]
    assert ids(store.list_sessions(limit=None)) == ["d", "b", "c", "a"]
    assert ids(store.list_sessions(status="completed")) == ["d", "c", "a"]
    assert ids(store.list_sessions(parent_id="a")) == ["d", "c"]
    assert ids(store.list_sessions(roots_only=True)) == ["b", "a"]
    assert ids(store.list_sessions(roots_only=True, status="failed")) == ["b"]
    assert store.list_sessions(status="cancelled") == []


def test_list_calls_oldest_first_of_given_sessions(store: Store) -> None:
    """list_calls returns only the given sessions' calls, oldest first across sessions."""
    c1, c2, c3 = _call("x", 30), _call("y", 10), _call("x", 20)
    other = _call("z", 0)
    for c in (c1, c2, c3, other):
        store.save_call(c)
    assert [c.id for c in store.list_calls(["x", "y"])] == [c2.id, c3.id, c1.id]
    assert [c.id for c in store.list_calls(["x"])] == [c3.id, c1.id]
    assert store.list_calls([]) == []
    assert store.list_calls(["unknown"]) == []


def _tree(store: Store) -> None:
    # root ─┬ a ── a1 ── a11      (depth 3 below root)
    #       └ b
    # other (unrelated)
    store.save_session(_session("root", 0))
    store.save_session(_session("a", 1, parent_id="root"))
    store.save_session(_session("b", 2, parent_id="root"))
    store.save_session(_session("a1", 3, parent_id="a"))
    store.save_session(_session("a11", 4, parent_id="a1"))
    store.save_session(_session("other", 5))
    for i, sid in enumerate(["root", "a", "b", "a1", "a11", "a11", "other"]):
        store.save_call(_call(sid, i))


def test_session_tree_depth_three(store: Store) -> None:
    """session_tree returns the session first, then every descendant down to depth 3."""
    _tree(store)
    tree = store.session_tree("root")
    assert tree[0].id == "root"
    assert sorted(r.id for r in tree) == ["a", "a1", "a11", "b", "root"]
    assert [r.id for r in store.session_tree("a1")] == ["a1", "a11"]
    assert store.session_tree("missing") == []


def test_delete_session_cascades(store: Store) -> None:
    """Deleting a session removes its descendants and their calls, nothing else."""
    _tree(store)
    assert store.delete_session("a") == 3
    assert {r.id for r in store.list_sessions(limit=None)} == {"root", "b", "other"}
    assert store.list_calls(["a", "a1", "a11"]) == []
    assert len(store.list_calls(["root", "b", "other"])) == 3
    assert store.delete_session("root") == 2
    assert [r.id for r in store.list_sessions(limit=None)] == ["other"]
    assert store.delete_session("root") == 0


def test_close_twice_is_harmless(store: Store) -> None:
    """close() may be called twice."""
    store.close()
    store.close()


def test_many_threads_lose_nothing(store: Store) -> None:
    """Calls written by 8 threads at once through one store are all kept."""
    threads, per_thread = 8, 60
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                sess = _session(f"s{t}", t, calls=i + 1, status="running")
                store.save_call(_call(f"s{t}", i), sess)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(store.list_calls([f"s{t}" for t in range(threads)])) == threads * per_thread
    assert all(r.calls == per_thread for r in store.list_sessions(limit=None))


# -- SQLite --------------------------------------------------------------------------------------


def _pythonpath_env() -> dict[str, str]:
    src = str(Path(llmctx.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def test_sqlite_call_survives_sigkill_right_after_save(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after save_call returns still has the call on disk."""
    db = tmp_path / "crash.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from decimal import Decimal
        from llmctx._usage import CallRecord, Usage
        from llmctx.stores import SessionRecord, SQLiteStore
        store = SQLiteStore({str(db)!r})
        session = SessionRecord(id="victim", status="running", calls=1, cost=Decimal("0.25"))
        store.save_call(
            CallRecord(
                session_id="victim", id="last-words", usage=Usage(7, 3), cost=Decimal("0.25")
            ),
            session,
        )
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=_pythonpath_env(), capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    store = SQLiteStore(db)
    try:
        (call,) = store.list_calls(["victim"])
        assert call.id == "last-words"
        assert call.usage == Usage(7, 3)
        session = store.get_session("victim")
        assert session is not None
        assert session.cost == Decimal("0.25")
    finally:
        store.close()


def test_sqlite_separate_stores_on_one_file_lose_nothing(tmp_path: Path) -> None:
    """Threads each with their own SQLiteStore on the same file (like processes) lose nothing."""
    db = tmp_path / "shared.db"
    SQLiteStore(db).close()
    threads, per_thread = 4, 50
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        own = SQLiteStore(db)
        try:
            barrier.wait()
            for i in range(per_thread):
                own.save_call(_call(f"p{t}", i), _session(f"p{t}", calls=i + 1))
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)
        finally:
            own.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    reader = SQLiteStore(db)
    try:
        assert len(reader.list_calls([f"p{t}" for t in range(threads)])) == threads * per_thread
    finally:
        reader.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_store_keeps_working_in_a_forked_child(tmp_path: Path) -> None:
    """A forked child writes through its own connection; the parent's store keeps working."""
    store = SQLiteStore(tmp_path / "fork.db")
    try:
        store.save_call(_call("parent", 0))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                store.save_call(_call("child", 1))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        store.save_call(_call("parent", 2))
        assert len(store.list_calls(["parent", "child"])) == 3
    finally:
        store.close()


class _Interrupting:
    """Raises KeyboardInterrupt when sqlite3 adapts it, i.e. inside the open transaction.

    A fake: a real interrupt cannot be aimed between BEGIN and COMMIT deterministically.
    """

    def __conform__(self, protocol: object) -> object:
        raise KeyboardInterrupt


def test_sqlite_interrupt_mid_transaction_rolls_back(tmp_path: Path) -> None:
    """KeyboardInterrupt inside save_call's transaction rolls it back; the store stays usable."""
    store = SQLiteStore(tmp_path / "kb.db")
    try:
        with pytest.raises(KeyboardInterrupt):
            store.save_call(_call("s"), _session("s").replace(name=_Interrupting()))
        assert store.list_calls(["s"]) == []
        store.save_call(_call("s"), _session("s"))
        assert len(store.list_calls(["s"])) == 1
    finally:
        store.close()


def test_sqlite_file_is_wal_and_versioned(tmp_path: Path) -> None:
    """The database is in WAL mode, synchronous=NORMAL, with a schema version."""
    db = tmp_path / "wal.db"
    store = SQLiteStore(db)
    try:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        store.close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION
    finally:
        raw.close()


def test_sqlite_version_1_file_is_migrated_to_one_row_per_call(tmp_path: Path) -> None:
    """A file of schema 1 with a call saved twice opens with the first row kept, then dedupes."""
    db = tmp_path / "v1.db"
    store = SQLiteStore(db)
    first = _call("s", 1, response="first")
    store.save_call(first)
    store.close()
    raw = sqlite3.connect(db)
    raw.execute("DROP INDEX calls_id")
    row = raw.execute("SELECT * FROM calls").fetchone()
    raw.execute(f"INSERT INTO calls VALUES ({', '.join('?' * len(row))})", row)
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    store = SQLiteStore(db)
    try:
        assert store.list_calls(["s"]) == [first]
        store.save_call(first.replace(response="again"))
        assert store.list_calls(["s"]) == [first]
    finally:
        store.close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION
    finally:
        raw.close()


def test_sqlite_path_from_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLiteStore() uses $LLMCTX_DB, else platformdirs' data dir (created if missing)."""
    monkeypatch.setenv("LLMCTX_DB", str(tmp_path / "env" / "x.db"))
    store = SQLiteStore()
    store.close()
    assert Path(store.path) == tmp_path / "env" / "x.db"
    assert Path(store.path).exists()
    if sys.platform.startswith("linux"):
        monkeypatch.delenv("LLMCTX_DB")
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        store = SQLiteStore()
        store.close()
        assert Path(store.path) == tmp_path / "xdg" / "llmctx" / "llmctx.db"


def test_sqlite_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    """A directory that cannot be created gives a StoreError naming the path and the fix."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "sub" / "llmctx.db"
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "LLMCTX_DB" in message
    assert "writable path" in message


def test_sqlite_directory_as_path_is_a_clear_error(tmp_path: Path) -> None:
    """A path that is a directory gives a StoreError naming it."""
    with pytest.raises(StoreError, match="is a directory") as info:
        SQLiteStore(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_sqlite_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not SQLite gives a StoreError naming the file."""
    bogus = tmp_path / "notes.txt"
    bogus.write_bytes(b"this is plainly not a database file, " * 100)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        SQLiteStore(bogus)
    assert str(bogus) in str(info.value)


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused rather than misread."""
    db = tmp_path / "future.db"
    SQLiteStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(db)


def test_sqlite_foreign_tables_are_refused(tmp_path: Path) -> None:
    """A SQLite file with unrelated tables named sessions/calls is not written into."""
    db = tmp_path / "other-app.db"
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE sessions (x INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="did not create"):
        SQLiteStore(db)


def test_sqlite_use_after_close_raises(tmp_path: Path) -> None:
    """Using a closed store raises StoreError saying it is closed."""
    store = SQLiteStore(tmp_path / "c.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.save_call(_call("s"))


def test_sqlite_naive_datetimes_round_trip(tmp_path: Path) -> None:
    """Naive datetimes come back exactly as saved (ordered as UTC)."""
    store = SQLiteStore(tmp_path / "n.db")
    try:
        naive = datetime(2025, 1, 2, 3, 4, 5, 6)
        store.save_session(SessionRecord(id="n", started_at=naive))
        got = store.get_session("n")
        assert got is not None
        assert got.started_at == naive
    finally:
        store.close()


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://alice:{SECRET} x@[::1:5432/db",
        f"host=127.0.0.1 password={SECRET} dbname",
        f"postgresql://alice:{SECRET}@localhost/db?nonsense_option=1",
    ],
)
def test_postgres_malformed_dsn_is_config_error_without_password(dsn: str) -> None:
    """A malformed DSN raises ConfigError explaining the form, never echoing the password."""
    with pytest.raises(ConfigError) as info:
        PostgresStore(dsn)
    message = str(info.value)
    assert "malformed PostgreSQL DSN" in message
    assert "postgresql://" in message
    assert SECRET not in message
    assert "s3cr3t" not in message


def test_postgres_unreachable_is_store_error_with_host_port() -> None:
    """An unreachable server raises StoreError naming host and port, without the password."""
    with pytest.raises(StoreError) as info:
        PostgresStore(f"postgresql://alice:{SECRET}@127.0.0.1:1/nowhere", connect_timeout=2)
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "nowhere" in message
    assert SECRET not in message


def test_postgres_bad_schema_name_is_config_error() -> None:
    """A schema name that is not a plain identifier is refused before connecting."""
    with pytest.raises(ConfigError, match="identifier"):
        PostgresStore("postgresql://localhost/db", schema='x"; DROP TABLE y; --')


def test_postgres_store_without_psycopg_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without psycopg, the class still imports and creating one names the extra to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"pip install 'llmctx\[postgres\]'"):
        PostgresStore("postgresql://localhost/db")


@pytest.mark.postgres
def test_postgres_reconnects_after_the_server_drops_it(postgres_dsn: str, unique: str) -> None:
    """When the server kills the store's connection, the next call reconnects and succeeds."""
    import psycopg

    store = PostgresStore(postgres_dsn, schema=f"t_{unique}")
    try:
        store.save_call(_call("s", 0), _session("s"))
        assert store._conn is not None
        pid = store._conn.info.backend_pid
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        store.save_call(_call("s", 1), _session("s", calls=2))
        assert len(store.list_calls(["s"])) == 2
        got = store.get_session("s")
        assert got is not None
        assert got.calls == 2
    finally:
        store.drop_schema()
        store.close()


@pytest.mark.postgres
def test_postgres_saving_a_call_twice_keeps_one_row(postgres_dsn: str, unique: str) -> None:
    """A retried save_call of the same call id does not duplicate it."""
    store = PostgresStore(postgres_dsn, schema=f"t_{unique}")
    try:
        call = _call("s")
        store.save_call(call)
        store.save_call(call)
        assert store.list_calls(["s"]) == [call]
    finally:
        store.drop_schema()
        store.close()


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        (f"postgresql://bob:{SECRET}@db.example:5432/app", SECRET),
        (f"host=x password={SECRET} user=bob", SECRET),
        (f"host=x password='{SECRET} with space' user=bob", "with space"),
        (f"postgresql://bob@h/db?password={SECRET}&sslmode=require", SECRET),
    ],
)
def test_redact_dsn_hides_passwords(text: str, leaked: str) -> None:
    """redact_dsn removes URL, key=value and query-string passwords."""
    redacted = redact_dsn(text, text)
    assert leaked not in redacted
    assert SECRET not in redacted
    assert REDACTED in redacted


# -- open_store / default_store --------------------------------------------------------------


def test_open_store_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_store understands memory:, sqlite URLs, bare paths and None ($LLMCTX_DB)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMCTX_DB", str(tmp_path / "env.db"))
    opened: list[Store] = []
    try:
        for arg, expected in [
            ("memory:", None),
            (f"sqlite://{tmp_path / 'abs.db'}", tmp_path / "abs.db"),
            ("sqlite:rel.db", Path("rel.db")),
            (str(tmp_path / "bare.db"), tmp_path / "bare.db"),
            (None, tmp_path / "env.db"),
            ("", tmp_path / "env.db"),
        ]:
            s = open_store(arg)
            opened.append(s)
            if expected is None:
                assert isinstance(s, MemoryStore)
            else:
                assert isinstance(s, SQLiteStore)
                assert Path(s.path) == expected
                assert (tmp_path / expected).exists()
    finally:
        for s in opened:
            s.close()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_postgres_url(postgres_dsn: str, unique: str, scheme: str) -> None:
    """postgresql:// and postgres:// URLs open a PostgresStore; ?schema= picks the schema."""
    url = scheme + postgres_dsn[postgres_dsn.index(":") :]
    url += ("&" if "?" in url else "?") + f"schema=t_{unique}"
    s = open_store(url)
    try:
        assert isinstance(s, PostgresStore)
        assert s.schema == f"t_{unique}"
        s.save_session(_session("x"))
        assert s.get_session("x") is not None
    finally:
        assert isinstance(s, PostgresStore)
        s.drop_schema()
        s.close()


def test_open_store_unknown_scheme_lists_forms_without_password() -> None:
    """An unknown URL scheme raises ConfigError listing the accepted forms, password hidden."""
    with pytest.raises(ConfigError) as info:
        open_store(f"mysql://root:{SECRET}@localhost/db")
    message = str(info.value)
    for form in ("memory:", "sqlite:///", "postgresql://"):
        assert form in message
    assert SECRET not in message


def test_sqlite_store_refuses_a_non_sqlite_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLiteStore() with LLMCTX_DB set to another kind of URL points to open_store."""
    monkeypatch.setenv("LLMCTX_DB", "memory:")
    with pytest.raises(ConfigError, match="open_store"):
        SQLiteStore()


def test_default_store_is_shared_and_follows_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """default_store() returns one store per $LLMCTX_DB value and a new one when it changes."""
    monkeypatch.setenv("LLMCTX_DB", str(tmp_path / "one.db"))
    first = default_store()
    assert default_store() is first
    assert isinstance(first, SQLiteStore)
    assert Path(first.path) == tmp_path / "one.db"
    monkeypatch.setenv("LLMCTX_DB", "memory:")
    second = default_store()
    assert isinstance(second, MemoryStore)
    assert default_store() is second
    first.close()


def test_open_store_keyword_dsn_is_postgres_not_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libpq keyword DSN opens PostgreSQL: no SQLite file named after it, no password shown."""
    monkeypatch.chdir(tmp_path)
    dsn = f"host=127.0.0.1 port=1 user=app password={SECRET} dbname=x connect_timeout=2"
    with pytest.raises((StoreError, ConfigError)) as info:
        open_store(dsn).close()
    assert SECRET not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_open_store_keyword_dsn_opens_a_postgres_store(postgres_dsn: str, unique: str) -> None:
    """The keyword form of the test server's DSN opens a working PostgresStore."""
    from urllib.parse import urlsplit

    url = urlsplit(postgres_dsn)
    dsn = f"host={url.hostname} port={url.port or 5432} user={url.username} dbname={url.path[1:]}"
    if url.password:
        dsn += f" password={url.password}"
    s = open_store(dsn)
    try:
        assert isinstance(s, PostgresStore)
        s.save_session(_session(f"kw-{unique}"))
        assert s.get_session(f"kw-{unique}") is not None
    finally:
        s.close()


def test_sqlite_store_refuses_a_keyword_dsn_in_env_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLiteStore() with LLMCTX_DB a libpq DSN refuses it: no file named after it, no password."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMCTX_DB", f"host=db user=app password={SECRET}")
    with pytest.raises(ConfigError, match="PostgreSQL DSN") as info:
        SQLiteStore()
    assert SECRET not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_env_sqlite_file_names_only_sqlite_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env_sqlite_file() is the SQLite file LLMCTX_DB names, None for unset or other stores."""
    from llmctx.stores._open import env_sqlite_file

    monkeypatch.delenv("LLMCTX_DB", raising=False)
    assert env_sqlite_file() is None
    for value, expected in [
        (str(tmp_path / "a.db"), str(tmp_path / "a.db")),
        (f"sqlite://{tmp_path / 'b.db'}", str(tmp_path / "b.db")),
        ("memory:", None),
        ("postgresql://u:p@h/db", None),
        ("host=db dbname=x", None),
    ]:
        monkeypatch.setenv("LLMCTX_DB", value)
        assert env_sqlite_file() == expected


def test_resolve_store_uses_stores_shares_urls_and_inherits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Store is used as is, a URL gives one store per process, None inherits or defaults."""
    from llmctx.stores._open import resolve_store

    given = MemoryStore()
    assert resolve_store(given) is given
    assert resolve_store(given, inherited=MemoryStore()) is given
    url = f"sqlite://{tmp_path / 'shared.db'}"
    first = resolve_store(url)
    assert isinstance(first, SQLiteStore)
    assert resolve_store(url) is first
    assert resolve_store(url, inherited=given) is first
    assert resolve_store(None, inherited=given) is given
    monkeypatch.setenv("LLMCTX_DB", "memory:")
    assert resolve_store(None) is default_store()
    with pytest.raises(ConfigError) as info:
        resolve_store(f"mysql://root:{SECRET}@localhost/db")
    assert "LLMCTX_DB" in str(info.value)
    assert SECRET not in str(info.value)


# -- liveness columns, refused calls, roots: issue 16 -----------------------------------------


def test_refused_call_is_kept_without_touching_any_total(store: Store) -> None:
    """A refused call is stored once and listed only with refused=True; the session's and its
    parent's totals count only the call that was sent."""
    store.save_session(_session("parent"))
    store.save_session(_session("child", parent_id="parent"))
    sent = _call("child", 0, usage=Usage(10, 5, requests=1), cost=Decimal("0.01"))
    refused = _call("child", 1, status="refused", cost=Decimal(0), error="BudgetExceeded: no")
    store.save_call(sent)
    store.save_call(refused)
    store.save_call(refused)  # a retried write adds nothing either
    assert store.list_calls(["child"]) == [sent]
    assert store.list_calls(["child"], refused=True) == [sent, refused]
    for sid in ("parent", "child"):
        row = store.get_session(sid)
        assert row is not None and row.calls == 1 and row.cost == Decimal("0.01")
        assert row.usage == Usage(10, 5, requests=1)


def test_liveness_fields_round_trip_and_heartbeats_touch_only_running_rows(store: Store) -> None:
    """pid, host and heartbeat_at round-trip; touch_sessions moves the heartbeat of running
    rows and leaves an ended row's alone."""
    beat = T0 + timedelta(seconds=5)
    store.save_session(_session("live", status="running", pid=4242, host="h1", heartbeat_at=T0))
    store.save_session(_session("gone", status="failed", pid=4243, host="h1", heartbeat_at=T0))
    store.touch_sessions(["live", "gone", "unknown"], beat)
    live, gone = store.get_session("live"), store.get_session("gone")
    assert live is not None and (live.pid, live.host, live.heartbeat_at) == (4242, "h1", beat)
    assert gone is not None and gone.heartbeat_at == T0


def test_roots_include_sessions_whose_parent_is_not_stored(store: Store) -> None:
    """roots_only lists parentless sessions and those whose parent this store never saw."""
    store.save_session(_session("root"))
    store.save_session(_session("child", parent_id="root"))
    store.save_session(_session("orphan", parent_id="never-stored"))
    assert {r.id for r in store.list_sessions(roots_only=True)} == {"root", "orphan"}


def _v2_file(path: Path) -> None:
    """A SQLite file as schema 2 left it: no liveness columns, one running session."""
    store = SQLiteStore(path)
    store.save_call(
        _call("old", 0, usage=Usage(3, 4, requests=1)), _session("old", status="running")
    )
    store.close()
    raw = sqlite3.connect(path)
    for column in ("pid", "host", "heartbeat_at"):
        raw.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()


def test_sqlite_version_2_file_gains_the_liveness_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """A schema 2 file opens as schema 3: its rows read as before (a running row without a pid
    stays running), and new sessions record their process."""
    db = tmp_path / "v2.db"
    _v2_file(db)
    store = SQLiteStore(db)
    try:
        old = store.get_session("old")
        assert old is not None and old.pid is None and old.heartbeat_at is None
        assert shown_status(old) == "running" and old.calls == 1
        with llmctx.session("new", store=store) as s:
            pass
        new = store.get_session(s.id)
        assert new is not None and new.pid == os.getpid() and new.status == "completed"
    finally:
        store.close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION == 3
    finally:
        raw.close()


@pytest.mark.postgres
def test_postgres_version_1_schema_gains_the_liveness_columns(
    postgres_dsn: str, unique: str
) -> None:
    """A schema written by version 1 (no liveness columns) is migrated when a store opens it;
    its rows read as before and the recorded version is 2."""
    import psycopg

    schema = f"t_{unique}"
    store = PostgresStore(postgres_dsn, schema=schema)
    store.save_call(_call("old", 0), _session("old", status="running"))
    store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            f'ALTER TABLE "{schema}".sessions DROP COLUMN pid, DROP COLUMN host, '
            "DROP COLUMN heartbeat_at"
        )
        admin.execute(f'DELETE FROM "{schema}".llmctx_schema')
        admin.execute(f'INSERT INTO "{schema}".llmctx_schema (version) VALUES (1)')
    store = PostgresStore(postgres_dsn, schema=schema)
    try:
        old = store.get_session("old")
        assert old is not None and old.pid is None and old.calls == 1
        store.save_session(old.replace(pid=7, host="h", heartbeat_at=T0))
        again = store.get_session("old")
        assert again is not None and again.pid == 7
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            row = admin.execute(f'SELECT max(version) FROM "{schema}".llmctx_schema').fetchone()
        assert row is not None and row[0] == 2
    finally:
        store.drop_schema()
        store.close()


# -- async faces (SQLite and PostgreSQL) ---------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Store]:
    """A SQL store, empty; PostgreSQL's connections carry an application_name of the test's own
    (so pg_stat_activity counts them) and its schema is dropped afterwards."""
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "store.db")
        yield s
        s.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    sep = "&" if "?" in dsn else "?"
    pg = PostgresStore(f"{dsn}{sep}application_name=llmctx-t-{unique}", schema=f"t_{unique}")
    try:
        yield pg
    finally:
        pg.close()
        _drop_schema(dsn, f"t_{unique}")


def _backends(dsn: str, unique: str) -> list[tuple[str, str | None]]:
    """(state, wait_event_type) of every server connection the test's store holds open."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
            (f"llmctx-t-{unique}",),
        ).fetchall()
    return [(str(state), kind) for state, kind in rows]


def test_async_save_then_sync_read_agree(sql_store: Store) -> None:
    """Sessions and calls saved through the async faces read back through the sync ones as
    saved, with the roll-up into the parent row."""
    import anyio

    from llmctx.stores._base import asave_call, asave_session

    parent, child = _session("p", status="running"), _session("c", 1, parent_id="p")
    calls = [_call("c", i, usage=Usage(10, 2, requests=1), cost=Decimal("0.001")) for i in range(5)]

    async def main() -> None:
        await asave_session(sql_store, parent)
        for i, call in enumerate(calls):
            await asave_call(sql_store, call, child.replace(calls=i + 1))

    anyio.run(main)
    assert sql_store.list_calls(["c"]) == calls
    for sid in ("p", "c"):
        row = sql_store.get_session(sid)
        assert row is not None
        assert (row.calls, row.usage.input_tokens, row.cost) == (5, 50, Decimal("0.005"))
    assert sql_store.get_session("p") == parent.replace(
        calls=5, usage=Usage(50, 10, requests=5), cost=Decimal("0.005")
    )


def test_300_concurrent_async_saves_lose_nothing(
    sql_store: Store, request: pytest.FixtureRequest, unique: str
) -> None:
    """300 asave_call at once on one event loop are all committed with exact totals; on
    PostgreSQL the store opens at most its pool's connections, all idle afterwards."""
    import asyncio

    n = 300
    session = _session("s", status="running")
    calls = [_call("s", i, usage=Usage(3, 1, requests=1), cost=Decimal("0.0001")) for i in range(n)]

    async def main() -> None:
        await asyncio.gather(*(sql_store.asave_call(c, session) for c in calls))  # type: ignore[attr-defined]

    asyncio.run(main())
    assert {c.id for c in sql_store.list_calls(["s"])} == {c.id for c in calls}
    row = sql_store.get_session("s")
    assert row is not None
    assert (row.calls, row.usage.input_tokens, row.cost) == (n, 3 * n, Decimal("0.0300"))
    if isinstance(sql_store, PostgresStore):
        backends = _backends(request.getfixturevalue("postgres_dsn"), unique)
        assert 1 <= len(backends) <= 1 + 8  # the sync connection + the async pool's
        assert {state for state, _ in backends} == {"idle"}


def test_concurrent_async_saves_of_several_sessions_keep_each_row(sql_store: Store) -> None:
    """Calls of two sessions saved at once, one row changed half-way, land with each session's
    own totals and its latest row (a batch writes a session row once, never another's)."""
    import asyncio

    a1, b = _session("a", status="running"), _session("b", status="running")
    a2 = a1.replace(name="renamed-a")
    saves = []
    for i in range(60):
        sid, row = ("a", a1 if i < 30 else a2) if i % 2 == 0 else ("b", b)
        saves.append((_call(sid, i, usage=Usage(2, 1, requests=1), cost=Decimal("0.01")), row))

    async def main() -> None:
        await asyncio.gather(*(sql_store.asave_call(c, r) for c, r in saves))  # type: ignore[attr-defined]

    asyncio.run(main())
    for sid in ("a", "b"):
        row = sql_store.get_session(sid)
        assert row is not None
        assert (row.calls, row.usage.input_tokens, row.cost) == (30, 60, Decimal("0.30"))
        assert len(sql_store.list_calls([sid])) == 30
    assert sql_store.get_session("a").name == "renamed-a"  # type: ignore[union-attr]
    assert sql_store.get_session("b").name == "name-b"  # type: ignore[union-attr]


def _hold_write_lock(store: Store, dsn: str | None) -> tuple[Any, Any]:
    """Another connection that blocks writes to session ``s`` until it commits: a row lock
    on PostgreSQL, SQLite's write lock on the file. Returns it and how to see a waiter."""
    if isinstance(store, PostgresStore):
        import psycopg

        assert dsn is not None
        conn = psycopg.connect(dsn)
        conn.execute(f'SELECT 1 FROM "{store.schema}".sessions WHERE id = %s FOR UPDATE', ("s",))
        return conn, None
    assert isinstance(store, SQLiteStore)
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn, store._lock


def test_cancelled_async_save_commits_the_whole_call_and_leaks_no_connection(
    sql_store: Store, request: pytest.FixtureRequest, unique: str
) -> None:
    """A task cancelled (task.cancel()) while its asave_call waits on another writer's lock
    gets CancelledError only once the call is committed whole (row and roll-up); no
    connection is left in a transaction, and none remains after close()."""
    import asyncio

    import anyio

    is_pg = isinstance(sql_store, PostgresStore)
    dsn = request.getfixturevalue("postgres_dsn") if is_pg else None
    sql_store.save_call(_call("s", 0, cost=Decimal("0.5")), _session("s", status="running"))
    blocker, store_lock = _hold_write_lock(sql_store, dsn)
    call = _call("s", 1, usage=Usage(7, 1, requests=1), cost=Decimal("0.25"))

    async def main() -> None:
        task = asyncio.ensure_future(sql_store.asave_call(call, _session("s", calls=2)))  # type: ignore[attr-defined]
        with anyio.fail_after(10):
            # Wait until the write is in flight: blocked behind the other writer.
            while True:
                await asyncio.sleep(0.005)
                if is_pg:
                    assert dsn is not None
                    if ("active", "Lock") in _backends(dsn, unique):
                        break
                elif store_lock.locked():
                    break
            task.cancel()
            await asyncio.sleep(0.05)
            assert not task.done()  # still waiting for the write, not abandoned
            blocker.commit() if is_pg else blocker.execute("COMMIT")
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        asyncio.run(main())
    finally:
        blocker.close()
    assert [c.id for c in sql_store.list_calls(["s"])][-1] == call.id
    row = sql_store.get_session("s")
    assert row is not None
    assert (row.calls, row.cost, row.usage.input_tokens) == (2, Decimal("0.75"), 7)
    if is_pg:
        assert dsn is not None
        assert {state for state, _ in _backends(dsn, unique)} == {"idle"}
        sql_store.close()
        assert _backends(dsn, unique) == []


def test_async_save_cancelled_by_an_anyio_scope_still_commits(
    sql_store: Store, request: pytest.FixtureRequest, unique: str
) -> None:
    """An anyio cancel scope cancelled while asave_call waits on another writer's lock: the
    scope ends only once the whole call is committed, and it reports the cancellation."""
    import anyio

    is_pg = isinstance(sql_store, PostgresStore)
    dsn = request.getfixturevalue("postgres_dsn") if is_pg else None
    sql_store.save_call(_call("s", 0), _session("s", status="running"))
    blocker, store_lock = _hold_write_lock(sql_store, dsn)
    call = _call("s", 1, cost=Decimal("0.5"))
    scopes: list[anyio.CancelScope] = []
    ended: list[bool] = []

    async def saver() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await sql_store.asave_call(call, _session("s"))  # type: ignore[attr-defined]
        ended.append(True)

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(saver)
                while True:
                    await anyio.sleep(0.005)
                    if is_pg:
                        assert dsn is not None
                        if ("active", "Lock") in _backends(dsn, unique):
                            break
                    elif store_lock.locked():
                        break
                scopes[0].cancel()
                await anyio.sleep(0.05)
                assert ended == []  # still waiting for the write
                blocker.commit() if is_pg else blocker.execute("COMMIT")

    try:
        anyio.run(main)
    finally:
        blocker.close()
    assert ended == [True] and scopes[0].cancelled_caught
    assert [c.id for c in sql_store.list_calls(["s"])][-1] == call.id
    row = sql_store.get_session("s")
    assert row is not None and (row.calls, row.cost) == (2, Decimal("0.5"))


def test_async_save_failure_is_a_store_error(
    sql_store: Store, request: pytest.FixtureRequest, unique: str
) -> None:
    """A write the database refuses raises StoreError from asave_call, as from save_call (the
    tables dropped under the store), and a closed store says it is closed."""
    import asyncio

    sql_store.save_session(_session("s"))
    if isinstance(sql_store, PostgresStore):
        _drop_schema(request.getfixturevalue("postgres_dsn"), sql_store.schema)
    else:
        assert isinstance(sql_store, SQLiteStore)
        with sqlite3.connect(sql_store.path) as other:
            other.execute("DROP TABLE calls")
    with pytest.raises(StoreError, match="could not save call"):
        sql_store.save_call(_call("s"))
    with pytest.raises(StoreError, match="could not save call"):
        asyncio.run(sql_store.asave_call(_call("s")))  # type: ignore[attr-defined]
    sql_store.close()
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(sql_store.asave_call(_call("s")))  # type: ignore[attr-defined]


def test_async_save_runs_on_trio(sql_store: Store) -> None:
    """On trio (no asyncio loop for psycopg or the writer thread) asave_call still writes
    through, in a worker thread."""
    import anyio

    call = _call("s", cost=Decimal("0.1"))
    anyio.run(sql_store.asave_call, call, _session("s"), backend="trio")  # type: ignore[attr-defined]
    assert sql_store.list_calls(["s"]) == [call]


def test_async_batch_fails_only_the_bad_call(sql_store: Store) -> None:
    """Calls committed together by an async face: one the database cannot take (a token count
    past a 64-bit integer) fails its own caller only, as save_call would; the others, sent
    at the same moment, are stored."""
    import asyncio

    good = [_call("s", i) for i in range(4)]
    bad = _call("s", 9, usage=Usage(2**70))
    expected: type[Exception] = (
        StoreError if isinstance(sql_store, PostgresStore) else OverflowError
    )
    with pytest.raises(expected):
        sql_store.save_call(bad)

    async def main() -> list[Any]:
        saves = [
            sql_store.asave_call(c, _session("s"))  # type: ignore[attr-defined]
            for c in [*good[:2], bad, *good[2:]]
        ]
        return await asyncio.gather(*saves, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [type(None)] * 2 + [expected] + [type(None)] * 2
    assert sql_store.list_calls(["s"]) == good
    row = sql_store.get_session("s")
    assert row is not None and row.calls == 4


def test_sqlite_writer_thread_ends_with_the_store(tmp_path: Path) -> None:
    """The writer thread an async save starts is gone once the store is closed, and the
    store's file is left with no transaction open."""
    import asyncio

    store = SQLiteStore(tmp_path / "w.db")
    asyncio.run(store.asave_call(_call("s"), _session("s")))
    names = [t.name for t in threading.enumerate()]
    assert any(n.startswith("llmctx-sqlite-writer") for n in names)
    store.close()
    assert not any(t.name.startswith("llmctx-sqlite-writer") for t in threading.enumerate())
    reopened = SQLiteStore(tmp_path / "w.db")
    try:
        assert len(reopened.list_calls(["s"])) == 1
    finally:
        reopened.close()


def test_generic_asave_call_outlives_a_native_cancel(tmp_path: Path) -> None:
    """A store without an async face is saved in a worker thread that a task.cancel() does not
    abandon: the call is stored by the time CancelledError reaches the caller."""
    import asyncio

    from llmctx.stores._base import asave_call

    started, release = threading.Event(), threading.Event()

    class Slow(MemoryStore):
        """A MemoryStore without its async face, whose save waits for the test."""

        asave_call = None  # type: ignore[assignment]

        def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
            started.set()
            release.wait(10)
            super().save_call(call, session)

    store = Slow()
    call = _call("s")

    async def main() -> None:
        task = asyncio.ensure_future(asave_call(store, call, _session("s")))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.02)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert store.list_calls(["s"]) == [call]


def test_sqlite_checkpoints_off_the_writers_path_keep_the_wal_bounded(tmp_path: Path) -> None:
    """With SQLite's own checkpoint off, the store's checkpoint thread still copies the WAL
    into the file and starts it over: after 6,000 calls (~80 MB of WAL frames) the WAL stays
    small, the database holds the calls, and the thread ends with the store."""
    db = tmp_path / "ck.db"
    store = SQLiteStore(db)
    try:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        request = {"messages": [{"role": "user", "content": "word " * 100}]}
        for i in range(6000):
            store.save_call(_call("s", i, request=request), _session("s", status="running"))
        assert any(t.name.startswith("llmctx-sqlite-checkpoint") for t in threading.enumerate())
        assert (tmp_path / "ck.db-wal").stat().st_size < 40_000_000
        assert db.stat().st_size > 2_000_000  # pages the checkpoints copied back
    finally:
        store.close()
    assert not any(t.name.startswith("llmctx-sqlite-checkpoint") for t in threading.enumerate())
    reopened = SQLiteStore(db)
    try:
        row = reopened.get_session("s")
        assert row is not None and row.calls == 6000
    finally:
        reopened.close()


def test_sqlite_synchronous_full_is_a_setting(tmp_path: Path) -> None:
    """synchronous="FULL" makes every commit wait for the disk (PRAGMA synchronous = 2); the
    default is NORMAL (1); any other value is a ConfigError naming the two."""
    full = SQLiteStore(tmp_path / "full.db", synchronous="FULL")
    normal = SQLiteStore(tmp_path / "normal.db")
    try:
        full.save_call(_call("s"), _session("s"))
        assert full._conn is not None and normal._conn is not None
        assert full._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert normal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert len(full.list_calls(["s"])) == 1
    finally:
        full.close()
        normal.close()
    with pytest.raises(ConfigError, match="NORMAL' or 'FULL"):
        SQLiteStore(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]
