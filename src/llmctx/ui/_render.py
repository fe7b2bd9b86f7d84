"""The templates and what they are given: one jinja2 environment for the app and the export.

Autoescaping is on for every template, so any recorded text (names, prompts, replies, errors,
tags, JSON) reaches the page as text: a reply holding ``<script>`` or a ``javascript:`` link
is shown, never run or followed. The only strings marked safe are the SVG charts (built by
:mod:`._charts`, which escapes every label) and the package's own stylesheet.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from .. import __version__
from .._money import format_usd
from .._usage import CallRecord
from . import _charts
from ._reader import LATENCY_EDGES, Overview, chart_model
from ._views import SessionView, duration_text, money, session_cost, when

__all__ = [
    "environment",
    "list_charts",
    "session_charts",
    "static_text",
    "style_hash",
    "timezone_name",
]


def static_text(name: str) -> str:
    """The text of one of the package's static files (``app.css``, ``app.js``)."""
    return (resources.files("llmctx.ui") / "static" / name).read_text(encoding="utf-8")


def style_hash(css: str) -> str:
    """The CSP source (``'sha256-...'``) that allows exactly this inline stylesheet."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def timezone_name() -> str:
    """The local time zone as pages name it: ``CET (UTC+01:00)``."""
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return f"{now.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def _clock(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _role_class(role: str) -> str:
    return role if role in {"system", "user", "assistant", "tool"} else "other"


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@functools.cache
def environment() -> jinja2.Environment:
    """The one template environment (autoescaped, strict about undefined names)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llmctx.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        clock=_clock,
        duration=duration_text,
        role_class=_role_class,
        tojson_text=_json_text,
    )
    env.globals.update(
        money=money,
        session_cost=session_cost,
        version=__version__,
    )
    return env


def _cost_fmt(value: float) -> str:
    return format_usd(Decimal(str(round(value, 6))))


def _tokens_fmt(value: float) -> str:
    return f"{value:,.0f}"


def list_charts(overview: Overview) -> dict[str, Markup]:
    """The list page's four charts from :meth:`Reader.overview`."""
    cost = [(at, float(c)) for at, c, _ in overview.buckets]
    tokens = [(at, float(t)) for at, _, t in overview.buckets]
    # Past the bound the call charts show the newest calls only: say so in their titles.
    capped = overview.calls_capped
    newest = f", newest {overview.calls_read:,} calls" if capped else ""
    # The histogram's corner already says how many calls it holds.
    latency = "Latency of the newest calls" if capped else "Latency of calls"
    return {
        "cost": _charts.bars_over_time("Cost over time", cost, overview.bucket, _cost_fmt),
        "tokens": _charts.bars_over_time(
            "Tokens over time",
            tokens,
            overview.bucket,
            _tokens_fmt,
            color="#2c9a6a",
        ),
        "latency": _charts.histogram(latency, overview.latency_bins, LATENCY_EDGES),
        "models": _charts.hbars(
            f"Cost by model{newest}",
            [
                (m, float(c), f"{_cost_fmt(float(c))} · {n:,} call{'' if n == 1 else 's'}")
                for m, c, n in overview.by_model
            ],
        ),
    }


def _session_bucket(span_s: float) -> int:
    for size in (1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400):
        if span_s / size <= 60:
            return size
    return 7 * 86400


def session_charts(view: SessionView, call_href: Callable[[CallRecord], str]) -> dict[str, Markup]:
    """A session page's charts: the waterfall of its calls, cost and tokens over time,
    latency distribution and cost by model."""
    calls: Sequence[CallRecord] = view.calls
    start = view.record.started_at
    out: dict[str, Markup] = {
        "waterfall": _charts.waterfall(calls, view.names, call_href, start=start),
    }
    cost: list[tuple[datetime, float]] = []
    tokens: list[tuple[datetime, float]] = []
    bucket = timedelta(seconds=1)
    if calls:
        t0 = min(c.started_at for c in calls)
        span = (max(c.started_at for c in calls) - t0).total_seconds()
        seconds = _session_bucket(span)
        bucket = timedelta(seconds=seconds)
        sums: dict[int, list[float]] = {}
        for c in calls:
            key = int((c.started_at - t0).total_seconds() // seconds)
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(c.cost or 0)
            acc[1] += c.usage.total_tokens
        for key in sorted(sums):
            at = t0 + timedelta(seconds=key * seconds)
            cost.append((at, sums[key][0]))
            tokens.append((at, sums[key][1]))
    bins = [0] * (len(LATENCY_EDGES) + 1)
    for c in calls:
        if c.latency_s is None:
            continue
        i = next((i for i, e in enumerate(LATENCY_EDGES) if c.latency_s < e), len(LATENCY_EDGES))
        bins[i] += 1
    models: dict[str, list[float]] = {}
    for c in calls:
        acc = models.setdefault(chart_model(c.kind, c.model) or c.kind, [0.0, 0.0])
        acc[0] += float(c.cost or 0)
        acc[1] += 1
    ranked = sorted(models.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    out["cost"] = _charts.bars_over_time("Cost over time", cost, bucket, _cost_fmt)
    out["tokens"] = _charts.bars_over_time(
        "Tokens over time", tokens, bucket, _tokens_fmt, color="#2c9a6a"
    )
    out["latency"] = _charts.histogram("Latency of calls", bins, LATENCY_EDGES)
    out["models"] = _charts.hbars(
        "Cost by model",
        [
            (m, v[0], f"{_cost_fmt(v[0])} · {int(v[1]):,} call{'' if v[1] == 1 else 's'}")
            for m, v in ranked
        ],
    )
    return out


def url_part(value: str) -> str:
    """``value`` quoted for one path segment (``/`` included)."""
    return quote(value, safe="")


def cache_buster() -> str:
    """A token that changes with every start of the server (static files' ``?v=``)."""
    return f"{__version__}-{int(time.time())}"
