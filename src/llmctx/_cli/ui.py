"""``llmctx ui``: serve the read-only web viewer of a store on this machine.

Binds to 127.0.0.1 on a free port by default and prints the URL. A non-loopback ``--host``
needs a token, given with ``--token`` (or ``$LLMCTX_UI_TOKEN``) or generated and printed in
the URL, as Jupyter does. Ctrl-C stops the server and closes its connections.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import webbrowser
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from .._exceptions import LLMCtxError

__all__ = ["is_loopback", "ui"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def ui(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="URL_OR_PATH",
            help="Store to read: a SQLite path, sqlite:///path.db or postgresql://... "
            "(default: $LLMCTX_DB, else the default SQLite file).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option("--host", metavar="HOST", help="Address to listen on; not loopback: token."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="0: a free port.")
    ] = 0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="LLMCTX_UI_TOKEN",
            help="Require this token (generated when --host is not loopback).",
            show_default=False,
        ),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the viewer in the default browser.")
    ] = False,
) -> None:
    """Serve a read-only web viewer of recorded sessions (list, session, call pages)."""
    err = Console(stderr=True, highlight=False)
    try:
        import uvicorn

        from ..ui import create_app
    except ImportError as exc:  # pragma: no cover - starlette/uvicorn come with mcp
        err.print(Text(f"error: llmctx ui needs {exc.name}: pip install llmctx", style="red"))
        raise typer.Exit(1) from None
    if token is not None and len(token) < 8:
        raise typer.BadParameter("use at least 8 characters", param_hint="--token")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    try:
        app = create_app(db, token=token)
    except LLMCtxError as exc:
        err.print(Text(f"error: {exc}", style="red"))
        raise typer.Exit(1) from None
    try:
        sock = _bind(host, port)
    except OSError as exc:
        err.print(
            Text(
                f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; "
                "pick another --port (0 finds a free one) or --host",
                style="red",
            )
        )
        raise typer.Exit(1) from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    url = f"http://{shown_host}:{bound_port}/" + (f"?token={token}" if token else "")
    reader_where = app.state.reader.where
    out = Console(highlight=False)
    out.print(f"llmctx ui: {url}")
    out.print(Text(f"reading {reader_where} (read-only); Ctrl-C to stop", style="dim"))
    if not is_loopback(host):
        out.print(
            Text(
                "listening beyond this machine: anyone with the URL (token included) can read "
                "every recorded prompt",
                style="yellow",
            )
        )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
