"""Shared fixtures. Integration tests use real services.

PostgreSQL and Redis come from the environment: ``LLMCTX_TEST_POSTGRES_DSN`` and
``LLMCTX_TEST_REDIS_URL`` (``.ci/run`` starts both on loopback and sets them). Outside CI a
missing service skips its tests with the reason; under CI (``CI=true``) it fails them, so a
CI run can never pass by skipping the real services. A 3-master Redis Cluster comes from
``LLMCTX_TEST_REDIS_CLUSTER_URL`` (``.ci/run`` sets it too), or the tests start one on
loopback with ``redis-server`` and ``redis-cli`` and stop it at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from llmctx._pricing import reload_prices
from llmctx.stores import MemoryStore


def _service(env: str, what: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    _missing(f"{what} is not configured: set {env} (bash .ci/run starts one and sets it)")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a real PostgreSQL server whose user may create schemas."""
    return _service("LLMCTX_TEST_POSTGRES_DSN", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis server."""
    return _service("LLMCTX_TEST_REDIS_URL", "Redis")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _missing(message: str) -> NoReturn:
    """Fail under CI (a CI run never passes by skipping a real service), else skip."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (``redis+cluster://``) of a real 3-master Redis Cluster on loopback.

    ``LLMCTX_TEST_REDIS_CLUSTER_URL`` if set; else three ``redis-server --cluster-enabled yes``
    processes on free ports, joined by ``redis-cli --cluster create`` and shut down (then
    killed, if they linger) at the end of the session.
    """
    given = os.environ.get("LLMCTX_TEST_REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _missing(
            "a Redis Cluster is not configured: set LLMCTX_TEST_REDIS_CLUSTER_URL or install "
            "redis-server and redis-cli (bash .ci/run starts one and sets it)"
        )
    root = tmp_path_factory.mktemp("redis-cluster")
    procs: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for i in range(3):
            port, bus = _free_port(), _free_port()
            node = root / str(i)
            node.mkdir()
            # Redis's cluster bus is port + 10000 unless named: a free port above 55535 would
            # have none, so the bus gets a free port of its own.
            command = [server, "--port", str(port), "--cluster-port", str(bus)]
            command += ["--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            command += ["--cluster-config-file", "nodes.conf", "--dir", str(node)]
            command += ["--save", "", "--appendonly", "no", "--logfile", str(node / "log")]
            procs.append((port, subprocess.Popen(command, stdin=subprocess.DEVNULL)))
        for port, proc in procs:
            _wait_for(lambda p=port: _cli(cli, p, "ping") == "PONG", proc, root)
        nodes = [f"127.0.0.1:{port}" for port, _ in procs]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        for port, proc in procs:
            _wait_for(
                lambda p=port: "cluster_state:ok" in _cli(cli, p, "cluster", "info"), proc, root
            )
        yield f"redis+cluster://{nodes[0]}"
    finally:
        for port, _ in procs:
            _cli(cli, port, "shutdown", "nosave")
        for _, proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cli(cli: str, port: int, *args: str) -> str:
    try:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip()


def _wait_for(ready: Callable[..., bool], proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            logs = "".join(p.read_text()[-2000:] for p in root.glob("*/log"))
            pytest.fail(f"a Redis Cluster node did not start; its logs:\n{logs}")
        time.sleep(0.1)


@pytest.fixture
def unique() -> str:
    """A short unique string for keys, schema names and session names of one test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def memory_store() -> Iterator[MemoryStore]:
    """A fresh in-memory store."""
    store = MemoryStore()
    yield store
    store.close()


@pytest.fixture(autouse=True)
def _isolated_default_db(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the default SQLite store (and the outbox journals of stores and ledgers without a
    file of their own) and the prices file at temporary places, so tests never touch the
    user's."""
    path = tmp_path_factory.mktemp("llmctx-db") / "llmctx.db"
    monkeypatch.setenv("LLMCTX_DB", str(path))
    monkeypatch.setenv("XDG_DATA_HOME", str(path.parent / "data"))
    # No prices file (the user's or a project's) changes what a test is charged.
    monkeypatch.setenv("LLMCTX_PRICES", str(path.parent / "prices.toml"))
    reload_prices()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Under CI, a skipped test is a failure: every test must really run there."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"
    return None
