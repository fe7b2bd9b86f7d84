"""``llmctx sessions export --format html``: session pages as one self-contained file.

The file holds each session's page (summary, budget, scope tree, timeline, charts, calls)
followed by every call shown on it, each opened from the page by an in-file link. It needs
nothing else: the stylesheet is inlined and allowed by its hash in the file's own
Content-Security-Policy, which forbids every script, so a recorded ``<script>`` cannot run
even in a browser that ignores the escaping. Secrets were redacted when the calls were
recorded; the file shows only what the store holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from markupsafe import Markup

from .._usage import CallRecord
from ..stores._base import SessionRecord, Store
from . import _render
from ._reader import CALLS_SHOWN
from ._views import call_view, session_view

__all__ = ["export_html", "render_export"]


def render_export(
    groups: Sequence[tuple[Sequence[SessionRecord], Sequence[CallRecord], int]],
    where: str = "",
) -> str:
    """The HTML of one file showing each ``(tree, calls, calls_total)`` as a session page.

    Args:
        groups: per session, its tree (the session first), the calls shown, and how many
            calls the tree holds.
        where: the store the sessions come from, for the header.
    """
    env = _render.environment()
    css = _render.static_text("app.css")
    csp = f"default-src 'none'; style-src {_render.style_hash(css)}; img-src data:"

    def call_href(call: CallRecord) -> str:
        return f"#call-{call.id}"

    def session_href(session_id: str) -> str:
        return f"#session-{session_id}"

    pages = []
    for tree, calls, total in groups:
        view = session_view(tree, calls, total)
        names = view.names
        pages.append(
            {
                "view": view,
                "charts": _render.session_charts(view, call_href),
                "calls": [call_view(c, names.get(c.session_id or "", "")) for c in view.calls],
            }
        )
    return env.get_template("export.html").render(
        root_url="#",
        where=where,
        tz=_render.timezone_name(),
        export=True,
        inline_css=Markup(css),
        export_csp=csp,
        static_url=lambda name: name,
        session_url=session_href,
        call_url=call_href,
        notice="",
        pages=pages,
    )


def export_html(out: IO[str], store: Store, sessions: Sequence[SessionRecord]) -> int:
    """Write ``sessions`` (each with its descendants) to ``out`` as one HTML file.

    Sessions whose parent is among ``sessions`` appear inside their parent's page, not on a
    page of their own. At most :data:`CALLS_SHOWN` calls per page are included (the page
    says how many more there are).

    Args:
        out: a text stream.
        store: where the sessions are kept.
        sessions: the sessions chosen (a store's ``session_tree`` rows, or a list).

    Returns:
        How many calls the file holds.
    """
    chosen = {r.id for r in sessions}
    groups = []
    n_calls = 0
    for r in sessions:
        if r.parent_id is not None and r.parent_id in chosen:
            continue
        tree = store.session_tree(r.id) or [r]
        calls = store.list_calls([t.id for t in tree], refused=True)
        shown = list(calls[:CALLS_SHOWN])
        n_calls += len(shown)
        groups.append((tree, shown, len(calls)))
    where = getattr(store, "path", None) or repr(store)
    out.write(render_export(groups, where=str(where)))
    return n_calls
