"""What RateLimiter and ResourcePool share: their errors, timeout checks and queued waiters.

A waiter is one caller queued on a limiter or a pool. Its owner (the limiter or the pool) hands
it what it waited for *under the owner's lock* (``grant``) and then wakes it, so a woken waiter
can always proceed: nobody is woken just to re-check and go back to sleep.

:class:`_FifoQueue` is the queue side both owners share: the lock, the strict-FIFO deque, the
timeout/cancellation counters, leaving the queue (passing a grant on when one came too late),
and the sync/async wait that turns a waiter's outcome into a return or an exception. An owner
supplies only how the head is tried (``_dispatch``), how an unused grant is given back
(``_take_back``) and its timeout message.

Every async acquire is a cancellation point, and the uncontended ones are scheduling points
in turn, amortized (anyio's ``Semaphore.acquire`` shape, with the yield spread out):

* a cancellation already requested for the task (``Task.cancel()``, which ``asyncio.timeout``
  and ``TaskGroup`` end in, or a cancelled anyio cancel scope around the task) is delivered
  before anything is taken, on every acquire (:func:`_cancel_pending`): the task yields once
  and the cancellation lands there (anyio's ``checkpoint_if_cancelled``);
* every :data:`_YIELD_EVERY`-th grant made at once on a thread (so on its event loop: a
  thread runs one loop at a time) is followed by one yield to the loop (:func:`_yield_due`),
  not every one: a yield costs more than an uncontended acquire and release, so a loop of
  them lets the other tasks run at least every :data:`_YIELD_EVERY` acquires for a small
  fraction of that cost. An acquire that queues yields while it waits. asyncio cannot shield
  a task from ``Task.cancel()`` (anyio's asyncio ``Semaphore`` meets the same limit), so a
  cancellation that lands on that yield gives the grant back and propagates: the caller
  holds nothing and the next waiter gets its turn (:meth:`_FifoQueue._checkpoint_granted`).

When the head of a queue must wait for *time* rather than for a release (a rate limit refills
at a known instant, a shared Redis pool is polled), the owner calls :meth:`_Waiter.schedule`:
an asyncio waiter gets a timer on its own event loop that runs the owner's dispatch there,
without waking the task; a thread waiter is told when to run the dispatch itself (a thread has
no event loop to run callbacks on).

A waiter has one wake-up for its whole wait: a future created once (asyncio) or a
:class:`_Wakeup` (threads). Wakes from other threads go through ``call_soon_threadsafe``, so
one owner serves threads and several event loops at once.

Ctrl-C safety (see :mod:`llmctx._interrupt`): everything that takes or gives back a grant, a
queue place or the lock is :func:`~llmctx._interrupt.protected` (a ``KeyboardInterrupt``
landing there waits until the bookkeeping is done), and the blocking waits are two small
:func:`~llmctx._interrupt.unprotected` leaves that own nothing (:func:`_block` for a thread,
:func:`_wait_for` for a task): an interrupt raised there propagates into the protected
caller, whose ``finally`` leaves the queue and passes on a grant that arrived meanwhile
(:meth:`_FifoQueue._leave`). The main thread's wait wakes every :data:`_WAKE_EVERY` seconds,
so an interrupt scheduled with ``_thread.interrupt_main()`` (how a deferred one is
re-delivered) reaches it while it is blocked too; other threads never get interrupts and sleep
until woken.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import importlib
import math
import operator
import os
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from ._exceptions import ConfigError, LLMCtxError
from ._interrupt import protected, unprotected

# The running loop of this thread or None, without raising: "are we on the waiter's loop?"
_get_running_loop = asyncio._get_running_loop
_get_ident = threading.get_ident

# _task_on(loop): the task running on ``loop`` (None outside a task), as cheaply as asyncio
# allows. From 3.12 asyncio.current_task is C; 3.11 wrote it in Python, around a lookup of
# its own {loop: task} dict, which costs four times the lookup: take the dict's get then.
_task_on: Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None]
_tasks_by_loop = getattr(asyncio.tasks, "_current_tasks", None)
# True where the loop lookup is the dear part (CPython 3.11: a getpid() system call in each
# asyncio._get_running_loop()) and the {loop: task} dict is what asyncio's task steps update:
# there the fast path finds its task from a loop remembered per thread (see _fast_checkpoint).
_REMEMBER_LOOP = not isinstance(asyncio.current_task, types.BuiltinFunctionType) and isinstance(
    _tasks_by_loop, dict
)
if _REMEMBER_LOOP:
    _task_on = cast("dict[Any, asyncio.Task[Any]]", _tasks_by_loop).get
else:
    _task_on = asyncio.current_task

__all__ = ["AcquireTimeout", "WouldBlock"]

# Seconds before the next head retries after the owner's store (Redis) failed for the previous.
_STORE_RETRY = 0.1

#: Longest single sleep of the blocked main thread, in seconds. A real SIGINT interrupts the sleep
#: at once, but ``_thread.interrupt_main()`` (how :mod:`llmctx._interrupt` re-delivers a
#: deferred Ctrl-C, and how tests simulate one) only sets a flag the thread reads when it
#: next runs Python code: waking this often bounds how late that interrupt can land.
_WAKE_EVERY = 0.05


class WouldBlock(LLMCtxError):
    """``acquire_nowait`` could not proceed without waiting; nothing was taken.

    Attributes:
        retry_after: seconds until the request could be admitted if nothing else changes,
            or None when that is not known (another caller is queued first, or the pool
            waits for a release).
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AcquireTimeout(LLMCtxError, TimeoutError):
    """A rate limiter or pool could not admit the caller before its ``timeout``; nothing was taken.

    It is also a ``TimeoutError``, so ``except TimeoutError`` catches it.
    """


