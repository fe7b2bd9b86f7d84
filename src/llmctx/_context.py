"""The ContextVars behind ``current_session()`` and ``record()``, and helpers for threads.

One ContextVar per concern: the current session, and the recorders that are capturing. This
module is the only one that touches them (structlog's habit): ``bind_session`` /
``bind_recorder`` set a var and return the token, ``reset_session`` / ``reset_recorder`` put
it back, and the getters are the vars' own ``get`` (C calls, cheap on every LLM call).
asyncio tasks copy the context when they are created, so they inherit both. Threads do not:
:func:`wrap` and :class:`ContextThreadPoolExecutor` carry the caller's context into them.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ._recorder import Recorder
    from ._session import Session

__all__ = [
    "ContextThreadPoolExecutor",
    "bind_recorder",
    "bind_session",
    "current_session",
    "idle",
    "reset_recorder",
    "reset_session",
    "set_tracing",
    "wrap",
]

P = ParamSpec("P")
R = TypeVar("R")

_current_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "llmctx_current_session", default=None
)
_recorders: contextvars.ContextVar[tuple[Recorder, ...]] = contextvars.ContextVar(
    "llmctx_recorders", default=()
)


def current_session() -> Session | None:
    """The innermost session entered in this context, or None outside any session."""
    return _current_session.get()


#: Bound getters for the charge path (no Python frame per call); ``get_recorders()`` is the
#: ``llmctx.record()`` blocks active in this context, innermost last.
get_session = _current_session.get
get_recorders = _recorders.get


_tracing = False


def idle() -> bool:
    """True when no session, no recorder and no tracer is active: nothing to charge or record."""
    return not _tracing and get_session() is None and not get_recorders()


def set_tracing(on: bool) -> None:
    """Track every call, in a session or not, while a call tracer is on (``llmctx.otel``)."""
    global _tracing
    _tracing = on


def bind_session(session: Session | None) -> contextvars.Token[Session | None]:
    """Make ``session`` the current one in this context; returns the token to reset it with."""
    return _current_session.set(session)


def reset_session(token: contextvars.Token[Session | None], fallback: Session | None) -> None:
    """Undo :func:`bind_session`.

    A session exited in another context than the one it was entered in (another task) cannot
    use its token there; then ``fallback`` (its parent) becomes current in this context.
    """
    try:
        _current_session.reset(token)
    except ValueError:
        _current_session.set(fallback)


def bind_recorder(recorder: Recorder) -> contextvars.Token[tuple[Recorder, ...]]:
    """Add ``recorder`` to the capturing ones in this context; returns the token."""
    return _recorders.set((*_recorders.get(), recorder))


def reset_recorder(token: contextvars.Token[tuple[Recorder, ...]], recorder: Recorder) -> None:
    """Undo :func:`bind_recorder` (in a foreign context: drop ``recorder`` from the tuple)."""
    try:
        _recorders.reset(token)
    except ValueError:
        _recorders.set(tuple(r for r in _recorders.get() if r is not recorder))


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind ``fn`` to a copy of the caller's context, so a thread sees the current session.

    Use it with ``loop.run_in_executor(None, llmctx.wrap(fn), *args)`` or
    ``threading.Thread(target=llmctx.wrap(fn))``. (``asyncio.to_thread`` already does this.)
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # A Context can be entered by one thread at a time; a copy per call lets the wrapped
        # function run in several threads at once.
        return ctx.copy().run(fn, *args, **kwargs)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in the submitter's context (session included)."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)
