"""Authentication for network MCP servers: OAuth 2.1, any ``httpx2.Auth``, refreshable headers.

Three ways to authenticate an http/sse server, per server:

* ``"auth": "oauth"`` in the config: the hub runs the SDK's ``OAuthClientProvider``
  (discovery, dynamic client registration, authorization code with PKCE, refresh). Tokens
  and the registered client are kept by a :class:`TokenStorage`; the default,
  :class:`FileTokenStorage`, writes one JSON file per server URL in the per-user data
  directory, created with mode 0600. The authorization step needs a person the first time:
  by default the hub prints the authorization URL (and opens a browser when one is
  available) and listens on the loopback ``redirectUri`` for the code. Pass
  ``oauth_redirect=`` / ``oauth_callback=`` to drive that step yourself.
* ``auth={"server": some_httpx2_auth}``: any ``httpx2.Auth`` (the HTTP client the ``mcp`` SDK
  uses), e.g. a provider of your own.
* ``auth={"server": get_headers}``: a callable (sync or async) returning headers, called for
  every request, so a token that rotates is always fresh (for ``ws`` servers: at each
  connection's handshake).

Token values never reach logs, recordings, ``repr`` or error messages: the storage classes'
``repr`` names only the file, and errors name the server and the step that failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import sys
import webbrowser
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from .._exceptions import ConfigError
from .config import OAuthSettings, ServerConfig

__all__ = [
    "FileTokenStorage",
    "HeaderAuth",
    "HeaderProvider",
    "MemoryTokenStorage",
    "OAuthCallback",
    "OAuthRedirect",
    "TokenStorage",
    "build_auth",
    "default_token_dir",
    "loopback_callback",
]

logger = logging.getLogger("llmctx.mcp")

#: A callable giving the headers of one request (sync or async): refreshable tokens.
HeaderProvider = Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]]
#: Sends a person to the authorization URL (``async (url) -> None``).
OAuthRedirect = Callable[[str], Awaitable[None]]
#: Waits for the authorization server's redirect back (``async () -> AuthorizationCodeResult``).
OAuthCallback = Callable[[], Awaitable[AuthorizationCodeResult]]

_CALLBACK_WAIT = 300.0


class HeaderAuth(httpx2.Auth):
    """An ``httpx2.Auth`` that asks a callable for the headers of every request.

    Args:
        provider: returns a mapping of headers (sync or async), e.g.
            ``lambda: {"Authorization": f"Bearer {vault.current_token()}"}``.
    """

    def __init__(self, provider: HeaderProvider) -> None:
        self._provider = provider

    def __repr__(self) -> str:
        return f"HeaderAuth({getattr(self._provider, '__name__', 'provider')})"

    async def headers(self) -> Mapping[str, str]:
        """Call the provider once and return its headers."""
        found = self._provider()
        if inspect.isawaitable(found):
            found = await found
        if not isinstance(found, Mapping):
            raise ConfigError(
                f"the header provider returned {type(found).__name__}; it must return a mapping "
                'of header names to values, e.g. {"Authorization": "Bearer ..."}'
            )
        return found

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """Set the provider's headers on the request (httpx2 calls this)."""
        for name, value in (await self.headers()).items():
            request.headers[name] = value
        yield request


class MemoryTokenStorage:
    """Tokens and client registration kept in memory (gone when the process ends)."""

    def __init__(self) -> None:
        self._tokens: OAuthToken | None = None
        self._client: OAuthClientInformationFull | None = None

    def __repr__(self) -> str:
        return f"MemoryTokenStorage(has_tokens={self._tokens is not None})"

    async def get_tokens(self) -> OAuthToken | None:
        """The stored tokens, if any."""
        return self._tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        """Store new tokens."""
        self._tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        """The stored client registration, if any."""
        return self._client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        """Store the client registration."""
        self._client = client_info


class FileTokenStorage:
    """Tokens and client registration of one server in a JSON file only its owner can read.

    The file is written atomically (a temporary file in the same directory, created with mode
    0600, then renamed over the old one), and its directory is created with mode 0700. A
    file that cannot be parsed is treated as empty (the flow runs again) and logged without
    its content.

    Args:
        path: the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileTokenStorage({str(self.path)!r})"

    @classmethod
    def for_server(
        cls, url: str, directory: str | os.PathLike[str] | None = None
    ) -> FileTokenStorage:
        """The storage of the server at ``url`` (one file per URL) in ``directory``.

        Args:
            url: the server's URL.
            directory: where token files go (default :func:`default_token_dir`).
        """
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        host = "".join(c if c.isalnum() else "-" for c in (urlsplit(url).hostname or "server"))
        base = Path(directory) if directory is not None else default_token_dir()
        return cls(base / f"{host}-{digest}.json")

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("MCP OAuth: %s is not valid JSON; starting a new sign-in", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        saved = False
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(tmp, self.path)
            saved = True
        finally:
            if not saved:
                tmp.unlink(missing_ok=True)
        if sys.platform != "win32":
            os.chmod(self.path, 0o600)

    async def get_tokens(self) -> OAuthToken | None:
        """The stored tokens, if any."""
        raw = self._load().get("tokens")
        try:
            return OAuthToken.model_validate(raw) if raw is not None else None
        except ValueError:
            return None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        """Store new tokens (atomically, mode 0600)."""
        data = self._load()
        data["tokens"] = tokens.model_dump(mode="json", exclude_none=True)
        self._save(data)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        """The stored client registration, if any."""
        raw = self._load().get("client")
        try:
            return OAuthClientInformationFull.model_validate(raw) if raw is not None else None
        except ValueError:
            return None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        """Store the client registration (atomically, mode 0600)."""
        data = self._load()
        data["client"] = client_info.model_dump(mode="json", exclude_none=True)
        self._save(data)


def default_token_dir() -> Path:
    """Where :class:`FileTokenStorage` puts token files by default (per-user data dir)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("llmctx", appauthor=False)) / "mcp-tokens"


