"""No orphans when the host dies: SIGKILL the process running a hub, count what is left (0).

The host (``servers/host.py``) runs a hub of servers that do not go away by themselves: tiny
servers that ignore SIGTERM and stdin close and start a grandchild, one behind ``sh -c``, one
slow to start, and (when npm's packages are installed) ``npx`` -> ``npm exec`` -> ``sh`` ->
``node`` running server-memory. Every server and its descendants carry a marker variable, so
the test can find them wherever they were re-parented. Each run kills the host with SIGKILL
at a random moment, mid-start or while serving, and waits (bounded) for the marked processes
to disappear.

CI runs ``LLMCTX_MCP_HOST_KILLS`` runs (default 4, half mid-start); the figure in
docs/benchmarks.md comes from 50 (``LLMCTX_MCP_HOST_KILLS=50``, or
``python benchmarks/bench_mcp.py --host-kills 50``).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp_helpers import SERVERS

NPM_DIR = Path(__file__).resolve().parent / "npm"
MEMORY_BIN = NPM_DIR / "node_modules" / ".bin" / "mcp-server-memory"
TINY = SERVERS / "tiny_server.py"
_GONE_WITHIN = 10.0


def _config(run_id: str) -> dict[str, Any]:
    env = {"LLMCTX_TEST_RUN": run_id}
    py = sys.executable
    servers: dict[str, Any] = {
        "t1": {"command": py, "args": [str(TINY), "--stubborn", "--grandchild"], "env": env},
        "t2": {
            "command": "sh",
            "args": ["-c", f"'{py}' '{TINY}' --stubborn --grandchild; true"],
            "env": env,
        },
        "slow": {
            "command": py,
            "args": [str(TINY), "--stubborn", "--grandchild", "--delay", "1.5"],
            "env": env,
        },
    }
    if MEMORY_BIN.exists() and shutil.which("npx"):
        servers["mem"] = {
            "command": "npx",
            "args": ["--no-install", "mcp-server-memory"],
            "cwd": str(NPM_DIR),
            "env": {**env, "MEMORY_FILE_PATH": os.devnull},
        }
    return {"mcpServers": servers}


def _marked(run_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LLMCTX_TEST_RUN") == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=timeout):
            return ""
    return proc.stdout.readline().decode().strip()


def _one_run(tmp_path: Path, rng: random.Random, mid_start: bool) -> tuple[int, int]:
    """Kill one host; return (marked processes seen alive before the kill, left after)."""
    run_id = uuid.uuid4().hex
    path = tmp_path / f"{run_id}.json"
    path.write_text(json.dumps(_config(run_id)))
    host = subprocess.Popen(
        [sys.executable, str(SERVERS / "host.py"), str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _read_line(host, 60) == "STARTING"
        if mid_start:
            # The slow server needs 1.5 s: anywhere in that window some servers are starting.
            time.sleep(rng.uniform(0.0, 1.2))
        else:
            line = _read_line(host, 60)
            assert line.startswith("READY "), line
            time.sleep(rng.uniform(0.0, 0.3))
        before = len(_marked(run_id))
        host.send_signal(signal.SIGKILL)
        host.wait()
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if host.stdout is not None:
            host.stdout.close()
    deadline = time.monotonic() + _GONE_WITHIN
    left = _marked(run_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table: there is no event for "all gone"
        left = _marked(run_id)
    for proc in left:  # clean up so one failure does not leave a mess behind
        proc.kill()
    return before, len(left)


def test_sigkilled_host_leaves_no_server_or_grandchild(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """SIGKILL of the host mid-start and while serving leaves 0 of its servers' processes."""
    runs = int(os.environ.get("LLMCTX_MCP_HOST_KILLS", "4"))
    rng = random.Random(int(os.environ.get("LLMCTX_MCP_HOST_KILL_SEED", "14")))
    results = []
    for i in range(runs):
        mid_start = i % 2 == 0
        before, left = _one_run(tmp_path, rng, mid_start)
        results.append((mid_start, before, left))
    total_left = sum(left for _, _, left in results)
    alive_before = sum(before for _, before, _ in results)
    mid = sum(1 for m, _, _ in results if m)
    record_property("host_kills", runs)
    record_property("leftovers", total_left)
    print(
        f"\nhost kills: {runs} runs ({mid} mid-start, {runs - mid} serving), "
        f"{alive_before} marked processes alive at the kills, {total_left} left afterwards"
    )
    assert alive_before > 0  # the runs did kill hosts that had servers running
    assert total_left == 0, results
