"""The ``mcpServers`` config: Claude-Desktop-style JSON, validated, expanded and profiled.

A config looks like::

    {
      "mcpServers": {
        "notes": {"command": "python", "args": ["notes_server.py", "${NOTES_DB:-notes.db}"]},
        "files": {"command": "python", "args": ["files_server.py", "${HOME}"], "timeout": 20},
        "remote": {"type": "http", "url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${EXAMPLE_TOKEN}"}}
      },
      "profiles": {
        "dev": {"servers": ["notes", "files"], "mcpServers": {"notes": {"env": {"DEBUG": "1"}}}}
      }
    }

``${VAR}`` and ``${VAR:-default}`` are expanded in ``command``, ``args``, ``env``, ``envFile``,
``cwd``, ``url`` and ``headers``; an unset variable without a default is an error that names the
server and the field. ``${CONFIG_DIR}`` is the directory of the config file (the working
directory for a config given as a mapping). Only the servers that will run are expanded: a
missing variable of a disabled server, or of one a profile or ``servers=`` leaves out, is no
error. Children get a minimal environment (``PATH``, ``HOME``, locale, ...) plus
``envFile`` plus ``env``, unless ``inheritEnv`` is true. Env values and header values are
redacted in ``repr`` and in :meth:`ServerConfig.redacted` (all of them, whatever their names:
a config carries secrets under any name), and so are the URL's password and secret parameters
(:func:`llmctx._redact.redact_url`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._redact import REDACTED
from .._redact import redact_url as redact_url  # also imported from here by the transports
from ._errors import MCPConfigError

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "HubConfig",
    "OAuthSettings",
    "ServerConfig",
    "Transport",
    "load_config",
    "server_names",
]

logger = logging.getLogger("llmctx.mcp")

Transport = Literal["stdio", "sse", "http", "ws"]

_TRANSPORT_ALIASES: dict[str, Transport] = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamablehttp": "http",
    "ws": "ws",
    "websocket": "ws",
    "websockets": "ws",
}

#: What a child gets from our environment when the config does not opt in to inheriting it.
_MINIMAL_ENV_VARS: tuple[str, ...] = (
    (
        "APPDATA",
        "HOMEDRIVE",
        "HOMEPATH",
        "LOCALAPPDATA",
        "PATH",
        "PATHEXT",
        "SYSTEMDRIVE",
        "SYSTEMROOT",
        "TEMP",
        "TMP",
        "USERNAME",
        "USERPROFILE",
    )
    if sys.platform == "win32"
    else ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
)

#: What a call may take when neither the config (``callTimeout``) nor the call says otherwise;
#: the TypeScript SDK's default request timeout.
DEFAULT_CALL_TIMEOUT = 60.0
#: Seconds between liveness pings of a ready server when the config says nothing.
DEFAULT_PING_INTERVAL = 30.0

# Where _build_server puts the config's directory into the lookup mapping (no real variable
# can have this name, so ${CONFIG_DIR} always means the config's directory).
_CONFIG_DIR_KEY = "\0CONFIG_DIR"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class OAuthSettings(BaseModel):
    """OAuth 2.1 for one http/sse server (``"auth": "oauth"`` or ``"auth": {...}`` in the JSON).

    The hub drives the SDK's ``OAuthClientProvider``: discovery, dynamic client registration,
    the authorization-code flow with PKCE, refresh. Tokens are kept by a token store (on disk,
    mode 0600, by default; see :class:`llmctx.mcp.FileTokenStorage`).
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    type: Literal["oauth"] = "oauth"
    scopes: tuple[str, ...] = ()
    """Scopes to ask for (default: what the server advertises)."""
    client_name: str = Field(default="llmctx", alias="clientName")
    redirect_uri: str = Field(default="http://127.0.0.1:33418/callback", alias="redirectUri")
    """Where the authorization server sends the browser back; a loopback URL the hub listens
    on while it waits for the code."""
    token_dir: str | None = Field(default=None, alias="tokenDir")
    """Where the token files go (default: the per-user data directory's ``mcp-tokens``)."""


