"""Helpers for the MCP hub tests: server paths, config builders, process checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
SERVERS = Path(__file__).resolve().parent / "servers"
EXAMPLES = ROOT / "src" / "llmctx" / "mcp" / "examples"


def stdio(script: Path, *args: str, **extra: Any) -> dict[str, Any]:
    """A stdio server entry running ``script`` with this interpreter."""
    return {"command": sys.executable, "args": [str(script), *args], **extra}


def tiny(*flags: str, **extra: Any) -> dict[str, Any]:
    """The stdlib-only fixture server (fast to start), with its command-line ``flags``."""
    return stdio(SERVERS / "tiny_server.py", *flags, **extra)


def live_children() -> list[psutil.Process]:
    """Children (recursively) of this test process that are alive and not zombies."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def new_children(before: set[int]) -> list[psutil.Process]:
    """Live children started since ``before`` (pids of :func:`live_children` taken earlier).

    Processes other tests' fixtures keep running (e.g. a session-scoped model server) are
    not this test's leaks.
    """
    return [p for p in live_children() if p.pid not in before]


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` is dead (or a zombie) within ``timeout`` seconds."""
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return True
