"""The outbox: what a store could not take waits in a durable journal and is written later.

Real faults: a second process holding SQLite's write lock past the busy timeout, a PostgreSQL
server of the test's own stopped and started again, a Redis server of the test's own killed
between reserve and settle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llmctx
from llmctx._exceptions import StoreError
from llmctx._usage import CallRecord, Usage
from llmctx.stores import MemoryStore, SessionRecord, SQLiteStore, Store
from llmctx.stores._base import transient
from llmctx.stores._outbox import Outbox, outbox_for, replay_store, write_call
from llmctx.testing import FakeModel


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals kept in the user data directory go to a temporary one."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _assert_rows_match_calls(store: Store, session_id: str, expected_calls: int) -> None:
    row = store.get_session(session_id)
    assert row is not None
    calls = store.list_calls([r.id for r in store.session_tree(session_id)])
    assert len(calls) == expected_calls
    assert row.calls == expected_calls
    assert row.usage == sum((c.usage for c in calls), Usage())
    assert row.cost == sum((c.cost for c in calls if c.cost is not None), Decimal(0))


class _FlakyStore(MemoryStore):
    """A memory store whose writes fail (transiently, or not) while ``down`` is set."""

    def __init__(self, *, transient_errors: bool = True) -> None:
        super().__init__()
        self.down = False
        self.attempts = 0
        self._transient = transient_errors

    def _fail(self) -> None:
        self.attempts += 1
        if self.down:
            error = StoreError("the store is down (a test)")
            raise transient(error) if self._transient else error

    def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        self._fail()
        super().save_call(call, session)

    def save_session(self, record: SessionRecord) -> None:
        self._fail()
        super().save_session(record)


# -- the journal ---------------------------------------------------------------------------------


def test_journal_lines_round_trip_every_string_and_are_removed_once_applied(
    tmp_path: Path,
) -> None:
    """Entries with lone surrogates and NUL come back equal; applied ones leave the journal."""
    box = Outbox(tmp_path / "j.jsonl")
    entries = [{"kind": "x", "text": t} for t in ("\udcff", "a\x00b", "ü🚀", "\ufdd0")]
    box.append(*entries)
    assert box.pending() and len(box) == 4
    assert (tmp_path / "j.jsonl").read_bytes().isascii()
    seen: list[dict[str, Any]] = []
    assert box.replay(seen.append) == 4
    assert seen == entries
    assert not box.pending() and len(box) == 0
    assert box.replay(seen.append) == 0


def test_pending_sees_a_file_a_killed_replayer_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pending() (run after every call, its directory look cached) still reports entries
    that wait in a file a replayer claimed and never finished, left after an empty look."""
    from llmctx.stores import _outbox

    monkeypatch.setattr(_outbox, "_EMPTY_FOR", 0.0)  # every call looks (see the next test)
    outbox = Outbox(tmp_path / "j.jsonl")
    assert not outbox.pending()
    assert not outbox.pending()
    (tmp_path / "j.jsonl.claimed-123").write_text('{"kind": "session"}\n', "ascii")
    assert outbox.pending()
    assert len(outbox) == 1


def test_an_empty_journal_is_looked_at_again_soon_and_at_once_after_an_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found empty, a journal is not looked at for _EMPTY_FOR seconds: another process's entry
    is seen once they pass; an entry this process appends is seen at once."""
    from llmctx.stores import _outbox

    now = [1000.0]
    monkeypatch.setattr(_outbox, "_clock", lambda: now[0])
    path = tmp_path / "j.jsonl"
    outbox = Outbox(path)
    assert not outbox.pending()
    path.write_text('{"kind": "session"}\n', "ascii")  # as another process would
    assert not outbox.pending()  # within the wait: not looked at
    now[0] += _outbox._EMPTY_FOR
    assert outbox.pending()  # looked at again: found
    other = Outbox(tmp_path / "k.jsonl")
    assert not other.pending()
    other.append({"kind": "session"})
    assert other.pending()  # its own append: at once


def test_a_replay_asked_for_looks_even_while_pending_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replay() reads what another process appended just after pending() found it empty."""
    from llmctx.stores import _outbox

    now = [1000.0]
    monkeypatch.setattr(_outbox, "_clock", lambda: now[0])
    path = tmp_path / "j.jsonl"
    outbox = Outbox(path)
    assert not outbox.pending()  # found empty: pending() waits _EMPTY_FOR before looking
    Outbox(path).append({"n": 1})  # as another process would
    seen: list[dict[str, Any]] = []
    assert outbox.replay(seen.append) == 1
    assert seen == [{"n": 1}]


