"""llmctx ui's routes through Starlette's test client, over real SQLite and PostgreSQL stores
seeded through the library (see ``ui_support.seed``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

import llmctx
from llmctx import ConfigError, StoreError
from llmctx.stores import PostgresStore, SessionRecord, SQLiteStore
from llmctx.stores._base import STALE_AFTER
from llmctx.testing import FakeModel
from llmctx.ui import create_app
from llmctx.ui._reader import PAGE_SIZE, open_reader
from ui_support import (
    OLD_SQLITE_DDL,
    SECRET,
    XSS_NAME,
    XSS_REPLY,
    Seeded,
    copy_to_old_postgres,
    copy_to_old_sqlite,
    seed,
)

pytestmark = pytest.mark.filterwarnings("ignore::llmctx.UnknownPriceWarning")

LOCAL = "http://127.0.0.1"


@dataclass
class Env:
    """A seeded store, the --db string that names it, and a client of its viewer."""

    db: str
    store: llmctx.stores.Store
    seeded: Seeded
    client: TestClient


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Env]:
    """The viewer over a freshly seeded SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        db = str(tmp_path / "ui.db")
        store: llmctx.stores.Store = SQLiteStore(db)
        cleanup = store.close
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"ui_{unique}"
        store = PostgresStore(dsn, schema=schema)
        db = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"

        def cleanup() -> None:
            store.close()
            _drop_schema(dsn, schema)

    try:
        seeded = seed(store)
        with TestClient(create_app(db), base_url=LOCAL) as client:
            yield Env(db, store, seeded, client)
    finally:
        cleanup()


