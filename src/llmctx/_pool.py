"""ResourcePool: weighted, strict-FIFO leases on resources with capacities.

A pool holds resources (GPUs, model workers, connections), each with a capacity (GB of
memory, worker slots). ``acquire(amount)`` leases ``amount`` units of *one* resource. Like Go's
``semaphore.Weighted``, the queue is strict FIFO: while the head waiter does not fit, nobody
behind it is served, so large requests are never starved. Released capacity is handed
directly to the waiters at the head (the grant happens under the lock, before they run, and
only granted waiters are woken), and a waiter cancelled after its grant passes the capacity on.

One object serves threads (``with``) and asyncio tasks on any number of event loops
(``async with``): a ``threading.Lock`` guards the queue and each waiter has its own wake-up.
A pool without a store or a health check whose resources are one, or of one unit each, keeps
its free units as tokens in a ``collections.deque``: a one-unit lease taken or given back when
nobody waits touches only the deque (atomic ``popleft`` / ``append``), not the lock, and one
that must wait queues with an atomic ``append`` too; only handing units to waiters locks.

With a :class:`LeaseStore` the capacity is shared by every process using the same pool name.
:class:`llmctx.RedisLeaseStore` (in ``llmctx._redis``) keeps the leases in a Redis sorted set
scored by their expiry (Redis ``TIME``), a heartbeat thread renews the ones this process
holds, and the capacity of a holder that died comes back once its leases expire.

Ctrl-C safe (see :mod:`llmctx._interrupt`): taking and giving back a lease is
:func:`~llmctx._interrupt.protected`, so a ``KeyboardInterrupt`` that lands there waits until
the pool is consistent; the waits and the user's health check are the interruptible parts,
and an interrupt raised in them gives back what the caller was granted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

from ._exceptions import ConfigError, NoHealthyResource, UsageError
from ._interrupt import protected, unprotected
from ._waiting import (
    _DONE,
    _YIELD_EVERY,
    AcquireTimeout,
    WouldBlock,
    _cancel_pending,
    _check_timeout,
    _fast_checkpoint,
    _FifoQueue,
    _granted,
    _handed_out,
    _numbers,
    _running_loop,
    _Waiter,
    _yield_due,
    _yield_now,
)

__all__ = ["Lease", "LeaseStore", "PoolStatistics", "ResourcePool"]

logger = logging.getLogger("llmctx.pool")

R = TypeVar("R")

_WAIT_SAMPLES = 1024

_PENDING = 0
_HELD = 1
_RELEASED = 2
_RETURNED = 3  # granted, then given back before its caller got it (cancelled, interrupted)


@unprotected
def _run_check(check: Callable[[R], bool], resource: R) -> bool:
    """The user's health check: it may block, so a Ctrl-C there is raised at once."""
    return bool(check(resource))


@unprotected
def _join(thread: threading.Thread, timeout: float | None) -> None:
    """Wait for a replacement thread (interruptible; it holds nothing)."""
    thread.join(timeout)


class _TokenSteps(NamedTuple, Generic[R]):
    """A token pool's steps (see :func:`_token_steps`)."""

    take_token: Callable[[Lease[R], bool], bool]
    put_tokens: Callable[[Lease[R], int, bool], bool]
    hand_on: Callable[[], None]
    dispatch: Callable[[], None]


