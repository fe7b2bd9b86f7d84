"""Ctrl-C safety of the charge path: interrupts at every traced line and in a SIGALRM storm.

A ``KeyboardInterrupt`` may land anywhere the interpreter checks for signals. These tests put
one at every line (and function entry) of the charge-path modules in turn, through the SIGINT
handler a real Ctrl-C reaches (``signal.getsignal(SIGINT)(SIGINT, frame)`` is what the
interpreter does when the signal arrives), and then a storm of real ones at random instants;
each run must leave no held lock, reservation, current session or recorder, and no session
row still "running" in the store.

``LLMCTX_STORM=N`` runs the storm for N interrupts instead of CI's 1,000.
"""

from __future__ import annotations

import _thread
import dis
import gc
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

import llmctx
from alarms import alarm_storm
from llmctx import _interrupt
from llmctx._context import get_recorders
from llmctx.stores import MemoryStore, SQLiteStore
from llmctx.testing import FakeModel

SRC = Path(llmctx.__file__).parent
# The charge path: what a tracked call runs through, from the session to the store.
TRACED = {
    str(SRC / name)
    for name in (
        "_charge.py",
        "_session.py",
        "_budget.py",
        "_context.py",
        "_recorder.py",
        "testing.py",
        "providers/_base.py",
        "stores/memory.py",
        "stores/sqlite.py",
        "stores/_outbox.py",
        "_redis/ledger.py",
    )
}
STORM = int(os.environ.get("LLMCTX_STORM", "1000"))

