"""The Starlette app of ``llmctx ui``: routes, the token gate and the security headers.

Routes (all ``GET``; anything else is 405, the viewer never writes):

* ``/``: the sessions list (search, filters, sort, pages), its charts as ``<img>``;
* ``/s/{id}``: a session (a unique id prefix redirects to the full id);
* ``/c/{id}``: a call;
* ``/api/version[?session=ID]``: a token that changes when the page may have changed (the
  page's script polls it and swaps in a fresh render of its live part);
* ``/charts/{cost|tokens|latency|models}.svg``: the list page's charts;
* ``/static/...``: the package's own CSS and JS.

**Security.** Every response carries a strict Content-Security-Policy (scripts, styles and
images from the viewer itself only; no inline script or style; no framing), ``nosniff`` and
``no-referrer``. Without a token the app answers only requests whose ``Host`` is a loopback
name, so a web page that rebinds its DNS name to 127.0.0.1 cannot read it. With a token every
request must carry it: ``?token=`` once (it is then kept in an HttpOnly, SameSite=Strict
cookie and dropped from the URL), the cookie, or ``Authorization: Bearer``.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any, get_args
from urllib.parse import parse_qsl, urlencode

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._exceptions import LLMCtxError
from .._usage import CallRecord
from ..stores._base import SessionRecord, SessionStatus
from . import _render
from ._reader import CALLS_SHOWN, SORTS, ListQuery, Overview, Reader
from ._views import call_view, session_view

__all__ = ["CSP", "TOKEN_COOKIE", "build_app"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
TOKEN_COOKIE = "llmctx_ui_token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_PARTIAL = "x-llmctx-partial"
#: Every status the list shows, ``interrupted`` included (a running row whose process is gone).
_STATUSES = list(get_args(SessionStatus))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Guard:
    """ASGI middleware: read-only methods, the Host check or the token, security headers."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is None and self.token is not None and "token" in request.query_params:
            # Keep the token in a cookie and take it out of the address bar (and history).
            kept = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            target = request.url.path + (f"?{urlencode(kept)}" if kept else "")
            refusal = RedirectResponse(target, status_code=303)
            refusal.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                ]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if request.method not in {"GET", "HEAD"}:
            return PlainTextResponse(
                "llmctx ui is read-only: only GET and HEAD are answered",
                status_code=405,
                headers={"allow": "GET, HEAD"},
            )
        if self.token is None:
            host = (request.headers.get("host") or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOOPBACK_NAMES:
                return PlainTextResponse(
                    "llmctx ui answers loopback names only (open it as http://127.0.0.1:PORT/); "
                    "to serve other hosts start it with --host and a token",
                    status_code=403,
                )
            return None
        given = request.query_params.get("token")
        if given is None:
            given = _cookie(request, TOKEN_COOKIE)
        if given is None:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return PlainTextResponse(
            "this llmctx ui needs its token: open the URL llmctx ui printed "
            "(http://HOST:PORT/?token=...)",
            status_code=403,
        )


def _cookie(request: Request, name: str) -> str | None:
    raw = request.headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:
        return None
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "") in {"1", "on", "true", "yes"}


