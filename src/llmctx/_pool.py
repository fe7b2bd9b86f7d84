"""ResourcePool: weighted, strict-FIFO leases on resources with capacities.

A pool holds resources (GPUs, model workers, connections), each with a capacity (GB of
memory, worker slots). ``acquire(amount)`` leases ``amount`` units of *one* resource. Like Go's
``semaphore.Weighted``, the queue is strict FIFO: while the head waiter does not fit, nobody
behind it is served, so large requests are never starved. Released capacity is handed
directly to the waiters at the head (the grant happens under the lock, before they run), and a
waiter cancelled after its grant passes the capacity on.

One object serves threads (``with``) and asyncio tasks on any number of event loops
(``async with``): a ``threading.Lock`` guards the state and each waiter has its own wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._exceptions import ConfigError
from ._limits import AcquireTimeout, WouldBlock, _check_timeout, _Waiter

__all__ = ["Lease", "PoolStatistics", "ResourcePool"]

logger = logging.getLogger("llmctx.pool")

R = TypeVar("R")

_WAIT_SAMPLES = 1024


@dataclass(eq=False, slots=True)
class _Slot(Generic[R]):
    resource: R
    capacity: int
    free: int
    retired: bool = False


class Lease(Generic[R]):
    """``amount`` units of one resource, held until :meth:`release` (or the block's exit).

    Attributes:
        resource: the resource leased (e.g. a worker object or a GPU index).
        amount: the units held.
        sequence: this lease's number in grant order (1, 2, ...), for auditing FIFO order.
    """

    __slots__ = ("_pool", "_released", "_slot", "amount", "resource", "sequence")

    def __init__(self, pool: ResourcePool[R], slot: _Slot[R], amount: int, sequence: int) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False
        self.resource: R = slot.resource
        self.amount = amount
        self.sequence = sequence

    @property
    def released(self) -> bool:
        """True once the capacity went back to the pool."""
        return self._released

    def release(self) -> None:
        """Give the capacity back (to the next waiters first). A second call is a no-op."""
        self._pool._release(self)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self.amount} of {self.resource!r} {state}>"


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


class _PoolAcquire(Generic[R]):
    """What :meth:`ResourcePool.acquire` returns: a sync and async context manager."""

    __slots__ = ("_amount", "_lease", "_pool", "_timeout")

    def __init__(self, pool: ResourcePool[R], amount: int, timeout: float | None) -> None:
        self._pool = pool
        self._amount = amount
        self._timeout = timeout
        self._lease: Lease[R] | None = None

    def __enter__(self) -> Lease[R]:
        self._lease = self._pool._acquire_sync(self._amount, self._timeout)
        return self._lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    async def __aenter__(self) -> Lease[R]:
        self._lease = await self._pool._acquire_async(self._amount, self._timeout)
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None


class ResourcePool(Generic[R]):
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
        self._slots: list[_Slot[R]] = [_Slot(r, c, c) for r, c in zip(items, caps, strict=True)]
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._closed = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._waits: deque[float] = deque(maxlen=_WAIT_SAMPLES)
        self._acquired = 0
        self._sequence = 0
        self._timeouts = 0
        self._cancellations = 0
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
        )

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<ResourcePool{label} resources={len(self._slots)}>"

    # ------------------------------------------------------------------ public API
    def acquire(self, amount: int = 1, *, timeout: float | None = None) -> _PoolAcquire[R]:
        """Lease ``amount`` units of one resource; use with ``with`` or ``async with``.

        Args:
            amount: units needed (>= 1, at most the largest resource's capacity).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            A context manager whose value is the :class:`Lease`; leaving the block releases it
            (on errors and cancellation too).

        Raises:
            AcquireTimeout: no lease within ``timeout``; nothing is held.
            ConfigError: ``amount`` < 1 or larger than any resource, or a negative timeout.

        A caller cancelled while queued leaves the queue; one cancelled after capacity was
        granted to it passes the capacity to the next waiters.
        """
        return _PoolAcquire(self, self._check_amount(amount), _check_timeout(timeout))

    def acquire_nowait(self, amount: int = 1) -> Lease[R]:
        """Lease ``amount`` units now, or raise without taking anything.

        The health check, if any, runs as in :meth:`acquire`. Release the lease with
        :meth:`Lease.release`.

        Raises:
            WouldBlock: nothing fits now, or others are queued first.
            ConfigError: a bad amount.
        """
        n = self._check_amount(amount)
        while True:
            with self._lock:
                lease = self._try_take(n) if not self._queue else None
                if lease is not None:
                    self._waits.append(0.0)
            if lease is None:
                raise WouldBlock(
                    f"no resource has {n} free unit(s) now, or others are queued first; "
                    "use acquire() to wait"
                )
            if self._healthy(lease):
                return lease

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's state and counters."""
        with self._lock:
            live = [s for s in self._slots if not s.retired]
            capacity = sum(s.capacity for s in live)
            free = sum(s.free for s in live)
            waits = sorted(self._waits)
            stats = PoolStatistics(
                capacity=capacity,
                borrowed=capacity - free,
                available=free,
                resources=len(live),
                waiting=len(self._queue),
                acquired=self._acquired,
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

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop making replacements and wait for running factory calls (up to ``timeout``).

        Leases keep working after close; a replacement finished after close is discarded.
        Closing twice is harmless.
        """
        self._closed.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

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
        return amount

    def _try_take(self, n: int) -> Lease[R] | None:
        """With the lock held: take ``n`` units from the healthy slot with the most free."""
        best: _Slot[R] | None = None
        for slot in self._slots:
            if slot.free >= n and (best is None or slot.free > best.free):
                best = slot
        if best is None:
            return None
        best.free -= n
        self._acquired += 1
        self._sequence += 1
        return Lease(self, best, n, self._sequence)

    def _dispatch(self) -> None:
        """With the lock held: grant capacity to the waiters at the head while they fit."""
        queue = self._queue
        while queue:
            waiter = queue[0]
            lease = self._try_take(waiter.amount)
            if lease is None:
                return
            queue.popleft()
            waiter.grant = lease
            if not waiter.wake():
                # Its event loop is gone: it will never run, so take the capacity back.
                waiter.grant = None
                self._acquired -= 1
                lease._released = True
                lease._slot.free += lease.amount
                self._cancellations += 1

    def _release(self, lease: Lease[R]) -> None:
        with self._lock:
            if lease._released:
                return
            lease._released = True
            slot = lease._slot
            if slot.retired:
                return
            slot.free += lease.amount
            if self._queue:
                self._dispatch()

    def _enqueue(
        self, n: int, loop: asyncio.AbstractEventLoop | None, timeout: float | None, front: bool
    ) -> Lease[R] | _Waiter:
        with self._lock:
            if not self._queue or front:
                lease = self._try_take(n)
                if lease is not None:
                    self._waits.append(0.0)
                    return lease
            if timeout == 0:
                self._timeouts += 1
                raise AcquireTimeout(
                    f"no resource has {n} free unit(s) and timeout=0; nothing is held"
                )
            waiter = _Waiter(n, loop)
            if front:
                self._queue.appendleft(waiter)
            else:
                self._queue.append(waiter)
            return waiter

    def _timeout_error(self, n: int) -> AcquireTimeout:
        return AcquireTimeout(
            f"no lease of {n} unit(s) from the pool within the timeout; nothing is held. "
            "Raise the timeout, lower the amount, or add capacity"
        )

    def _abandon(self, waiter: _Waiter, timed_out: bool) -> None:
        """Leave the queue; if capacity was already granted, pass it on."""
        with self._lock:
            lease: Lease[R] | None = waiter.grant
            if lease is not None:
                waiter.grant = None
                self._acquired -= 1
                lease._released = True
                if not lease._slot.retired:
                    lease._slot.free += lease.amount
                self._dispatch()
            else:
                was_head = bool(self._queue) and self._queue[0] is waiter
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
                if was_head:
                    # The new head may be smaller and fit now.
                    self._dispatch()
            if timed_out:
                self._timeouts += 1
            else:
                self._cancellations += 1

    def _acquire_sync(self, n: int, timeout: float | None) -> Lease[R]:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        front = False
        while True:
            got = self._enqueue(n, None, timeout, front)
            if isinstance(got, _Waiter):
                got = self._wait_sync(got, deadline, n, start)
            if self._healthy(got):
                return got
            front = True
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())

    def _wait_sync(self, waiter: _Waiter, deadline: float | None, n: int, start: float) -> Lease[R]:
        done = False
        try:
            while True:
                with self._lock:
                    lease: Lease[R] | None = waiter.grant
                    if lease is not None:
                        done = True
                        self._waits.append(time.monotonic() - start)
                        return lease
                    waiter.arm()
                if deadline is None:
                    waiter.wait_sync(None)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout_error(n)
                    waiter.wait_sync(remaining)
        finally:
            if not done:
                self._abandon(waiter, deadline is not None and time.monotonic() >= deadline)

    async def _acquire_async(self, n: int, wait_for: float | None) -> Lease[R]:
        start = time.monotonic()
        deadline = None if wait_for is None else start + wait_for
        loop = asyncio.get_running_loop()
        front = False
        while True:
            got = self._enqueue(n, loop, wait_for, front)
            if isinstance(got, _Waiter):
                got = await self._wait_async(got, deadline, n, start)
            if self._healthy(got):
                return got
            front = True
            wait_for = None if deadline is None else max(0.0, deadline - time.monotonic())

    async def _wait_async(
        self, waiter: _Waiter, deadline: float | None, n: int, start: float
    ) -> Lease[R]:
        done = False
        try:
            while True:
                with self._lock:
                    lease: Lease[R] | None = waiter.grant
                    if lease is not None:
                        done = True
                        self._waits.append(time.monotonic() - start)
                        return lease
                    waiter.arm()
                if deadline is None:
                    await waiter.wait_async(None)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout_error(n)
                    await waiter.wait_async(remaining)
        finally:
            if not done:
                self._abandon(waiter, deadline is not None and time.monotonic() >= deadline)

    # ------------------------------------------------------------------ health
    def _healthy(self, lease: Lease[R]) -> bool:
        """Run the health check; on failure quarantine the resource and return False."""
        check = self._health_check
        if check is None:
            return True
        try:
            ok = bool(check(lease.resource))
        except Exception:
            logger.warning(
                "llmctx: health check of %r raised; quarantining it", lease.resource, exc_info=True
            )
            ok = False
        if ok:
            return True
        self._quarantine(lease)
        return False

    def _quarantine(self, lease: Lease[R]) -> None:
        with self._lock:
            lease._released = True
            slot = lease._slot
            if slot.retired:
                return
            slot.retired = True
            self._slots.remove(slot)
            self._quarantined += 1
            capacity = slot.capacity
            logger.warning(
                "llmctx: resource %r failed its health check; quarantined", slot.resource
            )
            if self._factory is None or self._closed.is_set():
                return
            thread = threading.Thread(
                target=self._replace,
                args=(capacity,),
                name=f"llmctx-pool-replace-{self.name or id(self)}",
                daemon=True,
            )
            self._threads.add(thread)
        thread.start()

    def _replace(self, capacity: int) -> None:
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
                    self._slots.append(_Slot(resource, capacity, capacity))
                    self._replacements += 1
                    self._dispatch()
                return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