class ServerConfig(BaseModel):
    """One server entry of ``mcpServers``, after expansion and validation.

    Field names are snake_case; the JSON may use the camelCase aliases (``envFile``,
    ``inheritEnv``, ``callTimeout``, ``maxRestarts``). The model is frozen.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    name: str
    transport: Transport
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    env_file: str | None = Field(default=None, alias="envFile")
    env_file_values: dict[str, str] = Field(default_factory=dict, exclude=True)
    inherit_env: bool = Field(default=False, alias="inheritEnv")
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=60.0, gt=0)
    """Seconds allowed for spawn/connect plus the MCP handshake and the first tool listing."""
    call_timeout: float | None = Field(default=DEFAULT_CALL_TIMEOUT, gt=0, alias="callTimeout")
    """Default per-call timeout in seconds (JSON ``null``: wait as long as the server takes)."""
    ping_interval: float | None = Field(default=DEFAULT_PING_INTERVAL, ge=0, alias="pingInterval")
    """Seconds between liveness pings of a ready server (``0`` or ``null``: no pings)."""
    ping_timeout: float | None = Field(default=None, gt=0, alias="pingTimeout")
    """Seconds a ping may take (default: 90% of ``pingInterval / pingFailures``)."""
    ping_failures: int = Field(default=2, ge=1, alias="pingFailures")
    """Unanswered pings in a row that make the server ``unhealthy`` (it is then restarted)."""
    auth: OAuthSettings | None = None
    """``"oauth"`` (or an object of :class:`OAuthSettings`): OAuth 2.1 for an http/sse server."""
    disabled: bool = False
    include: tuple[str, ...] | None = None
    """Shell-style patterns of tool names to keep (``None``: all)."""
    exclude: tuple[str, ...] = ()
    """Shell-style patterns of tool names to drop (applied after ``include``)."""
    max_restarts: int = Field(default=5, ge=0, alias="maxRestarts")
    """Crashes tolerated within ``restart_window`` seconds before the breaker opens."""
    restart_window: float = Field(default=60.0, gt=0, alias="restartWindow")

    @property
    def effective_ping_timeout(self) -> float | None:
        """Seconds one ping may take, or ``None`` when pings are off."""
        if not self.ping_interval:
            return None
        if self.ping_timeout is not None:
            return self.ping_timeout
        # 90%: with the scheduling and the pings' own round trips, a hang is still found
        # within two intervals (interval + failures * timeout).
        return 0.9 * self.ping_interval / self.ping_failures

    def child_env(self) -> dict[str, str]:
        """Build the environment of a stdio child.

        Returns:
            The minimal environment (or all of ``os.environ`` with ``inheritEnv``), then the
            ``envFile`` values, then ``env``, later ones winning.
        """
        if self.inherit_env:
            base = dict(os.environ)
        else:
            base = {k: v for k in _MINIMAL_ENV_VARS if (v := os.environ.get(k)) is not None}
        return base | self.env_file_values | self.env

    def redacted(self) -> dict[str, Any]:
        """Return the entry as a JSON-able dict with env values, headers and URL secrets masked."""
        data = self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        data["name"] = self.name
        data["transport"] = self.transport
        if self.env:
            data["env"] = dict.fromkeys(self.env, REDACTED)
        if self.headers:
            data["headers"] = dict.fromkeys(self.headers, REDACTED)
        if self.url:
            data["url"] = redact_url(self.url)
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            if key in ("env", "headers", "env_file_values") and value:
                yield key, dict.fromkeys(value, REDACTED)
            elif key == "url" and value:
                yield key, redact_url(value)
            else:
                yield key, value


class HubConfig(BaseModel):
    """A whole config: the selected servers, in config order."""

    model_config = ConfigDict(frozen=True)

    servers: dict[str, ServerConfig]
    profile: str | None = None
    source: str | None = None
    """Where the config came from (a path), for messages."""

    def enabled(self) -> list[ServerConfig]:
        """Return the servers that are not ``disabled``, in config order."""
        return [s for s in self.servers.values() if not s.disabled]


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    servers: Collection[str] | None = None,
) -> HubConfig:
    """Read, select, expand and validate an ``mcpServers`` config.

    Args:
        source: a path to a JSON file, or the already-parsed mapping.
        profile: the name of an entry of ``profiles`` to apply (``None``: all servers as-is).
        environ: where ``${VAR}`` is looked up (default: ``os.environ``).
        servers: keep only these servers (after the profile); the others are neither
            expanded nor validated, so their missing variables are no error.

    Returns:
        The validated config.

    Raises:
        MCPConfigError: the file is missing or not JSON, a field is invalid, a transport is
            unknown, a required field is missing, a variable is unset, or the profile does not
            exist. The message names the server and the field.
    """
    raw, base_dir, where = _read(source)
    entries = _entries(raw, profile)
    if servers is not None:
        wanted = set(servers)
        entries = {name: entry for name, entry in entries.items() if name in wanted}
    env = os.environ if environ is None else environ
    config_dir = str((base_dir or Path.cwd()).resolve())
    built: dict[str, ServerConfig] = {}
    try:
        for name, entry in entries.items():
            try:
                built[name] = _build_server(name, entry, env, base_dir, config_dir)
            except MCPConfigError:
                if not (isinstance(entry, Mapping) and entry.get("disabled") is True):
                    raise
                # A disabled server never runs: its unset variables or half-written fields
                # must not stop the others. It is kept (as disabled) so listings show it.
                built[name] = ServerConfig.model_construct(
                    name=name, transport="stdio", command="(disabled)", disabled=True
                )
    except RecursionError:
        raise _too_deep(where) from None
    return HubConfig(servers=built, profile=profile, source=where)


def server_names(
    source: str | os.PathLike[str] | Mapping[str, Any], *, profile: str | None = None
) -> list[str]:
    """The names of a config's servers (after the profile), without expanding any of them.

    Raises:
        MCPConfigError: the file cannot be read, is not JSON, or the profile does not exist.
    """
    raw, _, _ = _read(source)
    return list(_entries(raw, profile))


def _read(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> tuple[Any, Path | None, str | None]:
    base_dir: Path | None = None
    where: str | None = None
    if isinstance(source, Mapping):
        raw: Any = source
    else:
        path = Path(source)
        where = str(path)
        base_dir = path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MCPConfigError(
                f"cannot read MCP config {where!r}: {exc.strerror or exc}; check the path"
            ) from None
        try:
            raw = json.loads(text)
        except RecursionError:
            raise _too_deep(where) from None
        except json.JSONDecodeError as exc:
            raise MCPConfigError(
                f"MCP config {where!r} is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
    return raw, base_dir, where


def _entries(raw: Any, profile: str | None) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("mcpServers"), Mapping):
        raise MCPConfigError(
            'the config must be a JSON object with an "mcpServers" object, e.g. '
            '{"mcpServers": {"notes": {"command": "python", "args": '
            '["-m", "llmctx.mcp.examples.notes_server"]}}}',
            field="mcpServers",
        )
    entries: dict[str, Any] = dict(cast(Mapping[str, Any], raw["mcpServers"]))
    return _apply_profile(raw, entries, profile)


def _too_deep(where: str | None) -> MCPConfigError:
    return MCPConfigError(
        f"MCP config {where or '(mapping)'} is nested too deeply to read; an mcpServers "
        "config is a few levels deep (mcpServers -> server -> env/headers): check it for a "
        "runaway nesting of objects or arrays"
    )


def _apply_profile(
    raw: Mapping[str, Any], entries: dict[str, Any], profile: str | None
) -> dict[str, Any]:
    if profile is None:
        return entries
    profiles = raw.get("profiles")
    if not isinstance(profiles, Mapping) or profile not in profiles:
        known = sorted(profiles) if isinstance(profiles, Mapping) else []
        raise MCPConfigError(
            f"no profile named {profile!r}; the config defines "
            + (", ".join(repr(k) for k in known) if known else "no profiles"),
            field="profiles",
        )
    spec = profiles[profile]
    if not isinstance(spec, Mapping):
        raise MCPConfigError("a profile must be an object", field=f"profiles.{profile}")
    overrides = spec.get("mcpServers", {})
    if not isinstance(overrides, Mapping):
        raise MCPConfigError(
            "must be an object of per-server overrides", field=f"profiles.{profile}.mcpServers"
        )
    merged = dict(entries)
    for name, override in overrides.items():
        if not isinstance(override, Mapping):
            raise MCPConfigError("a server override must be an object", server=name)
        base = merged.get(name, {})
        if not isinstance(base, Mapping):
            base = {}
        combined = dict(base)
        for key, value in override.items():
            # env and headers merge key by key so a profile can add one secret without
            # repeating the rest; everything else replaces.
            if key in ("env", "headers") and isinstance(value, Mapping):
                inner = combined.get(key)
                combined[key] = {**(inner if isinstance(inner, Mapping) else {}), **value}
            else:
                combined[key] = value
        merged[name] = combined
    selected = spec.get("servers")
    if selected is None:
        return merged
    if not isinstance(selected, list) or not all(isinstance(s, str) for s in selected):
        raise MCPConfigError("must be a list of server names", field=f"profiles.{profile}.servers")
    missing = [s for s in selected if s not in merged]
    if missing:
        raise MCPConfigError(
            f"profile {profile!r} selects unknown servers {missing}; defined: {sorted(merged)}",
            field=f"profiles.{profile}.servers",
        )
    return {name: merged[name] for name in selected}


def _expand(value: str, env: Mapping[str, str], server: str, field: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        found = env.get(var)
        if var == "CONFIG_DIR" and _CONFIG_DIR_KEY in env:
            found = env[_CONFIG_DIR_KEY]
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        raise MCPConfigError(
            f"${{{var}}} is not set; export {var} or write ${{{var}:-default}}",
            server=server,
            field=field,
        )

    return _VAR.sub(substitute, value)


def _expand_fields(name: str, entry: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    out = dict(entry)
    for key in ("command", "url", "cwd", "envFile", "env_file"):
        if isinstance(out.get(key), str):
            out[key] = _expand(out[key], env, name, key)
    if isinstance(out.get("args"), list):
        out["args"] = [
            _expand(a, env, name, f"args[{i}]") if isinstance(a, str) else a
            for i, a in enumerate(out["args"])
        ]
    for key in ("env", "headers"):
        if isinstance(out.get(key), Mapping):
            out[key] = {
                k: _expand(v, env, name, f"{key}.{k}") if isinstance(v, str) else v
                for k, v in out[key].items()
            }
    return out


def _build_server(
    name: str, entry: Any, env: Mapping[str, str], base_dir: Path | None, config_dir: str
) -> ServerConfig:
    if not isinstance(entry, Mapping):
        raise MCPConfigError("a server entry must be a JSON object", server=name)
    if not name or not name.strip():
        raise MCPConfigError("server names must not be empty", field="mcpServers")
    data = _expand_fields(name, dict(entry), _WithConfigDir(env, config_dir))
    if data.get("auth") == "oauth":
        data["auth"] = {"type": "oauth"}

    kind = data.pop("type", None)
    alt = data.pop("transport", None)
    if kind is not None and alt is not None and kind != alt:
        raise MCPConfigError(
            f'"type" ({kind!r}) and "transport" ({alt!r}) disagree; keep one',
            server=name,
            field="type",
        )
    kind = kind if kind is not None else alt
    data["transport"] = _transport(name, kind, data)

    # Keys other MCP clients put in their configs; ignored rather than rejected.
    for foreign in ("description", "autoApprove", "alwaysAllow", "note", "comment"):
        data.pop(foreign, None)

    env_file = data.get("envFile", data.get("env_file"))
    if isinstance(env_file, str):
        env_path = Path(env_file)
        if base_dir is not None and not env_path.is_absolute():
            env_path = base_dir / env_path
        data["env_file_values"] = _read_env_file(env_path, name)
    if isinstance(data.get("cwd"), str) and base_dir is not None:
        cwd = Path(data["cwd"]).expanduser()
        data["cwd"] = str(cwd if cwd.is_absolute() else base_dir / cwd)
    if isinstance(data.get("args"), list):
        data["args"] = tuple(data["args"])
    for key in ("include", "exclude"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])

    try:
        server = ServerConfig.model_validate({**data, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the docs (docs/mcp.md)"
        raise MCPConfigError(msg, server=name, field=field) from None

    if server.transport == "stdio":
        if not server.command or not server.command.strip():
            raise MCPConfigError(
                'a stdio server needs a "command" (the program to run)',
                server=name,
                field="command",
            )
        if server.url:
            raise MCPConfigError(
                'a stdio server takes "command", not "url"; set "type" to "http", "sse" or "ws"',
                server=name,
                field="url",
            )
    else:
        if not server.url:
            raise MCPConfigError(
                f'a {server.transport} server needs a "url"', server=name, field="url"
            )
        scheme = urlsplit(server.url).scheme.lower()
        allowed = ("ws", "wss") if server.transport == "ws" else ("http", "https")
        if scheme not in allowed:
            raise MCPConfigError(
                f"a {server.transport} server needs a {' or '.join(allowed)} URL, got "
                f"{redact_url(server.url)!r}",
                server=name,
                field="url",
            )
        if server.command:
            raise MCPConfigError(
                f'a {server.transport} server takes "url", not "command"',
                server=name,
                field="command",
            )
    if server.auth is not None and server.transport not in ("http", "sse"):
        raise MCPConfigError(
            f"OAuth is for http and sse servers; a {server.transport} server cannot use it "
            '(remove "auth", or give the server a "url")',
            server=name,
            field="auth",
        )
    return server


class _WithConfigDir(Mapping[str, str]):
    """The variables' mapping plus the config's directory under a key no variable can have."""

    def __init__(self, env: Mapping[str, str], config_dir: str) -> None:
        self._env = env
        self._dir = config_dir

    def __getitem__(self, key: str) -> str:
        if key == _CONFIG_DIR_KEY:
            return self._dir
        return self._env[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._env
        yield _CONFIG_DIR_KEY

    def __len__(self) -> int:
        return len(self._env) + 1


def _transport(name: str, kind: Any, data: Mapping[str, Any]) -> Transport:
    if kind is None:
        if "command" in data:
            return "stdio"
        url = data.get("url")
        if isinstance(url, str):
            lowered = url.lower()
            if lowered.startswith(("ws://", "wss://")):
                return "ws"
            return "sse" if urlsplit(lowered).path.rstrip("/").endswith("/sse") else "http"
        raise MCPConfigError(
            'set "command" (a stdio server) or "url" (an http, sse or ws server)',
            server=name,
            field="command",
        )
    if not isinstance(kind, str) or kind.lower() not in _TRANSPORT_ALIASES:
        raise MCPConfigError(
            f"unknown transport {kind!r}; use one of stdio, sse, http (streamable-http), ws",
            server=name,
            field="type",
        )
    return _TRANSPORT_ALIASES[kind.lower()]


def _read_env_file(path: Path, server: str) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MCPConfigError(
            f"cannot read env file {str(path)!r}: {exc.strerror or exc}",
            server=server,
            field="envFile",
        ) from None
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            # The line itself may hold a secret, so only its number goes in the message.
            raise MCPConfigError(
                f"line {lineno} of {str(path)!r} is not KEY=VALUE",
                server=server,
                field="envFile",
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values
