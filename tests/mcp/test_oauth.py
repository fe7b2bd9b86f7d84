"""OAuth 2.1 against a real authorization server and resource server on loopback.

``servers/oauth_server.py`` is the SDK's own authorization server (discovery, dynamic client
registration, authorization code with PKCE, refresh) in front of an MCP server that demands a
bearer token. The test plays the person's browser: its ``oauth_redirect`` GETs the
authorization URL and reads the redirect the server answers with; its ``oauth_callback``
hands the code to the SDK, or the hub's own loopback listener receives it. Tokens must reach
the token file (mode 0600) and nowhere else: not logs, status, reprs or errors.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp.shared.auth import AuthorizationCodeResult
from mcp_helpers import SERVERS

from llmctx.mcp import (
    FileTokenStorage,
    HeaderAuth,
    Hub,
    MemoryTokenStorage,
    ServerState,
    loopback_callback,
    result_text,
)

pytestmark = pytest.mark.anyio


def _start(tmp_path: Path, ttl: int) -> Iterator[str]:
    log = (tmp_path / "oauth_server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS / "oauth_server.py")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "OAUTH_TTL": str(ttl)},
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("PORT "), (tmp_path / "oauth_server.log").read_text()[-2000:]
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        proc.kill()
        proc.wait()
        log.close()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def oauth_url(tmp_path: Path) -> Iterator[str]:
    """The /mcp URL of a fresh OAuth-protected server (tokens valid for an hour)."""
    yield from _start(tmp_path, 3600)


@pytest.fixture
def stale_oauth_url(tmp_path: Path) -> Iterator[str]:
    """The same server telling clients its first token expires at once (so they refresh)."""
    yield from _start(tmp_path, 0)


class Browser:
    """The person's browser: opens the authorization URL, comes back with the redirect."""

    def __init__(self) -> None:
        self.opened = 0
        self.location: str | None = None

    async def redirect(self, url: str) -> None:
        self.opened += 1
        async with httpx2.AsyncClient(follow_redirects=False) as client:
            response = await client.get(url)
        assert response.status_code in (302, 303, 307), response.text
        self.location = response.headers["location"]

    async def callback(self) -> AuthorizationCodeResult:
        assert self.location is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}
        return AuthorizationCodeResult(
            code=query["code"], state=query.get("state"), iss=query.get("iss")
        )