def test_a_failing_entry_is_kept_and_a_transient_failure_keeps_the_rest(tmp_path: Path) -> None:
    """A poison entry stays while others apply; a transient failure stops and keeps the rest."""
    box = Outbox(tmp_path / "j.jsonl")
    box.append(*({"n": n} for n in range(5)))
    applied: list[int] = []

    def poison(entry: dict[str, Any]) -> None:
        if entry["n"] == 1:
            raise ValueError("bad entry")
        if entry["n"] == 3:
            raise transient(StoreError("down"))
        applied.append(entry["n"])

    assert box.replay(poison) == 2
    assert applied == [0, 2]
    left: list[dict[str, Any]] = []
    assert box.replay(left.append) == 3
    assert sorted(e["n"] for e in left) == [1, 3, 4]


def test_appends_from_several_processes_while_replaying_lose_nothing(tmp_path: Path) -> None:
    """4 processes append 50 entries each while this one replays: every entry applied once."""
    path = tmp_path / "shared.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from llmctx.stores._outbox import Outbox
        box = Outbox(Path({str(path)!r}))
        for n in range(50):
            box.append({{"p": sys.argv[1], "n": n}})
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)]) for p in range(4)]
    box = Outbox(path)
    seen: list[tuple[str, int]] = []
    while any(p.poll() is None for p in procs):
        box.replay(lambda e: seen.append((e["p"], e["n"])))
    assert all(p.wait() == 0 for p in procs)
    box.replay(lambda e: seen.append((e["p"], e["n"])))
    assert sorted(seen) == sorted((str(p), n) for p in range(4) for n in range(50))


# -- sessions ------------------------------------------------------------------------------------


def test_calls_made_while_the_store_is_down_are_written_when_it_is_back() -> None:
    """A transient outage: calls return, wait in the outbox, reach the store after it is back."""
    store = _FlakyStore()
    model = FakeModel()
    with llmctx.session("outage", store=store) as s:
        model.complete("before")
        store.down = True
        for n in range(3):
            assert model.complete(f"during {n}")  # the call still returns its result
        assert len(store.list_calls([s.id])) == 1
        assert len(outbox_for(store)) == 3
        store.down = False
        model.complete("after")  # the next write that succeeds replays the outbox
    assert len(outbox_for(store)) == 0
    _assert_rows_match_calls(store, s.id, 5)
    assert [c.id for c in store.list_calls([s.id])] == [c.id for c in s.calls]