# Counters of what a limiter or pool handed out: iter(range(1, _NUMBERS_END)). next() on a
# range iterator is one atomic step (as on an itertools.count, and as cheap), and its
# length_hint (PEP 424: exact for a range) says how many are left, so a count is read
# without taking a number.
_NUMBERS_END = 1 << 62


def _numbers() -> Iterator[int]:
    """1, 2, 3, ...: each ``next()`` takes one; :func:`_handed_out` says how many were taken."""
    return iter(range(1, _NUMBERS_END))


def _handed_out(numbers: Iterator[int]) -> int:
    """How many numbers ``numbers`` (made by :func:`_numbers`) handed out."""
    return _NUMBERS_END - 1 - operator.length_hint(numbers)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"timeout={timeout!r} must be a number of seconds >= 0, or None")
    if math.isnan(timeout) or timeout < 0:
        raise ConfigError(
            f"timeout={timeout!r} is negative or NaN; pass seconds >= 0 (0 = do not wait), "
            "or None to wait as long as needed"
        )
    return float(timeout)


#: Every this many grants made at once to async acquires on a thread (its event loop), one
#: yields to the loop. One yield (a trip through the loop) costs more than a whole uncontended
#: acquire and release (2.5 us against 1.9 us for a pool's in docs/benchmarks.md), so yielding
#: after each made every acquire more than twice as dear; once in 64 adds about 2 % to a pair,
#: while a task looping on acquires that never wait still lets the other tasks run every 64
#: of them (about 0.1 ms of llmctx work on a slow machine, far below asyncio's 100 ms
#: slow-callback warning).
_YIELD_EVERY = 64


class _ThreadState:
    """What async acquires keep per thread, so per event loop (a thread runs one at a time).

    Attributes:
        ident: the thread's ident.
        loop: the event loop last seen running on this thread, when it is an asyncio
            ``BaseEventLoop`` (whose ``_thread_id`` says cheaply whether it still runs
            here); None otherwise. On CPython 3.11 it spares the fast path the running-loop
            lookup and its system call; from 3.12 it is the loop of the current acquire.
        since_yield: grants made at once since the last one that yielded.
        task_ref: a weak reference to the last task whose anyio scopes were read (the key
            of anyio's per-task state), reused while the same task acquires.
    """

    __slots__ = ("ident", "loop", "since_yield", "task_ref")

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.loop: asyncio.BaseEventLoop | None = None
        self.since_yield = 0
        self.task_ref: weakref.ref[asyncio.Task[Any]] | None = None


