"""``llmctx sessions ls|show|export|rm`` against real SQLite files (and once PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctx._cli.app import app
from llmctx._usage import CallRecord, Usage
from llmctx.stores import SessionRecord, SQLiteStore, Store, open_store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ROOT = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CHILD = "a1b2c3d4e5f6ffff0000111122223333"
GRANDCHILD = "0123456789abcdef0123456789abcdef"
OTHER = "ffffeeeeddddccccbbbbaaaa99998888"

runner = CliRunner()


def _populate(store: Store) -> None:
    """root (2 calls) -> child (1 call) -> grandchild (1 unpriced call); other (failed, 1 call)."""
    sessions = [
        SessionRecord(
            id=ROOT,
            name="chat [bold]001[/bold]",
            status="completed",
            started_at=T0,
            ended_at=T0 + timedelta(seconds=75),
            usage=Usage(1500, 300, requests=4),
            cost=Decimal("0.012345"),
            unpriced_calls=1,
            calls=4,
            tags={"team": "ml"},
            budget={"usd": "0.50", "tokens": None, "requests": None},
        ),
        SessionRecord(
            id=CHILD,
            name="summarise",
            parent_id=ROOT,
            status="completed",
            started_at=T0 + timedelta(seconds=10),
            ended_at=T0 + timedelta(seconds=20),
            usage=Usage(700, 100, requests=2),
            cost=Decimal("0.002"),
            unpriced_calls=1,
            calls=2,
        ),
        SessionRecord(
            id=GRANDCHILD,
            name="tool-step",
            parent_id=CHILD,
            status="completed",
            started_at=T0 + timedelta(seconds=12),
            ended_at=T0 + timedelta(seconds=13),
            usage=Usage(200, 10, requests=1),
            unpriced_calls=1,
            calls=1,
        ),
        SessionRecord(
            id=OTHER,
            name="batch-β",
            status="failed",
            started_at=T0 + timedelta(hours=1),
            ended_at=T0 + timedelta(hours=1, seconds=3),
            error="RuntimeError: boom",
            usage=Usage(50, 5, requests=1),
            cost=Decimal("0.0001"),
            calls=1,
        ),
    ]
    for s in sessions:
        store.save_session(s)
    calls = [
        (ROOT, 1, "gpt-4o", Decimal("0.01"), Usage(400, 100, requests=1)),
        (ROOT, 30, "gpt-4o", Decimal("0.000345"), Usage(400, 90, requests=1)),
        (CHILD, 11, "gpt-4o-mini", Decimal("0.002"), Usage(500, 90, requests=1)),
        (GRANDCHILD, 12, "mystery-model", None, Usage(200, 10, requests=1)),
        (OTHER, 3601, "gpt-4o", Decimal("0.0001"), Usage(50, 5, requests=1)),
    ]
    for i, (sid, sec, model, cost, usage) in enumerate(calls):
        store.save_call(
            CallRecord(
                session_id=sid,
                provider="openai",
                model=model,
                request={"messages": [{"role": "user", "content": f"q{i} «é»"}]},
                response=f"answer {i}",
                usage=usage,
                cost=cost,
                cost_note=None if cost is not None else "no price for mystery-model",
                started_at=T0 + timedelta(seconds=sec),
                latency_s=0.5,
                id=f"call-{i}",
            )
        )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file holding the sample sessions."""
    path = tmp_path / "cli.db"
    store = SQLiteStore(path)
    _populate(store)
    store.close()
    return str(path)


def _run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["sessions", *args], input=input, env={"COLUMNS": "220"})
    return result.exit_code, result.stdout, result.stderr


def test_ls_shows_root_sessions_as_a_table(db: str) -> None:
    """ls prints a table of root sessions with name, status, calls, tokens and cost."""
    code, out, _ = _run("ls", "--db", db)
    assert code == 0, out
    assert "chat [bold]001[/bold]" in out  # user text is never read as rich markup
    assert "batch-β" in out
    assert "summarise" not in out
    assert "1,500" in out
    assert "$0.012345" in out
    assert "$0.012345 + 1 unpriced" in out
    assert "no price known" in out
    assert "1m15s" in out
    assert ROOT[:12] in out


def test_ls_json_filters(db: str) -> None:
    """ls --json honours --all, --status and --limit."""
    code, out, _ = _run("ls", "--db", db, "--json")
    assert code == 0
    assert [s["id"] for s in json.loads(out)] == [OTHER, ROOT]
    _, out, _ = _run("ls", "--db", db, "--json", "--all")
    assert [s["id"] for s in json.loads(out)] == [OTHER, GRANDCHILD, CHILD, ROOT]
    _, out, _ = _run("ls", "--db", db, "--json", "--status", "failed")
    assert [s["id"] for s in json.loads(out)] == [OTHER]
    _, out, _ = _run("ls", "--db", db, "--json", "--limit", "1")
    assert [s["id"] for s in json.loads(out)] == [OTHER]