def _ok(client: TestClient, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    return r.text


def _names(html: str) -> list[str]:
    """The session names of a list page's rows, in order."""
    return re.findall(r'<td class="name">.*?<a href="/s/[^"]+">([^<]*)</a>', html, re.S)


# -- the list -------------------------------------------------------------------------------------


def test_list_shows_root_sessions_newest_first(env: Env) -> None:
    """The list shows root sessions newest first, and child sessions only when asked."""
    html = _ok(env.client, "/")
    names = _names(html)
    assert names[:4] == ["with-a-secret", "chat-002", "chat-001", "chat-000"]
    assert names[-1] == "research agent"
    assert "retrieval" not in names
    assert "retrieval" in _names(_ok(env.client, "/?children=1"))


def test_search_matches_name_id_tag_model_and_prompt_text(env: Env) -> None:
    """Search finds sessions by name, id prefix, tag and model; prompt text only when asked."""
    c = env.client
    assert _names(_ok(c, "/?q=research")) == ["research agent"]
    assert _names(_ok(c, "/?q=rich0000a")) == ["research agent"]
    assert _names(_ok(c, "/?q=u1")) == ["chat-001"]  # the tag user=u1
    assert _names(_ok(c, "/?q=claude-sonnet")) == ["retrieval"]  # the child holding the call
    assert _names(_ok(c, "/?q=capital+of+France")) == []
    assert sorted(_names(_ok(c, "/?q=capital+of+France&text=1"))) == [
        "chat-000",
        "chat-001",
        "chat-002",
    ]


def test_filters_status_range_model_errors_and_over_budget(env: Env) -> None:
    """Status, time range, model, has-errors and over-budget each narrow the list."""
    c = env.client
    assert _names(_ok(c, "/?status=failed")) == ["research agent"]
    assert _names(_ok(c, "/?from=2026-03-01T08:00&to=2026-03-01T09:01")) == ["research agent"]
    assert _names(_ok(c, "/?model=files.read_file")) == ["retrieval"]  # the session holding it
    errors = _names(_ok(c, "/?errors=1"))
    assert sorted(errors) == ["rerank", "research agent"]
    assert _names(_ok(c, "/?over=1")) == ["research agent"]
    bad = _ok(c, "/?from=yesterday&sort=bogus")
    assert "from=&#39;yesterday&#39; is not a date" in bad
    assert "sort=&#39;bogus&#39; is not one of" in bad


def test_sorts_by_cost_tokens_and_duration(env: Env) -> None:
    """Sorting by cost, tokens and duration orders the rows by that value, either way."""
    c = env.client
    assert _names(_ok(c, "/?sort=cost"))[0] == "research agent"
    assert _names(_ok(c, "/?sort=tokens&order=asc"))[0] == "with-a-secret"
    assert _names(_ok(c, "/?sort=duration"))[0] == "research agent"


def test_list_is_paged(env: Env) -> None:
    """More sessions than a page: the first page holds PAGE_SIZE, the next the rest."""
    model = FakeModel()
    for i in range(PAGE_SIZE):
        with llmctx.session(f"bulk-{i:03d}", store=env.store):
            model.complete("hi", max_tokens=2)
    first = _ok(env.client, "/")
    assert len(_names(first)) == PAGE_SIZE
    assert 'rel="next"' in first
    rest = _names(_ok(env.client, "/?page=2"))
    assert len(rest) == 6  # the seeded roots, oldest last
    assert rest[-1] == "research agent"
    assert f"{PAGE_SIZE + 6} sessions" in first


def test_list_charts_are_svg(env: Env) -> None:
    """The list page's four charts are SVG images drawn from the store."""
    html = _ok(env.client, "/")
    for name in ("cost", "tokens", "latency", "models"):
        assert f'src="/charts/{name}.svg' in html
        r = env.client.get(f"/charts/{name}.svg")
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        assert r.text.startswith("<svg") and "<script" not in r.text
    models = env.client.get("/charts/models.svg").text
    assert "gpt-4o" in models and "claude-sonnet-4-5" in models
    # The seeded MCP tool call is one "tool calls" row, not a model named after the tool.
    assert ">tool calls<" in models and "files.read_file" not in models
    assert env.client.get("/charts/nope.svg").status_code == 404


def test_list_call_charts_read_a_bounded_number_of_the_newest_calls(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past their bound the cost-by-model and latency charts draw the newest sessions' calls
    only, and their titles say how many; under it they draw every call."""
    from llmctx.ui import _reader

    monkeypatch.setattr(_reader, "CHART_CALLS", 3)
    capped = env.client.get("/charts/models.svg?from=2020-01-01").text
    assert "Cost by model, newest 3 calls" in capped
    assert "acme-large" in capped and "gpt-4o-mini" in capped
    assert "claude-sonnet-4-5" not in capped  # in the oldest session, beyond the bound
    latency = env.client.get("/charts/latency.svg?from=2020-01-01").text
    assert "Latency of the newest calls" in latency and "3 calls" in latency
    monkeypatch.setattr(_reader, "CHART_CALLS", 1_000)
    whole = env.client.get("/charts/models.svg?from=2020-01-02").text
    assert "newest" not in whole and "claude-sonnet-4-5" in whole


# -- a session ------------------------------------------------------------------------------------


def test_session_page_shows_tree_budget_monitors_and_marked_calls(env: Env) -> None:
    """A session page has its scope tree with rolled-up totals, its budget, monitors, resume
    count and the failed and cancelled calls marked."""
    html = _ok(env.client, f"/s/{env.seeded.rich_id}")
    assert 'data-key="node-rich0000bbbb2222"' in html and 'data-key="node-rich0000cccc3333"' in html
    assert "8 calls · 1,430 in / 160 out · $0.0064155 · 9.00s" in html  # the root's roll-up
    assert "6 calls · 410 in / 90 out" in html  # the child's, its grandchild included
    assert "$0.0063155 over" in html and "3,410 left" in html  # money over, tokens left
    assert "crawl" in html and "+3.0 MiB" in html and ">slow<" in html
    assert "2 times" in html
    assert "1 failed" in html and "1 cancelled" in html
    assert 'class="cs-error"' in html and 'class="cs-cancelled"' in html
    assert "Timeline of calls" in html and "at most 2 at once" in html
    assert "<svg" in html
    # Cost by model: the MCP tool call is one "tool calls" row, not a model named after it.
    assert "<title>tool calls: $0.00 · 1 call</title>" in html
    assert "<title>files.read_file:" not in html


def test_session_prefix_redirects_and_unknown_is_404(env: Env) -> None:
    """A unique id prefix redirects to the session; an unknown id is a 404 page."""
    r = env.client.get("/s/rich0000a", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/s/{env.seeded.rich_id}"
    r = env.client.get("/s/nope-nothing")
    assert r.status_code == 404 and "No session with id" in r.text


def test_child_session_page_links_its_ancestors(env: Env) -> None:
    """A child session's page shows its own subtree and links back to its ancestors."""
    html = _ok(env.client, f"/s/{env.seeded.grandchild_id}")
    assert f'href="/s/{env.seeded.rich_id}"' in html and f'href="/s/{env.seeded.child_id}"' in html
    assert "2 calls" in html


# -- a call ---------------------------------------------------------------------------------------


def test_call_page_renders_the_conversation(env: Env) -> None:
    """A call page shows roles, images as placeholders, the reply, usage, timing, finish
    reason and the raw JSON."""
    html = _ok(env.client, f"/c/{env.seeded.ok_call}")
    assert "You are a research assistant." in html and "role-system" in html
    assert 'class="placeholder">[image]' in html
    assert "latency rising after the deploy" in html
    assert ">512<" in html and ">8<" in html  # cache read, reasoning
    assert "1.40s" in html and "0.47s" in html  # latency, TTFT
    assert "<dt>finish reason</dt><dd>stop</dd>" in html
    assert "Copy as JSON" in html and "&#34;session_id&#34;: &#34;rich0000aaaa1111&#34;" in html


def test_tool_calls_and_results_are_shown(env: Env) -> None:
    """Tool calls, tool results and a tool's own call page are rendered as such."""
    client = env.client
    session = _ok(client, f"/s/{env.seeded.child_id}")
    anthropic_id = re.search(
        r'href="/c/([0-9a-f]+)">[^<]*</a></td><td>retrieval</td><td>llm</td><td>claude', session
    )
    assert anthropic_id is not None
    html = _ok(client, f"/c/{anthropic_id.group(1)}")
    assert "files.search" in html and "incident-2026-02.md" in html
    assert "tool result" in html and "files.read_file" in html  # its reply is a tool call
    tool = _ok(client, f"/c/{env.seeded.tool_call}")
    assert "The cache was cold." in tool and "arguments" in tool


def test_error_call_shows_its_error(env: Env) -> None:
    """A failed call's page names the error."""
    html = _ok(env.client, f"/c/{env.seeded.error_call}")
    assert "APIStatusError: 529 overloaded" in html and "cs-error" in html
    assert env.client.get("/c/nope").status_code == 404


# -- what never reaches a page --------------------------------------------------------------------


def test_recorded_markup_stays_text(env: Env) -> None:
    """A name, tag, prompt and reply holding <script>, handlers and javascript: links come
    out escaped on every page, and no page links anywhere but the viewer itself."""
    pages = [
        _ok(env.client, "/"),
        _ok(env.client, f"/s/{env.seeded.xss_session}"),
        _ok(env.client, f"/c/{env.seeded.xss_call}"),
    ]
    for html in pages:
        assert "<script>window" not in html and "<img src=x" not in html
        assert 'href="javascript:' not in html and 'onerror="' not in html
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert len(scripts) == 1 and scripts[0].startswith('<script src="/static/app.js?v=')
        for href in re.findall(r'(?:href|src)="([^"]*)"', html):
            assert href.startswith(("/", "#")), href
    assert "&lt;script&gt;window.__pwned = 1" in pages[2]
    assert "&#34;&gt;&lt;script&gt;window.__pwned=5" in pages[0]
    assert XSS_NAME not in pages[0] and XSS_REPLY not in pages[2]


def test_secrets_recorded_through_the_library_never_reach_a_page(env: Env) -> None:
    """A key in a request and a reply was redacted when recorded; no page shows it."""
    session = _ok(env.client, f"/s/{env.seeded.secret_session}")
    call_id = re.search(r'href="/c/([0-9a-f]+)"', session)
    assert call_id is not None
    call = _ok(env.client, f"/c/{call_id.group(1)}")
    assert SECRET not in session and SECRET not in call
    assert "[REDACTED]" in call


def test_every_response_has_a_strict_csp(env: Env) -> None:
    """Pages, charts and errors carry a CSP without unsafe-inline, nosniff and no-referrer."""
    for url in ("/", f"/s/{env.seeded.rich_id}", "/charts/cost.svg", "/nope", "/static/app.css"):
        r = env.client.get(url)
        csp = r.headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        )
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_viewer_is_read_only(env: Env) -> None:
    """Only GET and HEAD are answered, and the reader's connections refuse writes."""
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert env.client.request(method, "/").status_code == 405
    reader = env.client.app.state.reader  # type: ignore[attr-defined]
    with pytest.raises(StoreError):
        reader._rows(f"DELETE FROM {reader.t_calls}")
    assert _names(_ok(env.client, "/?q=research")) == ["research agent"]


# -- live -----------------------------------------------------------------------------------------


def test_version_changes_when_a_running_session_gains_a_call(env: Env) -> None:
    """The version token of a running session and of the list changes with its next call,
    and the partial render has that call."""
    model = FakeModel()
    with llmctx.session("live-one", store=env.store) as s:
        model.complete("first", max_tokens=2)
        before = env.client.get("/api/version", params={"session": s.id}).text
        listed = env.client.get("/api/version").text
        assert env.client.get("/api/version", params={"session": s.id}).text == before
        model.complete("second", max_tokens=2)
        after = env.client.get("/api/version", params={"session": s.id}).text
        assert after != before and env.client.get("/api/version").text != listed
        part = env.client.get(f"/s/{s.id}", headers={"X-LLMCTX-Partial": "1"})
        assert part.headers["x-llmctx-version"] == after
        assert "<html" not in part.text and 'id="call-count">2<' in part.text


# -- security gate --------------------------------------------------------------------------------


def test_loopback_viewer_refuses_other_host_names(env: Env) -> None:
    """Without a token only loopback Host names are answered (no DNS rebinding)."""
    assert env.client.get("/", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert env.client.get("/", headers={"host": "localhost"}).status_code == 200
    r = env.client.get("/", headers={"host": "attacker.example:8000"})
    assert r.status_code == 403 and "loopback" in r.text


def test_token_is_required_and_kept_in_a_cookie(tmp_path: Path) -> None:
    """With a token: none or a wrong one is 403; ?token= sets an HttpOnly cookie and
    redirects without it; the cookie and a Bearer header then work from any host."""
    db = str(tmp_path / "t.db")
    SQLiteStore(db).close()
    token = "s3cret-token-123"
    with TestClient(create_app(db, token=token), base_url="http://10.0.0.5:9000") as c:
        assert c.get("/").status_code == 403
        assert c.get("/?token=wrong").status_code == 403
        r = c.get(f"/?token={token}&q=x", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?q=x"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert c.get("/").status_code == 200  # the client kept the cookie
        c.cookies.clear()
        assert c.get("/").status_code == 403
        assert c.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200


# -- errors and stores ----------------------------------------------------------------------------


def test_unreadable_stores_say_what_to_do(tmp_path: Path) -> None:
    """A missing file, a file that is not an llmctx store and memory: fail with the fix."""
    with pytest.raises(StoreError, match="no llmctx database at"):
        open_reader(str(tmp_path / "missing.db"))
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE x (a)")
    with pytest.raises(StoreError, match="not an llmctx database"):
        open_reader(str(other))
    with pytest.raises(ConfigError, match="memory: store lives inside one process"):
        open_reader("memory:")


def test_a_store_without_the_list_indexes_gets_a_notice(tmp_path: Path) -> None:
    """A file lacking the list's indexes (an older llmctx wrote it) still works, with a note."""
    db = tmp_path / "old.db"
    SQLiteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX calls_model")
    with TestClient(create_app(str(db)), base_url=LOCAL) as c:
        assert "lacks the indexes the list filters use (calls_model)" in _ok(c, "/")
    SQLiteStore(db).close()  # a store opening it adds them back
    with TestClient(create_app(str(db)), base_url=LOCAL) as c:
        assert "lacks the indexes" not in _ok(c, "/")


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (reused or not, it is not the
    process that started a session before it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_filter_tells_interrupted_from_running(env: Env) -> None:
    """status=interrupted lists the running rows whose process is gone, status=running only
    the live ones, as llmctx sessions ls --status does."""
    from llmctx._cli.sessions import sessions_app

    now = datetime.now(UTC)
    here = socket.gethostname()
    live = SessionRecord(
        id="live0000eeee5555",
        name="still-running",
        status="running",
        started_at=now - timedelta(seconds=5),
        pid=os.getpid(),
        host=here,
        heartbeat_at=now,
    )
    gone = live.replace(id="gone0000ffff6666", name="killed-run", pid=_dead_pid())
    stale = live.replace(
        id="stal0000gggg7777",
        name="stale-beat",
        host="another-host",
        heartbeat_at=now - timedelta(seconds=STALE_AFTER + 60),
    )
    for r in (live, gone, stale):
        env.store.save_session(r)
    c = env.client
    assert sorted(_names(_ok(c, "/?status=interrupted"))) == ["killed-run", "stale-beat"]
    assert _names(_ok(c, "/?status=running")) == ["still-running"]
    page = _ok(c, "/?status=interrupted&sort=cost")
    assert '<option value="interrupted" selected>' in page and "interrupted" in page
    for status, expected in (("interrupted", ["killed-run", "stale-beat"]), ("running", [])):
        result = CliRunner().invoke(
            sessions_app, ["ls", "--db", env.db, "--status", status, "--json"]
        )
        assert result.exit_code == 0, result.output
        listed = sorted(r["name"] for r in json.loads(result.output))
        assert listed == (expected if status == "interrupted" else ["still-running"])


def _schema_of(dsn: str, schema: str) -> tuple[int, set[str], set[str]]:
    """A PostgreSQL schema's llmctx version, its sessions columns and its index names."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        version = conn.execute(f'SELECT max(version) FROM "{schema}".llmctx_schema').fetchone()
        cols = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'sessions'",
            (schema,),
        ).fetchall()
        idx = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
        ).fetchall()
    assert version is not None
    return int(version[0]), {r[0] for r in cols}, {r[0] for r in idx}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_store_an_older_llmctx_wrote_is_read_and_left_as_it_was(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> None:
    """A store written before sessions kept pid, host and heartbeat (SQLite schema 2,
    PostgreSQL 1) shows its list, sessions and calls, says it is old, and stays unmigrated."""
    interrupted = SessionRecord(
        id="old00000hhhh8888",
        name="crashed-long-ago",
        status="running",
        started_at=datetime.now(UTC) - timedelta(hours=1),
        pid=_dead_pid(),
        host=socket.gethostname(),
    )
    if kind == "sqlite":
        current = tmp_path / "current.db"
        store: llmctx.stores.Store = SQLiteStore(current)
        seeded = seed(store, n_fake=2)
        store.save_session(interrupted)
        store.close()
        old = tmp_path / "old.db"
        copy_to_old_sqlite(current, old)
        db = str(old)
        digest = hashlib.sha256(old.read_bytes()).hexdigest()
        cleanup: list[Callable[[], None]] = []
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        cur_schema, old_schema = f"uicur_{unique}", f"uiold_{unique}"
        cleanup = [lambda: _drop_schema(dsn, cur_schema), lambda: _drop_schema(dsn, old_schema)]
        store = PostgresStore(dsn, schema=cur_schema)
        seeded = seed(store, n_fake=2)
        store.save_session(interrupted)
        store.close()
        copy_to_old_postgres(dsn, cur_schema, old_schema)
        db = f"{dsn}{'&' if '?' in dsn else '?'}schema={old_schema}"
    try:
        with TestClient(create_app(db), base_url=LOCAL) as c:
            listed = _ok(c, "/")
            names = _names(listed)
            assert names[:4] == ["with-a-secret", "chat-001", "chat-000", "crashed-long-ago"]
            assert "research agent" in names
            assert "An older llmctx wrote this store" in listed
            assert "llmctx sessions ls" in listed
            # Without a pid the crashed run cannot be told from a live one: it reads running.
            assert "crashed-long-ago" in _names(_ok(c, "/?status=running"))
            assert _names(_ok(c, "/?status=interrupted")) == []
            assert _names(_ok(c, "/?model=files.read_file")) == ["retrieval"]
            session = _ok(c, f"/s/{seeded.rich_id}")
            assert "research agent" in session and "rerank" in session
            assert "The chart shows latency rising" in _ok(c, f"/c/{seeded.ok_call}")
            _ok(c, f"/s/{interrupted.id}")
            _ok(c, "/charts/cost.svg")
            _ok(c, "/api/version")
        if kind == "sqlite":
            assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == digest
            with sqlite3.connect(db) as conn:
                assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        else:
            version, columns, indexes = _schema_of(dsn, old_schema)
            assert version == 1 and "pid" not in columns and "calls_model" not in indexes
        # The fix the page names: any llmctx command that opens the store migrates it.
        from llmctx._cli.sessions import sessions_app

        assert CliRunner().invoke(sessions_app, ["ls", "--db", db]).exit_code == 0
        with TestClient(create_app(db), base_url=LOCAL) as c:
            listed = _ok(c, "/")
            assert "An older llmctx" not in listed and "lacks the indexes" not in listed
    finally:
        for step in cleanup:
            step()


def test_a_table_without_the_columns_the_viewer_reads_names_the_fix(tmp_path: Path) -> None:
    """A sessions table lacking a column the viewer cannot do without fails at start with the
    missing column and the command that migrates the store."""
    db = tmp_path / "odd.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SQLITE_DDL.replace("cost               TEXT NOT NULL,", ""))
    with pytest.raises(StoreError) as info:
        create_app(str(db))
    message = str(info.value)
    assert "lacks columns the viewer reads (sessions.cost)" in message
    assert "llmctx sessions ls --db" in message


@pytest.mark.postgres
def test_a_postgres_schema_at_the_current_version_gets_missing_indexes(
    postgres_dsn: str, unique: str
) -> None:
    """A current PostgreSQL schema without the list's indexes gets them when a store opens it,
    and the viewer's notice about them goes away."""
    schema = f"uiidx_{unique}"
    store = PostgresStore(postgres_dsn, schema=schema)
    try:
        seed(store, n_fake=1)
        store.close()
        import psycopg

        with psycopg.connect(postgres_dsn) as conn:
            for name in ("calls_model", "calls_failed", "calls_seq"):
                conn.execute(f'DROP INDEX "{schema}".{name}')
        db = f"{postgres_dsn}{'&' if '?' in postgres_dsn else '?'}schema={schema}"
        with TestClient(create_app(db), base_url=LOCAL) as c:
            listed = _ok(c, "/")
            assert (
                "lacks the indexes the list filters use (calls_model, calls_failed, calls_seq)"
                in (listed)
            )
        store = PostgresStore(postgres_dsn, schema=schema)
        version, _, indexes = _schema_of(postgres_dsn, schema)
        assert version == 2 and {"calls_model", "calls_failed", "calls_seq"} <= indexes
        with TestClient(create_app(db), base_url=LOCAL) as c:
            assert "lacks the indexes" not in _ok(c, "/")
            assert _names(_ok(c, "/?model=files.read_file")) == ["retrieval"]
    finally:
        store.close()
        _drop_schema(postgres_dsn, schema)


def test_reader_connections_close_with_the_app(tmp_path: Path) -> None:
    """Leaving the app (its lifespan) closes every pooled read-only connection."""
    db = str(tmp_path / "c.db")
    SQLiteStore(db).close()
    app = create_app(db)
    with TestClient(app, base_url=LOCAL) as c:
        _ok(c, "/")
        reader = app.state.reader
        assert reader._idle
    assert reader._closed and not reader._idle


def test_browsing_leaves_the_sqlite_file_unchanged(tmp_path: Path) -> None:
    """Every page read leaves the database file's bytes as they were."""
    db = tmp_path / "ro.db"
    store = SQLiteStore(db)
    seeded = seed(store, n_fake=1)
    store.close()  # checkpoints the WAL into the file
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with TestClient(create_app(str(db)), base_url=LOCAL) as c:
        for url in (
            "/",
            "/?q=a&text=1",
            f"/s/{seeded.rich_id}",
            f"/c/{seeded.ok_call}",
            "/charts/models.svg",
            "/api/version",
        ):
            _ok(c, url)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


# -- html export ----------------------------------------------------------------------------------


def test_export_html_is_one_self_contained_file(tmp_path: Path) -> None:
    """sessions export --format html writes the session pages with their calls into one file
    that loads nothing, runs no script, and keeps recorded markup as text."""
    from llmctx._cli.sessions import sessions_app

    db = tmp_path / "e.db"
    store = SQLiteStore(db)
    seeded = seed(store, n_fake=1)
    store.close()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        sessions_app,
        [
            "export",
            "--format",
            "html",
            "--db",
            str(db),
            "rich0000a",
            seeded.xss_session,
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert "research agent" in html and "Timeline of calls" in html
    assert html.count('<article class="export-call" id="call-') == 9  # 8 of the tree, 1 other
    assert f'href="#call-{seeded.ok_call}"' in html
    assert "<script" not in html.replace("&lt;script", "")
    assert re.findall(r'(?:href|src)="(?!#)[^"]*"', html) == []
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert csp is not None and "default-src &#39;none&#39;" in csp.group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    from llmctx.ui._render import style_hash

    assert style_hash(style.group(1)).replace("'", "&#39;") in csp.group(1)
    assert "&lt;script&gt;window.__pwned = 1" in html


# -- the command ----------------------------------------------------------------------------------


def _start_ui(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from llmctx._cli.app import main; main()", "ui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.communicate()}")
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        # Ctrl-C's exit status (uvicorn re-raises the signal once it has shut down), quietly.
        assert proc.wait(15) in {0, 130}
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_llmctx_ui_serves_until_ctrl_c(tmp_path: Path) -> None:
    """`llmctx ui --db FILE` prints a loopback URL that serves the list, and Ctrl-C stops it."""
    db = tmp_path / "cli.db"
    store = SQLiteStore(db)
    seed(store, n_fake=1)
    store.close()
    proc, url = _start_ui("--db", str(db))
    try:
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and "research agent" in r.read().decode()
    finally:
        _stop(proc)


def test_llmctx_ui_on_other_hosts_prints_a_token(tmp_path: Path) -> None:
    """A non-loopback --host generates a token: the printed URL works, the bare one is 403."""
    db = tmp_path / "cli.db"
    SQLiteStore(db).close()
    proc, url = _start_ui("--db", str(db), "--host", "0.0.0.0")
    try:
        assert "?token=" in url
        port = url.split(":")[2].split("/")[0]
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert info.value.code == 403
        token = url.split("token=")[1]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    finally:
        _stop(proc)


def test_llmctx_ui_reports_a_missing_store(tmp_path: Path) -> None:
    """`llmctx ui` on a file that does not exist exits 1 with the reason, creating nothing."""
    missing = tmp_path / "nothing.db"
    t0 = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llmctx._cli.app import main; main()",
            "ui",
            "--db",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no llmctx database at" in result.stderr
    assert not missing.exists() and time.monotonic() - t0 < 60
