"""monitor() and timed(): wall time, CPU time and RSS change of a block, attached to the session.

``with llmctx.monitor("batch", warn_after=2.0) as m: ...`` measures the block; ``m.result`` is a
:class:`MonitorResult`. If a session is active where the block started, the result is attached
to it as a ``"monitor"`` event. A block slower than ``warn_after`` seconds logs a warning on
the ``llmctx.monitor`` logger. ``@llmctx.timed()`` does the same for every call of a function
(sync or async).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

import psutil

from ._context import current_session
from ._exceptions import ConfigError

__all__ = ["MonitorResult", "monitor", "timed"]

logger = logging.getLogger("llmctx.monitor")

P = ParamSpec("P")
T = TypeVar("T")

_process: psutil.Process | None = None
_process_pid: int | None = None


def _rss() -> int | None:
    """Resident set size of this process in bytes, or None if psutil cannot tell."""
    global _process, _process_pid
    try:
        pid = os.getpid()
        if _process is None or _process_pid != pid:  # a fork needs its own handle
            _process = psutil.Process(pid)
            _process_pid = pid
        rss: int = _process.memory_info().rss
        return rss
    except Exception:  # bookkeeping never breaks the user's block
        return None


@dataclass(frozen=True, slots=True)
class MonitorResult:
    """What a monitored block used.

    Attributes:
        name: the monitor's name.
        wall_s: elapsed wall-clock seconds.
        cpu_s: CPU seconds of the whole process (all threads) during the block.
        rss_start: resident memory in bytes when the block started (None if unknown).
        rss_end: resident memory in bytes when it ended (None if unknown).
        rss_delta: ``rss_end - rss_start`` in bytes (None if unknown).
        error: the exception type's name if the block raised, else None.
        slow: True when ``wall_s`` passed ``warn_after``.
    """

    name: str
    wall_s: float
    cpu_s: float
    rss_start: int | None
    rss_end: int | None
    rss_delta: int | None
    error: str | None
    slow: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "rss_start": self.rss_start,
            "rss_end": self.rss_end,
            "rss_delta": self.rss_delta,
            "error": self.error,
            "slow": self.slow,
        }


def _check_warn_after(warn_after: float | None) -> float | None:
    if warn_after is None:
        return None
    if isinstance(warn_after, bool) or not isinstance(warn_after, int | float):
        raise ConfigError(f"warn_after={warn_after!r} must be a number of seconds, or None")
    if not warn_after >= 0:
        raise ConfigError(f"warn_after={warn_after!r} must be >= 0 seconds, or None")
    return float(warn_after)


def _owner() -> object:
    """The asyncio task running this code, else the thread: who a block's start belongs to."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class _StackPerOwner(Generic[T]):
    """One LIFO stack per task or thread: blocks nest within one but overlap freely across
    them, and each exit must pop what its own entry pushed."""

    __slots__ = ("_stacks",)

    def __init__(self) -> None:
        self._stacks: dict[object, list[T]] = {}

    def push(self, item: T) -> None:
        self._stacks.setdefault(_owner(), []).append(item)

    def pop(self) -> T:
        owner = _owner()
        stack = self._stacks[owner]
        item = stack.pop()
        if not stack:
            del self._stacks[owner]
        return item

    def top(self) -> T | None:
        stack = self._stacks.get(_owner())
        return stack[-1] if stack else None


