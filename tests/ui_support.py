"""Helpers of the ``llmctx ui`` tests: a seeded store, a real server, a real Chromium.

The seed goes through the library's own API: ``llmctx.session`` with ``FakeModel`` for the
sessions a program would record, and real ``CallRecord``s saved through the store where a
test needs exact times, latencies and statuses (a waterfall with overlapping calls, a failed,
a cancelled and a refused call), which a fake model answering instantly cannot produce.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llmctx
from llmctx import CallRecord, Usage
from llmctx.stores import SessionRecord, Store
from llmctx.testing import FakeModel

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Recorded text that would run or navigate if a page ever rendered it as HTML.
XSS_REPLY = (
    '<script>window.__pwned = 1; document.title = "pwned"</script>'
    '<img src=x onerror="window.__pwned=2">'
    "[click me](javascript:window.__pwned=3) "
    '<a href="javascript:window.__pwned=4" id="evil-link">evil link</a>'
)
XSS_NAME = '"><script>window.__pwned=5</script><b id="bold-name">bold</b>'
SECRET = "sk-proj-UItestSECRETkey0123456789abcdefABCDEF"

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


@dataclass
class Seeded:
    """What the seed put in the store: ids the tests look for."""

    rich_id: str = ""
    child_id: str = ""
    grandchild_id: str = ""
    ok_call: str = ""
    tool_call: str = ""
    error_call: str = ""
    cancelled_call: str = ""
    xss_session: str = ""
    xss_call: str = ""
    secret_session: str = ""
    fake_ids: list[str] = field(default_factory=list)


def _call(session: str, at: float, latency: float, **kw: Any) -> CallRecord:
    defaults: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": Usage(input_tokens=120, output_tokens=30, requests=1),
        "cost": Decimal("0.000036"),
        "latency_s": latency,
        "ttft_s": latency / 3,
        "started_at": T0 + timedelta(seconds=at),
    }
    defaults.update(kw)
    return CallRecord(session_id=session, **defaults)


def seed(store: Store, n_fake: int = 3) -> Seeded:
    """Fill ``store`` with the sessions every UI test reads."""
    out = Seeded()
    # A root with a child and a grandchild, overlapping calls, every call status, a budget
    # it went over, monitors and a resume count.
    root = SessionRecord(
        id="rich0000aaaa1111",
        name="research agent",
        status="failed",
        tags={"team": "search", "env": "prod"},
        budget={"usd": "0.0001", "tokens": 5000, "requests": None},
        started_at=T0,
        ended_at=T0 + timedelta(seconds=9),
        error="RuntimeError: the crawler gave up",
        metadata={
            "resumed": 2,
            "events": [
                {
                    "kind": "monitor",
                    "at": (T0 + timedelta(seconds=1)).isoformat(),
                    "name": "crawl",
                    "wall_s": 2.5,
                    "cpu_s": 0.4,
                    "rss_start": 1,
                    "rss_end": 2,
                    "rss_delta": 3 * 2**20,
                    "error": None,
                    "slow": True,
                }
            ],
        },
    )
    child = SessionRecord(
        id="rich0000bbbb2222",
        name="retrieval",
        parent_id=root.id,
        status="completed",
        started_at=T0 + timedelta(seconds=1),
        ended_at=T0 + timedelta(seconds=6),
    )
    grandchild = SessionRecord(
        id="rich0000cccc3333",
        name="rerank",
        parent_id=child.id,
        status="cancelled",
        started_at=T0 + timedelta(seconds=4),
        ended_at=T0 + timedelta(seconds=5),
    )
    for r in (root, child, grandchild):
        store.save_session(r)
    ok = _call(
        root.id,
        0.2,
        1.4,
        request={
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "You are a research assistant."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What does this chart show?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
            ],
        },
        response="The chart shows latency rising after the deploy.",
        usage=Usage(
            input_tokens=900,
            cache_read_tokens=512,
            output_tokens=40,
            reasoning_tokens=8,
            requests=1,
        ),
        raw_usage={"prompt_tokens": 900, "completion_tokens": 40},
        metadata={"finish_reason": "stop"},
    )
    tool_use = _call(
        child.id,
        1.5,
        0.8,
        request={
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": "Use the tools.",
            "messages": [
                {"role": "user", "content": "Find the incident report."},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "tu_1",
                            "name": "files.search",
                            "input": {"query": "incident"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "tu_1",
                            "content": "incident-2026-02.md",
                        }
                    ],
                },
            ],
        },
        provider="anthropic",
        model="claude-sonnet-4-5",
        response="",
        tool_calls=[
            {"id": "tu_2", "name": "files.read_file", "arguments": {"path": "incident-2026-02.md"}}
        ],
        cost=Decimal("0.0021"),
        metadata={"stop_reason": "tool_use"},
    )
    tool = _call(
        child.id,
        2.4,
        0.3,
        kind="tool",
        provider="mcp",
        model="files.read_file",
        request={"path": "incident-2026-02.md"},
        response="# Incident 2026-02\nThe cache was cold.",
        usage=Usage(),
        cost=Decimal(0),
        ttft_s=None,
    )
    # Two calls in flight at once (concurrency the waterfall shows).
    par1 = _call(child.id, 3.0, 1.2, response="first of two")
    par2 = _call(child.id, 3.1, 1.0, response="second of two")
    err = _call(
        grandchild.id,
        4.2,
        0.4,
        status="error",
        error="APIStatusError: 529 overloaded",
        response=None,
        usage=Usage(input_tokens=50, requests=1),
        cost=Decimal("0.0000075"),
    )
    cancelled = _call(
        grandchild.id, 4.7, 0.2, status="cancelled", response=None, usage=Usage(), cost=Decimal(0)
    )
    late = _call(
        root.id,
        7.0,
        1.8,
        model="gpt-4o",
        cost=Decimal("0.0042"),
        response="Summary: the crawler failed twice.",
    )
    for c in (ok, tool_use, tool, par1, par2, err, cancelled, late):
        store.save_call(c)
    out.rich_id, out.child_id, out.grandchild_id = root.id, child.id, grandchild.id
    out.ok_call, out.tool_call = ok.id, tool.id
    out.error_call, out.cancelled_call = err.id, cancelled.id

    # Recorded text that must stay text.
    xss = SessionRecord(
        id="xss00000dddd4444",
        name=XSS_NAME,
        status="completed",
        tags={"note": '<img src=x onerror="window.__pwned=6">'},
        started_at=T0 + timedelta(minutes=5),
        ended_at=T0 + timedelta(minutes=5, seconds=1),
        error=None,
    )
    store.save_session(xss)
    xcall = _call(
        xss.id,
        300.2,
        0.5,
        request={"messages": [{"role": "user", "content": "<script>window.__pwned=7</script>"}]},
        response=XSS_REPLY,
        error=None,
    )
    store.save_call(xcall)
    out.xss_session, out.xss_call = xss.id, xcall.id

    # Sessions recorded as a program records them: through llmctx.session and a model.
    model = FakeModel("gpt-4o-mini", reply="Paris is the capital of France.")
    for i in range(n_fake):
        with llmctx.session(f"chat-{i:03d}", store=store, tags={"user": f"u{i}"}) as s:
            model.complete(f"What is the capital of France? (try {i})", max_tokens=16)
        out.fake_ids.append(s.id)
    # A request carrying a key: redacted when it was recorded, so no page can show it.
    with llmctx.session("with-a-secret", store=store) as s:
        with llmctx.track_call(
            provider="acme",
            model="acme-large",
            request={
                "messages": [{"role": "user", "content": f"my key is {SECRET}"}],
                "api_key": SECRET,
            },
            input_tokens=5,
            max_output_tokens=5,
        ) as call:
            call.finish(
                usage=Usage(input_tokens=5, output_tokens=2, requests=1), response=f"I saw {SECRET}"
            )
    out.secret_session = s.id
    return out


# -- a real server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    # The server runs in a thread, so it must not install signal handlers.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the llmctx ui server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "the llmctx ui server did not stop"


# -- a real browser --------------------------------------------------------------------------------


def need_chromium() -> None:
    """Skip (or, under CI, fail) when Debian's chromium and chromedriver are missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)} (bash .ci/run installs them)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by chromedriver, with a fresh profile removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llmctx-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page (not only the window) as ``tests/artifacts/ui/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    size = driver.get_window_size()
    driver.set_window_size(size["width"], min(max(int(height) + 120, 600), 6000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


# -- stores an older llmctx wrote ------------------------------------------------------------------

#: The SQLite tables as llmctx wrote them at schema version 2 (``PRAGMA user_version = 2``),
#: before sessions kept pid, host and heartbeat_at (stores/sqlite.py at commit 45f513f).
OLD_SQLITE_DDL = """
CREATE TABLE sessions (
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
    metadata           TEXT NOT NULL
);
CREATE INDEX sessions_started ON sessions (started_us);
CREATE INDEX sessions_parent ON sessions (parent_id);
CREATE TABLE calls (
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
CREATE INDEX calls_session ON calls (session_id, started_us);
CREATE UNIQUE INDEX calls_id ON calls (id);
PRAGMA user_version = 2;
"""

#: The PostgreSQL tables as llmctx wrote them at schema version 1 (stores/postgres.py at
#: commit 45f513f); ``{q}`` is the quoted schema.
OLD_POSTGRES_DDL = (
    "CREATE SCHEMA {q}",
    "CREATE TABLE {q}.llmctx_schema (version integer NOT NULL)",
    "INSERT INTO {q}.llmctx_schema (version) VALUES (1)",
    """CREATE TABLE {q}.sessions (
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
    "CREATE INDEX sessions_started ON {q}.sessions (started_at)",
    "CREATE INDEX sessions_parent ON {q}.sessions (parent_id)",
    """CREATE TABLE {q}.calls (
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
    "CREATE INDEX calls_session ON {q}.calls (session_id, started_at)",
)

_LIVENESS = ("pid", "host", "heartbeat_at")


def _old_columns(cols: str, extra: str = "") -> str:
    names = [c.strip() for c in cols.split(",") if c.strip() not in _LIVENESS]
    return ", ".join(names + ([extra] if extra else []))


def copy_to_old_sqlite(current: Path, old: Path) -> None:
    """Write ``old`` with the version-2 tables holding every row of the store ``current``.

    The rows are the library's own (seeded through a current store), copied column by column
    into the tables an older llmctx made, which have no liveness columns.
    """
    from llmctx.stores import _sql

    conn = sqlite3.connect(old)
    try:
        conn.executescript(OLD_SQLITE_DDL)
        conn.execute("ATTACH DATABASE ? AS cur", (str(current),))
        s_cols = _old_columns(_sql.SESSION_COLS, "started_us")
        c_cols = _old_columns(_sql.CALL_COLS, "started_us")
        with conn:
            conn.execute(f"INSERT INTO sessions ({s_cols}) SELECT {s_cols} FROM cur.sessions")
            conn.execute(f"INSERT INTO calls ({c_cols}) SELECT {c_cols} FROM cur.calls")
        conn.execute("DETACH DATABASE cur")
    finally:
        conn.close()


def copy_to_old_postgres(dsn: str, current: str, old: str) -> None:
    """Create schema ``old`` with the version-1 tables holding every row of schema ``current``."""
    import psycopg

    from llmctx.stores import _sql

    q = f'"{old}"'
    s_cols = _old_columns(_sql.SESSION_COLS)
    c_cols = _old_columns(_sql.CALL_COLS)
    with psycopg.connect(dsn) as conn:
        for statement in OLD_POSTGRES_DDL:
            conn.execute(statement.format(q=q))
        conn.execute(
            f'INSERT INTO {q}.sessions ({s_cols}) SELECT {s_cols} FROM "{current}".sessions'
        )
        conn.execute(
            f'INSERT INTO {q}.calls ({c_cols}) SELECT {c_cols} FROM "{current}".calls ORDER BY seq'
        )
