"""The hub over the network: real SDK servers on loopback via streamable HTTP, SSE and WebSocket.

Each test starts ``servers/net_server.py`` (the official SDK server; for ``ws`` bridged onto a
``websockets`` server, since the SDK 2.x has no WebSocket server) as a subprocess on a free
loopback port. The server demands a bearer token, so every passing call proves the config's
headers reached it; the token must never show up in logs, status, reprs or errors.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_helpers import SERVERS

from llmctx.mcp import Hub, ServerCrashed, ServerState, ServerUnavailable, result_text

pytestmark = pytest.mark.anyio

TOKEN = "tok-7f3a9c1e-never-log-me"
_PATHS = {"http": "/mcp", "sse": "/sse", "ws": ""}
TRANSPORTS = list(_PATHS)


@contextmanager
def net_server(kind: str, log: Path, port: int | None = None) -> Iterator[int]:
    """Run ``net_server.py`` on ``kind``; yield its port; kill it on exit (it may be dead)."""
    args = [sys.executable, str(SERVERS / "net_server.py"), kind]
    if port is not None:
        args.append(str(port))
    env = {**os.environ, "NET_SERVER_TOKEN": TOKEN}
    with log.open("ab") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("PORT "), f"net_server did not start: {log.read_text()[-2000:]}"
        yield int(line.split()[1])
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def entry(kind: str, port: int, token: str = TOKEN, **extra: Any) -> dict[str, Any]:
    """A config entry for the net server on ``port``."""
    scheme = "ws" if kind == "ws" else "http"
    return {
        "type": kind,
        "url": f"{scheme}://127.0.0.1:{port}{_PATHS[kind]}",
        "headers": {"Authorization": f"Bearer {token}"},
        "timeout": 20,
        **extra,
    }


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_connect_list_call_with_headers_and_no_secret_leaks(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over each transport the hub connects, lists, calls concurrently; the token stays secret."""
    caplog.set_level(logging.DEBUG)
    with net_server(kind, tmp_path / "server.log") as port:
        config = {
            "mcpServers": {
                "net": entry(kind, port),
                # Same server, wrong token: the server says 401, the hub says why.
                "denied": entry(kind, port, token="wrong-token-1234"),
            }
        }
        with anyio.fail_after(60):
            async with Hub.from_config(config, policy="best_effort") as hub:
                status = hub.status()
                assert status["net"].state is ServerState.READY
                assert status["net"].transport == kind
                assert {t.qualified for t in hub.tools()} == {
                    "net.echo",
                    "net.slow",
                    "net.crash",
                    "net.auth_seen",
                }
                assert result_text(await hub.call("net.auth_seen")) == "required"

                results: dict[int, str] = {}

                async def echo(i: int) -> None:
                    results[i] = result_text(await hub.call("net.echo", {"text": f"m{i}"}))

                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        tg.start_soon(echo, i)
                assert results == {i: f"m{i}" for i in range(10)}

                denied = hub.status()["denied"]
                assert denied.state is ServerState.FAILED
                assert denied.last_error is not None and "401" in denied.last_error
                with pytest.raises(ServerUnavailable) as unavailable:
                    await hub.call("denied.echo", {"text": "x"})
                shown = [
                    repr(hub.status()),
                    repr(hub.config),
                    str(unavailable.value),
                    repr(unavailable.value),
                    caplog.text,
                ]
    assert (tmp_path / "server.log").read_text().count("401") >= 1
    for text in shown:
        assert TOKEN not in text
        assert "wrong-token-1234" not in text


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_server_death_mid_call_is_a_typed_error_and_it_reconnects(
    kind: str, tmp_path: Path
) -> None:
    """A network server dying mid-call raises ServerCrashed at once; once back, the hub reconnects."""
    log = tmp_path / "server.log"
    with net_server(kind, log) as port:
        config = {"mcpServers": {"net": entry(kind, port, maxRestarts=100, restartWindow=60)}}
        async with Hub.from_config(config) as hub:
            assert result_text(await hub.call("net.echo", {"text": "before"})) == "before"
            with anyio.fail_after(5), pytest.raises(ServerCrashed) as crashed:
                await hub.call("net.crash")
            assert crashed.value.server == "net"
            assert "crashing on purpose" in log.read_text()
            assert hub.status()["net"].state is not ServerState.READY

            # The same server comes back on the same port; the supervisor's backoff finds it.
            with net_server(kind, log, port=port):
                await hub.server("net").session(wait=30)
                assert result_text(await hub.call("net.echo", {"text": "after"})) == "after"
                assert hub.status()["net"].restarts >= 1
