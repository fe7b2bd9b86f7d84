"""monitor() and timed(): measurements, slow-block warnings, attachment to the session."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest

from llmctx._exceptions import ConfigError
from llmctx._monitor import MonitorResult, monitor, timed
from llmctx._session import session


@pytest.fixture
def anyio_backend() -> str:
    """Run the anyio-marked tests on asyncio."""
    return "asyncio"


def _burn() -> int:
    return sum(i * i for i in range(20_000))


def test_monitor_measures_wall_cpu_and_rss() -> None:
    """A monitored block reports non-negative wall and CPU time and the RSS before and after."""
    with monitor("work") as m:
        _burn()
        blob = b"\x01" * (32 * 1024 * 1024)  # written, so every page is resident
    del blob
    r = m.result
    assert isinstance(r, MonitorResult)
    assert r.name == "work"
    assert r.wall_s > 0
    assert r.cpu_s >= 0
    assert r.rss_start is not None
    assert r.rss_end is not None
    assert r.rss_delta == r.rss_end - r.rss_start
    assert r.rss_delta >= 24 * 1024 * 1024, r.rss_delta  # the 32 MiB held at exit shows
    assert r.error is None
    assert not r.slow
    assert set(r.to_dict()) == {
        "name", "wall_s", "cpu_s", "rss_start", "rss_end", "rss_delta", "error", "slow",
    }  # fmt: skip


def test_monitor_records_the_error_and_lets_it_propagate() -> None:
    """An exception in the block is named in the result and re-raised unchanged."""
    m = monitor("fails")
    with pytest.raises(ZeroDivisionError), m:
        1 / 0  # noqa: B018
    assert m.result is not None
    assert m.result.error == "ZeroDivisionError"


def test_slow_block_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A block longer than warn_after logs a warning on llmctx.monitor and is marked slow."""
    with (
        caplog.at_level(logging.WARNING, logger="llmctx.monitor"),
        monitor("slow", warn_after=0) as m,
    ):
        _burn()
    assert m.result is not None
    assert m.result.slow
    assert any("'slow' took" in rec.getMessage() for rec in caplog.records)


def test_fast_block_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """A block under warn_after logs nothing."""
    with caplog.at_level(logging.WARNING, logger="llmctx.monitor"), monitor("fast", warn_after=60):
        pass
    assert not caplog.records


@pytest.mark.parametrize("bad", [-1, "2", float("nan")])
def test_bad_warn_after_is_a_config_error(bad: object) -> None:
    """warn_after must be a number >= 0."""
    with pytest.raises(ConfigError):
        monitor("x", warn_after=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        timed(warn_after=bad)  # type: ignore[arg-type]


def test_result_is_attached_to_the_current_session() -> None:
    """Inside a session the measurement becomes a "monitor" event of that session."""
    with session("monitor-test") as s, monitor("step-1"):
        _burn()
    events = [e for e in s.events if e["kind"] == "monitor"]
    assert len(events) == 1
    assert events[0]["name"] == "step-1"
    assert events[0]["wall_s"] > 0


def test_no_session_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any session the monitor still measures and attaches nothing."""
    from llmctx._session import Session

    attached: list[object] = []
    monkeypatch.setattr(Session, "add_event", lambda self, *a, **k: attached.append(a))
    idle = session("not-entered", store="memory:")  # exists, but is not the current session
    with monitor("alone") as m:
        pass
    assert m.result is not None and m.result.name == "alone"
    assert attached == [] and idle.events == []


class _Clock:
    """A perf_counter the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """The monitors' perf_counter, moved by hand (their CPU clock stays real)."""
    import time as real_time
    from types import SimpleNamespace

    import llmctx._monitor as monitor_module

    fake = _Clock()
    monkeypatch.setattr(
        monitor_module,
        "time",
        SimpleNamespace(perf_counter=fake, process_time=real_time.process_time),
    )
    return fake


@pytest.mark.anyio
async def test_overlapping_timed_calls_keep_their_own_measurement_and_session(
    clock: _Clock,
) -> None:
    """Two overlapping calls of one @timed function in two tasks are not swapped."""
    release = {"x": anyio.Event(), "y": anyio.Event()}
    started = {"x": anyio.Event(), "y": anyio.Event()}
    done_x = anyio.Event()

    @timed("step")
    async def step(who: str) -> None:
        started[who].set()
        await release[who].wait()

    sessions = {}

    async def run(who: str) -> None:
        with session(f"caller-{who}", store="memory:") as s:
            sessions[who] = s
            await step(who)
        if who == "x":
            done_x.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "x")  # x starts at 0
        await started["x"].wait()
        clock.now = 10.0
        tg.start_soon(run, "y")  # y starts at 10
        await started["y"].wait()
        clock.now = 11.0
        release["x"].set()  # x ends first, at 11: its wall is 11
        await done_x.wait()
        clock.now = 13.0
        release["y"].set()  # y ends at 13: its wall is 3
    walls = {
        who: [e["wall_s"] for e in s.events if e["kind"] == "monitor"]
        for who, s in sessions.items()
    }
    assert walls == {"x": [11.0], "y": [3.0]}


def test_one_monitor_overlapping_in_two_threads_pops_its_own_start(clock: _Clock) -> None:
    """One monitor entered in two threads at once: the first to enter, exiting first, gets its own."""
    import threading

    m = monitor("shared", attach=False)
    inside = threading.Event()
    leave = threading.Event()
    walls: dict[str, float] = {}

    def other() -> None:
        with m:  # enters at 10
            inside.set()
            assert leave.wait(10)
            clock.now = 13.0
        assert m.result is not None
        walls["other"] = m.result.wall_s

    t = threading.Thread(target=other)
    with m:  # enters at 0
        clock.now = 10.0
        t.start()
        assert inside.wait(10)
        clock.now = 11.0
    assert m.result is not None
    walls["main"] = m.result.wall_s  # exited at 11
    leave.set()
    t.join(10)
    assert walls == {"main": 11.0, "other": 3.0}


def test_nested_and_reused_monitor_measures_each_block() -> None:
    """The same monitor entered twice at once and then again measures every block on its own."""
    m = monitor("reused")
    with m:
        with m:
            pass
        inner = m.result
        _burn()
    outer = m.result
    assert inner is not None
    assert outer is not None
    assert outer.wall_s >= inner.wall_s
    with m:
        pass
    assert m.result is not outer


@pytest.mark.anyio
async def test_async_monitor_and_timed_coroutine() -> None:
    """`async with monitor()` and @timed on a coroutine function measure and attach."""

    @timed(warn_after=60)
    async def step(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    with anyio.fail_after(5):
        async with session("monitor-async") as s, monitor("block") as m:
            assert await step(21) == 42
    assert m.result is not None
    assert step.__name__ == "step"
    names = [e["name"] for e in s.events if e["kind"] == "monitor"]
    assert names[0].endswith("step")
    assert names[1] == "block"


def test_timed_sync_function_and_block() -> None:
    """@timed wraps a sync function (keeping its name); `with timed()` measures a block."""
    t = timed("square")

    @t
    def square(x: int) -> int:
        return x * x

    assert square(7) == 49
    assert t.last is not None
    assert t.last.name == "square"
    with timed() as m:
        pass
    assert m.result is not None
    assert m.result.name == "timed"
