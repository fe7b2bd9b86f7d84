"""``llmctx ui``: a local, read-only web viewer of recorded sessions.

``llmctx ui [--db PATH_OR_URL]`` serves it (see ``docs/ui.md``); from Python::

    from llmctx.ui import create_app
    app = create_app("sqlite:///runs.db")     # a Starlette app; run it with uvicorn

It reads the SQLite file or PostgreSQL schema a store writes, through read-only connections,
and renders every page on the server (templates, SVG charts); its few lines of JavaScript and
CSS ship inside the package, so it works offline. ``export_html`` writes the same session page
as one self-contained file (``llmctx sessions export --format html``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._export import export_html, render_export
from ._reader import open_reader

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["create_app", "export_html", "render_export"]


def create_app(db: str | None = None, *, token: str | None = None) -> Starlette:
    """The viewer of the store ``db`` names, as a Starlette (ASGI) app.

    Args:
        db: a SQLite path, ``sqlite:///path.db`` or ``postgresql://...?schema=NAME``; None
            means ``$LLMCTX_DB``, else the default SQLite file.
        token: when given, every request must carry it (``?token=`` once, then a cookie, or
            ``Authorization: Bearer``); without one, only requests to a loopback host name
            are answered.

    Returns:
        The app; it closes its read-only connections when it shuts down (ASGI lifespan).

    Raises:
        ConfigError: ``db`` is not a store the viewer can read (``memory:``).
        StoreError: the store does not exist or cannot be read.
    """
    from ._app import build_app

    return build_app(open_reader(db), token=token)