def loopback_callback(redirect_uri: str, *, timeout: float = _CALLBACK_WAIT) -> OAuthCallback:
    """An OAuth callback handler that listens on ``redirect_uri`` (loopback) for the code.

    It accepts one ``GET`` on the URI's path, answers a short page ("you can close this
    window"), and returns the ``code``, ``state`` and ``iss`` parameters.

    Args:
        redirect_uri: ``http://127.0.0.1:PORT/path`` (or ``localhost``).
        timeout: seconds to wait for the browser to come back.

    Raises:
        ConfigError: the URI is not a loopback http URL with a port.
    """
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"redirectUri {redirect_uri!r} must be a loopback http URL such as "
            "http://127.0.0.1:33418/callback to receive the code locally; pass "
            "oauth_callback= to receive it another way"
        )
    if parts.port is None:
        raise ConfigError(f"redirectUri {redirect_uri!r} needs a port, e.g. :33418")
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    path = parts.path or "/"

    async def wait_for_code() -> AuthorizationCodeResult:
        result: dict[str, str] = {}
        done = anyio.Event()

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                data = b""
                with anyio.move_on_after(10):
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        data += await stream.receive(4096)
                line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                method, _, rest = line.partition(" ")
                target = rest.rpartition(" ")[0]
                got = urlsplit(target)
                if method != "GET" or got.path != path:
                    await stream.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    return
                query = {k: v[0] for k, v in parse_qs(got.query).items()}
                body = b"Signed in. You can close this window."
                if "code" not in query:
                    body = b"Sign-in failed: " + query.get("error", "no code").encode()
                await stream.send(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n"
                    + body
                )
                result.update(query)
                done.set()

        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            with anyio.move_on_after(timeout) as waited:
                await done.wait()
            tg.cancel_scope.cancel()
        if waited.cancelled_caught:
            raise TimeoutError(f"no OAuth redirect to {redirect_uri} within {timeout:g}s")
        if "code" not in result:
            raise PermissionError(f"the authorization server said: {result.get('error', '?')}")
        return AuthorizationCodeResult(
            code=result["code"], state=result.get("state"), iss=result.get("iss")
        )

    return wait_for_code


async def _print_and_open(url: str) -> None:
    # The URL carries a one-time state and a PKCE challenge, no secret; it is meant for a
    # person to open.
    print(f"Sign in to the MCP server: open {url}", file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):  # no browser here: the printed URL is enough
        webbrowser.open(url)


def build_auth(
    config: ServerConfig,
    given: httpx2.Auth | HeaderProvider | None,
    *,
    storage: TokenStorage | None = None,
    redirect: OAuthRedirect | None = None,
    callback: OAuthCallback | None = None,
) -> tuple[httpx2.Auth | None, Callable[[], Awaitable[Mapping[str, str]]] | None]:
    """The ``httpx2.Auth`` (and, for ws, the handshake headers) one server gets.

    Args:
        config: the server entry (its ``auth`` field asks for OAuth).
        given: what the caller passed for this server in ``Hub(auth=...)``.
        storage: where OAuth tokens go (default: :class:`FileTokenStorage` for its URL).
        redirect, callback: drive the OAuth authorization step (default: print and open the
            URL, listen on the loopback ``redirectUri``).

    Returns:
        ``(auth, headers)``: ``auth`` for http/sse, ``headers`` for a ws handshake.

    Raises:
        ConfigError: both a config ``auth`` and a code ``auth=`` were given, or ``given`` is
            neither an ``httpx2.Auth`` nor a callable.
    """
    if given is not None and config.auth is not None:
        raise ConfigError(
            f'MCP server {config.name!r} has "auth" in its config and auth= in code; keep one'
        )
    if given is not None and config.transport == "stdio":
        raise ConfigError(
            f"auth= was given for MCP server {config.name!r}, a stdio server; authentication "
            "is for http, sse and ws servers (a stdio server gets its secrets through env)"
        )
    if isinstance(given, httpx2.Auth):
        if config.transport == "ws":
            raise ConfigError(
                f"MCP server {config.name!r} is a ws server: an httpx2.Auth cannot sign a "
                "WebSocket handshake; pass a header provider (a callable returning headers)"
            )
        return given, None
    if given is not None:
        if not callable(given):
            raise ConfigError(
                f"auth= for MCP server {config.name!r} must be an httpx2.Auth or a callable "
                f"returning headers, not {type(given).__name__}"
            )
        header_auth = HeaderAuth(given)
        return (header_auth, None) if config.transport != "ws" else (None, header_auth.headers)
    if config.auth is None:
        return None, None
    return _oauth(config, config.auth, storage, redirect, callback), None


def _oauth(
    config: ServerConfig,
    settings: OAuthSettings,
    storage: TokenStorage | None,
    redirect: OAuthRedirect | None,
    callback: OAuthCallback | None,
) -> OAuthClientProvider:
    url = config.url or ""
    metadata = OAuthClientMetadata.model_validate(
        {
            "client_name": settings.client_name,
            "redirect_uris": [settings.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **({"scope": " ".join(settings.scopes)} if settings.scopes else {}),
        }
    )
    return OAuthClientProvider(
        server_url=url,
        client_metadata=metadata,
        storage=storage or FileTokenStorage.for_server(url, settings.token_dir),
        redirect_handler=redirect or _print_and_open,
        callback_handler=callback or loopback_callback(settings.redirect_uri),
    )
