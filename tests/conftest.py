"""Shared fixtures. Integration tests use real services.

PostgreSQL and Redis come from the environment: ``LLMCTX_TEST_POSTGRES_DSN`` and
``LLMCTX_TEST_REDIS_URL`` (``.ci/run`` starts both on loopback and sets them). Outside CI a
missing service skips its tests with the reason; under CI (``CI=true``) it fails them, so a
CI run can never pass by skipping the real services.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from llmctx._pricing import reload_prices
from llmctx.stores import MemoryStore


def _service(env: str, what: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    message = f"{what} is not configured: set {env} (bash .ci/run starts one and sets it)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a real PostgreSQL server whose user may create schemas."""
    return _service("LLMCTX_TEST_POSTGRES_DSN", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis server."""
    return _service("LLMCTX_TEST_REDIS_URL", "Redis")


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
