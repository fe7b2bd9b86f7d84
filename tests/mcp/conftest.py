"""Fixtures for the MCP hub tests (helpers live in mcp_helpers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from mcp_helpers import live_children, new_children


@pytest.fixture
def anyio_backend() -> str:
    """The hub targets asyncio (the WebSocket transport needs it)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leaked_children() -> Any:
    """Every test must leave no child process behind."""
    before = {p.pid for p in live_children()}
    yield
    leaked = new_children(before)
    for proc in leaked:  # clean up so one failure does not cascade
        proc.kill()
    assert not leaked, f"leaked child processes: {[p.cmdline() for p in leaked]}"
