"""SIGALRM storms for the interrupt tests, safe beside pytest-timeout's own SIGALRM timer.

A storm re-arms ``ITIMER_REAL`` from its handler, so an alarm already generated when the storm
stops can reach whatever handler is installed next. Restoring pytest-timeout's handler at once
let such a straggler report a "Timeout (>300.0s)" a few milliseconds into a test (seen in CI,
twice in one run). Here the storm keeps pytest-timeout's deadline instead: its handler calls
the timeout's handler once that deadline has passed, during the storm or after it, and treats
any earlier alarm as the storm's straggler.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


class AlarmStorm:
    """Alarms at random instants between ``low`` and ``high`` seconds apart, each calling ``fire``."""

    def __init__(
        self, rng: random.Random, low: float, high: float, fire: Callable[[], None]
    ) -> None:
        self._rng, self._low, self._high, self._fire = rng, low, high, fire
        self.stopped = False

    def start(self) -> None:
        """Arm the next alarm."""
        signal.setitimer(signal.ITIMER_REAL, self._rng.uniform(self._low, self._high))

    def keep_going(self) -> None:
        """Re-arm if an interrupt landed in the handler before it re-armed the timer.

        Without this the storm stops and a loop waiting for interrupts waits forever.
        """
        if not self.stopped and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            self.start()

    def stop(self) -> None:
        """No more alarms; one already on its way is ignored."""
        self.stopped = True
        signal.setitimer(signal.ITIMER_REAL, 0)

    def on_alarm(self) -> None:
        if self.stopped:
            return
        self.start()  # first: the interrupt may be raised in this very handler, right after
        self._fire()


@contextmanager
def alarm_storm(
    rng: random.Random, low: float, high: float, fire: Callable[[], None]
) -> Iterator[AlarmStorm]:
    """Own SIGALRM for a storm (not started: call ``start()``), and hand it back after.

    An outer timer (pytest-timeout's) keeps its deadline throughout: past it, the outer
    handler runs as it would have; afterwards it runs from a guard that ignores stragglers.
    """
    previous = signal.getsignal(signal.SIGALRM)
    remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    deadline = time.monotonic() + remaining if remaining else None
    storm = AlarmStorm(rng, low, high, fire)

    def outer_due(signum: int, frame: FrameType | None) -> bool:
        if deadline is not None and time.monotonic() >= deadline and callable(previous):
            previous(signum, frame)
            return True
        return False

    def handler(signum: int, frame: FrameType | None) -> None:
        if not outer_due(signum, frame):
            storm.on_alarm()

    def guard(signum: int, frame: FrameType | None) -> None:
        outer_due(signum, frame)

    signal.signal(signal.SIGALRM, handler)
    try:
        yield storm
    finally:
        storm.stop()
        signal.signal(signal.SIGALRM, guard)
        if deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3))