_with_exits: dict[CodeType, frozenset[int]] = {}


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap() -> Iterator[None]:
    """Freeze what earlier tests left on the heap out of the collections these tests run.

    They collect after every interrupted point; in a whole-suite run the heap holds every
    framework the suite imported, and a full collection of it costs a quarter of a second.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def _with_exit_offsets(code: CodeType) -> frozenset[int]:
    """Offsets where CPython 3.11+ reports a with-block's exit line, before ``__exit__`` runs.

    The interpreter never delivers a signal there (three constant loads, then the call; the
    signal lands inside ``__exit__``, which is protected), but a trace function raising on
    that line event skips ``__exit__``: a leak no real Ctrl-C can cause, so it is skipped.
    """
    found = _with_exits.get(code)
    if found is None:
        ins = list(dis.get_instructions(code))
        found = frozenset(
            ins[i].offset
            for i in range(len(ins) - 3)
            if all(
                ins[i + j].opname == "LOAD_CONST" and ins[i + j].argval is None for j in range(3)
            )
            and ins[i + 3].opname in ("PRECALL", "CALL")
        )
        _with_exits[code] = found
    return found


def _interrupt_at(k: int) -> tuple[Callable[[FrameType, str, Any], Any], list[int]]:
    """A trace function that delivers SIGINT at the k-th traced event; ``[events seen]``."""
    seen = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event not in ("line", "call"):
            return local
        if event == "line" and frame.f_lasti in _with_exit_offsets(frame.f_code):
            return local
        seen[0] += 1
        if seen[0] == k:
            # What the interpreter does when SIGINT arrives: call the installed handler.
            signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)  # type: ignore[operator]
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in TRACED:
            return local(frame, event, arg)
        return None

    return hook, seen


def _assert_clean(budget: llmctx.Budget, store: Any, name: str | None = None) -> None:
    """Nothing an interrupted run could have left behind is left (in run ``name``'s rows)."""
    snap = budget.ledger.snapshot()
    assert snap.reservations == 0, f"{snap.reservations} reservation(s) left: {snap.reserved}"
    assert llmctx.current_session() is None, "a zombie current session"
    assert get_recorders() == (), "a recorder still bound"
    lock = getattr(budget.ledger, "_lock", None)
    if lock is not None:
        assert lock.acquire(blocking=False), "the ledger's lock is held"
        lock.release()
    rows = store.list_sessions(limit=None, roots_only=name is not None)
    if name is not None:  # only that run's tree
        rows = [r for root in rows if root.name == name for r in store.session_tree(root.id)]
    assert all(r.status != "running" for r in rows), "a session left running in the store"
    children: dict[str | None, list[str]] = {}
    for r in rows:
        children.setdefault(r.parent_id, []).append(r.id)
    direct: dict[str | None, int] = {}
    for c in store.list_calls([r.id for r in rows]):
        direct[c.session_id] = direct.get(c.session_id, 0) + 1

    def tree_calls(session_id: str) -> int:
        return direct.get(session_id, 0) + sum(tree_calls(c) for c in children.get(session_id, []))

    for row in rows:
        if row.parent_id is None and (name is None or row.name == name):
            # A row counts its descendants' calls too (the roll-up).
            assert row.calls == tree_calls(row.id), f"{row.name}: row and stored calls differ"


@contextmanager
def _armed_default() -> Iterator[None]:
    """Python's default SIGINT handler around the test (pytest may install its own)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _charge_once(budget: llmctx.Budget, store: Any, model: FakeModel, i: int) -> None:
    """One budgeted call through session, recorder and tracker (what a user's code does)."""
    with llmctx.session(f"run-{i}", budget=budget, store=store):
        with llmctx.record():
            with llmctx.session(f"child-{i}"):
                model.complete("how many words are here", max_tokens=4)
            with llmctx.track_call(
                provider="acme", model="m", input_tokens=5, max_output_tokens=5
            ) as call:
                call.finish(usage=llmctx.Usage(input_tokens=5, output_tokens=3, requests=1))
            with model.stream("stream these words please", max_tokens=4) as stream:
                for n, _ in enumerate(stream):
                    if n == 1:
                        break
            del stream  # collected here, inside the session, not after it


@contextmanager
def _no_gc_callbacks() -> Iterator[None]:
    """No cyclic collection inside the runs, and no ``gc.callbacks`` (hypothesis adds one).

    CPython swallows an exception raised in a gc callback or in a finalizer the collector
    runs ("Exception ignored in ..."), so an interrupt landing there is lost whatever llmctx
    does; the runs below free what they make by reference counting, and collect in between.
    """
    callbacks = list(gc.callbacks)
    gc.callbacks.clear()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.callbacks.extend(callbacks)
        if enabled:
            gc.enable()


def _every_point(run: Callable[[int], None], check: Callable[[int], None]) -> tuple[int, int]:
    """Interrupt ``run`` at each traced event in turn; (points, runs the interrupt reached)."""
    with _no_gc_callbacks():
        return _each_point(run, check)


def _each_point(run: Callable[[int], None], check: Callable[[int], None]) -> tuple[int, int]:
    k = reached = 0
    while True:
        if k % 100 == 0:
            gc.collect()
        k += 1
        hook, seen = _interrupt_at(k)
        interrupted = False
        sys.settrace(hook)
        try:
            run(k)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        check(k)
        if seen[0] < k:  # the run ended before the k-th point: every point was tried
            assert not interrupted, "an interrupt with no point to land on"
            return k - 1, reached
        assert interrupted, f"the interrupt at point {k} was lost (never raised)"
        reached += 1


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_an_interrupt_at_any_point_of_the_charge_path_leaves_nothing_behind(
    store_kind: str, tmp_path: Path
) -> None:
    """A Ctrl-C at any line of session entry, charging, recording or exit leaks nothing."""
    budget = llmctx.Budget(tokens=10**9)
    sqlite = SQLiteStore(tmp_path / "s.db") if store_kind == "sqlite" else None
    stores: dict[int, Any] = {}
    model = FakeModel(reply="one two three four five")

    def run(k: int) -> None:
        stores[k] = sqlite or MemoryStore()
        _charge_once(budget, stores[k], model, k)

    def check(k: int) -> None:
        # Interrupted before its store existed: only the ledger and the context to check.
        _assert_clean(budget, stores.pop(k, None) or MemoryStore(), f"run-{k}")

    deferred = _interrupt._handler.deferred
    try:
        with _armed_default(), llmctx.price_override("m", input_per_mtok="1", output_per_mtok="1"):
            points, reached = _every_point(run, check)
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        if sqlite is not None:
            sqlite.close()
    # Every point was tried and every interrupt surfaced (deferred ones included).
    assert points > 300 and reached == points
    assert _interrupt._handler.deferred > deferred, "no interrupt landed in protected code"
    # What was not interrupted was charged: the last run (no interrupt) went through.
    assert budget.ledger.snapshot().spent.tokens > 0


def test_a_refused_call_interrupted_anywhere_leaves_nothing_behind() -> None:
    """A budget refusal interrupted at any point still releases every hold."""
    budget = llmctx.Budget(tokens=10)
    store = MemoryStore()
    model = FakeModel(reply="one two three")

    def run(k: int) -> None:
        with llmctx.session(f"r-{k}", budget=budget, store=store), llmctx.session("inner"):
            with pytest.raises(llmctx.BudgetExceeded):
                model.complete("far too many words for this budget", max_tokens=50)

    with _armed_default():
        points, reached = _every_point(run, lambda k: _assert_clean(budget, store, f"r-{k}"))
    assert points > 100 and reached == points


def _storm(
    budget: llmctx.Budget, store: Any, target: int, seed: int
) -> tuple[int, int]:  # pragma: no cover - timing-dependent paths
    """Random real SIGINTs (from SIGALRM) over repeated charged calls; (interrupts, runs)."""
    rng = random.Random(seed)
    model = FakeModel(reply="one two three four five")
    caught = runs = 0

    def fire() -> None:
        if rng.random() < 0.5:  # every other alarm on average, so some runs go through whole
            _thread.interrupt_main()  # a real SIGINT delivery, at the interpreter's next check

    @_interrupt.unprotected
    def one(i: int) -> None:
        _charge_once(budget, store, model, i)

    @_interrupt.protected
    def loop() -> None:
        # The harness itself is protected: an interrupt lands only inside one(), where the
        # user's code runs, and an interrupt arriving between runs is raised in the next one.
        nonlocal caught, runs
        with alarm_storm(rng, 20e-6, 900e-6, fire) as storm:
            storm.start()
            while caught < target:
                runs += 1
                storm.keep_going()
                if runs % 200 == 0:
                    gc.collect()  # here, under protected code, not inside a run
                try:
                    one(runs)
                except KeyboardInterrupt:
                    caught += 1

    # Once untimed first: what the run imports lazily is imported before the storm (an
    # interrupt inside an import lock's weakref callback is swallowed by Python itself).
    with llmctx.session("warm-up", store=MemoryStore()):
        model.complete("warm up", max_tokens=2)
    with _armed_default(), _no_gc_callbacks():
        try:
            with _interrupt.deferring():
                loop()
        except KeyboardInterrupt:
            caught += 1  # the one owed when the storm stopped
    return caught, runs


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer (POSIX)")
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_a_storm_of_real_interrupts_leaves_nothing_behind(store_kind: str, tmp_path: Path) -> None:
    """1,000 real SIGINTs at random sub-millisecond instants: no lock, hold or session left."""
    budget = llmctx.Budget(tokens=10**9)
    store: Any = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "s.db")
    try:
        with llmctx.price_override("m", input_per_mtok="1", output_per_mtok="1"):
            caught, _runs = _storm(budget, store, STORM, seed=7)
        _assert_clean(budget, store)
        assert caught >= STORM
        # Nothing charged is missing from the store, nothing stored went uncharged.
        spent = budget.ledger.snapshot().spent.tokens
        stored = store.list_calls([r.id for r in store.list_sessions(limit=None)])
        assert stored and spent == sum(c.usage.total_tokens for c in stored)
        # And the charge path still works afterwards.
        model = FakeModel(reply="fine")
        with llmctx.session("after", budget=budget, store=store) as s:
            model.complete("still working", max_tokens=2)
        assert s.calls and budget.ledger.snapshot().reservations == 0
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer (POSIX)")
def test_a_storm_on_a_redis_budget_leaves_no_reservation_on_the_server(
    redis_url: str, unique: str
) -> None:
    """Real SIGINTs over calls on a Redis budget: no reservation stays held on the server."""
    from llmctx import RedisLedger

    ledger = RedisLedger(redis_url, f"storm-{unique}", prefix="llmctx-test")
    budget = llmctx.Budget(tokens=10**9, ledger=ledger)
    store = MemoryStore()
    try:
        with llmctx.price_override("m", input_per_mtok="1", output_per_mtok="1"):
            caught, _runs = _storm(budget, store, max(STORM // 4, 50), seed=11)
        _assert_clean(budget, store)
        spent = ledger.snapshot().spent.tokens
        stored = store.list_calls([r.id for r in store.list_sessions(limit=None)])
        assert spent == sum(c.usage.total_tokens for c in stored)
        assert caught >= max(STORM // 4, 50)
    finally:
        ledger.reset()
        ledger.close()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer (POSIX)")
def test_a_storms_straggler_alarm_does_not_reach_the_outer_timer() -> None:
    """An alarm after a storm stops is not taken for the outer (pytest-timeout) timer's."""
    seen: list[str] = []
    outer = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append("outer"))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with alarm_storm(random.Random(1), 1e-4, 2e-4, lambda: seen.append("storm")) as storm:
            storm.start()
            while "storm" not in seen:
                storm.keep_going()
        signal.raise_signal(signal.SIGALRM)  # a straggler, generated before the stop
        assert seen.count("outer") == 0
        # The outer timer is armed again with what was left of its half second, and fires.
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.5
        while "outer" not in seen:
            pass
        assert seen.count("outer") == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer)
