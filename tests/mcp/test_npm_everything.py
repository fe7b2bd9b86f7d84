"""Interop with ``@modelcontextprotocol/server-everything`` from npm, over stdio and streamable HTTP.

The package is pinned in ``tests/mcp/npm/package.json`` (+ lock file); install it with
``npm ci --prefix tests/mcp/npm``. Without node, npm or the installed package the tests skip
with the reason; under ``CI=true`` they fail instead, so CI cannot silently lose them.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmctx.mcp import Hub, ServerState, ToolNotFound, result_text

pytestmark = pytest.mark.anyio

NPM_DIR = Path(__file__).resolve().parent / "npm"
EVERYTHING = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything"
ENTRY = EVERYTHING / "dist" / "index.js"


@pytest.fixture
def node() -> str:
    """The node executable, with server-everything installed; skip (or fail on CI) without."""
    node, npm = shutil.which("node"), shutil.which("npm")
    reason = None
    if node is None or npm is None:
        reason = "node/npm not on PATH (install Node.js 18+)"
    elif not ENTRY.is_file():
        reason = "server-everything not installed: run `npm ci --prefix tests/mcp/npm`"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    assert node is not None
    return node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def everything_http(node: str, tmp_path: Path) -> Iterator[str]:
    """server-everything's streamable HTTP server on a free port; yields its /mcp URL.

    The server picks its port from ``PORT`` (it cannot bind port 0 and report it), so a port
    taken between our probe and its bind is retried with another.
    """
    for _ in range(3):
        port = _free_port()
        with (tmp_path / "everything.out").open("ab") as out:
            proc = subprocess.Popen(
                [node, str(ENTRY), "streamableHttp"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", ""), "PORT": str(port)},
            )
        assert proc.stderr is not None
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            if sel.select(timeout=60):
                line = proc.stderr.readline()
        if b"listening on port" in line:
            try:
                yield f"http://127.0.0.1:{port}/mcp"
            finally:
                proc.kill()
                proc.wait()
                proc.stderr.close()
            return
        proc.kill()
        proc.wait()
        proc.stderr.close()
        if b"already in use" not in line:
            pytest.fail(f"server-everything did not start: {line.decode(errors='replace')}")
    pytest.fail("server-everything found no free port in 3 tries")


def _recorder(sink: list[tuple[float, float | None]]) -> Any:
    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        sink.append((done, total))

    return on_progress


async def test_everything_over_stdio_and_http(node: str, everything_http: str) -> None:
    """Both transports of the npm reference server: tools, calls, progress, resources, prompts."""
    config: dict[str, Any] = {
        "mcpServers": {
            "ev": {"command": node, "args": [str(ENTRY), "stdio"], "timeout": 60},
            "evh": {"type": "http", "url": everything_http, "timeout": 60},
        }
    }
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            status = hub.status()
            assert status["ev"].state is ServerState.READY and status["ev"].transport == "stdio"
            assert status["evh"].state is ServerState.READY and status["evh"].transport == "http"
            for name in ("ev", "evh"):
                names = {t.name for t in hub.tools() if t.server == name}
                assert {"echo", "get-sum", "trigger-long-running-operation"} <= names
                assert result_text(await hub.call(f"{name}.echo", {"message": "hi"})) == "Echo: hi"
                summed = await hub.call(f"{name}__get-sum", {"a": 2, "b": 3})
                assert "5" in result_text(summed)

                progress: list[tuple[float, float | None]] = []
                long = await hub.call(
                    f"{name}.trigger-long-running-operation",
                    {"duration": 0.2, "steps": 2},
                    progress_callback=_recorder(progress),
                )
                assert "completed" in result_text(long)
                assert progress == [(1, 2), (2, 2)]

                resources = [r for server, r in hub.resources() if server == name]
                assert resources, f"{name} listed no resources"
                read = await hub.read_resource(str(resources[0].uri), server=name)
                assert read.contents

                prompts = [p for qualified, p in hub.prompts() if qualified.startswith(f"{name}.")]
                simple = next(p for p in prompts if "simple" in p.name)
                got = await hub.get_prompt(f"{name}.{simple.name}")
                assert got.messages

            # Both servers expose the same tool names; the key keeps them apart.
            assert hub.resolve("ev.echo").server == "ev"
            assert hub.resolve("evh__echo").server == "evh"
            with pytest.raises(ToolNotFound):
                await hub.call("ev.no-such-tool")
