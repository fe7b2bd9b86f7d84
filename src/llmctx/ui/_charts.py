"""Server-rendered SVG charts: bars over time, horizontal bars, a histogram, a call waterfall.

Every chart is a string of SVG drawn with presentation attributes only (no ``style``
attribute, no script), so it works inline in a page under a strict Content-Security-Policy,
as an ``<img>``, and inside an exported file. Every label is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from .._usage import CallRecord

__all__ = ["bars_over_time", "histogram", "hbars", "max_concurrency", "waterfall"]

_INK = "#1f2933"
_MUTED = "#7b8794"
_GRID = "#e4e7eb"
_BLUE = "#2f6fdd"
_GREEN = "#2c9a6a"
_COLORS = {
    "ok": "#2f6fdd",
    "tool": "#8e44ad",
    "error": "#d64545",
    "cancelled": "#d9a21b",
    "refused": "#9aa5b1",
}
_FONT = 'font-family="system-ui, sans-serif"'


def _svg(width: int, height: int, title: str, body: list[str], *, label: str = "") -> Markup:
    aria = escape(label or title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{aria}" class="chart">'
        f"<title>{escape(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", size: int = 11, fill: str = _MUTED
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{fill}" {_FONT}>{escape(text)}</text>'
    )


def _empty(width: int, height: int, title: str) -> Markup:
    return _svg(
        width,
        height,
        title,
        [
            _text(10, 18, title, size=12, fill=_INK),
            _text(width / 2, height / 2 + 4, "no data yet", anchor="middle"),
        ],
    )


def _time_label(value: datetime, bucket: timedelta) -> str:
    local = value.astimezone()
    if bucket >= timedelta(days=1):
        return local.strftime("%Y-%m-%d")
    if bucket >= timedelta(minutes=1):
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%H:%M:%S")


def bars_over_time(
    title: str,
    points: Sequence[tuple[datetime, float]],
    bucket: timedelta,
    fmt: Callable[[float], str],
    *,
    color: str = _BLUE,
    width: int = 300,
    height: int = 150,
) -> Markup:
    """Vertical bars, one per time bucket (empty buckets stay empty)."""
    if not points:
        return _empty(width, height, title)
    left, right, top, bottom = 8, 8, 38, 24
    start = points[0][0]
    n = max(1, round((points[-1][0] - start) / bucket) + 1) if bucket else len(points)
    top_value = max(v for _, v in points)
    peak = top_value or 1.0
    plot_w = width - left - right
    plot_h = height - top - bottom
    slot = plot_w / n
    body = [
        _text(left, 16, title, size=12, fill=_INK),
        _text(left, 30, f"max {fmt(top_value)} per {_bucket_name(bucket)}", size=10),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        f'stroke="{_GRID}"/>',
    ]
    for at, value in points:
        i = round((at - start) / bucket) if bucket else 0
        h = plot_h * (value / peak) if peak else 0
        x = left + i * slot
        bar = min(max(slot * 0.8, 1.0), 28.0)
        body.append(
            f'<rect x="{x + (slot - bar) / 2:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar:.1f}" height="{max(h, 0.5 if value else 0):.1f}" '
            f'fill="{color}"><title>{escape(_time_label(at, bucket))}: {escape(fmt(value))}'
            "</title></rect>"
        )
    body.append(_text(left, height - 6, _time_label(start, bucket)))
    if n > 1:
        body.append(
            _text(width - right, height - 6, _time_label(points[-1][0], bucket), anchor="end")
        )
    return _svg(width, height, title, body)


def _bucket_name(bucket: timedelta) -> str:
    seconds = int(bucket.total_seconds())
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day", 7 * 86400: "week"}
    if seconds in names:
        return names[seconds]
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def hbars(
    title: str,
    items: Sequence[tuple[str, float, str]],
    *,
    width: int = 300,
    shown: int = 8,
) -> Markup:
    """Horizontal bars, largest first: ``(label, value, value text)``; the rest summed."""
    if not items:
        return _empty(width, 120, title)
    rows = list(items[:shown])
    rest = items[shown:]
    if rest:
        rows.append((f"{len(rest)} more", sum(v for _, v, _ in rest), ""))
    row_h = 20
    top = 28
    height = top + row_h * len(rows) + 8
    label_w = 112
    peak = max(v for _, v, _ in rows) or 1.0
    bar_w = width - label_w - 112
    body = [_text(8, 16, title, size=12, fill=_INK)]
    for i, (label, value, note) in enumerate(rows):
        y = top + i * row_h
        # 15 characters fit the label column (the full name is in the bar's tooltip).
        short = label if len(label) <= 15 else label[:14] + "…"
        body.append(_text(label_w - 6, y + 13, short, anchor="end", fill=_INK))
        w = bar_w * (value / peak) if peak else 0
        body.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1 if value else 0):.1f}" '
            f'height="{row_h - 6}" fill="{_GREEN}"><title>{escape(label)}: {escape(note)}'
            "</title></rect>"
        )
        body.append(_text(width - 4, y + 13, note, anchor="end", size=9))
    return _svg(width, height, title, body)


def histogram(
    title: str, bins: Sequence[int], edges: Sequence[float], *, width: int = 300, height: int = 150
) -> Markup:
    """Counts per bin; bin ``i`` holds values below ``edges[i]``, the last one the rest."""
    if not any(bins):
        return _empty(width, height, title)
    # Trim empty bins at both ends, keeping the edges' meaning.
    lo = next(i for i, n in enumerate(bins) if n)
    hi = len(bins) - next(i for i, n in enumerate(reversed(bins)) if n)
    shown = list(bins[lo:hi])
    left, right, top, bottom = 14, 14, 30, 30
    plot_w = width - left - right
    plot_h = height - top - bottom
    slot = plot_w / len(shown)
    every = 1 if len(shown) <= 6 else 2
    peak = max(shown)
    body = [
        _text(left, 16, title, size=12, fill=_INK),
        _text(width - right, 16, _calls(sum(bins)), anchor="end"),
    ]
    for j, count in enumerate(shown):
        i = lo + j
        h = plot_h * count / peak
        x = left + j * slot
        bar = min(slot * 0.84, 36.0)
        body.append(
            f'<rect x="{x + (slot - bar) / 2:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar:.1f}" height="{h:.1f}" fill="{_BLUE}">'
            f"<title>{escape(_bin_label(i, edges))}: {count:,}</title></rect>"
        )
        if j % every == 0 and i > 0:
            body.append(_text(x, height - 17, _seconds(edges[i - 1]), anchor="middle", size=9))
    if hi - 1 < len(edges) and (len(shown) % every == 0 or every == 1):
        body.append(
            _text(left + plot_w, height - 17, _seconds(edges[hi - 1]), anchor="middle", size=9)
        )
    body.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="{_GRID}"/>'
    )
    body.append(
        _text(width / 2, height - 3, "latency (bins by upper edge)", anchor="middle", size=9)
    )
    return _svg(width, height, title, body)


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _bin_label(i: int, edges: Sequence[float]) -> str:
    if i >= len(edges):
        return f"{_seconds(edges[-1])} or more"
    if i == 0:
        return f"under {_seconds(edges[0])}"
    return f"{_seconds(edges[i - 1])} to {_seconds(edges[i])}"


def _calls(n: int) -> str:
    return f"{n:,} call" + ("" if n == 1 else "s")


def _span_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}min"


def max_concurrency(calls: Sequence[CallRecord]) -> int:
    """The most calls that were in flight at one moment."""
    points: list[tuple[datetime, int]] = []
    for c in calls:
        end = c.started_at + timedelta(seconds=c.latency_s or 0)
        points.append((c.started_at, 1))
        points.append((end, -1))
    points.sort(key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def waterfall(
    calls: Sequence[CallRecord],
    names: dict[str, str],
    href: Callable[[CallRecord], str],
    *,
    start: datetime | None = None,
    width: int = 940,
    shown: int = 300,
) -> Markup:
    """One row per call (oldest first): a bar from its start for its latency, coloured by
    status (tool calls in purple), linked to the call; overlapping bars are concurrent calls.
    """
    title = "Timeline of calls"
    if not calls:
        return _empty(width, 80, title)
    rows = list(calls[:shown])
    t0 = min([c.started_at for c in rows] + ([start] if start else []))
    ends = [c.started_at + timedelta(seconds=c.latency_s or 0) for c in rows]
    span = max((max(ends) - t0).total_seconds(), 1e-3)
    label_w = 230
    top = 34
    row_h = 16
    plot_w = width - label_w - 70
    height = top + row_h * len(rows) + 24
    body = [
        _text(8, 16, title, size=12, fill=_INK),
        _text(
            width - 8,
            16,
            f"{_calls(len(calls))} over {_span_text(span)}; "
            f"at most {max_concurrency(calls)} at once"
            + (f" (first {shown} drawn)" if len(calls) > shown else ""),
            anchor="end",
        ),
    ]
    for k in range(5):
        x = label_w + plot_w * k / 4
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 20}" stroke="{_GRID}"/>'
        )
        body.append(_text(x, height - 6, "+" + _span_text(span * k / 4), anchor="middle", size=9))
    for i, (c, end) in enumerate(zip(rows, ends, strict=True)):
        y = top + i * row_h
        x0 = label_w + plot_w * (c.started_at - t0).total_seconds() / span
        w = max(plot_w * (end - c.started_at).total_seconds() / span, 2.0)
        status = str(c.status)
        color = _COLORS.get(
            status if status != "ok" else ("tool" if c.kind == "tool" else "ok"), _BLUE
        )
        who = names.get(c.session_id or "", "")
        label = f"{who} · {c.model or c.kind}" if who else (c.model or c.kind)
        if len(label) > 34:
            label = label[:33] + "…"
        tip = (
            f"{c.model or c.kind} {status} {c.latency_s or 0:.3f}s "
            f"({c.usage.input_tokens:,} in / {c.usage.output_tokens:,} out)"
        )
        mark = "" if status == "ok" else f" [{status}]"
        body.append(
            f'<a href="{escape(href(c))}" class="wf-row">'
            + _text(label_w - 6, y + 11, label + mark, anchor="end", fill=_INK, size=10)
            + f'<rect x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" rx="2" '
            f'fill="{color}"><title>{escape(tip)}</title></rect></a>'
        )
    return _svg(width, height, title, body, label=f"{title}: {len(calls)} calls")


def value_text(value: Any) -> str:
    """A number for a chart label: thousands separated."""
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)