class _PerThread(threading.local):
    """The thread-local holding each thread's :class:`_ThreadState` (one read per acquire)."""

    def __init__(self) -> None:
        self.state = _ThreadState()


_per_thread = _PerThread()
# The state of the thread that last remembered its loop or took the fast path: the fast path
# reads it first and checks its ident (a global read and a thread-ident call cost less than
# the thread-local's lookup), and only another thread's acquire looks up its own.
_last_state = _per_thread.state


def _forget_loop() -> None:
    # A child process forked from inside a task step inherits this thread's state, and the
    # parent's loop then looks as if it ran here; asyncio itself says no loop runs in the
    # child (its pid check), and so must the fast path.
    global _last_state
    _per_thread.state.loop = None
    _last_state = _per_thread.state


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_loop)

# anyio keeps each task's cancel scopes in a WeakKeyDictionary in its asyncio backend; this
# is that dictionary's underlying dict (keys: weak references to tasks), {} if anyio is not
# installed or its layout is not the one expected; None until the first async acquire's full
# path looked it up (it imports the backend then: see _find_anyio_task_states).
_ANYIO_ASYNCIO = "anyio._backends._asyncio"
_anyio_task_states: dict[Any, Any] | None = None
_weakref = weakref.ref


def _find_anyio_task_states() -> dict[Any, Any]:
    """anyio's per-task states (see ``_anyio_task_states``), importing its asyncio backend.

    Imported here (once, on the first async acquire's full path: anyio is a dependency of
    llmctx, and the backend is what any anyio code on asyncio runs on) so that the fast path
    reads one known dict instead of looking in ``sys.modules`` on every acquire for a backend
    imported later.
    """
    global _anyio_task_states
    try:
        backend = importlib.import_module(_ANYIO_ASYNCIO)
    except Exception:  # no anyio (or a broken one): no anyio scope can exist
        backend = None
    states = getattr(getattr(backend, "_task_states", None), "data", None)
    _anyio_task_states = states if isinstance(states, dict) else {}
    return _anyio_task_states


def _anyio_scope_cancelled(scope: Any) -> bool:
    """True when anyio cancel scope ``scope`` or one around it is cancelled, none shielding.

    The test of anyio's own ``checkpoint_if_cancelled``, from a task's innermost scope out,
    on the slots behind its ``cancel_called`` and ``shield`` properties (half the cost).
    Needed because a scope cancelled from its own task (``scope.cancel()``, or a deadline
    already past when ``fail_after`` is entered) reaches ``Task.cancel()`` only on the task's
    next yield.
    """
    while scope is not None:
        if scope._cancel_called:
            return True
        if scope._shield:
            return False
        scope = scope._parent_scope
    return False


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> bool:
    """True when the running task has a cancellation requested and not withdrawn.

    That is ``Task.cancelling()`` (``Task.cancel()``, which ``asyncio.timeout``, ``TaskGroup``
    and anyio's cancel scopes all end in), or an anyio cancel scope around the task that is
    cancelled and not yet delivered. An async acquire checks it first, every time: seeing
    True it yields (:func:`_yield_now`) and the cancellation lands there, before anything is
    taken (anyio's ``checkpoint_if_cancelled``). A task that swallowed a cancellation without
    ``uncancel()`` only costs a yield per acquire.

    Args:
        loop: the running event loop (the caller has it: on CPython 3.11 looking it up costs
            a system call, so it is looked up once per acquire).
    """
    states = _anyio_task_states
    if states is None:
        states = _find_anyio_task_states()
    task = _task_on(loop)
    if task is None:
        return False
    if task.cancelling():
        return True
    if states:
        state = states.get(_weakref(task))
        # A task outside every anyio scope has no state, or one whose scope is None.
        if state is not None and state.cancel_scope is not None:
            return _anyio_scope_cancelled(state.cancel_scope)
    return False


