"""Times and durations as people read them: the one home of these formats.

The CLI's tables and the ``llmctx ui`` pages both show them; one implementation keeps the two
from drifting apart (a session shown as ``3m05s`` in one and ``185.0s`` in the other).
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["duration_text", "local_time"]


def local_time(value: datetime | None) -> str:
    """A time in the local zone, to the second (``-`` for none)."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration_text(seconds: float | None, *, fine_below: float = 10.0) -> str:
    """``0.42s``, ``12.5s``, ``3m05s``, ``2h01m``; ``-`` for none.

    Args:
        seconds: the duration.
        fine_below: durations shorter than this get two decimals (a call's latency), longer
            ones one (a session's wall time); 0 gives one decimal throughout.
    """
    if seconds is None:
        return "-"
    if seconds < fine_below:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