def test_transient_failures_are_retried_before_the_outbox() -> None:
    """A store that fails once transiently takes the write on a retry: nothing goes to the outbox."""
    store = _FlakyStore()
    calls = 0
    original = store.save_call

    def fail_once(call: CallRecord, session: SessionRecord | None = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise transient(StoreError("busy (a test)"))
        original(call, session)

    store.save_call = fail_once  # type: ignore[method-assign]
    write_call(store, CallRecord(session_id="s"), None)
    assert calls == 2
    assert len(outbox_for(store)) == 0
    assert len(store.list_calls(["s"])) == 1


def test_on_store_error_raise_keeps_the_call_and_raises() -> None:
    """on_store_error='raise': the call raises StoreError, yet its record waits in the outbox."""
    store = _FlakyStore(transient_errors=False)
    model = FakeModel()
    with llmctx.session("strict", store=store, on_store_error="raise") as s:
        store.down = True
        with pytest.raises(StoreError, match="kept in the outbox"):
            model.complete("lost?")
        assert len(outbox_for(store)) == 1
        store.down = False
    assert replay_store(store) == 0  # the exit's write already replayed it
    _assert_rows_match_calls(store, s.id, 1)


def test_on_store_error_raise_refuses_to_enter_when_the_row_cannot_be_written() -> None:
    """A session in 'raise' mode whose first row cannot be written is not entered."""
    store = _FlakyStore(transient_errors=False)
    store.down = True
    with pytest.raises(StoreError), llmctx.session(store=store, on_store_error="raise"):
        pass  # pragma: no cover - not reached
    assert llmctx.current_session() is None
    assert len(outbox_for(store)) == 0


def test_on_store_error_must_be_outbox_or_raise() -> None:
    """Any other on_store_error is a ConfigError naming the choices."""
    with pytest.raises(llmctx.ConfigError, match="'outbox'"):
        llmctx.session(on_store_error="ignore")  # type: ignore[arg-type]


# -- SQLite: a second process holds the write lock -------------------------------------------------


def _hold_write_lock(db: Path) -> subprocess.Popen[str]:
    """A process that takes SQLite's write lock (BEGIN IMMEDIATE) and holds it until stdin closes."""
    script = textwrap.dedent(
        f"""
        import sqlite3, sys
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        sys.stdin.read()
        conn.execute("ROLLBACK")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_sqlite_locked_by_another_process_loses_no_acknowledged_call(tmp_path: Path) -> None:
    """Calls made while another process holds the write lock are all stored once it lets go."""
    db = tmp_path / "locked.db"
    store = SQLiteStore(db, busy_timeout=0.2)
    model = FakeModel()
    acknowledged: list[str] = []
    with llmctx.session("locked", store=store) as s:
        model.complete("first")
        holder = _hold_write_lock(db)
        try:
            for n in range(3):
                model.complete(f"while locked {n}")
                acknowledged.append(s.calls[-1].id)
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        assert (tmp_path / "locked.db-outbox.jsonl").exists()
        model.complete("after")
    assert len(outbox_for(store)) == 0
    stored = {c.id for c in store.list_calls([s.id])}
    assert set(acknowledged) <= stored
    _assert_rows_match_calls(store, s.id, 5)
    row = store.get_session(s.id)
    assert row is not None and row.status == "completed"
    store.close()


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)


def test_async_write_call_keeps_a_locked_out_call_and_replays_it(tmp_path: Path) -> None:
    """awrite_call (the async charge path's fallback) on a SQLite file another process has
    locked: the call goes to the outbox beside the file after the retries, and the next
    async write that succeeds brings it into the store."""
    import asyncio

    from llmctx.stores._outbox import awrite_call

    db = tmp_path / "alocked.db"
    store = SQLiteStore(db, busy_timeout=0.05)
    first, second = CallRecord(session_id="s"), CallRecord(session_id="s")
    row = SessionRecord(id="s", status="running")
    store.save_session(row)
    holder = _hold_write_lock(db)
    try:
        asyncio.run(awrite_call(store, first, row))
        assert (tmp_path / "alocked.db-outbox.jsonl").exists()
        assert len(outbox_for(store)) == 1
    finally:
        _release(holder)
    asyncio.run(awrite_call(store, second, row))
    assert len(outbox_for(store)) == 0
    assert {c.id for c in store.list_calls(["s"])} == {first.id, second.id}
    _assert_rows_match_calls(store, "s", 2)
    store.close()


def test_async_write_call_cancelled_mid_retry_keeps_the_call(tmp_path: Path) -> None:
    """A task cancelled while awrite_call is retrying a locked-out write gets CancelledError
    with the call kept in the outbox (wherever the cancellation landed: in a try, or in the
    wait before the next); it is stored once the lock is gone."""
    import asyncio

    from llmctx.stores._outbox import awrite_call

    db = tmp_path / "acancel.db"
    store = SQLiteStore(db, busy_timeout=0.05)
    call = CallRecord(session_id="s")
    holder = _hold_write_lock(db)

    async def main() -> None:
        task = asyncio.ensure_future(awrite_call(store, call, None))
        await asyncio.sleep(0.1)  # lets it fail once and begin waiting or retrying
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        assert len(outbox_for(store)) == 1
    finally:
        _release(holder)
    assert replay_store(store) == 1
    assert [c.id for c in store.list_calls(["s"])] == [call.id]
    store.close()


def test_sqlite_outbox_is_replayed_when_the_store_is_opened(tmp_path: Path) -> None:
    """Entries left by a process that ended while the file was locked are written at next open."""
    db = tmp_path / "later.db"
    SQLiteStore(db).close()
    holder = _hold_write_lock(db)
    script = textwrap.dedent(
        f"""
        import llmctx
        from llmctx.stores import SQLiteStore
        from llmctx.testing import FakeModel
        store = SQLiteStore({str(db)!r}, busy_timeout=0.1)
        with llmctx.session("gone", store=store) as s:
            FakeModel().complete("kept for later")
        print(s.id)
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    session_id = proc.stdout.strip().splitlines()[-1]
    store = SQLiteStore(db)
    try:
        _assert_rows_match_calls(store, session_id, 1)
        row = store.get_session(session_id)
        assert row is not None and row.status == "completed"
        assert len(outbox_for(store)) == 0
    finally:
        store.close()


def test_journal_is_json_lines_beside_the_database(tmp_path: Path) -> None:
    """The SQLite journal is <db>-outbox.jsonl, one fsynced JSON object per call."""
    db = tmp_path / "x.db"
    store = SQLiteStore(db, busy_timeout=0.05)
    holder = _hold_write_lock(db)
    try:
        write_call(store, CallRecord(session_id="s", response="\udcff"), None)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    (line,) = (tmp_path / "x.db-outbox.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["kind"] == "call" and entry["call"]["response"] == "\udcff"
    assert replay_store(store) == 1
    (call,) = store.list_calls(["s"])
    assert call.response == "\udcff"
    store.close()


# -- PostgreSQL: a server of the test's own, restarted mid-run ----------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class _OwnPostgres:
    """A throwaway PostgreSQL cluster in a temporary directory, on a free port."""

    def __init__(self, base: Path) -> None:
        pgbin = _pg_bin()
        if pgbin is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = pgbin
        self.data = base / "pgdata"
        self.data.mkdir(parents=True)
        self.port = _free_port()
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(base, "postgres", "postgres")
            shutil.chown(self.data, "postgres", "postgres")
        self._run(f"{self.bin}/initdb -D {self.data} -U llmctx --auth=trust -E UTF8")
        self.dsn = f"postgresql://llmctx@127.0.0.1:{self.port}/postgres"

    def _run(self, command: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", command] if self.root else ["bash", "-c"]
        if not self.root:
            argv.append(command)
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(f"{self.bin}/pg_ctl -D {self.data} -l {self.data}/log -w -o '{options}' start")

    def stop(self) -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.data} -m fast -w stop")


@pytest.fixture
def own_postgres() -> Iterator[_OwnPostgres]:
    """A PostgreSQL server only this test uses (so it may be restarted)."""
    # Not under pytest's tmp_path: its parents are private to root, the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="llmctx-own-pg-"))
    base.chmod(0o755)
    try:
        pg = _OwnPostgres(base)
        pg.start()
        try:
            yield pg
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                pg.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_postgres_restart_mid_run_loses_no_acknowledged_call(own_postgres: _OwnPostgres) -> None:
    """Calls made while the server is down are written once it is back: 0 missing."""
    store = llmctx.stores.PostgresStore(own_postgres.dsn, connect_timeout=2)
    model = FakeModel()
    with llmctx.session("restart", store=store) as s:
        model.complete("before")
        own_postgres.stop()
        for n in range(3):
            model.complete(f"while down {n}")
        assert len(outbox_for(store)) == 3
        own_postgres.start()
        model.complete("after")
    assert len(outbox_for(store)) == 0
    _assert_rows_match_calls(store, s.id, 5)
    assert {c.id for c in store.list_calls([s.id])} == {c.id for c in s.calls}
    store.close()


def test_threads_writing_through_an_outage_lose_nothing() -> None:
    """4 threads writing while the store goes down and comes back: every call stored once."""
    store = _FlakyStore()
    model = FakeModel()
    with llmctx.session("threads", store=store) as s:

        def work(i: int) -> None:
            for n in range(20):
                model.complete(f"t{i} {n}")
                time.sleep(0.001)

        with llmctx.ContextThreadPoolExecutor(4) as pool:
            futures = [pool.submit(work, i) for i in range(4)]
            store.down = True
            time.sleep(0.02)
            store.down = False
            for f in futures:
                f.result()
    replay_store(store)
    _assert_rows_match_calls(store, s.id, 80)


# -- Redis: a settle made while the server is down ------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A redis-server only this test uses, with an append-only file so a restart keeps data."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    port = _free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        import redis

        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                # Accepting connections is not ready: a restarted server answers LOADING
                # (BusyLoadingError) until it has read its append-only file back.
                with contextlib.suppress(redis.RedisError, OSError):
                    if probe.ping():
                        return
                time.sleep(0.02)
        finally:
            probe.close()
        raise RuntimeError("redis-server did not start")

    def stop() -> None:
        proc = procs[-1]
        proc.terminate()  # SIGTERM: redis writes its append-only file and exits
        proc.wait(timeout=10)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", (start, stop)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.redis
def test_settle_while_redis_is_down_is_applied_once_after_it_returns(
    own_redis: tuple[str, Any],
) -> None:
    """A settle that cannot reach Redis waits in the outbox and counts once when Redis is back."""
    from llmctx._budget import Amount, Holds

    url, (start, stop) = own_redis
    ledger = llmctx.RedisLedger(url, "outage", renew_every=0)
    budget = llmctx.Budget(tokens=1_000, ledger=ledger)
    try:
        holds = Holds.reserve([(budget, "s", None)], Amount(tokens=100, requests=1))
        ((_, token),) = holds._held
        stop()
        holds.settle(Amount(tokens=30, requests=1))  # returns: the settle is kept
        assert len(outbox_for(ledger)) == 1
        start()
        later = Holds.reserve([(budget, "s", None)], Amount(tokens=100, requests=1))
        later.settle(Amount(tokens=10, requests=1))  # the ledger answers: the outbox replays
        assert len(outbox_for(ledger)) == 0
        snap = ledger.snapshot()
        assert (snap.spent.tokens, snap.reserved.tokens, snap.reservations) == (40, 0, 0)
        # The same settle replayed again (a replayer killed before it removed the line): once.
        again = {"usd": "0", "tokens": 30, "requests": 1}
        outbox_for(ledger).append({"kind": "settle", "token": token, "actual": again})
        Holds.reserve([(budget, "s", None)], Amount(tokens=100)).settle(Amount(tokens=5))
        assert len(outbox_for(ledger)) == 0
        assert ledger.snapshot().spent.tokens == 45
    finally:
        ledger.close()


def test_a_ledger_journal_follows_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remembered journal path of a ledger changes when the data directory does."""
    from llmctx.stores._outbox import journal_in_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "one"))
    first = journal_in_data_dir("redis://host|llmctx|team", "ledger-")
    assert journal_in_data_dir("redis://host|llmctx|team", "ledger-") == first
    assert first.parent == tmp_path / "one" / "llmctx"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "two"))
    second = journal_in_data_dir("redis://host|llmctx|team", "ledger-")
    assert second.parent == tmp_path / "two" / "llmctx" and second.name == first.name


def test_a_ledger_found_without_settles_is_looked_at_soon_and_at_once_after_keeping_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replay_settles skips a ledger found empty for _EMPTY_FOR seconds; a settle kept in this
    process is replayed at the next call, another process's once the wait is over."""
    from llmctx.stores import _outbox

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    now = [50.0]
    monkeypatch.setattr(_outbox, "_clock", lambda: now[0])

    class Ledger:
        """A ledger with a durable identity (as RedisLedger has), recording what it settles."""

        journal_key = f"redis://test|llmctx|{tmp_path.name}"

    applied: list[str] = []
    ledger = Ledger()

    def settle(token: str, actual: dict[str, Any]) -> None:
        applied.append(token)

    assert _outbox.replay_settles(ledger, settle) == 0  # empty: quiet for a while
    _outbox.keep_settle(ledger, "mine", {"usd": "0", "tokens": 1, "requests": 1})
    assert _outbox.replay_settles(ledger, settle) == 1 and applied == ["mine"]  # at once
    assert _outbox.replay_settles(ledger, settle) == 0  # empty again: quiet
    journal = _outbox.journal_in_data_dir(Ledger.journal_key, "ledger-")
    entry = {"kind": "settle", "token": "theirs", "actual": {"usd": "0", "tokens": 1}}
    with journal.open("a", encoding="ascii") as f:  # as another process appends
        f.write(json.dumps(entry) + "\n")
    assert _outbox.replay_settles(ledger, settle) == 0  # within the wait
    now[0] += _outbox._EMPTY_FOR
    assert _outbox.replay_settles(ledger, settle) == 1 and applied == ["mine", "theirs"]