def _loop_here() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None: ``_get_running_loop()``, cheaper.

    The loop remembered for this thread's fast path when it still runs here (on CPython
    3.11 that spares the lookup's system call); else the full lookup.
    """
    state = _per_thread.state
    loop = state.loop
    # (another kind of loop, which the fast path may hold from 3.12 on, has no _thread_id)
    if loop is not None and getattr(loop, "_thread_id", None) == state.ident:
        return loop
    return _get_running_loop()


def _running_loop() -> asyncio.AbstractEventLoop:
    """The running event loop (remembered for this thread's fast path), the full lookup.

    Raises:
        RuntimeError: no asyncio event loop runs in this thread (the async side needs one).
    """
    loop = _get_running_loop()
    if loop is None:
        loop = asyncio.get_running_loop()  # raises: the async side needs an asyncio loop
    if isinstance(loop, asyncio.BaseEventLoop):
        global _last_state
        state = _per_thread.state
        # A loop runs on one thread at a time; _thread_id is set while it runs.
        if loop._thread_id == state.ident:  # type: ignore[attr-defined]
            state.loop = loop
            _last_state = state
    return loop


def _anyio_clear(state: _ThreadState, task: asyncio.Task[Any]) -> bool:
    """No anyio cancel scope around ``task`` is cancelled (what :func:`_cancel_pending` reads).

    Called while anyio's task states are known and not empty (some task is in a scope).
    """
    states = _anyio_task_states
    assert states is not None
    ref = state.task_ref
    if ref is None or ref() is not task:
        ref = state.task_ref = _weakref(task)
    anyio_state = states.get(ref)
    if anyio_state is not None:
        scope = anyio_state.cancel_scope
        if scope is not None and _anyio_scope_cancelled(scope):
            return False
    return True


if _REMEMBER_LOOP:

    def _fast_checkpoint() -> _ThreadState | None:
        """This thread's state when the running task may be granted at once; None: full path.

        The cancellation check of :func:`_cancel_pending` without its loop lookup, for the
        uncontended async acquire: the task is found from the loop remembered for this
        thread (checked to be still running here: asyncio keeps the task of each loop's
        current step in a dict), then its pending ``Task.cancel()`` and its anyio scopes are
        read as there. None means "not known to be clear": a cancellation is pending, or the
        loop is not remembered (the first acquire on a loop, another loop or kind of loop,
        no loop). The full path (:func:`_running_loop`, then :func:`_cancel_pending`) then
        decides, and remembers the loop.

        Only a cancellation requested during the task's current step can be pending here:
        one requested while the task was suspended was raised when it resumed.
        """
        global _last_state
        state = _last_state
        ident = _get_ident()
        if state.ident != ident:  # another thread took the fast path last
            state = _last_state = _per_thread.state
        loop = state.loop
        task = _task_on(loop)
        if (
            task is None
            or loop._thread_id != ident  # type: ignore[union-attr]
            or task.cancelling()
        ):
            return None
        states = _anyio_task_states
        if states:  # some task is in an anyio scope
            return state if _anyio_clear(state, task) else None
        if states is None:
            return None  # not looked up yet: the full path does (and imports the backend)
        return state

else:

    def _fast_checkpoint() -> _ThreadState | None:
        """This thread's state when the running task may be granted at once; None: full path.

        The check of :func:`_cancel_pending` (the loop lookup is cheap on this interpreter);
        None when a cancellation is pending or no task runs. ``loop`` is set to the running
        loop for the caller.
        """
        running = _get_running_loop()
        if running is None:
            return None
        task = _task_on(running)
        if task is None or task.cancelling():
            return None
        state = _per_thread.state
        states = _anyio_task_states
        if states:  # some task is in an anyio scope
            if not _anyio_clear(state, task):
                return None
        elif states is None:
            return None  # not looked up yet: the full path does (and imports the backend)
        state.loop = running  # type: ignore[assignment]
        return state


def _yield_due() -> bool:
    """Count a grant made at once to an async acquire; True for every :data:`_YIELD_EVERY`-th.

    The caller then yields after the grant (:meth:`_FifoQueue._checkpoint_granted`). The
    count is per thread, so per event loop (a thread runs one loop at a time). The fast path
    counts on the :class:`_ThreadState` it already holds, the same way.
    """
    state = _per_thread.state
    n = state.since_yield + 1
    if n < _YIELD_EVERY:
        state.since_yield = n
        return False
    state.since_yield = 0
    return True


@types.coroutine
def _yield_now() -> Generator[None, None, None]:
    """Let the event loop run every other ready task once: the cheapest asyncio checkpoint.

    A bare ``yield`` is what ``asyncio.sleep(0)`` does, without its extra coroutine frame.
    """
    yield


class _Done:
    """An awaitable already complete: what a synchronous ``__aexit__`` hands ``async with``.

    A lease's or reservation's ``__aexit__`` gives back what it holds in the call itself and
    returns this. Written ``async def``, the call would only create a coroutine, and CPython
    checks for signals between that call and the await: a Ctrl-C there would leave the
    coroutine never run and the unit never given back.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __await__(self) -> Generator[Any, None, None]: ...

    else:
        # An empty tuple's iterator, built in C: as cheap as an async def's coroutine, and
        # awaiting it finishes at once with None.
        __await__ = ().__iter__


_DONE = _Done()


@protected
def _resolve(fut: asyncio.Future[None]) -> None:
    # A loop callback (a wake from another thread): an interrupt before set_result would
    # leave a granted waiter asleep forever.
    if not fut.done():
        fut.set_result(None)


class _Wakeup:
    """A thread waiter's wake-up: a raw lock that is held while no wake is pending.

    Not a ``threading.Event``: its ``wait`` is Python code around a ``Condition``, and a
    ``KeyboardInterrupt`` landing inside it can leave the condition's lock released twice
    (a ``RuntimeError`` instead of the interrupt) or held (the owner's ``set()``, made under
    the owner's lock, would then hang every thread). Here the sleep is one C call that takes
    the lock or does not. :meth:`set` and :meth:`clear` run under the owner's lock; while
    ``_set`` is False the lock is held, so :meth:`set` always releases a held lock, and the
    sleeper taking it (consuming the wake) only does what the next :meth:`clear` would.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        """With the owner's lock held: wake the sleeper (or let its next sleep return at once)."""
        if not self._set:
            self._set = True
            self._lock.release()

    def clear(self) -> None:
        """With the owner's lock held: forget a wake already seen, before sleeping again."""
        if self._set:
            self._set = False
            self._lock.acquire(False)


@unprotected
def _block(wakeup: _Wakeup, timeout: float | None) -> None:
    """Sleep until ``wakeup`` is set or ``timeout`` passes: the interruptible leaf of a wait.

    It holds nothing: a ``KeyboardInterrupt`` raised here goes to the caller's ``finally``.
    Only the main thread, the one interrupts reach, sleeps in :data:`_WAKE_EVERY` slices.
    """
    if timeout is None:
        if threading.get_ident() != threading.main_thread().ident:
            wakeup._lock.acquire()
            return
        timeout = _WAKE_EVERY
    elif timeout > _WAKE_EVERY:
        if threading.get_ident() == threading.main_thread().ident:
            timeout = _WAKE_EVERY
    elif timeout < 0:  # the instant passed since it was computed (a raw lock refuses < 0)
        timeout = 0.0
    wakeup._lock.acquire(True, timeout)


@unprotected
@types.coroutine
def _wait_for(fut: asyncio.Future[None]) -> Generator[Any, None, None]:
    """Await ``fut``: the interruptible leaf of a task's wait (it holds nothing)."""
    yield from fut


class _Owner(Protocol):
    """A limiter or pool, as its waiters see it."""

    def _on_due(self, waiter: _Waiter) -> None:
        """The head's planned instant came: look at the queue again (takes the lock)."""

    def _on_expire(self, waiter: _Waiter) -> None:
        """``waiter``'s deadline passed: unless granted, it leaves the queue (takes the lock)."""


class _Waiter:
    """One queued caller: what it asks for, what it was granted, and how to wake it.

    The owner sets ``_grant`` (or ``_error``) with its lock held and then calls :meth:`wake`.
    The owner's ``_on_due`` ("look at the head of the queue again") and ``_on_expire`` ("this
    waiter's deadline passed": it leaves the queue unless already granted, and sets
    ``_expired``) are called without the owner's lock and take it themselves. Deciding the
    timeout under the lock means a task is never resumed by its deadline with a grant that a
    task ahead of it got first.
    """

    __slots__ = (
        "_due",
        "_error",
        "_event",
        "_expired",
        "_fut",
        "_grant",
        "_loop",
        "_owner",
        "_start",
        "_timer",
        "amount",
    )

    def __init__(self, amount: int, loop: asyncio.AbstractEventLoop | None, owner: _Owner) -> None:
        self.amount = amount
        self._begin_wait(loop, owner)

    def _begin_wait(self, loop: asyncio.AbstractEventLoop | None, owner: _Owner) -> None:
        """Make this object ready to queue (a subclass that is also the grant calls this)."""
        self._loop = loop
        self._owner = owner
        self._grant: Any = None
        self._error: Exception | None = None
        self._expired = False
        # When the wait began (monotonic seconds), for wait-time statistics.
        self._start = time.monotonic()
        # monotonic seconds at which the owner wants the head re-examined (None: not planned)
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fut: asyncio.Future[None] | None
        self._event: _Wakeup | None
        if loop is None:
            self._fut = None
            self._event = _Wakeup()
        else:
            self._fut = loop.create_future()
            self._event = None

    # -------------------------------------------------------------- owner side (lock held)
    def wake(self) -> bool:
        """Wake the waiter after a grant; False if its event loop is closed (it never runs)."""
        fut = self._fut
        if fut is None:
            assert self._event is not None
            self._event.set()
            return True
        loop = self._loop
        assert loop is not None
        # "Is `loop` running on this thread?": the common case, a task of the waiter's loop
        # released. An asyncio BaseEventLoop says so itself (its _thread_id is set while it
        # runs, and a thread runs one loop at a time): cheaper than finding the running loop.
        # (try, not getattr with a default: a try that raises nothing is free, a getattr
        # call is not)
        try:
            here = loop._thread_id == _get_ident()  # type: ignore[attr-defined]
        except AttributeError:  # another kind of loop
            here = _get_running_loop() is loop
        if here:
            if not fut.done():  # a cancelled task cancelled its future
                fut.set_result(None)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def schedule(self, delay: float) -> None:
        """Have the owner's dispatch run for this (head) waiter ``delay`` seconds from now."""
        self._due = time.monotonic() + delay
        if self._loop is None:
            # The thread may be asleep with no deadline: make it pick up the new one (if it
            # is the thread calling, it clears the event before it next sleeps).
            assert self._event is not None
            self._event.set()
            return
        if _loop_here() is self._loop:
            self._arm()
        else:
            # A closed loop raises RuntimeError: its task never runs again anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._arm)

    # -------------------------------------------------------------- waiter side
    @protected
    def _arm(self) -> None:
        """In the waiter's event loop: (re)start the timer that runs the owner's ``_on_due``."""
        due = self._due
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is None or self._fut is None or self._fut.done():
            return
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._fire)

    @protected
    def _fire(self) -> None:
        self._timer = None
        self._due = None
        self._owner._on_due(self)

    def cancel_timer(self) -> None:
        """In the waiter's event loop: drop a pending re-examination (the wait is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @protected
    async def wait_async(self, deadline: float | None) -> None:
        """Return once granted, failed, or expired at ``deadline`` (monotonic seconds)."""
        fut = self._fut
        loop = self._loop
        assert fut is not None
        assert loop is not None
        if deadline is None:
            await _wait_for(fut)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        handle = loop.call_later(remaining, self._expire)
        try:
            await _wait_for(fut)
        finally:
            handle.cancel()

    @protected
    def _expire(self) -> None:
        self._owner._on_expire(self)
        if self._fut is not None:
            _resolve(self._fut)

    @protected
    def wait_sync(self, lock: threading.Lock, deadline: float | None) -> bool:
        """Block the thread until granted (True) or ``deadline`` passes (False).

        Runs the owner's ``_on_due`` itself when the owner scheduled a re-examination. Only
        the sleep (:func:`_block`) is interruptible; the caller leaves the queue then.
        """
        event = self._event
        assert event is not None
        while True:
            run_due = False
            with lock:
                if self._grant is not None or self._error is not None:
                    return True
                due = self._due
                if due is not None and time.monotonic() >= due:
                    self._due = None
                    run_due = True
                else:
                    event.clear()
            if run_due:
                self._owner._on_due(self)
                continue
            timeout: float | None = None
            now = time.monotonic()
            if due is not None:
                timeout = due - now
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    return False
                timeout = remaining if timeout is None else min(timeout, remaining)
            _block(event, timeout)


_W = TypeVar("_W", bound=_Waiter)
_G = TypeVar("_G")


class _FifoQueue(Generic[_W]):
    """A strict-FIFO queue of waiters under one lock: the part a limiter and a pool share.

    The subclass calls :meth:`_init_queue` in its constructor and supplies, all called with
    ``_lock`` held: ``_dispatch()`` (grant to waiters from the head while they fit, and wake
    them), ``_take_back(grant)`` (give back a grant its caller will not use) and
    ``_timeout_error(amount)`` (the :class:`AcquireTimeout` to raise). A waiter leaving the
    queue (timeout, cancellation, interrupt) never takes anything with it: if it was granted
    just before, the grant goes back and the next waiters get their turn.
    """

    _lock: threading.Lock
    _queue: deque[_W]
    _timeouts: int
    _cancellations: int

    def _init_queue(self) -> None:
        self._lock = threading.Lock()
        self._queue = deque()
        # Callers that gave up because of their timeout / were cancelled while queued.
        self._timeouts = 0
        self._cancellations = 0

    # -------------------------------------------------------------- supplied by the owner
    def _dispatch(self) -> None:
        """With the lock held: grant to waiters from the head while they fit, then wake them."""
        raise NotImplementedError

    def _take_back(self, grant: object) -> None:
        """With the lock held: give back a grant its caller will not use.

        ``grant`` is a queued waiter that was granted and then gave up, or what
        :meth:`_checkpoint_granted` was passed for a grant made at once.
        """
        raise NotImplementedError

    def _timeout_error(self, n: int) -> AcquireTimeout:
        """The error for a caller of ``n`` units that was not served within its timeout."""
        raise NotImplementedError

    # -------------------------------------------------------------- shared (lock held)
    def _fail_head(self, exc: Exception) -> None:
        """With the lock held: the head raises ``exc`` (e.g. Redis is down), not the releaser.

        The next head retries after :data:`_STORE_RETRY` seconds rather than at once, so a
        store that is down is not hammered by every waiter in turn.
        """
        queue = self._queue
        waiter = queue.popleft()
        waiter._error = exc
        waiter.wake()
        if queue:
            queue[0].schedule(_STORE_RETRY)

    def _remove(self, waiter: _W) -> None:
        """With the lock held: take a waiter out of the queue; the next head gets its turn."""
        queue = self._queue
        was_head = bool(queue) and queue[0] is waiter
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if was_head:
            self._dispatch()

    def _pass_on(self, grant: object) -> None:
        """With the lock held: ``grant`` goes back and the next waiters get their turn."""
        self._take_back(grant)
        if self._queue:
            self._dispatch()

    # -------------------------------------------------------------- shared (takes the lock)
    @protected
    def _on_due(self, waiter: _Waiter) -> None:
        """The head's planned instant came: grant what fits now (or plan again)."""
        with self._lock:
            if self._queue and self._queue[0] is waiter:
                self._dispatch()

    @protected
    def _on_expire(self, waiter: _Waiter) -> None:
        """An asyncio waiter's deadline passed: unless granted already, it leaves the queue."""
        with self._lock:
            if waiter._grant is not None or waiter._error is not None or waiter._expired:
                return
            waiter._expired = True
            self._timeouts += 1
            self._remove(cast("_W", waiter))

    @protected
    def _leave(self, waiter: _W, deadline: float | None) -> None:
        """A waiter gives up (timeout, cancellation): leave the queue, or pass its grant on."""
        with self._lock:
            if waiter._error is not None or waiter._expired:
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._timeouts += 1
            else:
                self._cancellations += 1
            if waiter._grant is not None:
                # Granted and then cancelled before it could run: nothing was used.
                waiter._grant = None
                self._pass_on(waiter)
            else:
                self._remove(waiter)

    @protected
    def _wait_sync(self, waiter: _W, deadline: float | None) -> None:
        """Block the thread until ``waiter`` is granted.

        Raises:
            AcquireTimeout: ``deadline`` (monotonic seconds) passed first.
            Exception: what the owner's store raised while trying the waiter.

        On any exit but a grant (an interrupt too) the waiter leaves the queue and a grant
        that came meanwhile is passed on.
        """
        done = False
        try:
            granted = waiter.wait_sync(self._lock, deadline)
            if waiter._error is not None:
                raise waiter._error
            if not granted:
                raise self._timeout_error(waiter.amount)
            done = True
        finally:
            if not done:
                self._leave(waiter, deadline)

    @protected
    async def _wait_async(self, waiter: _W, deadline: float | None) -> _W:
        """Wait in asyncio until ``waiter`` is granted.

        Returns:
            ``waiter``: a pool's lease is its own waiter, so its ``async with`` awaits this
            coroutine alone (one coroutine per queued acquire).

        Raises:
            AcquireTimeout: ``deadline`` (monotonic seconds) passed first.
            Exception: what the owner's store raised while trying the waiter.

        Cancelled: the waiter leaves the queue, and a grant that came just before is passed
        on to the next waiters.
        """
        done = False
        try:
            if deadline is None:
                fut = waiter._fut
                assert fut is not None
                await _wait_for(fut)  # no timer needed: skip wait_async()
            else:
                await waiter.wait_async(deadline)
            if waiter._error is not None:
                raise waiter._error
            if waiter._grant is None:
                raise self._timeout_error(waiter.amount)
            done = True
        finally:
            if waiter._timer is not None:
                waiter.cancel_timer()
            if not done:
                self._leave(waiter, deadline)
        return waiter

    @protected
    async def _checkpoint_granted(self, grant: _G) -> _G:
        """The scheduling point after a grant made at once, when :func:`_yield_due` says so.

        Other tasks run once before the caller proceeds (anyio's ``cancel_shielded_checkpoint``
        position). Cancelled there (a ``Task.cancel()`` meanwhile), ``grant`` goes back, the
        cancellation is counted, and the cancellation propagates.

        Returns:
            ``grant``, for the ``async with`` that awaits this.
        """
        done = False
        try:
            await _yield_now()
            done = True
        finally:
            if not done:
                with self._lock:
                    self._cancellations += 1
                    self._pass_on(grant)
        return grant


@protected
async def _granted(grant: _G) -> _G:
    """The awaitable an ``__aenter__`` that granted at once returns: it gives ``grant`` back.

    Protected like the ``__aenter__`` that made it: an interrupt landing here waits until the
    ``async with`` block (whose exit gives the grant back) has begun.
    """
    return grant
