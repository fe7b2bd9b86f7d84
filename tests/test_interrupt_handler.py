"""The deferring SIGINT handler itself (llmctx._interrupt): when it arms, defers and delivers."""

from __future__ import annotations

import _thread
import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import llmctx
from llmctx import _interrupt


@pytest.fixture(autouse=True)
def default_handler() -> Iterator[None]:
    """Python's default SIGINT handler around each test (pytest may install its own)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@_interrupt.protected
def _bookkeeping(log: list[str]) -> None:
    _thread.interrupt_main()  # Ctrl-C arrives in the middle of it
    for step in ("took", "kept", "done"):
        log.append(step)


def test_an_interrupt_in_protected_code_waits_until_it_returns() -> None:
    """A Ctrl-C inside protected code lets it finish, then is raised in the caller."""
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt), _interrupt.deferring() as armed:
        assert armed
        _bookkeeping(log)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the caller goes on; the interrupt reaches it
            time.sleep(0.001)
        log.append("never")
    assert log == ["took", "kept", "done"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_interrupt_reaches_a_main_thread_blocked_in_a_lock() -> None:
    """A deferred Ctrl-C still interrupts the blocking wait the caller went on to."""
    held = threading.Lock()
    held.acquire()
    try:
        with pytest.raises(KeyboardInterrupt), _interrupt.deferring():
            _bookkeeping([])
            t0 = time.monotonic()
            held.acquire(timeout=10)  # a wait nobody ends: only the interrupt can
        assert time.monotonic() - t0 < 5
    finally:
        held.release()


def test_an_interrupt_outside_protected_code_is_raised_at_once() -> None:
    """Unprotected code gets the interrupt where it lands, as with Python's own handler."""
    with _interrupt.deferring(), pytest.raises(KeyboardInterrupt):
        _thread.interrupt_main()
        for _ in range(10_000):
            pass
        time.sleep(5)


def test_an_owed_interrupt_is_raised_when_the_block_ends() -> None:
    """An interrupt still owed when the last armed block ends is raised there, not lost."""
    with pytest.raises(KeyboardInterrupt), _interrupt.deferring():
        _bookkeeping([])  # no time for the re-delivery before the block ends
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    time.sleep(0.2)  # and no late second one


def test_an_applications_own_handler_is_never_replaced() -> None:
    """With a handler of the application's own, sessions leave it in place."""
    seen: list[int] = []

    def mine(signum: int, frame: object) -> None:
        seen.append(signum)

    signal.signal(signal.SIGINT, mine)
    with llmctx.session("s") as s, _interrupt.deferring() as armed:
        assert not armed and s.status == "running"
        assert signal.getsignal(signal.SIGINT) is mine
    assert signal.getsignal(signal.SIGINT) is mine


def test_a_root_session_arms_and_restores_the_default_handler() -> None:
    """A root session on the main thread arms the handler; leaving it restores Python's."""
    with llmctx.session("root"):
        assert signal.getsignal(signal.SIGINT) is _interrupt._handler
        with llmctx.session("child"):
            assert signal.getsignal(signal.SIGINT) is _interrupt._handler
        assert signal.getsignal(signal.SIGINT) is _interrupt._handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_asyncio_run_keeps_its_own_handler_for_sessions_inside() -> None:
    """Under asyncio.run, Ctrl-C stays asyncio's task cancellation: sessions do not arm."""

    async def main() -> object:
        async with llmctx.session("inside"):
            return signal.getsignal(signal.SIGINT)

    assert asyncio.run(main()) is not _interrupt._handler


def test_sessions_off_the_main_thread_do_not_touch_signals() -> None:
    """A root session in a worker thread works and leaves signal handling alone."""
    out: list[object] = []

    def work() -> None:
        with llmctx.session("worker") as s:
            out.append(s.status)
        out.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out == ["running", signal.default_int_handler]