def _secrets(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    tokens = data["tokens"]
    return [tokens["access_token"], tokens["refresh_token"]]


def _stats(text: str) -> dict[str, int]:
    return dict(json.loads(text))


async def test_oauth_sign_in_stores_tokens_0600_and_reuses_them(
    oauth_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub registers, runs the code flow once, calls with the token; a second hub reuses
    the stored token with no new sign-in; the token is in the 0600 file and nowhere else."""
    caplog.set_level(logging.DEBUG)
    token_dir = tmp_path / "tokens"
    config = {
        "mcpServers": {
            "secure": {
                "url": oauth_url,
                "auth": {"type": "oauth", "tokenDir": str(token_dir), "scopes": ["mcp"]},
                "timeout": 30,
            }
        }
    }
    browser = Browser()
    shown: list[str] = []
    with anyio.fail_after(60):
        async with Hub.from_config(
            config, oauth_redirect=browser.redirect, oauth_callback=browser.callback
        ) as hub:
            assert hub.status()["secure"].state is ServerState.READY
            assert result_text(await hub.call("secure.echo", {"text": "signed in"})) == "signed in"
            shown += [repr(hub.status()), repr(hub.config), repr(hub.server("secure").config)]
        assert browser.opened == 1
        (token_file,) = list(token_dir.iterdir())
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_dir.stat().st_mode) == 0o700
        async with Hub.from_config(
            config, oauth_redirect=browser.redirect, oauth_callback=browser.callback
        ) as again:
            stats = _stats(result_text(await again.call("secure.stats")))
    assert browser.opened == 1  # no second sign-in: the stored token was used
    assert stats["codes"] == 1 and stats["exchanges"] == 1
    shown.append(caplog.text)
    for secret in _secrets(token_file):
        for text in shown:
            assert secret not in text
    assert repr(FileTokenStorage(token_file)) == f"FileTokenStorage({str(token_file)!r})"


async def test_oauth_refreshes_a_stale_token_without_a_new_sign_in(stale_oauth_url: str) -> None:
    """A token the server says expires at once is refreshed before the next request (the SDK's
    refresh), with one sign-in for the whole session; storage can be in memory."""
    browser = Browser()
    storage = MemoryTokenStorage()
    config = {"mcpServers": {"secure": {"url": stale_oauth_url, "auth": "oauth", "timeout": 30}}}
    with anyio.fail_after(60):
        async with Hub.from_config(
            config,
            oauth_redirect=browser.redirect,
            oauth_callback=browser.callback,
            token_storage=lambda name, url: storage,
        ) as hub:
            for i in range(3):
                assert result_text(await hub.call("secure.echo", {"text": str(i)})) == str(i)
            stats = _stats(result_text(await hub.call("secure.stats")))
    assert browser.opened == 1
    assert stats["exchanges"] == 1 and stats["refreshes"] >= 1
    assert "has_tokens=True" in repr(storage)


async def test_the_default_loopback_listener_receives_the_code(oauth_url: str) -> None:
    """Without oauth_callback, the hub listens on the loopback redirectUri: the browser that
    follows the authorization server's redirect lands there, and the sign-in completes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    redirect_uri = f"http://127.0.0.1:{port}/callback"

    async def browser(url: str) -> None:
        async def follow() -> None:
            async with httpx2.AsyncClient(follow_redirects=False) as client:
                location = (await client.get(url)).headers["location"]
                # The listener starts once the hub waits for the code: retry until it is up.
                while True:
                    try:
                        page = await client.get(location)
                        break
                    except httpx2.ConnectError:
                        await anyio.sleep(0.02)
            assert page.status_code == 200 and "Signed in" in page.text

        tg.start_soon(follow)

    config = {
        "mcpServers": {
            "secure": {
                "url": oauth_url,
                "auth": {"type": "oauth", "redirectUri": redirect_uri},
                "timeout": 30,
            }
        }
    }
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            async with Hub.from_config(
                config,
                oauth_redirect=browser,
                token_storage=lambda name, url: MemoryTokenStorage(),
            ) as hub:
                assert (
                    result_text(await hub.call("secure.echo", {"text": "loopback"})) == "loopback"
                )


def test_loopback_callback_refuses_a_non_loopback_uri() -> None:
    """A redirectUri the hub cannot listen on is a clear ConfigError naming the fix."""
    with pytest.raises(Exception, match="must be a loopback http URL"):
        loopback_callback("https://example.com/callback")


async def test_a_header_provider_is_asked_for_every_request(tmp_path: Path) -> None:
    """auth={"server": callable} puts fresh headers on every HTTP request of that server."""
    from test_network import TOKEN, entry, net_server

    asked: list[int] = []

    def headers() -> dict[str, str]:
        asked.append(1)
        return {"Authorization": f"Bearer {TOKEN}"}

    with net_server("http", tmp_path / "server.log") as port:
        config = {"mcpServers": {"net": {**entry("http", port), "headers": {}}}}
        with anyio.fail_after(60):
            async with Hub.from_config(config, auth={"net": headers}) as hub:
                before = len(asked)
                assert result_text(await hub.call("net.auth_seen")) == "required"
                assert result_text(await hub.call("net.echo", {"text": "x"})) == "x"
                assert len(asked) >= before + 2
    assert repr(HeaderAuth(headers)) == "HeaderAuth(headers)"


def test_auth_in_config_and_code_at_once_is_refused() -> None:
    """Giving "auth" in the config and auth= in code for one server is a ConfigError."""
    config: dict[str, Any] = {
        "mcpServers": {"s": {"url": "http://127.0.0.1:1/mcp", "auth": "oauth"}}
    }
    with pytest.raises(Exception, match="keep one"):
        Hub.from_config(config, auth={"s": lambda: {}})


async def test_any_httpx2_auth_signs_the_requests(tmp_path: Path) -> None:
    """auth={"server": an httpx2.Auth of one's own} is used for that server's requests."""
    from test_network import TOKEN, entry, net_server

    class Bearer(httpx2.Auth):
        def __init__(self) -> None:
            self.signed = 0

        def auth_flow(self, request: httpx2.Request) -> Any:
            self.signed += 1
            request.headers["Authorization"] = f"Bearer {TOKEN}"
            yield request

    bearer = Bearer()
    with net_server("sse", tmp_path / "server.log") as port:
        config = {"mcpServers": {"net": {**entry("sse", port), "headers": {}}}}
        with anyio.fail_after(60):
            async with Hub.from_config(config, auth={"net": bearer}) as hub:
                assert result_text(await hub.call("net.echo", {"text": "signed"})) == "signed"
    assert bearer.signed >= 2