def _token_steps(
    tokens: deque[_Slot[R]],
    held: set[Lease[R]],
    sequence: Iterator[int],
    queue: deque[Lease[R]],
    lock: threading.Lock,
    waits: deque[tuple[int, float]],
) -> _TokenSteps[R]:
    """A token pool's lock-free grant and give-back, and its hand-on, as closures.

    The one implementation of each (the async fast path, ``_enqueue``, ``_take``,
    ``_give_back``, ``_release`` and ``_dispatch`` all call these); closures because a call of
    one reads the containers from cells instead of looking up the pool's attributes and
    methods, which on the uncontended path costs as much as the step itself, and on the
    contended path (a release handing its unit to the head, once per queued acquire) was a
    third of the llmctx frames of a hand-on. They capture no pool (no reference cycle): what
    needs the pool (a weighted head, a waiter whose loop is gone) goes through the lease's.

    Returns:
        ``(take_token, put_tokens, hand_on, dispatch)``:

        * ``take_token(lease, arriving)``: grant a one-unit lease: one atomic ``popleft`` of a
          token, no lock needed. ``arriving``: the caller arrives now (not a queued head): it
          is refused while anyone is queued (no barging) or when its lease is weighted.
          Returns False when not granted (nothing taken).
        * ``put_tokens(lease, state, hand_on)``: give a lease's tokens back and set its
          state; taking the lease out of ``held`` (an atomic ``set.remove``, which raises
          for a lease not in it) is the step that ends it, so two releases of one lease give
          back once (False: it was given back already). ``hand_on`` (a release, without the
          lock): then, if anyone is queued, grant to the head under the lock (put back, then
          look: a waiter queues under the lock and tries again once queued, so none is
          missed).
        * ``hand_on()``: take the lock and ``dispatch()``: what a release that finds callers
          queued, or a caller that queued and then finds a unit free, does.
        * ``dispatch()``: with the lock held, grant to the waiters from the head while units
          are free, and wake them (the pool's ``_dispatch`` for a token pool).
    """
    popleft = tokens.popleft
    append = tokens.append
    held_add = held.add
    held_remove = held.remove

    @protected
    def take_token(lease: Lease[R], arriving: bool) -> bool:
        if arriving and (queue or lease.amount != 1 or not tokens):
            # (a weighted lease takes its tokens under the lock, in _take; no token: spare
            # the failed popleft, an exception)
            return False
        try:
            slot = popleft()
        except IndexError:
            return False
        lease._slot = slot
        held_add(lease)
        lease._number = next(sequence)
        lease._state = _HELD
        return True

    @protected
    def put_tokens(lease: Lease[R], state: int, hand_on: bool) -> bool:
        try:
            held_remove(lease)
        except KeyError:
            return False
        lease._state = state
        slot = lease._slot
        if lease.amount == 1:
            append(slot)  # type: ignore[arg-type]
        else:
            tokens.extend(itertools.repeat(slot, lease.amount))  # type: ignore[arg-type]
        if hand_on and queue:
            # hand_on_now(), written out: a frame less on every contended release
            lock.acquire()  # not `with`: see ResourcePool._release (this frame is protected)
            try:
                dispatch()
            finally:
                lock.release()
        return True

    waits_append = waits.append
    monotonic = time.monotonic

    @protected
    def dispatch() -> None:
        while queue and tokens:  # no free unit: spare the failed popleft (an exception)
            waiter = queue[0]
            if waiter.amount == 1:
                if not take_token(waiter, False):
                    return
            elif not waiter._pool._take(waiter):  # a weighted head takes its tokens there
                return
            queue.popleft()
            waits_append((waiter._number, monotonic() - waiter._start))
            waiter._grant = True
            if not waiter.wake():
                # Its event loop is gone: it will never run, so take the unit back.
                pool = waiter._pool
                waiter._grant = None
                pool._take_back(waiter)
                pool._cancellations += 1

    @protected
    def hand_on_now() -> None:
        lock.acquire()  # not `with`: see ResourcePool._release
        try:
            dispatch()
        finally:
            lock.release()

    return _TokenSteps(take_token, put_tokens, hand_on_now, dispatch)


@runtime_checkable
class LeaseStore(Protocol):
    """Where a pool's leases live when processes share its capacity (called under its lock).

    A resource is known to the store by its position in the pool's constructor list (a
    replacement inherits it), so every process must list the same resources in the same
    order. Without a store the pool counts free units itself, in this process only; with
    one it still keeps that count as its view of its own leases.

    Attributes:
        poll_interval: seconds between looks at the store while the head waits: releases in
            other processes are not announced.
    """

    poll_interval: float

    def take(self, amount: int, slots: Sequence[tuple[int, int]]) -> tuple[int, str] | None:
        """Lease ``amount`` units on the slot, of ``(slot, capacity)`` pairs, with most free.

        Returns:
            ``(slot, member)``, the member naming the lease for :meth:`give_back`, or None
            when no slot has ``amount`` free units now (nothing was taken).
        """

    def give_back(self, member: str) -> None:
        """Delete one lease (a release). An unknown member is a no-op."""


@dataclass(eq=False, slots=True)
class _Slot(Generic[R]):
    resource: R
    capacity: int
    free: int
    # The resource's position in the pool's constructor list: its name in a shared store
    # (a replacement inherits it).
    key: int
    retired: bool = False


