"""Test fixture: an MCP server behind a real OAuth 2.1 authorization server (the SDK's own).

Usage::

    python oauth_server.py            # prints "PORT <n>" once it accepts connections

One process on a free loopback port serves both halves with the official SDK's pieces: the
authorization server (``mcp.server.auth`` routes: metadata discovery, dynamic client
registration, ``/authorize``, ``/token`` with PKCE, refresh, revocation) backed by an
in-memory provider that approves every authorization at once (no login page: the client's
"browser" is a test that follows the redirect), and the resource server (the MCP endpoint
``/mcp``, protected by a bearer-token check through the same provider, with RFC 9728
protected-resource metadata).

``OAUTH_TTL`` is the ``expires_in`` told to clients with the tokens of a code exchange
(default 3600; ``0`` makes that first token stale at once for the client, which then refreshes
it before its next request); refreshed tokens are told 3600. Tools: ``echo``, and
``stats`` (how many codes, token exchanges and refreshes the server has seen, as JSON).
Tokens are never printed.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time

import anyio
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

TTL = int(os.environ.get("OAUTH_TTL", "3600"))
_STATS = {"codes": 0, "exchanges": 0, "refreshes": 0}


class ApprovingProvider:
    """An in-memory OAuth provider that approves every authorization request at once."""

    def __init__(self) -> None:
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info

    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        code = secrets.token_urlsafe(24)
        assert client.client_id is not None
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or ["mcp"],
            expires_at=time.time() + 300,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
        )
        _STATS["codes"] += 1
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        return self.codes.get(authorization_code)

    def _issue(self, client_id: str, scopes: list[str], ttl: int = 3600) -> OAuthToken:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.access[access] = AccessToken(
            token=access, client_id=client_id, scopes=scopes, expires_at=int(time.time()) + 3600
        )
        self.refresh[refresh] = RefreshToken(token=refresh, client_id=client_id, scopes=scopes)
        return OAuthToken(
            access_token=access, expires_in=ttl, refresh_token=refresh, scope=" ".join(scopes)
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)
        _STATS["exchanges"] += 1
        return self._issue(authorization_code.client_id, authorization_code.scopes, TTL)

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        return self.refresh.get(refresh_token)

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        self.refresh.pop(refresh_token.token, None)
        _STATS["refreshes"] += 1
        return self._issue(refresh_token.client_id, scopes or refresh_token.scopes)

    async def load_access_token(self, token: str) -> AccessToken | None:
        found = self.access.get(token)
        if found is None or (found.expires_at is not None and found.expires_at < time.time()):
            return None
        return found

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.access.pop(token.token, None)
        self.refresh.pop(token.token, None)


def main() -> None:
    """Bind a free port, build the app for that origin, serve until killed."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = MCPServer(
        "oauth",
        auth_server_provider=ApprovingProvider(),
        auth=AuthSettings(
            issuer_url=base,
            resource_server_url=f"{base}/mcp",
            client_registration_options=ClientRegistrationOptions(
                enabled=True, valid_scopes=["mcp"], default_scopes=["mcp"]
            ),
            revocation_options=RevocationOptions(enabled=True),
            required_scopes=["mcp"],
            validate_token_resource=False,
        ),
    )

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def stats() -> str:
        """Codes issued, code exchanges and refreshes seen, as JSON."""
        return json.dumps(_STATS)

    uv = uvicorn.Server(
        uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    )

    async def serve() -> None:
        async def announce() -> None:
            while not uv.started:  # noqa: ASYNC110 (uvicorn has no started event)
                await anyio.sleep(0.01)
            print(f"PORT {sock.getsockname()[1]}", flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            await uv.serve(sockets=[sock])

    anyio.run(serve)


if __name__ == "__main__":
    main()
