"""Ctrl-C safety: a KeyboardInterrupt that lands in llmctx's bookkeeping waits until it is done.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when Ctrl-C arrives:
between a lock's acquire and the ``try`` that releases it, on the first line of an ``__exit__``,
between a ledger's reply and the line that keeps the reservation token. No ``try`` can close
those windows, because the cleanup itself can be interrupted. trio's answer (its "KI
protection") is the one used here: a SIGINT handler that looks at the interrupted frame and,
when it is inside code marked :func:`protected`, *defers* the interrupt instead of raising it,
and re-delivers it at the first point outside protected code. llmctx keeps its state
consistent at every such point, so an interrupt leaves no held lock, reservation, pool unit or
current session behind.

The rules, for code in this package:

* Bookkeeping (taking or giving back a lock, a reservation, a unit; binding a context var;
  writing a session row) runs in a :func:`protected` function or in one called from it. The
  innermost marked frame decides, as in trio: unmarked helpers inherit from their caller.
* A wait that may block for long (for a rate limit, a pool unit, the network) runs in an
  :func:`unprotected` function that holds nothing of its own: an interrupt raised there
  propagates into the protected caller, whose ``finally`` gives back what it took.
* A deferred interrupt is re-delivered by a small daemon thread (started on the first
  deferral) that trips SIGINT again, so it lands within milliseconds of leaving protected
  code; a real second Ctrl-C meanwhile is the same interrupt, not a second one.
* Protection costs nothing on the fast path: marking is a set of code objects, consulted only
  when a SIGINT arrives.

The handler is installed (:func:`arm`) for the lifetime of a root :func:`llmctx.session` on
the main thread, or of a ``with llmctx.defer_interrupts():`` block, and only when SIGINT
still has Python's default handler (so it never replaces an application's own handler, nor
asyncio's: under ``asyncio.run`` a Ctrl-C already becomes a task cancellation, which
llmctx's async paths handle at their await points). Deferral delays an interrupt by the
length of the bookkeeping step it landed in: microseconds, or a store write (bounded by the
store's timeouts).
"""

from __future__ import annotations

import _thread
import os
import queue
import signal
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

__all__ = ["arm", "deferring", "disarm", "is_protected", "protected", "unprotected"]

F = TypeVar("F", bound=Callable[..., Any])

# code object -> True (protected) / False (explicitly unprotected). Code objects live as long
# as their functions, which for module-level functions and methods is the process.
_MARKS: dict[CodeType, bool] = {}


def protected(fn: F) -> F:
    """Mark ``fn`` as bookkeeping: a Ctrl-C landing in it (or in what it calls) is deferred."""
    _MARKS[fn.__code__] = True
    return fn


def unprotected(fn: F) -> F:
    """Mark ``fn`` as a wait: a Ctrl-C landing in it is raised there, even under protected code."""
    _MARKS[fn.__code__] = False
    return fn


def is_protected(frame: FrameType | None) -> bool:
    """Whether an interrupt arriving in ``frame`` must wait: the innermost marked frame decides."""
    marks = _MARKS
    while frame is not None:
        mark = marks.get(frame.f_code)
        if mark is not None:
            return mark
        frame = frame.f_back
    return False


