"""The first hour (issue 16): what the workshop and the demo recorded can be found and read.

The workshop and the demo record into a kept database and print it; ``llmctx sessions ls`` on
that database finds every session; refused calls leave a ``refused`` record; a session whose
process was killed reads as ``interrupted`` and is resumed by name; ``prune`` and ``rm`` with
filters delete what they say; ``llmctx info`` says where things are. Real SQLite files, a
real PostgreSQL, real child processes killed with SIGKILL, the real local model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import llmctx
from llmctx._cli.app import app
from llmctx._session import _heartbeat
from llmctx.stores import (
    MemoryStore,
    PostgresStore,
    SessionRecord,
    SQLiteStore,
    Store,
    open_store,
    shown_status,
)
from llmctx.stores._base import STALE_AFTER, this_host
from llmctx.testing import FakeModel

runner = CliRunner()


def _cli(*args: str, columns: int | None = 200, input: str | None = None) -> Any:
    env = {"COLUMNS": None if columns is None else str(columns)}
    return runner.invoke(app, list(args), env=env, input=input)


def _llmctx(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "80"}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run(
        [sys.executable, "-m", "llmctx", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=full,
    )


def _printed_db(stdout: str) -> str:
    match = re.search(r"llmctx sessions ls --db (\S+)", stdout)
    assert match is not None, stdout[-2000:]
    return match.group(1)


# -- the main job leaves something to look at -------------------------------------------------


def test_workshop_records_into_a_kept_database_that_ls_finds_whole(tmp_path: Path) -> None:
    """`llmctx workshop 2 5` without LLMCTX_DB records into workshop.db beside the default
    database, prints it with the ls and ui commands, and `sessions ls` on it lists one root per
    module under which every stored session is found; a second run starts it afresh."""
    env: dict[str, str | None] = {"LLMCTX_DB": None, "XDG_DATA_HOME": str(tmp_path / "data")}
    out = _llmctx("workshop", "2", "5", "--no-pause", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    db = _printed_db(out.stdout)
    assert db == str(tmp_path / "data" / "llmctx" / "workshop.db")
    assert f"llmctx ui --db {db}" in out.stdout and "reset at each run" in out.stdout

    listed = _cli("sessions", "ls", "--db", db, "--json")
    assert listed.exit_code == 0, listed.output
    roots = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(roots) == {"workshop-02", "workshop-05"}
    store = SQLiteStore(db)
    try:
        stored = {r.id for r in store.list_sessions(limit=None)}
        reachable = {t.id for r in roots.values() for t in store.session_tree(r["id"])}
        assert stored == reachable and len(stored) > 2
        # Module 02's sessions are under its runner session, totals rolled up.
        under_02 = [t.name for t in store.session_tree(roots["workshop-02"]["id"])[1:]]
        assert "support-chat" in under_02
        assert roots["workshop-02"]["calls"] > 0
    finally:
        store.close()
    shown = _cli("sessions", "ls", "--db", db, columns=80)
    assert "workshop-02" in shown.stdout and "completed" in shown.stdout

    again = _llmctx("workshop", "5", "--no-pause", env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    names = {r["name"] for r in json.loads(_cli("sessions", "ls", "--db", db, "--json").stdout)}
    assert names == {"workshop-05"}


def test_workshop_db_option_and_llmctx_db_are_kept(tmp_path: Path) -> None:
    """`--db PATH` (and a SQLite LLMCTX_DB) are the user's: the run adds to them, never resets."""
    db = tmp_path / "mine.db"
    with llmctx.session("kept-before", store=SQLiteStore(db)):
        pass
    out = _llmctx("workshop", "1", "--no-pause", "--db", str(db), env={})
    assert out.returncode == 0, out.stdout[-3000:]
    assert _printed_db(out.stdout) == str(db)
    names = {
        r["name"] for r in json.loads(_cli("sessions", "ls", "--db", str(db), "--json").stdout)
    }
    assert names == {"kept-before", "workshop-01"}