class Lease(_Waiter, Generic[R]):
    """``amount`` units of one resource, held until :meth:`release` (or the block's exit).

    :meth:`ResourcePool.acquire` returns a lease that is not granted yet: entering it (``with``
    / ``async with``, once) waits for the grant and returns the lease itself; leaving the
    block releases it. :meth:`ResourcePool.acquire_nowait` returns a granted one.

    ``async with`` is always a cancellation point: a task whose cancellation is already
    requested (``Task.cancel()``, or a cancelled anyio cancel scope) raises it at once, before
    anything is taken, granted at once or not. It is a scheduling point in turn: one lease in
    64 granted at once on a loop lets the loop's other tasks run before its block starts
    (cancelled then, it gives the lease back), so a loop of uncontended acquires never keeps
    them waiting longer than 64 acquires; one that queues lets them run while it waits.

    Attributes:
        amount: the units held.
    """

    # A lease is also its own waiter while queued (the _Waiter slots): one object per
    # acquire, contended or not.
    __slots__ = ("_number", "_pool", "_slot", "_state", "_timeout", "_token")
    _pool: ResourcePool[R]
    # The slot and the number are set when the lease is granted (not before: two stores
    # less per acquire); read before that through `resource`, `sequence` and repr only.
    _slot: _Slot[R] | None
    _number: int
    _state: int
    _timeout: float | None
    # The lease's member in a shared store's sorted set: set (and read) only by a pool with
    # a store, one attribute less on the in-process hot path.
    _token: str | None

    # Built by ResourcePool.acquire only (which sets every field): a class call that runs
    # no Python __init__ costs a third of what object.__new__(Lease) does (a slower C path).
    __init__ = object.__init__

    @property
    def resource(self) -> R:
        """The resource leased (e.g. a worker object or a GPU index).

        Raises:
            UsageError: the lease was not granted yet.
        """
        slot: _Slot[R] | None = getattr(self, "_slot", None)
        if slot is None:
            raise UsageError("the lease was not granted yet: enter `pool.acquire(...)` first")
        return slot.resource

    @property
    def sequence(self) -> int:
        """This lease's number in grant order (1, 2, ...), for auditing FIFO order; 0 before."""
        return getattr(self, "_number", 0)

    @property
    def released(self) -> bool:
        """True once the capacity went back to the pool."""
        return self._state == _RELEASED

    @protected
    def release(self) -> None:
        """Give the capacity back (to the next waiters first). A second call is a no-op."""
        if self._state == _HELD:
            self._pool._release(self)

    def _check_pending(self) -> None:
        if self._state != _PENDING:
            raise UsageError(
                "this lease was already used; call pool.acquire() again for another lease"
            )

    @protected
    def __enter__(self) -> Lease[R]:
        if self._state != _PENDING:
            self._check_pending()
        self._pool._acquire_sync(self, self._timeout)
        return self

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == _HELD:
            self._pool._release(self)

    @protected
    def __aenter__(self) -> Awaitable[Lease[R]]:
        # A plain method: a grant made at once is made in the call, and the awaitable returned
        # only hands the lease over (one time in 64, after a yield). The full coroutine is for
        # a task that may have a cancellation pending (or runs on a loop not remembered for
        # this thread yet), one that must wait, and a health-checked pool.
        if self._state != _PENDING:
            self._check_pending()
        pool = self._pool
        take = pool._take_token  # (a token pool has no health check: one test less for it)
        if (take is None and pool._health_check is not None) or (
            state := _fast_checkpoint()
        ) is None:
            return pool._acquire_async(self, self._timeout)
        if (take is None or not take(self, True)) and pool._enqueue(
            self, state.loop, self._timeout, False, False
        ):
            # Queued (no health check on this path): the wait is the awaitable, and returns
            # the lease once granted.
            timeout = self._timeout
            return pool._wait_async(self, None if timeout is None else self._start + timeout)
        n = state.since_yield + 1
        if n < _YIELD_EVERY:
            state.since_yield = n
            return _granted(self)
        state.since_yield = 0
        return pool._checkpoint_granted(self)

    @protected
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # A plain method: the call itself releases (see _waiting._Done), nothing to await.
        if self._state == _HELD:
            pool = self._pool
            put_tokens = pool._put_tokens
            if put_tokens is None:
                pool._release(self)
            else:
                put_tokens(self, _RELEASED, True)  # a token pool's release, without the lock
        return _DONE

    def __repr__(self) -> str:
        slot = getattr(self, "_slot", None)
        if slot is None:
            return f"<Lease {self.amount} pending>"
        state = "released" if self._state == _RELEASED else "held"
        return f"<Lease {self.amount} of {slot.resource!r} {state}>"


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A pool's state at one moment.

    Attributes:
        capacity: units of the healthy resources (quarantined ones stop counting).
        borrowed: units leased out on healthy resources.
        available: capacity - borrowed.
        resources: healthy resources.
        waiting: callers queued.
        acquired: leases granted since creation.
        timeouts: callers that gave up because of their timeout.
        cancellations: callers cancelled (or interrupted) while queued.
        quarantined: resources that failed a health check.
        replacements: resources a factory made to replace quarantined ones.
        replacement_failures: factory calls that raised.
        wait_p50, wait_p90, wait_p99, wait_max: seconds callers waited for a lease, over the
            last 1024 leases (0.0 when none yet).
    """

    capacity: int
    borrowed: int
    available: int
    resources: int
    waiting: int
    acquired: int
    timeouts: int
    cancellations: int
    quarantined: int
    replacements: int
    replacement_failures: int
    wait_p50: float
    wait_p90: float
    wait_p99: float
    wait_max: float


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class ResourcePool(_FifoQueue[Lease[R]]):
    """A pool of resources with capacities, leased in strict FIFO order to threads and tasks.

    Usage::

        pool = llmctx.ResourcePool(["cuda:0", "cuda:1"], capacity=24)   # GB per GPU
        async with pool.acquire(8, timeout=30) as lease:                   # or `with`
            run_on(lease.resource)

    Each lease takes ``amount`` units of one resource: the healthy resource with the most
    free units (spreading load). Waiters are served strictly in arrival order.

    A health check (optional) runs on every lease before it is handed out; a resource that
    fails it (returns False or raises) is quarantined (its capacity stops counting, its
    outstanding leases are dropped on release) and, with a ``factory``, replaced in a
    background thread; the caller is served from another resource, keeping its place at the
    head of the queue.

    Args:
        resources: the resources; any objects.
        capacity: units per resource (one int for all, or one per resource). Default 1: each
            resource serves one holder at a time.
        health_check: ``check(resource) -> bool`` run (in the acquiring thread or task: keep it
            quick) before a lease is returned.
        factory: ``factory() -> resource`` that makes a replacement for a quarantined one; it
            runs in a background thread. Without it the pool just shrinks.
        name: a label for logs and repr.
        store: a :class:`LeaseStore` such as :class:`~llmctx.RedisLeaseStore`, to share the
            capacity with other processes (None: this process only). ``statistics()`` then
            describes this process's leases.

    Raises:
        ConfigError: no resources, a capacity that is not a positive integer, or a capacity
            list whose length differs from the resources'.
    """

    def __init__(
        self,
        resources: Iterable[R],
        *,
        capacity: int | Sequence[int] = 1,
        health_check: Callable[[R], bool] | None = None,
        factory: Callable[[], R] | None = None,
        name: str | None = None,
        store: LeaseStore | None = None,
    ) -> None:
        items = list(resources)
        if not items:
            raise ConfigError("ResourcePool needs at least one resource")
        if isinstance(capacity, int):
            caps = [capacity] * len(items)
        elif isinstance(capacity, Sequence):
            caps = list(capacity)
        else:
            raise ConfigError(
                f"ResourcePool(capacity={capacity!r}) must be a whole number > 0, "
                "or a list with one per resource"
            )
        if len(caps) != len(items):
            raise ConfigError(
                f"ResourcePool got {len(items)} resources but {len(caps)} capacities; "
                "pass one int for all, or one per resource"
            )
        for c in caps:
            if isinstance(c, bool) or not isinstance(c, int) or c <= 0:
                raise ConfigError(f"ResourcePool capacity {c!r} must be a whole number > 0")
        self.name = name
        # Replacements keep their predecessor's capacity, so this never changes.
        self._largest = max(caps)
        self._health_check = health_check
        self._factory = factory
        self._store = store
        self._slots: list[_Slot[R]] = [
            _Slot(r, c, c, i) for i, (r, c) in enumerate(zip(items, caps, strict=True))
        ]
        # The single resource of an in-process pool whose slots never change (no health
        # check, so nothing is quarantined or replaced): the only one a grant need look at.
        plain = store is None and health_check is None
        self._only = self._slots[0] if plain and len(self._slots) == 1 else None
        # Free units as tokens (one per unit, the token being its slot), for an in-process
        # pool whose slots never change and where any free unit is one of the most free: one
        # resource, or resources of one unit each. A one-unit lease then takes a token and a
        # release puts it back without the lock (see _take); None for other pools.
        self._tokens: deque[_Slot[R]] | None = None
        # Token pools: the leases held. Taking a lease out is the one step that ends it
        # (set.remove is atomic), so two releases of one lease give back once.
        self._held: set[Lease[R]] = set()
        if plain and (len(self._slots) == 1 or self._largest == 1):
            self._tokens = deque(slot for slot in self._slots for _ in range(slot.capacity))
        self._init_queue()
        self._closed = threading.Event()
        self._threads: set[threading.Thread] = set()
        # (lease number, seconds waited) of the leases that queued, the last _WAIT_SAMPLES:
        # a lease granted at once waited 0 s and leaves no sample (its number says it was
        # one of the last leases), so the uncontended path records nothing.
        self._waits: deque[tuple[int, float]] = deque(maxlen=_WAIT_SAMPLES)
        # Lease numbers in grant order, 1, 2, ...
        self._sequence = _numbers()
        # Leases granted = numbers handed out - _given_back.
        self._given_back = 0
        # A token pool's lock-free steps (None for other pools): each is the one place it
        # is done, and each is a closure so that the fast path calls it without a method
        # lookup (see _token_steps).
        self._take_token: Callable[[Lease[R], bool], bool] | None = None
        self._put_tokens: Callable[[Lease[R], int, bool], bool] | None = None
        self._hand_on: Callable[[], None] | None = None
        self._token_dispatch: Callable[[], None] | None = None
        if self._tokens is not None:
            steps = _token_steps(
                self._tokens, self._held, self._sequence, self._queue, self._lock, self._waits
            )
            self._take_token, self._put_tokens = steps.take_token, steps.put_tokens
            self._hand_on, self._token_dispatch = steps.hand_on, steps.dispatch
        self._quarantined = 0
        self._replacements = 0
        self._replacement_failures = 0

    @classmethod
    def from_factory(
        cls,
        factory: Callable[[], R],
        count: int,
        *,
        capacity: int = 1,
        health_check: Callable[[R], bool] | None = None,
        name: str | None = None,
        store: LeaseStore | None = None,
    ) -> ResourcePool[R]:
        """A pool of ``count`` resources made by ``factory``, which also makes replacements.

        This is the shape of a pool of local model workers:
        ``ResourcePool.from_factory(llmctx.local_model, 2, health_check=...)``.

        Raises:
            ConfigError: ``count`` < 1. Whatever ``factory`` raises propagates.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"ResourcePool.from_factory(count={count!r}) must be >= 1")
        return cls(
            [factory() for _ in range(count)],
            capacity=capacity,
            health_check=health_check,
            factory=factory,
            name=name,
            store=store,
        )

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<ResourcePool{label} resources={len(self._slots)}>"

    # ------------------------------------------------------------------ public API
    def acquire(self, amount: int = 1, *, timeout: float | None = None) -> Lease[R]:
        """Lease ``amount`` units of one resource; use with ``with`` or ``async with``.

        Args:
            amount: units needed (>= 1, at most the largest resource's capacity).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            A :class:`Lease` not granted yet; entering it (once) waits for the grant and
            returns it; leaving the block releases it (on errors and cancellation too).

        Raises:
            AcquireTimeout: (on entering) no lease within ``timeout``; nothing is held.
            NoHealthyResource: (on entering, or while waiting) every resource failed its health
                check and none can be replaced (no ``factory``, or it kept failing).
            ConfigError: ``amount`` < 1 or larger than any resource, or a negative timeout.

        Entered with ``async with``, it raises at once if the task is cancelled (a
        ``Task.cancel()`` or a cancelled anyio cancel scope), before anything is taken, and
        lets the loop's other tasks run at least every 64 uncontended acquires (one in 64
        granted at once yields; one that queues yields while it waits). A caller cancelled
        while queued leaves the queue; one cancelled after capacity was granted to it passes
        the capacity to the next waiters.
        """
        if amount.__class__ is not int or not 0 < amount <= self._largest:
            amount = self._check_amount(amount)
        if timeout is not None:
            timeout = _check_timeout(timeout)
        # The one place a lease is built (Lease has no __init__ of its own: see there).
        lease: Lease[R] = Lease()
        lease._pool = self
        lease._state = _PENDING
        lease._timeout = timeout
        lease.amount = amount
        return lease

    @protected
    def acquire_nowait(self, amount: int = 1) -> Lease[R]:
        """Lease ``amount`` units now, or raise without taking anything.

        The health check, if any, runs as in :meth:`acquire`. Release the lease with
        :meth:`Lease.release`.

        Raises:
            WouldBlock: nothing fits now, or others are queued first.
            NoHealthyResource: every resource was quarantined and none can be replaced.
            ConfigError: a bad amount.
        """
        lease = self.acquire(amount)
        while True:
            with self._lock:
                got = not self._queue and self._take(lease)
                if not got and not self._slots and not self._threads:
                    raise self._no_healthy()
            if not got:
                raise WouldBlock(
                    f"no resource has {lease.amount} free unit(s) now, or others are queued "
                    "first; use acquire() to wait"
                )
            if self._healthy(lease):
                return lease

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's state and counters (this process's, with a store)."""
        with self._lock:
            live = [s for s in self._slots if not s.retired]
            capacity = sum(s.capacity for s in live)
            tokens = self._tokens
            free = len(tokens) if tokens is not None else sum(s.free for s in live)
            handed_out = _handed_out(self._sequence)
            # The last _WAIT_SAMPLES leases: those that queued (samples appended under this
            # lock) and the rest, granted at once, 0 s each.
            after = handed_out - _WAIT_SAMPLES
            queued = sorted(wait for number, wait in self._waits if number > after)
            waits = [0.0] * (min(handed_out, _WAIT_SAMPLES) - len(queued)) + queued
            stats = PoolStatistics(
                capacity=capacity,
                borrowed=capacity - free,
                available=free,
                resources=len(live),
                waiting=len(self._queue),
                acquired=handed_out - self._given_back,
                timeouts=self._timeouts,
                cancellations=self._cancellations,
                quarantined=self._quarantined,
                replacements=self._replacements,
                replacement_failures=self._replacement_failures,
                wait_p50=_percentile(waits, 0.50),
                wait_p90=_percentile(waits, 0.90),
                wait_p99=_percentile(waits, 0.99),
                wait_max=waits[-1] if waits else 0.0,
            )
        return stats

    @property
    def resources(self) -> list[R]:
        """The healthy resources (a copy)."""
        with self._lock:
            return [s.resource for s in self._slots if not s.retired]

    @protected
    def close(self, timeout: float | None = 10.0) -> None:
        """Stop making replacements and wait for running factory calls (up to ``timeout``).

        Leases keep working after close; a replacement finished after close is discarded.
        A lease store is not closed (it may serve other pools): call its ``close()``.
        Closing twice is harmless.
        """
        self._closed.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            _join(t, None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ResourcePool[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_amount(self, amount: Any) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise ConfigError(f"acquire(amount={amount!r}) must be a whole number >= 1")
        largest = self._largest
        if amount > largest:
            raise ConfigError(
                f"acquire(amount={amount}) can never be granted: the largest resource in the "
                f"pool has capacity {largest}. Lower the amount or add larger resources"
            )
        return int(amount)

    def _take(self, lease: Lease[R], only: _Slot[R] | None = None) -> bool:
        """With the lock held: grant ``lease`` from the healthy slot with the most free units.

        The one place a lease is granted (an acquire at once, a queued head, a nowait). In a
        token pool (``_tokens``) a one-unit lease may be taken without the lock: its grant is
        one atomic ``popleft`` of a token.

        Args:
            lease: the lease to grant.
            only: the one in-process slot that can fit it, when the caller knows (the slot
                a release just freed, for the head of the queue); unused by a token pool.

        Returns:
            True when granted; False when nothing fits now (nothing was taken).

        Raises:
            Exception: whatever the store raised (e.g. StoreError); nothing was taken.
        """
        n = lease.amount
        tokens = self._tokens
        if tokens is not None:
            if n == 1:
                return self._take_token(lease, False)  # type: ignore[misc]
            # One resource: n tokens of the same slot, taken one by one (so under the lock:
            # a waiter could otherwise miss the ones put back when they do not all fit).
            taken = 0
            try:
                while taken < n:
                    best = tokens.popleft()
                    taken += 1
            except IndexError:
                if taken:
                    tokens.extend(itertools.repeat(self._slots[0], taken))
                return False
            lease._slot = best
            self._held.add(lease)
            lease._number = next(self._sequence)
            lease._state = _HELD
            return True
        store = self._store
        if store is not None:
            got = store.take(n, [(s.key, s.capacity) for s in self._slots])
            if got is None:
                return False
            key, lease._token = got
            best = next(s for s in self._slots if s.key == key)
            best.free -= n
        else:
            one = only if only is not None else self._only
            if one is not None:
                if one.free < n:
                    return False
                best = one
                best.free -= n
            else:
                found: _Slot[R] | None = None
                best_free = n - 1
                largest = self._largest
                for slot in self._slots:
                    free = slot.free
                    if free > best_free:
                        found = slot
                        best_free = free
                        if free == largest:  # nothing can have more free units
                            break
                if found is None:
                    return False
                best = found
                best.free = best_free - n
        lease._number = next(self._sequence)
        lease._slot = best
        lease._state = _HELD
        return True

    def _give_back(self, lease: Lease[R], state: int) -> bool:
        """With the lock held: return a granted lease's capacity (no dispatch).

        The one place capacity goes back: a release, a grant its caller will not use, and a
        lease on a resource that failed its health check. A token pool puts the tokens back
        without needing the lock; the caller then looks for waiters (put back, then look:
        a waiter queues under the lock and tries again once queued, so none is missed).

        Returns:
            False when a token lease was given back already (nothing was done).
        """
        put_tokens = self._put_tokens
        if put_tokens is not None:
            return put_tokens(lease, state, False)
        lease._state = state
        slot = lease._slot
        if self._store is not None:
            token = lease._token
            if token is not None:
                lease._token = None
                self._store_give_back(token)
        if slot is not None and not slot.retired:
            slot.free += lease.amount
        return True

    def _store_give_back(self, token: str) -> None:
        assert self._store is not None
        try:
            self._store.give_back(token)
        except Exception:  # the lease expires on its own after lease_ttl
            logger.warning(
                "llmctx: could not delete pool lease %s from Redis; it expires after lease_ttl",
                token,
                exc_info=True,
            )

    @protected
    def _dispatch(self, freed: _Slot[R] | None = None) -> None:
        """With the lock held: grant capacity to the waiters at the head while they fit.

        Args:
            freed: the only slot whose free units grew since the last dispatch (an in-process
                release), if known. A queued head never fits anywhere else (it would have
                been granted), nor does any later head at least as large, so those need only
                that slot checked; a smaller one gets the full scan.
        """
        token_dispatch = self._token_dispatch
        if token_dispatch is not None:
            token_dispatch()  # a token pool's: see _token_steps
            return
        queue = self._queue
        if not queue:
            return
        # Every slot but `freed` has fewer free units than this (0: nothing known).
        fits_nowhere_else = queue[0].amount if freed is not None else 0
        while queue:
            waiter = queue[0]
            only = freed if waiter.amount >= fits_nowhere_else else None
            if only is not None and only.free < waiter.amount:
                return  # it fits nowhere now (and without a store there is nothing to poll)
            try:
                got = self._take(waiter, only)
            except Exception as exc:  # Redis failed: the head raises it, not the releaser
                self._fail_head(exc)
                return
            if not got:
                if self._store is not None:
                    # Other processes' releases are not announced: look again later.
                    waiter.schedule(self._store.poll_interval)
                return
            queue.popleft()
            self._waits.append((waiter._number, time.monotonic() - waiter._start))
            waiter._grant = True
            if not waiter.wake():
                # Its event loop is gone: it will never run, so take the capacity back.
                waiter._grant = None
                self._take_back(waiter)
                self._cancellations += 1
                fits_nowhere_else = 0  # that capacity went back to some slot

    @protected
    def _release(self, lease: Lease[R]) -> None:
        """Give a held lease's capacity back, to the waiters at the head first.

        The one way a lease ends: :meth:`Lease.release` and leaving its block, sync or async.
        """
        put_tokens = self._put_tokens
        if put_tokens is not None:
            # Put back without the lock; the lock only to hand the units to waiters.
            put_tokens(lease, _RELEASED, True)
            return
        lock = self._lock
        # Not `with`: half the cost on CPython 3.11. This frame is protected, so an interrupt
        # cannot land between the acquire and the `try` (the deferring handler puts it off).
        lock.acquire()
        try:
            if lease._state != _HELD:
                return
            slot = lease._slot
            assert slot is not None
            self._give_back(lease, _RELEASED)
            if self._queue:
                if self._store is not None:
                    self._dispatch()
                elif not slot.retired:
                    # Only the freed slot gained room: the head needs no scan.
                    self._dispatch(slot)
        finally:
            lock.release()

    def _enqueue(
        self,
        lease: Lease[R],
        loop: asyncio.AbstractEventLoop | None,
        timeout: float | None,
        front: bool,
        at_once: bool = True,
    ) -> Lease[R] | None:
        """Grant at once (None) or queue ``lease`` as a waiter; the lock is taken once at most.

        Args:
            lease: the lease to grant.
            loop: the running event loop of an asyncio caller (its waiter wakes there), None
                for a thread.
            timeout: the caller's timeout; 0 raises instead of queueing.
            front: queue at the head (a caller whose lease failed its health check keeps its
                turn), trying a grant first even if others are queued.
            at_once: try a token pool's lock-free grant first (False: the caller just did).

        Returns:
            None when granted, else the queued waiter (the lease itself).

        Raises:
            AcquireTimeout: nothing fits and ``timeout`` is 0; nothing is held.
        """
        queue = self._queue
        tokens = self._tokens
        if tokens is not None and lease.amount == 1 and not front and timeout != 0:
            # A token pool's one-unit lease: granted or queued without the lock. Queueing is
            # one atomic append of a waiter made ready first; then, as a release puts back
            # and then looks for waiters, this looks for tokens put back meanwhile (by a
            # release that saw no waiter yet) and hands them to the head: one of the two
            # always sees the other, so no unit is left free while someone waits.
            if at_once and self._take_token(lease, True):  # type: ignore[misc]
                return None
            lease._begin_wait(loop, self)
            queue.append(lease)
            if tokens:
                self._hand_on()  # type: ignore[misc]
            return lease
        lock = self._lock
        lock.acquire()  # not `with`: see _release
        try:
            if (front or not queue) and self._take(lease):
                return None
            if not self._slots and not self._threads:
                raise self._no_healthy()
            if timeout == 0:
                self._timeouts += 1
                raise AcquireTimeout(
                    f"no resource has {lease.amount} free unit(s) and timeout=0; nothing is held"
                )
            if front:
                queue.appendleft(lease)
            else:
                queue.append(lease)
            if tokens is not None and queue[0] is lease and self._take(lease):
                # Tokens put back since the try above, by a release that saw no waiter yet.
                queue.popleft()
                return None
            lease._begin_wait(loop, self)
            if self._store is not None and queue[0] is lease:
                lease.schedule(self._store.poll_interval)
            return lease
        finally:
            lock.release()

    @protected
    def _take_back(self, grant: object) -> None:
        """With the lock held: return capacity granted to a lease whose caller will not use it."""
        self._given_back += 1
        self._give_back(cast("Lease[R]", grant), _RETURNED)

    def _timeout_error(self, n: int) -> AcquireTimeout:
        return AcquireTimeout(
            f"no lease of {n} unit(s) from the pool within the timeout; nothing is held. "
            "Raise the timeout, lower the amount, or add capacity"
        )

    @protected
    def _acquire_sync(self, lease: Lease[R], timeout: float | None) -> None:
        waiter = self._enqueue(lease, None, timeout, False)
        if waiter is None and self._health_check is None:
            return
        deadline = None
        if timeout is not None:
            deadline = (time.monotonic() if waiter is None else waiter._start) + timeout
        while True:
            if waiter is not None:
                self._wait_sync(waiter, deadline)
            if self._healthy(lease):
                return
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            waiter = self._enqueue(lease, None, remaining, True)

    @protected
    async def _acquire_async(self, lease: Lease[R], wait_for: float | None) -> Lease[R]:
        """The async acquire's full path: check, queue, wait, health check.

        Args:
            lease: the lease to grant.
            wait_for: the caller's timeout.
        """
        loop = _running_loop()
        if _cancel_pending(loop):
            # checkpoint_if_cancelled: the pending cancellation lands here, nothing taken.
            await _yield_now()
        waiter = self._enqueue(lease, loop, wait_for, False)
        if waiter is None:
            if _yield_due():
                await self._checkpoint_granted(lease)
            if self._health_check is None:
                return lease
        deadline = None
        if wait_for is not None:
            deadline = (time.monotonic() if waiter is None else waiter._start) + wait_for
        while True:
            if waiter is not None:
                await self._wait_async(waiter, deadline)
            if self._health_check is None or self._healthy(lease):
                return lease
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            waiter = self._enqueue(lease, loop, remaining, True)

    # ------------------------------------------------------------------ health
    @protected
    def _healthy(self, lease: Lease[R]) -> bool:
        """Run the health check; on failure quarantine the resource and return False.

        Raises:
            BaseException: what interrupted the check (KeyboardInterrupt): the lease goes
                back to the pool first (the next waiters get it), nothing is quarantined.
        """
        check = self._health_check
        if check is None:
            return True
        ok: bool | None = None
        try:
            ok = _run_check(check, lease.resource)
        except Exception:
            logger.warning(
                "llmctx: health check of %r raised; quarantining it", lease.resource, exc_info=True
            )
            ok = False
        finally:
            if ok is None:  # interrupted: neither passed nor failed, and the caller gets nothing
                with self._lock:
                    self._pass_on(lease)
        if ok:
            return True
        self._quarantine(lease)
        return False

    @protected
    def _quarantine(self, lease: Lease[R]) -> None:
        with self._lock:
            slot = lease._slot
            assert slot is not None
            # The caller queues again at the head with the same (now pending) lease.
            self._give_back(lease, _PENDING)
            lease._slot = None
            if slot.retired:
                return
            slot.retired = True
            self._slots.remove(slot)
            self._quarantined += 1
            logger.warning(
                "llmctx: resource %r failed its health check; quarantined", slot.resource
            )
            if self._factory is None or self._closed.is_set():
                self._fail_waiters_if_dead()
                return
            thread = threading.Thread(
                target=self._replace,
                args=(slot.capacity, slot.key),
                name=f"llmctx-pool-replace-{self.name or id(self)}",
                daemon=True,
            )
            self._threads.add(thread)
        thread.start()

    @protected
    def _replace(self, capacity: int, key: int) -> None:
        factory = self._factory
        assert factory is not None
        delay = 0.05
        try:
            for attempt in range(5):
                if self._closed.is_set():
                    return
                try:
                    resource = factory()
                except Exception:
                    logger.warning(
                        "llmctx: pool factory failed (attempt %d of 5)", attempt + 1, exc_info=True
                    )
                    with self._lock:
                        self._replacement_failures += 1
                    self._closed.wait(delay)
                    delay *= 4
                    continue
                with self._lock:
                    if self._closed.is_set():
                        return
                    self._slots.append(_Slot(resource, capacity, capacity, key))
                    self._replacements += 1
                    self._dispatch()
                return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._fail_waiters_if_dead()

    def _no_healthy(self) -> NoHealthyResource:
        why = (
            "and it has no factory to replace them"
            if self._factory is None
            else "and its factory could not make a replacement (see the llmctx log)"
        )
        label = f"pool {self.name!r}" if self.name else "the pool"
        return NoHealthyResource(
            f"{label} has no healthy resource: all {self._quarantined} failed their health "
            f"check {why}, so nothing will ever be free. Fix the resources and build a new "
            "pool, or pass factory= to replace failed ones"
        )

    def _fail_waiters_if_dead(self) -> None:
        """With the lock held: no healthy resource is left and none is coming (no slot, no
        replacement running): every waiter raises NoHealthyResource instead of waiting forever."""
        if self._slots or self._threads or not self._queue:
            return
        error = self._no_healthy()
        while self._queue:
            waiter = self._queue.popleft()
            waiter._error = error
            waiter.wake()