def _date(request: Request, name: str, bad: list[str]) -> datetime | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        bad.append(f"{name}={raw!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
        return None


def _list_query(request: Request, bad: list[str]) -> ListQuery:
    p = request.query_params
    sort = p.get("sort", "started")
    if sort not in SORTS:
        bad.append(f"sort={sort!r} is not one of {', '.join(SORTS)}")
        sort = "started"
    status = p.get("status", "")
    if status and status not in _STATUSES:
        bad.append(f"status={status!r} is not one of {', '.join(_STATUSES)}")
        status = ""
    try:
        page = max(1, int(p.get("page", "1")))
    except ValueError:
        page = 1
    return ListQuery(
        q=p.get("q", "")[:200],
        text=_flag(request, "text"),
        status=status,
        since=_date(request, "from", bad),
        until=_date(request, "to", bad),
        model=p.get("model", ""),
        errors=_flag(request, "errors"),
        over_budget=_flag(request, "over"),
        children=_flag(request, "children"),
        sort=sort,  # type: ignore[arg-type]  # checked against SORTS above
        descending=p.get("order", "desc") != "asc",
        page=page,
    )


def _local_input(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%S")


class _Charts:
    """The list page's overview, computed once per (range, store version) for its 4 charts."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        # (range) -> (store version, charts, when computed, seconds it took)
        self._cache: dict[tuple[Any, ...], tuple[str, dict[str, Markup], float, float]] = {}

    def get(self, since: datetime | None, until: datetime | None) -> dict[str, Markup]:
        key = (since, until)
        version = self.reader.version()
        with self._lock:  # four <img> requests at once compute it once
            hit = self._cache.get(key)
            now = time.monotonic()
            # A store that changes all the time (a running workshop) would have its overview
            # recomputed on every poll; an expensive one is kept for ten times what it cost.
            if hit is not None and (hit[0] == version or now - hit[2] < 10 * hit[3]):
                return hit[1]
            overview: Overview = self.reader.overview(since, until)
            charts = _render.list_charts(overview)
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = (version, charts, time.monotonic(), time.monotonic() - now)
            return charts


def build_app(reader: Reader, *, token: str | None = None) -> Starlette:
    """The viewer over ``reader``: routes behind the guard.

    Args:
        reader: a read-only reader (:func:`._reader.open_reader`); the app closes it on
            shutdown.
        token: required on every request when given (see the module docstring); without
            one only loopback ``Host`` names are answered.
    """
    env = _render.environment()
    buster = _render.cache_buster()
    charts = _Charts(reader)
    missing = reader.missing_indexes()
    notes = []
    if reader.old_columns:
        notes.append(
            "An older llmctx wrote this store (its sessions have no "
            + ", ".join(reader.old_columns)
            + " columns), so a running session whose process is gone shows as running, not "
            "interrupted."
        )
    if missing:
        notes.append(
            "This store lacks the indexes the list filters use ("
            + ", ".join(missing)
            + "), so filtering by model or errors scans every call."
        )
    if notes:
        # The viewer never writes; a store opened for writing migrates itself.
        notes.append(
            "Any llmctx command that opens it for writing upgrades it (e.g. llmctx sessions ls "
            "--db with this store, a session, or llmctx demo with LLMCTX_DB set to it)."
        )
    notice = " ".join(notes)

    def session_url(session_id: str) -> str:
        return f"/s/{_render.url_part(session_id)}"

    def call_url(call: CallRecord) -> str:
        return f"/c/{_render.url_part(call.id)}"

    def common() -> dict[str, Any]:
        return {
            "root_url": "/",
            "where": reader.where,
            "tz": _render.timezone_name(),
            "export": False,
            "inline_css": None,
            "static_url": lambda name: f"/static/{name}?v={buster}",
            "session_url": session_url,
            "call_url": call_url,
            "notice": notice,
        }

    def page(name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        html = env.get_template(name).render({**common(), **context})
        return HTMLResponse(html, status_code=status)

    def error(status: int, title: str, message: str) -> HTMLResponse:
        return page("error.html", {"title": title, "message": message}, status)

    def guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def run(request: Request) -> Response:
            try:
                return handler(request)
            except LLMCtxError as exc:
                return error(503, "The store cannot be read", str(exc))

        run.__name__ = handler.__name__
        return run

    @guarded
    def list_page(request: Request) -> Response:
        bad: list[str] = []
        q = _list_query(request, bad)
        version = reader.version()
        result = reader.list_page(q)

        def page_url(n: int) -> str:
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
            return "/?" + urlencode([*kept, ("page", str(n))])

        context: dict[str, Any] = {
            "q": q,
            "page": result,
            "page_url": page_url,
            "version_token": version,
            "version_url": "/api/version",
        }
        if request.headers.get(_PARTIAL):
            html = env.get_template("list_live.html").render(**common(), **context)
            return HTMLResponse(html, headers={"x-llmctx-version": version})
        rng = urlencode(
            [(k, request.query_params[k]) for k in ("from", "to") if request.query_params.get(k)]
        )
        chart_list = [
            {
                "name": n,
                "src": f"/charts/{n}.svg?{rng}&v={version}"
                if rng
                else f"/charts/{n}.svg?v={version}",
                "alt": alt,
                "height": h,
            }
            for n, alt, h in (
                ("cost", "cost over time", 170),
                ("tokens", "tokens over time", 170),
                ("latency", "latency distribution", 170),
                ("models", "cost by model", 200),
            )
        ]
        context.update(
            statuses=_STATUSES,
            sorts=SORTS,
            models=reader.models(),
            charts=chart_list,
            since_value=_local_input(q.since),
            until_value=_local_input(q.until),
            notice=" ".join([*bad, notice]).strip(),
        )
        return page("list.html", context)

    @guarded
    def session_page(request: Request) -> Response:
        ref = request.path_params["sid"]
        tree = reader.tree(ref)
        if not tree:
            found = reader.resolve(ref)
            if found is not None and found != ref:
                return RedirectResponse(session_url(found), status_code=303)
            return error(404, "No such session", f"No session with id {ref!r} in {reader.where}.")
        version = reader.version(tree[0].id)
        calls, total = reader.calls([r.id for r in tree], CALLS_SHOWN)
        view = session_view(tree, calls, total)
        context: dict[str, Any] = {
            "view": view,
            "charts": _render.session_charts(view, call_url),
            "version_token": version,
            "version_url": f"/api/version?{urlencode({'session': tree[0].id})}",
        }
        if request.headers.get(_PARTIAL):
            html = env.get_template("session_live.html").render(**common(), **context)
            return HTMLResponse(html, headers={"x-llmctx-version": version})
        ancestors: list[SessionRecord] = []
        parent = tree[0].parent_id
        seen = {tree[0].id}
        while parent is not None and parent not in seen and len(ancestors) < 20:
            seen.add(parent)
            row = reader.session(parent)
            if row is None:
                break
            ancestors.append(row)
            parent = row.parent_id
        context["ancestors"] = list(reversed(ancestors))
        return page("session.html", context)

    @guarded
    def call_page(request: Request) -> Response:
        ref = request.path_params["cid"]
        call = reader.call(ref)
        if call is None:
            return error(404, "No such call", f"No call with id {ref!r} in {reader.where}.")
        name = ""
        if call.session_id:
            row = reader.session(call.session_id)
            name = (row.name or "") if row is not None else ""
        return page("call.html", {"cv": call_view(call, name)})

    @guarded
    def version_api(request: Request) -> Response:
        session = request.query_params.get("session")
        return PlainTextResponse(reader.version(session or None))

    @guarded
    def chart(request: Request) -> Response:
        name = request.path_params["name"]
        bad: list[str] = []
        drawn = charts.get(_date(request, "from", bad), _date(request, "to", bad))
        if name not in drawn:
            return PlainTextResponse("no such chart", status_code=404)
        return Response(
            str(drawn[name]),
            media_type="image/svg+xml",
            headers={"cache-control": "private, max-age=3600"},
        )

    static = StaticFiles(packages=[("llmctx.ui", "static")])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            reader.close()

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", list_page),
            Route("/s/{sid:path}", session_page),
            Route("/c/{cid:path}", call_page),
            Route("/api/version", version_api),
            Route("/charts/{name}.svg", chart),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Mount("/static", app=static, name="static"),
        ],
    )
    app.add_middleware(_Guard, token=token)
    app.state.reader = reader
    return app