def test_demo_records_into_demo_db_with_its_refused_call(tmp_path: Path) -> None:
    """`llmctx demo` records into demo.db, prints it, and the call its budget stopped is stored
    as refused with the reason, while the session totals count only the calls sent."""
    env: dict[str, str | None] = {"LLMCTX_DB": None, "XDG_DATA_HOME": str(tmp_path / "data")}
    out = _llmctx("demo", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "recorded as refused" in out.stdout
    db = _printed_db(out.stdout)
    assert db == str(tmp_path / "data" / "llmctx" / "demo.db")
    rows = {r["name"]: r for r in json.loads(_cli("sessions", "ls", "--db", db, "--json").stdout)}
    assert {"demo", "flaky-job"} <= set(rows)
    data = json.loads(_cli("sessions", "show", rows["demo"]["id"], "--db", db, "--json").stdout)
    statuses = [c["status"] for c in data["calls"]]
    assert statuses.count("refused") == 1 and rows["demo"]["calls"] == len(statuses) - 1


def test_info_prints_where_things_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`llmctx info` names the default database, the workshop's, the version, the extras and
    the bundled model; --json has the same facts and a DSN's password never shows."""
    monkeypatch.delenv("LLMCTX_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    text = _cli("info", columns=120)
    assert text.exit_code == 0, text.output
    assert str(tmp_path / "data" / "llmctx" / "llmctx.db") in text.stdout
    assert "workshop.db" in text.stdout and llmctx.__version__ in text.stdout
    facts = json.loads(_cli("info", "--json").stdout)
    assert facts["database"]["source"] == "default"
    assert facts["extras"]["local"]["installed"] is True
    assert Path(facts["local_model"]["path"]).is_file()
    assert facts["workshop_db"] == str(tmp_path / "data" / "llmctx" / "workshop.db")
    monkeypatch.setenv("LLMCTX_DB", "postgresql://app:hunter2@db.example:5432/x")
    facts = json.loads(_cli("info", "--json").stdout)
    assert facts["database"]["source"] == "LLMCTX_DB"
    assert "hunter2" not in json.dumps(facts) and "db.example" in facts["database"]["path_or_url"]
    assert "hunter2" not in _cli("info").stdout


# -- stores of all three kinds ----------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Store]:
    """A real store of each kind (PostgreSQL in a schema of its own, dropped afterwards)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "first-hour.db")
        yield s
        s.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    pg = PostgresStore(dsn, schema=f"t_{unique}")
    yield pg
    pg.drop_schema()
    pg.close()


class _NoWait:
    """A real RateLimiter asked never to wait (timeout=0), so a full limiter refuses at once:
    the tracker itself waits without a timeout, which a test cannot end."""

    def __init__(self, limiter: llmctx.RateLimiter) -> None:
        self.limiter = limiter

    def reserve(self, tokens: int = 0) -> Any:
        return self.limiter.reserve(tokens, timeout=0)

    async def areserve(self, tokens: int = 0) -> Any:
        return await self.limiter.areserve(tokens, timeout=0)


def test_every_kind_of_refusal_leaves_one_refused_record(store: Store) -> None:
    """A budget refusal, an unknown price under a money budget and a rate-limiter refusal each
    leave one stored call with status refused, the reason, no usage and no cost, and change no
    total: not the session's live totals, not its row, not a resume."""
    model = FakeModel("refusal-model", provider="openai")
    unknown = FakeModel("refusal-model-without-price", provider="openai")
    limiter = _NoWait(llmctx.RateLimiter(rpm=1))
    with (
        llmctx.price_override("refusal-model", input_per_mtok="1", output_per_mtok="1"),
        llmctx.session("refusals", store=store, budget=llmctx.Budget(usd="1", tokens=60)) as s,
    ):
        model.complete("one two three", max_tokens=8)
        with pytest.raises(llmctx.BudgetExceeded):
            model.complete("far too long an answer", max_tokens=500)
        with pytest.raises(llmctx.UnknownPrice):
            unknown.complete("what is this", max_tokens=8)
        with llmctx.track_call(
            provider="acme", model="refusal-model", max_output_tokens=4, limiter=limiter
        ) as call:
            call.finish(usage=llmctx.Usage(1, 1, requests=1))
        with pytest.raises(llmctx.AcquireTimeout):
            with llmctx.track_call(
                provider="acme",
                model="refusal-model",
                request={"prompt": "limited"},
                max_output_tokens=4,
                limiter=limiter,
            ):
                pytest.fail("a refused call's block must not run")
        live = (s.usage, s.cost, len(s.calls))
    assert live[2] == 2 and live[0].requests == 2
    everything = store.list_calls([s.id], refused=True)
    refused = [c for c in everything if c.status == "refused"]
    assert [c.error.split(":")[0] for c in refused if c.error] == [
        "BudgetExceeded",
        "UnknownPrice",
        "AcquireTimeout",
    ]
    for c in refused:
        assert c.cost == 0 and c.usage.total_tokens == 0 and c.usage.requests == 0
    assert refused[0].request["prompt"] == "far too long an answer"
    assert [c.status for c in store.list_calls([s.id])] == ["ok", "ok"]
    row = store.get_session(s.id)
    assert row is not None and row.calls == 2 and row.usage == live[0] and row.cost == live[1]
    resumed = llmctx.session.resume(s.id, store=store, allow_completed=True)
    assert resumed.usage == live[0] and len(resumed.calls) == 2


def test_a_session_whose_parent_is_not_stored_lists_as_a_root(store: Store) -> None:
    """A child session recorded in a store its parent never wrote to is one of that store's
    roots (as `ls` shows it), while a child of a stored parent is not."""
    with llmctx.session("elsewhere", store=MemoryStore()):
        with llmctx.session("orphan", store=store) as orphan:
            with llmctx.session("grandchild") as grandchild:
                pass
    roots = {r.id for r in store.list_sessions(roots_only=True)}
    assert orphan.id in roots and grandchild.id not in roots
    assert [r.id for r in store.list_sessions(name="grandchild")] == [grandchild.id]


def test_heartbeat_refreshes_running_rows_and_a_stale_one_reads_interrupted(store: Store) -> None:
    """A running row names its process; each beat writes the heartbeat of a running session to
    its store (not to a MemoryStore, which no other process reads); a running row whose
    heartbeat is older than STALE_AFTER reads interrupted on any host, a fresh one running."""
    with llmctx.session("beating", store=store) as s:
        first = store.get_session(s.id)
        assert first is not None and first.pid == os.getpid() and first.host == this_host()
        assert first.heartbeat_at is not None
        assert _heartbeat.beat() >= (0 if isinstance(store, MemoryStore) else 1)
        second = store.get_session(s.id)
        assert second is not None and second.heartbeat_at is not None
        assert second.heartbeat_at >= first.heartbeat_at
        assert shown_status(second) == "running"
    far = SessionRecord(
        id="on-another-host",
        status="running",
        pid=1,
        host="another-host.example",
        heartbeat_at=datetime.now(UTC) - timedelta(seconds=STALE_AFTER + 5),
    )
    assert shown_status(far) == "interrupted"
    assert shown_status(far.replace(heartbeat_at=datetime.now(UTC))) == "running"
    assert shown_status(far.replace(pid=None, host=None, heartbeat_at=None)) == "running"
    assert shown_status(far.replace(status="failed")) == "failed"


# -- interrupted: a child process killed mid-session ------------------------------------------

_CHILD = r"""
import sys, warnings
import llmctx
from llmctx.testing import FakeModel

warnings.simplefilter("ignore")
url, name = sys.argv[1], sys.argv[2]
with llmctx.price_override("kill-model", input_per_mtok="1", output_per_mtok="1"):
    with llmctx.session(name, store=url, budget=llmctx.Budget(tokens=10_000)):
        FakeModel("kill-model").complete("hello before the kill")
        print("ready", flush=True)
        sys.stdin.readline()  # killed here
"""


def _kill_mid_session(url: str, name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _interrupted_then_resumed(url: str) -> None:
    name = "nightly-job"
    _kill_mid_session(url, name)
    listed = json.loads(_cli("sessions", "ls", "--db", url, "--json").stdout)
    row = next(r for r in listed if r["name"] == name)
    assert row["status"] == "interrupted" and row["calls"] == 1
    table = _cli("sessions", "ls", "--db", url, columns=80).stdout
    assert "interrupted" in table and "llmctx.session.resume('nightly-job')" in table
    only = json.loads(
        _cli("sessions", "ls", "--db", url, "--status", "interrupted", "--json").stdout
    )
    assert [r["id"] for r in only] == [row["id"]]
    running = json.loads(
        _cli("sessions", "ls", "--db", url, "--status", "running", "--json").stdout
    )
    assert row["id"] not in {r["id"] for r in running}
    shown = _cli("sessions", "show", row["id"][:10], "--db", url, columns=80).stdout
    assert "interrupted" in shown and "hello before the kill" in shown

    with llmctx.session.resume(name, store=url) as s:
        assert s.id == row["id"] and s.usage.requests == 1
        assert s.remaining()["tokens"] == 10_000 - s.usage.total_tokens
    store = open_store(url)
    try:
        after = store.get_session(row["id"])
        assert after is not None and after.status == "completed" and after.pid == os.getpid()
    finally:
        store.close()


def test_sqlite_session_of_a_killed_process_reads_interrupted_and_resumes_by_name(
    tmp_path: Path,
) -> None:
    """A child killed with SIGKILL mid-session leaves a running row that ls and show call
    interrupted (ls suggests session.resume), and session.resume(name) reopens it."""
    _interrupted_then_resumed(str(tmp_path / "killed.db"))


@pytest.mark.postgres
def test_postgres_session_of_a_killed_process_reads_interrupted_and_resumes_by_name(
    postgres_dsn: str, unique: str
) -> None:
    """The same on PostgreSQL: the killed child's session is interrupted, resumed by name."""
    schema = f"kill_{unique}"
    sep = "&" if "?" in postgres_dsn else "?"
    try:
        _interrupted_then_resumed(f"{postgres_dsn}{sep}schema={schema}")
    finally:
        pg = PostgresStore(postgres_dsn, schema=schema)
        pg.drop_schema()
        pg.close()


# -- resume by name ---------------------------------------------------------------------------


def test_resume_by_name_takes_the_most_recent_resumable_one(tmp_path: Path) -> None:
    """resume(name) reopens the most recent session of that name when it failed; when the most
    recent one completed, the error lists every session of that name with id and start time;
    an unknown name says neither an id nor a name matched."""
    store = SQLiteStore(tmp_path / "names.db")
    try:
        ids = []
        for _ in range(2):
            with pytest.raises(RuntimeError), llmctx.session("nightly", store=store) as s:
                ids.append(s.id)
                raise RuntimeError("lost the worker")
        assert llmctx.session.resume("nightly", store=store).id == ids[1]
        with llmctx.session("nightly", store=store) as done:
            pass
        with pytest.raises(llmctx.SessionStateError) as err:
            llmctx.session.resume("nightly", store=store)
        message = str(err.value)
        assert done.id in message and ids[0] in message and ids[1] in message
        assert "completed" in message and "resume one by id" in message
        assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", message)
        assert llmctx.session.resume("nightly", store=store, allow_completed=True).id == done.id
        with pytest.raises(llmctx.SessionNotFound, match="no session with id or name 'weekly'"):
            llmctx.session.resume("weekly", store=store)
    finally:
        store.close()


# -- prune and rm with filters ----------------------------------------------------------------


def _aged(store: Store, name: str, status: str, days: float, **fields: Any) -> str:
    started = datetime.now(UTC) - timedelta(days=days)
    record = SessionRecord(
        id=f"{name}-{status}-{days}",
        name=name,
        status=status,  # type: ignore[arg-type]
        started_at=started,
        ended_at=None if status == "running" else started + timedelta(seconds=5),
        **fields,
    )
    store.save_session(record)
    return record.id


@pytest.fixture
def aged_db(tmp_path: Path) -> str:
    """Sessions 40 days old (completed with a child, failed, live running) and 2 days old."""
    path = tmp_path / "aged.db"
    store = SQLiteStore(path)
    old = _aged(store, "old-job", "completed", 40)
    _aged(store, "old-child", "completed", 40, parent_id=old)
    _aged(store, "old-crash", "failed", 40)
    # A live session of this very process: prune must never take it.
    _aged(
        store,
        "old-live",
        "running",
        40,
        pid=os.getpid(),
        host=this_host(),
        heartbeat_at=datetime.now(UTC),
    )
    _aged(store, "new-job", "completed", 2)
    store.close()
    return str(path)


def _names(db: str) -> set[str]:
    return {
        r["name"] for r in json.loads(_cli("sessions", "ls", "--db", db, "--all", "--json").stdout)
    }


def test_prune_asks_then_deletes_ended_sessions_older_than_the_age(aged_db: str) -> None:
    """prune --older-than 30d asks first (no deletes nothing), then deletes the old ended
    sessions with their descendants, keeps the recent one and the live one, and says so."""
    asked = _cli("sessions", "prune", "--older-than", "30d", "--db", aged_db, input="n\n")
    assert asked.exit_code == 1 and "nothing was deleted" in asked.stderr
    assert "Delete 2 sessions" in asked.stderr and "3 session(s)" in asked.stderr
    assert _names(aged_db) == {"old-job", "old-child", "old-crash", "old-live", "new-job"}
    done = _cli("sessions", "prune", "--older-than", "30d", "--db", aged_db, input="y\n")
    assert done.exit_code == 0, done.output
    assert _names(aged_db) == {"old-live", "new-job"}


def test_prune_status_filter_and_json(aged_db: str) -> None:
    """prune --status failed --yes --json deletes only the old failed session and reports it."""
    out = _cli("sessions", "prune", "--status", "failed", "--yes", "--json", "--db", aged_db)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [d["name"] for d in data["deleted"]] == ["old-crash"] and data["deleted_sessions"] == 1
    assert "old-crash" not in _names(aged_db)


def test_prune_rejects_a_bad_age(aged_db: str) -> None:
    """An age that is not a number and a unit is a usage error naming the accepted forms."""
    out = _cli("sessions", "prune", "--older-than", "a month", "--db", aged_db)
    assert out.exit_code == 2 and "30d" in out.output


def test_rm_with_filters_deletes_the_matching_roots(aged_db: str) -> None:
    """rm --name NAME --yes deletes every root of that name; rm without ids or filters is a
    usage error that points at prune."""
    out = _cli("sessions", "rm", "--name", "new-job", "--yes", "--db", aged_db)
    assert out.exit_code == 0, out.output
    assert "new-job" not in _names(aged_db)
    bare = _cli("sessions", "rm", "--db", aged_db)
    assert bare.exit_code == 2 and "prune" in bare.output


# -- show: prompts and responses --------------------------------------------------------------


@pytest.fixture
def chat_db(tmp_path: Path) -> str:
    """A session with a long chat prompt, a refused call and a failed one."""
    path = tmp_path / "chat.db"
    store = SQLiteStore(path)
    model = FakeModel("show-model", provider="openai")
    long_prompt = "tell me about " + " ".join(f"word{i}" for i in range(120))
    with (
        warnings.catch_warnings(),
        llmctx.session("chatty-session", store=store, budget=llmctx.Budget(tokens=400)),
    ):
        warnings.simplefilter("ignore")
        model.complete(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": long_prompt}],
            max_tokens=16,
        )
        with pytest.raises(llmctx.BudgetExceeded):
            model.complete("a question too big for the budget", max_tokens=5000)
        with (
            pytest.raises(RuntimeError),
            llmctx.track_call(
                provider="acme",
                model="acme-large",
                request={"prompt": "will fail"},
                max_output_tokens=4,
            ),
        ):
            raise RuntimeError("upstream 502")
    store.close()
    return str(path)


@pytest.mark.parametrize("columns", [80, 120, None])
def test_show_prints_each_calls_prompt_and_response(chat_db: str, columns: int | None) -> None:
    """show prints every call's prompt and response cut to one short line, the refused call
    with its reason whole and its status whole, at 80 and 120 columns and in a pipe."""
    out = _cli("sessions", "show", _first_id(chat_db), "--db", chat_db, columns=columns)
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert max(len(line) for line in text.splitlines()) <= (columns or 80)
    assert "Prompts and responses" in text and "(1 earlier) user: tell me about word0" in text
    prompt_line = next(line for line in text.splitlines() if "tell me about" in line)
    assert "word119" not in prompt_line and "--full shows them whole" in text
    assert "refused" in text and "BudgetExceeded" in text and "a question too big" in text
    assert "RuntimeError: upstream 502" in text and "(not recorded)" not in text


def test_show_full_prints_prompts_whole(chat_db: str) -> None:
    """show --full prints every message of a prompt, the last word included."""
    out = _cli("sessions", "show", _first_id(chat_db), "--db", chat_db, "--full", columns=120)
    assert "system: be brief" in out.stdout and "word119" in out.stdout
    assert "--full shows them whole" not in out.stdout


def _first_id(db: str) -> str:
    return str(json.loads(_cli("sessions", "ls", "--db", db, "--json").stdout)[0]["id"])


def test_sessions_json_money_is_a_plain_decimal(tmp_path: Path) -> None:
    """A sub-micro-dollar cost is a plain decimal string in ls and show --json, never 4E-7."""
    store = SQLiteStore(tmp_path / "tiny.db")
    model = FakeModel("tiny-price-model", provider="openai")
    with llmctx.price_override("tiny-price-model", input_per_mtok="0.1", output_per_mtok="0"):
        with llmctx.session("tiny", store=store) as s:
            model.complete("one two three four", max_tokens=1)
    store.close()
    cost = s.cost
    assert cost is not None and cost < Decimal("0.000001")
    listed = json.loads(_cli("sessions", "ls", "--db", str(tmp_path / "tiny.db"), "--json").stdout)
    assert "E" not in listed[0]["cost"] and Decimal(listed[0]["cost"]) == cost
    shown = json.loads(
        _cli("sessions", "show", s.id, "--db", str(tmp_path / "tiny.db"), "--json").stdout
    )
    assert "E" not in shown["calls"][0]["cost"]