class monitor:  # lowercase: used like a function, llmctx.monitor("name")
    """Measure a block's wall time, CPU time and RSS change; sync and async context manager.

    Usage::

        with llmctx.monitor("embed", warn_after=2.0) as m:
            embed(docs)
        m.result.wall_s

    The same object may be entered again after it exited (``result`` then holds the latest
    measurement), or entered by several blocks at once; each block is measured on its own.

    Args:
        name: a label for the measurement.
        warn_after: log a warning on the ``llmctx.monitor`` logger when the block takes longer
            than this many seconds (None: never).
        attach: attach the result to the session active where the block started, as a
            ``"monitor"`` event (default True; a no-op outside any session).

    Raises:
        ConfigError: a negative or non-numeric ``warn_after``.

    On exit (normal, exception or cancellation) the measurement is taken, attached and logged;
    the exception, if any, propagates unchanged.
    """

    __slots__ = ("_starts", "attach", "name", "result", "warn_after")

    def __init__(self, name: str, *, warn_after: float | None = None, attach: bool = True) -> None:
        self.name = name
        self.warn_after = _check_warn_after(warn_after)
        self.attach = attach
        #: The latest completed measurement (None until a block exits).
        self.result: MonitorResult | None = None
        self._starts: _StackPerOwner[tuple[float, float, int | None, Any]] = _StackPerOwner()

    def __repr__(self) -> str:
        return f"monitor({self.name!r}, warn_after={self.warn_after!r})"

    @property
    def elapsed(self) -> float:
        """Seconds since the innermost active block started (the last result's if none)."""
        start = self._starts.top()
        if start is not None:
            return time.perf_counter() - start[0]
        return self.result.wall_s if self.result is not None else 0.0

    def _start(self) -> None:
        session = current_session() if self.attach else None
        self._starts.push((time.perf_counter(), time.process_time(), _rss(), session))

    def _stop(self, exc_type: type[BaseException] | None) -> None:
        wall_end = time.perf_counter()
        cpu_end = time.process_time()
        rss_end = _rss()
        wall0, cpu0, rss0, session = self._starts.pop()
        wall = wall_end - wall0
        slow = self.warn_after is not None and wall > self.warn_after
        result = MonitorResult(
            name=self.name,
            wall_s=wall,
            cpu_s=cpu_end - cpu0,
            rss_start=rss0,
            rss_end=rss_end,
            rss_delta=None if rss0 is None or rss_end is None else rss_end - rss0,
            error=None if exc_type is None else exc_type.__name__,
            slow=slow,
        )
        self.result = result
        if slow:
            logger.warning(
                "llmctx: %r took %.3f s (warn_after=%.3f s; cpu %.3f s)",
                self.name,
                wall,
                self.warn_after,
                result.cpu_s,
            )
        if session is not None:
            add_event = getattr(session, "add_event", None)
            if add_event is not None:
                try:
                    add_event("monitor", result.to_dict())
                except Exception:  # bookkeeping never breaks the user's block
                    logger.exception(
                        "llmctx: could not attach monitor %r to its session", self.name
                    )

    def __enter__(self) -> monitor:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop(exc_type)

    async def __aenter__(self) -> monitor:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop(exc_type)


class timed:  # lowercase: a decorator used like a function
    """Decorator (sync or async functions) and context manager that monitors every call.

    Usage::

        @llmctx.timed(warn_after=5.0)          # name defaults to the function's qualname
        async def summarize(doc): ...

        with llmctx.timed("load"): ...

    Args:
        name: the measurement's name (default: the decorated function's qualified name, or
            ``"timed"`` for a block).
        warn_after: as in :class:`monitor`.
        attach: as in :class:`monitor`.

    Raises:
        ConfigError: a negative ``warn_after``.

    ``last`` holds the latest :class:`MonitorResult` of the decorated function or block.
    """

    __slots__ = ("_active", "attach", "last", "name", "warn_after")

    def __init__(
        self, name: str | None = None, *, warn_after: float | None = None, attach: bool = True
    ) -> None:
        self.name = name
        self.warn_after = _check_warn_after(warn_after)
        self.attach = attach
        self.last: MonitorResult | None = None
        self._active: _StackPerOwner[monitor] = _StackPerOwner()

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        name = self.name or getattr(fn, "__qualname__", None) or repr(fn)

        # A monitor per call: overlapping calls (tasks, threads) each get their own result,
        # attached to the session of their own caller.
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_run(*args: P.args, **kwargs: P.kwargs) -> Any:
                m = monitor(name, warn_after=self.warn_after, attach=self.attach)
                try:
                    async with m:
                        return await fn(*args, **kwargs)
                finally:
                    self.last = m.result

            return async_run

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            m = monitor(name, warn_after=self.warn_after, attach=self.attach)
            try:
                with m:
                    return fn(*args, **kwargs)
            finally:
                self.last = m.result

        return run

    def __enter__(self) -> monitor:
        m = monitor(self.name or "timed", warn_after=self.warn_after, attach=self.attach)
        self._active.push(m.__enter__())
        return m

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        m = self._active.pop()
        m.__exit__(exc_type, exc, tb)
        self.last = m.result

    async def __aenter__(self) -> monitor:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