class _Handler:
    """The SIGINT handler installed by :func:`arm`: raise, or defer while in protected code."""

    __slots__ = ("_inflight", "_pid", "_wake", "deferred", "pending")

    def __init__(self) -> None:
        self.deferred = 0  # how many times an interrupt was put off (tests read it)
        self.pending = False  # an interrupt is owed to the main thread
        self._inflight = False  # the delivery thread tripped SIGINT; this handler has not run
        self._pid = 0
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        inflight, self._inflight = self._inflight, False
        if inflight and not self.pending:
            # A re-delivery that lost the race with disarm(), which raised the interrupt
            # itself: nothing is owed any more.
            if not _depth:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            return
        if is_protected(frame):
            self.deferred += 1
            self.pending = True
            self._redeliver()
            return
        self.pending = False
        raise KeyboardInterrupt

    def _redeliver(self) -> None:
        # SIGINT is tripped again from another thread, so the interpreter calls this handler
        # once more at the main thread's next check (a call, a loop jump) after that thread
        # gets the GIL: within a switch interval (5 ms). Tripping it from here instead would
        # run the handler again inside itself, at once and without end.
        if self._pid != os.getpid():  # the first deferral in this process (or since a fork)
            self._pid = os.getpid()
            self._wake = queue.SimpleQueue()
            threading.Thread(
                target=self._deliver_loop, args=(self._wake,), name="llmctx-interrupt", daemon=True
            ).start()
        self._wake.put_nowait(None)

    def _deliver_loop(self, wake: queue.SimpleQueue[None]) -> None:
        main = threading.main_thread().ident
        while True:
            wake.get()
            with _lock:
                if not (self.pending and not self._inflight and _depth):
                    continue
                self._inflight = True
                _thread.interrupt_main(signal.SIGINT)
            # A trip wakes nothing: a main thread that left protected code for a blocking
            # call (a socket read, a lock, an idle event loop) would see it only when that
            # call returns. Still unseen after a moment, it gets a real signal, which
            # interrupts the call (and at most 20 a second while it stays unseen).
            while True:
                try:
                    wake.get(timeout=_NUDGE_AFTER)
                except queue.Empty:
                    pass
                else:
                    wake.put_nowait(None)  # the handler ran and deferred again: start over
                    break
                with _lock:
                    if not (self.pending and self._inflight and _depth) or main is None:
                        break
                    signal.pthread_kill(main, signal.SIGINT)


_NUDGE_AFTER = 0.05  # seconds a re-delivery may go unseen before a real signal follows it
_handler = _Handler()
_lock = threading.Lock()
_depth = 0


def _on_main_thread() -> bool:
    return threading.get_ident() == threading.main_thread().ident


@protected
def arm() -> bool:
    """Install the deferring SIGINT handler if it can be; pair a True result with :func:`disarm`.

    Returns False (and changes nothing) off the main thread, or when SIGINT's handler is not
    Python's default (an application's own, asyncio's, or an ignored signal): those keep theirs.
    """
    global _depth
    if not _on_main_thread():
        return False
    with _lock:
        if _depth:
            _depth += 1
            return True
        current = signal.getsignal(signal.SIGINT)
        if current is not _handler:  # ours may linger, owed a stale re-delivery
            if current is not signal.default_int_handler:
                return False
            signal.signal(signal.SIGINT, _handler)
        _depth = 1
        return True


@protected
def disarm(armed: bool) -> None:
    """Undo one :func:`arm` that returned True; the last one restores Python's default handler.

    Call it as the last step of the protected exit it belongs to. An interrupt deferred and
    not yet re-delivered is raised here, when everything is consistent.

    Raises:
        KeyboardInterrupt: one was deferred and is still owed.
    """
    global _depth
    if not armed:
        return
    with _lock:
        _depth -= 1
        if _depth:
            return
        owed, _handler.pending = _handler.pending, False
        if not _handler._inflight and signal.getsignal(signal.SIGINT) is _handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if owed:
        raise KeyboardInterrupt


class deferring:
    """Arm the deferring handler for a block (``as`` gives whether it could be armed).

    Sessions arm it themselves; this is for code that uses a limiter, a pool or a budget
    without a session around it. A class with protected ``__enter__``/``__exit__`` rather
    than a generator: a Ctrl-C landing in a generator's exit machinery could skip the disarm.
    """

    __slots__ = ("_armed",)

    def __init__(self) -> None:
        self._armed = False

    @protected
    def __enter__(self) -> bool:
        self._armed = arm()
        return self._armed

    @protected
    def __exit__(self, *exc_info: object) -> None:
        armed, self._armed = self._armed, False
        disarm(armed)