def test_ls_rejects_unknown_status(db: str) -> None:
    """ls --status with a value that is no session status is a usage error."""
    code, _, err = _run("ls", "--db", db, "--status", "bogus")
    assert code == 2
    assert "completed" in err


def test_ls_uses_llmctx_db_by_default(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --db the commands read $LLMCTX_DB."""
    monkeypatch.setenv("LLMCTX_DB", db)
    code, out, _ = _run("ls", "--json")
    assert code == 0
    assert len(json.loads(out)) == 2


def test_ls_on_missing_file_creates_nothing(tmp_path: Path) -> None:
    """Reading a SQLite path that does not exist reports no sessions and creates no file."""
    missing = tmp_path / "typo.db"
    code, out, err = _run("ls", "--db", str(missing))
    assert code == 0
    assert "No sessions" in out
    assert "no llmctx database" in err
    assert not missing.exists()


def test_show_by_prefix_prints_details_tree_and_calls(db: str) -> None:
    """show accepts a unique id prefix and prints details, the child tree and the calls."""
    code, out, _ = _run("show", ROOT[:14], "--db", db)
    assert code == 0, out
    assert ROOT in out
    assert "completed" in out
    assert "team=ml" in out
    assert "summarise" in out
    assert "tool-step" in out
    assert "mystery-model" in out  # a grandchild's call
    assert "$0.01" in out
    assert "batch-β" not in out


def test_show_json(db: str) -> None:
    """show --json returns the session, its descendants and all their calls."""
    code, out, _ = _run("show", CHILD, "--db", db, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["session"]["id"] == CHILD
    assert [s["id"] for s in data["descendants"]] == [GRANDCHILD]
    assert [c["id"] for c in data["calls"]] == ["call-2", "call-3"]
    assert data["calls"][1]["cost"] is None


def test_show_unknown_id_exits_1(db: str) -> None:
    """show of an unknown id exits 1 with SessionNotFound's message on stderr."""
    code, out, err = _run("show", "zzz-no-such", "--db", db)
    assert code == 1
    assert "no session with id 'zzz-no-such'" in err
    assert "llmctx sessions ls" in err
    assert out == ""


def test_show_ambiguous_prefix_exits_1(db: str) -> None:
    """A prefix shared by several sessions exits 1 and lists them."""
    code, _, err = _run("show", "a1b2c3", "--db", db)
    assert code == 1
    assert "matches 2 sessions" in err


def test_export_jsonl_everything(db: str) -> None:
    """export with no id writes every session and call as JSON lines to stdout."""
    code, out, _ = _run("export", "--db", db)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert sum(1 for x in lines if x["type"] == "session") == 4
    calls = [x for x in lines if x["type"] == "call"]
    assert len(calls) == 5
    assert calls[0]["request"]["messages"][0]["content"] == "q0 «é»"
    restored = CallRecord.from_dict({k: v for k, v in calls[0].items() if k != "type"})
    assert restored.cost == Decimal("0.01")


def test_export_csv_of_one_tree_to_file(db: str, tmp_path: Path) -> None:
    """export ID --format csv -o FILE writes one row per call of that session's tree."""
    target = tmp_path / "out.csv"
    code, _, err = _run("export", CHILD, "--db", db, "--format", "csv", "--output", str(target))
    assert code == 0, err
    assert "Exported 2 sessions and 2 calls" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [r["call_id"] for r in rows] == ["call-2", "call-3"]
    assert rows[0]["session_name"] == "summarise"
    assert rows[0]["cost"] == "0.002"
    assert rows[1]["cost"] == ""
    assert rows[1]["cost_note"] == "no price for mystery-model"


def test_export_unknown_id_exits_1(db: str, tmp_path: Path) -> None:
    """export of an unknown id exits 1 and writes no file."""
    target = tmp_path / "none.jsonl"
    code, _, err = _run("export", "nope", "--db", db, "-o", str(target))
    assert code == 1
    assert "no session with id 'nope'" in err
    assert not target.exists()


def test_rm_asks_and_respects_no(db: str) -> None:
    """rm without --yes asks; answering no deletes nothing and exits 1."""
    code, _, err = _run("rm", CHILD, "--db", db, input="n\n")
    assert code == 1
    assert "1 descendant session(s) and 2 call(s)" in err
    assert "nothing was deleted" in err
    store = SQLiteStore(db)
    try:
        assert store.get_session(CHILD) is not None
    finally:
        store.close()


def test_rm_deletes_the_tree(db: str) -> None:
    """rm ID after a yes deletes the session, its descendants and their calls."""
    code, out, _ = _run("rm", CHILD, "--db", db, input="y\n")
    assert code == 0
    assert "Deleted 2 session(s)" in out
    store = SQLiteStore(db)
    try:
        assert store.get_session(CHILD) is None
        assert store.get_session(GRANDCHILD) is None
        assert store.get_session(ROOT) is not None
        assert store.list_calls([CHILD, GRANDCHILD]) == []
    finally:
        store.close()


def test_rm_yes_json(db: str) -> None:
    """rm --yes --json deletes without asking and reports the count as JSON."""
    code, out, _ = _run("rm", ROOT, "--db", db, "--yes", "--json")
    assert code == 0
    assert json.loads(out) == {
        "deleted": [
            {"id": ROOT, "name": "chat [bold]001[/bold]", "status": "completed", "sessions": 3}
        ],
        "deleted_sessions": 3,
    }


def test_rm_unknown_id_exits_1(db: str) -> None:
    """rm of an unknown id exits 1."""
    code, _, err = _run("rm", "nope", "--db", db, "--yes")
    assert code == 1
    assert "no session with id 'nope'" in err


def test_bad_db_url_exits_1() -> None:
    """An unusable --db value exits 1 with the accepted forms."""
    code, _, err = _run("ls", "--db", "mysql://root:hunter2@x/db")
    assert code == 1
    assert "postgresql://" in err
    assert "hunter2" not in err


def test_unreachable_keyword_dsn_exits_1_without_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libpq keyword DSN in --db reaches PostgreSQL (no file made) and hides its password."""
    monkeypatch.chdir(tmp_path)
    dsn = "host=127.0.0.1 port=1 user=app password='hunter2 x' dbname=x connect_timeout=2"
    code, _, err = _run("ls", "--db", dsn)
    assert code == 1
    assert "127.0.0.1:1" in err
    assert "hunter2" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_cli_against_postgres(postgres_dsn: str, unique: str) -> None:
    """ls, show, export and rm work the same against a PostgreSQL store."""
    import psycopg

    url = postgres_dsn + ("&" if "?" in postgres_dsn else "?") + f"schema=cli_{unique}"
    store = open_store(url)
    try:
        _populate(store)
        code, out, _ = _run("ls", "--db", url, "--json", "--all")
        assert code == 0
        assert len(json.loads(out)) == 4
        code, out, _ = _run("show", ROOT[:14], "--db", url)
        assert code == 0
        assert "tool-step" in out
        code, out, _ = _run("export", ROOT, "--db", url, "-f", "csv")
        assert code == 0
        assert len(out.strip().splitlines()) == 1 + 4
        code, out, _ = _run("rm", ROOT, "--db", url, "--yes")
        assert code == 0
        assert store.list_sessions(limit=None)[0].id == OTHER
    finally:
        store.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "cli_{unique}" CASCADE')


def test_sub_cent_cost_is_shown_exactly_not_as_zero(tmp_path: Path) -> None:
    """A session that cost $0.0000004 is listed as $0.0000004, the figure BudgetExceeded uses."""
    import llmctx
    from llmctx._money import format_usd

    db = tmp_path / "tiny.db"
    with llmctx.price_override("tiny-model", input_per_mtok="0.4", output_per_mtok="0"):
        with llmctx.session("tiny", store=str(db)) as s:
            with llmctx.track_call(provider="acme", model="tiny-model", input_tokens=1) as call:
                call.finish(usage=llmctx.Usage(input_tokens=1, requests=1))
    assert s.cost == Decimal("0.0000004")
    assert format_usd(s.cost) == "$0.0000004"
    code, out, _ = _run("ls", "--db", str(db))
    assert code == 0, out
    assert "$0.0000004" in out and "$0.00 " not in out


def test_show_marks_a_budget_overrun(tmp_path: Path) -> None:
    """A session whose call used more than it reserved shows how far it went past its budget
    and which calls overran."""
    import warnings

    import llmctx

    path = tmp_path / "over.db"
    with (
        warnings.catch_warnings(),
        llmctx.price_override("over-model", input_per_mtok="1", output_per_mtok="1"),
    ):
        warnings.simplefilter("ignore", llmctx.BudgetOverrun)
        with llmctx.session("over", budget=llmctx.Budget(tokens=1_000), store=str(path)) as s:
            with llmctx.track_call(
                provider="acme", model="over-model", input_tokens=6, max_output_tokens=994
            ) as call:
                call.finish(usage=Usage(input_tokens=6, output_tokens=5_000, requests=1))
    code, out, _ = _run("show", s.id, "--db", str(path))
    assert code == 0, out
    assert "4,006 tokens over" in out
    assert "1 call(s) used more than they reserved" in out
    assert "ok over" in out
