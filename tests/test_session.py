"""Sessions: nesting and roll-up, lifecycle on every way out, context propagation, resume."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llmctx
from llmctx.stores import MemoryStore, SQLiteStore
from llmctx.testing import FakeModel


@pytest.fixture(autouse=True)
def _priced_fake_model() -> object:
    """Give the fake model a known price: $1 per million input tokens, $2 per million output."""
    with llmctx.price_override("fake-model", input_per_mtok="1", output_per_mtok="2"):
        yield


def test_nested_sessions_roll_up_to_every_ancestor(memory_store: MemoryStore) -> None:
    """A call in an inner session is counted at once in the inner and every outer session."""
    model = FakeModel()
    with llmctx.session("outer", store=memory_store) as outer:
        model.complete("one two three")
        with llmctx.session("inner") as inner:
            assert llmctx.current_session() is inner
            assert inner.parent is outer
            model.complete("four five")
            assert outer.usage.requests == 2  # visible to the outer scope while inner runs
        assert llmctx.current_session() is outer
    assert llmctx.current_session() is None
    assert inner.usage.input_tokens == 2 and inner.usage.requests == 1
    assert outer.usage.input_tokens == 5 and outer.usage.requests == 2
    assert outer.cost == Decimal(5) / 10**6 + Decimal(2 * 5) / 10**6
    assert len(outer.calls) == 2 and len(inner.calls) == 1
    assert inner.store is memory_store  # the child writes where its parent writes
    rows = {r.id: r for r in memory_store.list_sessions()}
    assert rows[inner.id].parent_id == outer.id
    assert rows[outer.id].status == rows[inner.id].status == "completed"


def test_exception_marks_failed_keeps_totals_and_resets_context(memory_store: MemoryStore) -> None:
    """An exception inside a session propagates, marks it failed and keeps what was spent."""
    model = FakeModel()
    with pytest.raises(ZeroDivisionError), llmctx.session("boom", store=memory_store) as s:
        model.complete("a b c")
        1 / 0  # noqa: B018
    assert s.status == "failed"
    assert "ZeroDivisionError" in (s.error or "")
    assert s.usage.requests == 1
    assert llmctx.current_session() is None
    assert memory_store.get_session(s.id).status == "failed"  # type: ignore[union-attr]


def test_keyboard_interrupt_marks_cancelled(memory_store: MemoryStore) -> None:
    """KeyboardInterrupt passes through untouched and the session ends cancelled."""
    with pytest.raises(KeyboardInterrupt), llmctx.session(store=memory_store) as s:
        FakeModel().complete("x")
        raise KeyboardInterrupt
    assert s.status == "cancelled"
    assert llmctx.current_session() is None
    assert s.usage.requests == 1


def test_task_cancellation_marks_cancelled_and_releases_reservation(
    memory_store: MemoryStore,
) -> None:
    """Cancelling a task mid-call cancels its session and releases the call's reservation."""
    budget = llmctx.Budget(tokens=1_000)
    started = asyncio.Event()
    entered: list[llmctx.Session] = []

    async def work() -> None:
        async with llmctx.session(store=memory_store, budget=budget) as s:
            entered.append(s)
            with llmctx.track_call(
                provider="fake", model="fake-model", input_tokens=10, max_output_tokens=100
            ):
                started.set()
                await asyncio.Event().wait()  # never set: only cancellation gets out

    async def main() -> None:
        task = asyncio.create_task(work())
        await asyncio.wait_for(started.wait(), 5)
        assert budget.ledger.snapshot().reserved.tokens == 110
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (s,) = entered
    assert s.status == "cancelled"
    snap = budget.ledger.snapshot()
    assert snap.reserved.tokens == 0 and snap.reservations == 0
    assert [c.status for c in s.calls] == ["cancelled"]


def test_entering_twice_is_a_clear_error(memory_store: MemoryStore) -> None:
    """A session object can be entered only once."""
    s = llmctx.session(store=memory_store)
    with s:
        pass
    with pytest.raises(llmctx.SessionStateError, match="already entered"), s:
        pass


def test_interrupt_while_the_entry_row_is_written_leaves_no_current_session() -> None:
    """Ctrl-C while a session's first row is written: it never becomes current, so later
    sessions are not its children and its budget refuses nothing.

    The store is a MemoryStore whose first save_session raises KeyboardInterrupt: a real store
    cannot be interrupted at that exact point on demand.
    """

    class InterruptedOnce(MemoryStore):
        interrupted = False

        def save_session(self, session: Any) -> None:
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            super().save_session(session)

    store = InterruptedOnce()
    doomed = llmctx.session("doomed", budget=llmctx.Budget(tokens=1), store=store)
    with pytest.raises(KeyboardInterrupt):
        doomed.__enter__()
    assert llmctx.current_session() is None
    with llmctx.session("next", store=store) as later:
        assert later.parent is None
        FakeModel().complete("not refused by the doomed budget")
    with doomed:  # never entered, so it can still be entered
        assert llmctx.current_session() is doomed


def test_asyncio_tasks_inherit_the_session(memory_store: MemoryStore) -> None:
    """Tasks created inside a session charge it without being passed the session."""
    model = FakeModel()

    async def main() -> llmctx.Session:
        async with llmctx.session(store=memory_store) as s:
            await asyncio.gather(*(model.acomplete(f"w{i} x y") for i in range(20)))
            return s

    s = asyncio.run(main())
    assert s.usage.requests == 20
    assert s.usage.input_tokens == 60


def test_threads_get_the_session_through_the_helpers(memory_store: MemoryStore) -> None:
    """wrap() and ContextThreadPoolExecutor carry the session into threads; plain threads don't."""
    model = FakeModel()
    seen_plain: list[object] = []
    with llmctx.session(store=memory_store) as s:
        with llmctx.ContextThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: model.complete(f"t{i}"), range(8)))
        t = threading.Thread(target=llmctx.wrap(model.complete), args=("via wrap",))
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as plain:
            plain.submit(lambda: seen_plain.append(llmctx.current_session())).result()

        async def in_executor() -> None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, llmctx.wrap(model.complete), "from executor")

        asyncio.run(in_executor())
    assert s.usage.requests == 10
    assert seen_plain == [None]


def test_stream_consumed_after_scope_exit_charges_its_scope(memory_store: MemoryStore) -> None:
    """A stream opened in a session and read after it exited is still charged to it."""
    model = FakeModel()
    with llmctx.session(store=memory_store) as s:
        stream = model.stream("alpha beta gamma")
        first = next(stream)  # opened (and reserved) inside the scope
    assert s.status == "completed"
    rest = list(stream)
    assert [first, *rest] == ["gamma", "beta", "alpha"]
    assert s.usage.output_tokens == 3 and s.usage.requests == 1
    assert memory_store.list_calls([s.id])[0].usage.output_tokens == 3


def test_stream_abandoned_early_is_charged_as_estimated(memory_store: MemoryStore) -> None:
    """A consumer that breaks early is charged for what it got and the reservation is settled."""
    budget = llmctx.Budget(tokens=10_000)
    model = FakeModel()
    with llmctx.session(store=memory_store, budget=budget) as s:
        for word in model.stream("one two three four five", max_tokens=50):
            assert word == "five"
            break
    (call,) = s.calls
    assert call.estimated and call.metadata.get("abandoned")
    assert call.usage.output_tokens == 1
    snap = budget.ledger.snapshot()
    assert snap.reservations == 0 and snap.spent.tokens == 6


def test_exception_mid_stream_releases_and_records(memory_store: MemoryStore) -> None:
    """An error while a stream is being read settles what was used and records the error."""
    budget = llmctx.Budget(tokens=10_000)
    model = FakeModel()
    with llmctx.session(store=memory_store, budget=budget) as s:
        stream = model.stream("a b c d")
        next(stream)
        with pytest.raises(RuntimeError):
            stream.throw(RuntimeError("connection reset"))
    (call,) = s.calls
    assert call.status == "error" and "connection reset" in (call.error or "")
    assert budget.ledger.snapshot().reservations == 0


def test_budget_stops_the_call_before_it_is_sent(memory_store: MemoryStore) -> None:
    """A call that could exceed an ancestor's budget raises before the model is reached."""
    model = FakeModel()
    with llmctx.session("outer", store=memory_store, budget=llmctx.Budget(tokens=100)) as outer:
        with llmctx.session("inner"):
            model.complete("a b c", max_tokens=50)  # worst case 53 fits
            with pytest.raises(llmctx.BudgetExceeded) as info:
                model.complete("d e f", max_tokens=95)  # 6 spent + 98 > 100
    err = info.value
    assert model.requests_sent == 1
    assert err.session_id == outer.id and err.dimension == "tokens"
    assert (err.limit, err.spent, err.reserved, err.requested) == (100, 6, 0, 98)
    assert "outer" in str(err) and "limit 100" in str(err)


def test_money_budget_with_unknown_price_fails_closed(memory_store: MemoryStore) -> None:
    """With a money budget, a model without a price is refused before sending (never $0)."""
    model = FakeModel("mystery-model-xyz")
    with llmctx.session(store=memory_store, budget=llmctx.Budget(usd="1")):
        with pytest.raises(llmctx.UnknownPrice, match="mystery-model-xyz"):
            with llmctx.track_call(provider="fake", model="mystery-model-xyz", input_tokens=3):
                pytest.fail("the call must not be sent")
    assert model.requests_sent == 0


def test_unknown_price_without_money_budget_warns_and_cost_is_none(
    memory_store: MemoryStore,
) -> None:
    """Without a money budget an unpriced call is recorded with cost None, a reason and a warning."""
    with llmctx.session(store=memory_store) as s:
        with pytest.warns(llmctx.UnknownPriceWarning, match="unpriced-model-abc"):
            with llmctx.track_call(provider="acme", model="unpriced-model-abc") as call:
                call.finish(usage=llmctx.Usage(input_tokens=5, output_tokens=5, requests=1))
    assert s.cost is None
    assert "could not be priced" in (s.cost_note or "")
    assert s.calls[0].cost is None and s.calls[0].cost_note


def test_unknown_price_warning_gives_the_fix_once() -> None:
    """The UnknownPriceWarning names llmctx.set_price exactly once."""
    with llmctx.session(store="memory:"):
        with pytest.warns(llmctx.UnknownPriceWarning) as caught:
            with llmctx.track_call(provider="acme", model="unpriced-model-once") as call:
                call.finish(usage=llmctx.Usage(input_tokens=5, output_tokens=5, requests=1))
    message = str(caught[0].message)
    assert message.count("set_price") == 1, message


def test_secrets_never_reach_the_store(tmp_path: Path) -> None:
    """API keys and bearer tokens in a request or error are redacted before they are stored."""
    store = SQLiteStore(tmp_path / "r.db")
    secret = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX123456"
    with llmctx.session(store=store) as s:
        with llmctx.track_call(
            provider="openai",
            model="fake-model",
            request={
                "api_key": secret,
                "headers": {"Authorization": f"Bearer {secret}"},
                "messages": [{"role": "user", "content": f"my key is {secret}"}],
                "max_tokens": 5,
            },
        ) as call:
            call.finish(usage=llmctx.Usage(input_tokens=1, requests=1), response="ok")
        with (
            pytest.raises(PermissionError),
            llmctx.track_call(provider="openai", model="fake-model"),
        ):
            raise PermissionError(f"401 for key {secret}")
    store.close()
    raw = (tmp_path / "r.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("r.db-*")
    )
    assert secret.encode() not in raw
    calls = SQLiteStore(tmp_path / "r.db").list_calls([s.id])
    assert calls[0].request["max_tokens"] == 5  # counts are not mistaken for secrets
    assert "[REDACTED]" in calls[1].error


def test_secrets_in_replies_metadata_names_and_tags_never_reach_the_store(
    tmp_path: Path,
) -> None:
    """A key quoted in a reply, call metadata, a session name or a tag is redacted in the
    database file, and a BudgetExceeded message does not repeat it."""
    store = SQLiteStore(tmp_path / "r.db")
    secret = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX123456"
    budget = llmctx.Budget(tokens=10)
    with llmctx.session(
        f"run with {secret}", budget=budget, tags={"note": f"key={secret}"}, store=store
    ) as s:
        with llmctx.track_call(
            provider="openai",
            model="fake-model",
            max_output_tokens=0,
            metadata={"auth": f"Bearer {secret}"},
        ) as call:
            call.finish(
                usage=llmctx.Usage(input_tokens=1, requests=1),
                response=f"Sure, your key is {secret}.",
            )
        with pytest.raises(llmctx.BudgetExceeded) as info:
            with llmctx.track_call(provider="openai", model="fake-model", input_tokens=100):
                pass
        assert secret not in str(info.value)
        assert "session" in str(info.value)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
    assert secret.encode() not in raw
    stored = SQLiteStore(tmp_path / "r.db").list_calls([s.id])[0]
    assert stored.response == "Sure, your key is [REDACTED]."


def test_record_content_false_keeps_usage_not_text(memory_store: MemoryStore) -> None:
    """record_content=False stores usage and cost but neither prompt nor response."""
    with llmctx.session(store=memory_store, record_content=False) as s:
        FakeModel().complete("private words here")
    (stored,) = memory_store.list_calls([s.id])
    assert stored.request is None and stored.response is None
    assert stored.usage.input_tokens == 3


def test_record_content_false_keeps_no_text_in_memory_either(memory_store: MemoryStore) -> None:
    """record_content=False drops the text from s.calls and from every ancestor's calls too."""
    with llmctx.session("outer", store=memory_store) as outer:
        with llmctx.session("inner", record_content=False) as inner:
            FakeModel(reply="secret reply").complete("private words here")
    for s in (inner, outer):
        (call,) = s.calls
        assert call.request is None and call.response is None and call.tool_calls is None
        assert call.usage.input_tokens == 3
    assert "private" not in repr(outer.calls) and "secret reply" not in repr(outer.calls)


def test_record_captures_prompt_response_pairs_without_a_session(tmp_path: Path) -> None:
    """llmctx.record() captures calls from deep in the stack, with or without a session."""
    model = FakeModel(reply="pong")

    def deep() -> None:
        model.complete(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping"}]
        )

    with llmctx.record() as outer:
        deep()
        with llmctx.record() as inner:
            model.complete("hello")
    assert [p.prompt for p in outer.pairs] == ["ping", "hello"]
    assert [p.response for p in outer.pairs] == ["pong", "pong"]
    assert [p.prompt for p in inner.pairs] == ["hello"]
    assert outer.to_jsonl(tmp_path / "calls.jsonl") == 2
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 2


def test_resume_restores_totals_and_budget(tmp_path: Path) -> None:
    """A failed session resumed from SQLite continues with its totals and budget state."""
    db = tmp_path / "resume.db"
    model = FakeModel()
    with (
        pytest.raises(RuntimeError),
        llmctx.session("job", store=str(db), budget=llmctx.Budget(tokens=40)) as first,
    ):
        model.complete("a b c d e", max_tokens=10)  # 5 in + 5 out
        with llmctx.session("step"):
            model.complete("f g", max_tokens=10)  # 2 in + 2 out
        raise RuntimeError("worker died")
    resumed = llmctx.session.resume(first.id, store=str(db))
    assert resumed.usage == first.usage
    assert resumed.cost == first.cost
    assert len(resumed.calls) == 2
    with resumed as s:
        assert s.id == first.id
        assert s.remaining()["tokens"] == 40 - 14
        with pytest.raises(llmctx.BudgetExceeded):
            model.complete("h i", max_tokens=30)  # 14 + 32 > 40: the restored budget refuses
        model.complete("h i", max_tokens=10)
    assert s.status == "completed"
    row = SQLiteStore(db).get_session(first.id)
    assert row is not None and row.status == "completed" and row.metadata["resumed"] == 1
    assert row.usage.requests == 3


def test_resume_unknown_or_completed_session_is_a_clear_error(memory_store: MemoryStore) -> None:
    """Resuming an unknown id or a completed session says what to do instead."""
    with pytest.raises(llmctx.SessionNotFound, match="llmctx sessions ls"):
        llmctx.session.resume("no-such-id", store=memory_store)
    with llmctx.session(store=memory_store) as s:
        pass
    with pytest.raises(llmctx.SessionStateError, match="allow_completed"):
        llmctx.session.resume(s.id, store=memory_store)
    assert llmctx.session.resume(s.id, store=memory_store, allow_completed=True).id == s.id


def test_bad_session_arguments_are_clear_errors() -> None:
    """Wrong argument types and negative budgets are refused with the fix in the message."""
    with pytest.raises(llmctx.ConfigError, match="llmctx.Budget"):
        llmctx.session(budget={"usd": 1})  # type: ignore[arg-type]
    with pytest.raises(llmctx.ConfigError, match=">= 0"):
        llmctx.Budget(usd="-1")
    with pytest.raises(llmctx.ConfigError, match="whole number"):
        llmctx.Budget(tokens=1.5)  # type: ignore[arg-type]


def test_unwritable_default_db_is_a_clear_error_and_context_stays_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose store cannot be opened raises StoreError and leaves no session current."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LLMCTX_DB", str(blocker / "sub" / "x.db"))
    s = llmctx.session()
    with pytest.raises(llmctx.StoreError, match="LLMCTX_DB"):
        s.__enter__()
    assert llmctx.current_session() is None
    assert s.status == "created"


def test_call_survives_sigkill_right_after_it_returned(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after a call returned still has that call in SQLite."""
    db = tmp_path / "kill.db"
    script = textwrap.dedent(
        f"""
        import os, signal, llmctx
        from llmctx.testing import FakeModel
        s = llmctx.session("doomed", store={str(db)!r})
        s.__enter__()
        reply = FakeModel().complete("survive this please")
        print(s.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    session_id = proc.stdout.strip()
    store = SQLiteStore(db)
    (call,) = store.list_calls([session_id])
    assert call.response == "please this survive"
    row = store.get_session(session_id)
    assert row is not None and row.status == "running"  # interrupted, resumable
    resumed = llmctx.session.resume(session_id, store=store)
    assert resumed.usage.requests == 1
    assert os.path.exists(db)


def test_bad_call_input_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    """A call with bad arguments raises ConfigError; earlier calls stay recorded, the session lives."""
    db = tmp_path / "bad.db"
    model = FakeModel()
    with llmctx.session("careful", store=str(db), budget=llmctx.Budget(tokens=1_000)) as s:
        model.complete("one two")
        with pytest.raises(llmctx.ConfigError, match="max_output_tokens"):
            llmctx.track_call(provider="fake", model="fake-model", max_output_tokens=-5)
        with pytest.raises(llmctx.ConfigError, match="input_tokens"):
            llmctx.track_call(provider="fake", model="fake-model", input_tokens=1.5)  # type: ignore[arg-type]
        model.complete("three")
    assert s.status == "completed"
    assert s.budget is not None and s.budget.ledger.snapshot().reservations == 0
    stored = SQLiteStore(db).list_calls([s.id])
    assert [c.request["prompt"] for c in stored] == ["one two", "three"]


def test_recorder_table_shows_model_text_literally() -> None:
    """A reply that looks like rich markup is shown as text, not parsed (no MarkupError)."""
    from rich.console import Console

    with llmctx.record() as rec:
        FakeModel(reply="[/] [bold]not markup[/bold]").complete("x")
    console = Console(record=True, width=200)
    console.print(rec.table())
    assert "[/] [bold]not markup[/bold]" in console.export_text()


def test_racing_ends_of_one_call_charge_it_once(memory_store: MemoryStore) -> None:
    """finish/fail racing from several threads charge the call once and all get one record."""
    budget = llmctx.Budget(tokens=1_000)
    with llmctx.session(store=memory_store, budget=budget) as s:
        tracker = llmctx.track_call(provider="fake", model="fake-model", max_output_tokens=10)
        tracker.start()
        usage = llmctx.Usage(input_tokens=3, output_tokens=4, requests=1)
        barrier = threading.Barrier(8)

        def end(i: int) -> llmctx.CallRecord:
            barrier.wait()
            return tracker.finish(usage=usage) if i % 2 else tracker.fail(RuntimeError("x"))

        with ThreadPoolExecutor(8) as pool:
            records = list(pool.map(end, range(8)))
    (record,) = {id(r): r for r in records}.values()  # every caller got the same record
    assert len(s.calls) == 1 and len(memory_store.list_calls([s.id])) == 1
    assert s.usage == record.usage  # charged once, whichever end won
    snap = budget.ledger.snapshot()
    assert snap.reservations == 0 and snap.spent.tokens == record.usage.total_tokens


def _row_matches_calls(store: llmctx.stores.Store, session_id: str) -> None:
    """Assert a stored row's totals equal the sum of the stored calls of its tree."""
    row = store.get_session(session_id)
    assert row is not None
    calls = store.list_calls([r.id for r in store.session_tree(session_id)])
    assert row.calls == len(calls)
    assert row.usage == sum((c.usage for c in calls), llmctx.Usage())
    assert row.cost == sum((c.cost for c in calls if c.cost is not None), Decimal(0))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_threads_charging_one_root_leave_its_row_equal_to_its_calls(
    kind: str, tmp_path: Path
) -> None:
    """8 threads charging a root and its children: the stored rows match the calls, every trial."""
    model = FakeModel()
    for trial in range(6):
        store: llmctx.stores.Store = (
            MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / f"t{trial}.db")
        )
        with llmctx.session("root", store=store) as root:

            def work(i: int) -> None:
                if i % 2:
                    with llmctx.session(f"child-{i}"):
                        for _ in range(5):
                            model.complete(f"c{i}")
                else:
                    for _ in range(5):
                        model.complete(f"r{i}")

            with llmctx.ContextThreadPoolExecutor(8) as pool:
                list(pool.map(work, range(8)))
            # Before the root exits (a crash here): its row already counts every call.
            _row_matches_calls(store, root.id)
            row = store.get_session(root.id)
            assert row is not None and row.calls == 40 == len(root.calls)
        _row_matches_calls(store, root.id)
        store.close()


def test_parent_row_counts_child_calls_before_anyone_exits(tmp_path: Path) -> None:
    """A process killed inside a child session leaves its parent's row counting the child's calls."""
    db = tmp_path / "parent.db"
    script = textwrap.dedent(
        f"""
        import os, signal, llmctx
        from llmctx.testing import FakeModel
        parent = llmctx.session("parent", store={str(db)!r})
        parent.__enter__()
        FakeModel().complete("one")
        child = llmctx.session("child")
        child.__enter__()
        FakeModel().complete("two three")
        FakeModel().complete("four")
        print(parent.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = SQLiteStore(db)
    try:
        row = store.get_session(proc.stdout.strip())
        assert row is not None and row.calls == 3 and row.usage.input_tokens == 4
        _row_matches_calls(store, row.id)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Bounded memory: totals are counters, calls a window of the most recent ones.


def _charge_words(model: FakeModel, i: int) -> None:
    model.complete(f"call {i} " + "word " * 100, max_tokens=4)  # a ~500-character prompt


def test_a_session_keeps_a_bounded_window_of_calls_and_reads_all_from_its_store(
    tmp_path: Path,
) -> None:
    """keep_calls=5: calls holds the 5 most recent (inner and outer alike), the totals and
    call_count count all 12, and all_calls() reads the 12 back from the SQLite store."""
    model = FakeModel()
    store = SQLiteStore(tmp_path / "window.db")
    with llmctx.session("outer", store=store, keep_calls=5) as outer:
        with llmctx.session("inner", keep_calls=5) as inner:
            for i in range(12):
                _charge_words(model, i)
        assert [c.request["prompt"].split()[1] for c in inner.calls] == [
            "7",
            "8",
            "9",
            "10",
            "11",
        ]
        assert [c.id for c in outer.calls] == [c.id for c in inner.calls]
        assert outer.call_count == inner.call_count == 12
        assert outer.usage.requests == 12
        everything = outer.all_calls()
        assert len(everything) == 12
        assert {c.id for c in everything} >= {c.id for c in outer.calls}
    store.close()


def test_keep_calls_none_keeps_every_call_and_bad_values_are_refused(
    memory_store: MemoryStore,
) -> None:
    """keep_calls=None keeps every call in memory; a negative or non-integer keep_calls is a
    ConfigError that says what it takes."""
    model = FakeModel()
    with llmctx.session("all", store=memory_store, keep_calls=None) as s:
        for i in range(30):
            _charge_words(model, i)
    assert len(s.calls) == 30 and s.all_calls() == s.calls
    for bad in (-1, 2.5, "10"):
        with pytest.raises(llmctx.ConfigError, match="keep_calls"):
            llmctx.session("bad", keep_calls=bad)  # type: ignore[arg-type]


def test_memory_does_not_grow_with_the_calls_of_a_long_nested_session(tmp_path: Path) -> None:
    """Python memory held after 4,000 more calls of a 500-character prompt into a nested
    session on SQLite stays flat: under 1 MB, the room the bounded caches (redaction, the
    windows) may take meanwhile, where keeping the records takes ~4 MB; every call is still
    counted and stored."""
    import gc
    import tracemalloc

    model = FakeModel()
    store = SQLiteStore(tmp_path / "memory.db")
    try:
        with llmctx.session("root", store=store, keep_calls=50) as root:
            with llmctx.session("child", keep_calls=50):
                for i in range(1_000):  # the windows fill up, the caches warm
                    _charge_words(model, i)
                gc.collect()
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    for i in range(1_000, 5_000):
                        _charge_words(model, i)
                    gc.collect()
                    after = tracemalloc.get_traced_memory()[0]
                finally:
                    tracemalloc.stop()
            assert root.call_count == 5_000 and len(root.calls) == 50
            assert len(store.list_calls([r.id for r in store.session_tree(root.id)])) == 5_000
    finally:
        store.close()
    assert after - before < 1_000_000, f"grew {after - before:,} bytes over 4,000 calls"


# ---------------------------------------------------------------------------------------------
# Several budgets on one session; call and tool-call caps.


def test_a_call_must_fit_every_budget_of_a_session_all_or_nothing(
    memory_store: MemoryStore,
) -> None:
    """session(budget=[a, b]): a call that fits a but not b is refused and reserves on
    neither; one that fits both is charged to both; remaining() shows the tighter one."""
    roomy = llmctx.Budget(tokens=10_000)
    tight = llmctx.Budget(tokens=100)
    model = FakeModel()
    with llmctx.session("two", store=memory_store, budget=[roomy, tight]) as s:
        assert s.budgets == (roomy, tight) and s.budget is roomy
        model.complete("one two three", max_tokens=10)
        with pytest.raises(llmctx.BudgetExceeded):
            model.complete("four five", max_tokens=500)
        left = s.remaining()
    assert roomy.ledger.snapshot().spent.tokens == tight.ledger.snapshot().spent.tokens > 0
    assert roomy.ledger.snapshot().reserved.tokens == tight.ledger.snapshot().reserved.tokens == 0
    assert left["tokens"] == 100 - tight.ledger.snapshot().spent.tokens
    assert left["usd"] is None and set(left) == {"usd", "tokens", "requests", "calls", "tool_calls"}


def test_calls_and_tool_calls_caps_stop_a_runaway_loop(memory_store: MemoryStore) -> None:
    """Budget(calls=2) refuses the third model call; Budget(tool_calls=1) the second tool
    call, while model calls go on; both before anything is sent."""
    model = FakeModel()
    with llmctx.session("loop", store=memory_store, budget=llmctx.Budget(calls=2)):
        model.complete("a b")
        model.complete("c d")
        with pytest.raises(llmctx.BudgetExceeded):
            model.complete("e f")
    assert model.requests_sent == 2

    def tool() -> None:
        with llmctx.track_call(provider="mcp", model="files.read", kind="tool") as call:
            call.finish(response="ok")

    with llmctx.session("tools", store=memory_store, budget=llmctx.Budget(tool_calls=1)) as s:
        tool()
        model.complete("g h")
        with pytest.raises(llmctx.BudgetExceeded):
            tool()
        assert s.remaining()["tool_calls"] == 0


def test_a_bad_budget_argument_says_what_session_takes() -> None:
    """session(budget=...) with something other than a Budget or a list of them is a
    ConfigError naming llmctx.Budget."""
    for bad in ("0.50", [llmctx.Budget(tokens=1), "x"], 5):
        with pytest.raises(llmctx.ConfigError, match="llmctx.Budget"):
            llmctx.session("bad", budget=bad)  # type: ignore[arg-type]


def test_resume_restores_every_budget_of_a_session(tmp_path: Path) -> None:
    """A failed session with two budgets resumes with both, each restored to the spend."""
    store = SQLiteStore(tmp_path / "resume.db")
    model = FakeModel()
    with pytest.raises(RuntimeError):
        with llmctx.session(
            "two", store=store, budget=[llmctx.Budget(tokens=10_000), llmctx.Budget(calls=3)]
        ) as s:
            model.complete("one two")
            raise RuntimeError("boom")
    again = llmctx.session.resume(s.id, store=store)
    assert [b.limit("calls") for b in again.budgets] == [None, 3]
    assert again.budgets[1].ledger.snapshot().spent.calls == 1
    assert again.budgets[0].ledger.snapshot().spent.tokens == s.usage.total_tokens
    store.close()


def test_async_entry_loads_the_price_data_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first async session loads genai-prices' data in a worker thread, not on the loop."""
    import threading

    from llmctx import _pricing

    monkeypatch.setattr(_pricing, "_snapshot_obj", None)
    loaded_in: list[int] = []
    real = _pricing._snapshot

    def snapshot() -> Any:
        loaded_in.append(threading.get_ident())
        return real()

    monkeypatch.setattr(_pricing, "_snapshot", snapshot)

    async def main() -> int:
        async with llmctx.session("prices-off-loop", store=MemoryStore()):
            assert _pricing.prices_loaded()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert loaded_in and loop_thread not in loaded_in


def test_remaining_reads_a_keyed_budgets_own_account(memory_store: MemoryStore) -> None:
    """remaining() of a keyed budget is what that key has left on the shared ledger."""
    ledger = llmctx.MemoryLedger()
    model = FakeModel()
    with llmctx.session(
        "first", store=memory_store, budget=llmctx.Budget(tokens=100, key="user:1", ledger=ledger)
    ):
        model.complete("a b c d e", max_tokens=10)  # 5 in + 5 out on user:1
    budget = llmctx.Budget(tokens=100, key="user:1", ledger=ledger)
    with llmctx.session("second", store=memory_store, budget=budget) as s:
        assert s.remaining()["tokens"] == 100 - 10
    other = llmctx.Budget(tokens=100, key="user:2", ledger=ledger)
    with llmctx.session("third", store=memory_store, budget=other) as s:
        assert s.remaining()["tokens"] == 100  # another key's account is untouched


def test_resume_leaves_a_keyed_account_as_its_ledger_has_it(tmp_path: Path) -> None:
    """Resuming with a keyed budget keeps the key's shared spend (other sessions' included)."""
    db = tmp_path / "keyed.db"
    ledger = llmctx.MemoryLedger()
    model = FakeModel()

    def keyed() -> llmctx.Budget:
        return llmctx.Budget(tokens=100, key="user:9", ledger=ledger)

    with pytest.raises(RuntimeError), llmctx.session("job", store=str(db), budget=keyed()) as s:
        model.complete("a b c d e", max_tokens=10)  # 10 tokens on user:9
        raise RuntimeError("worker died")
    with llmctx.session("meanwhile", store=str(db), budget=keyed()):
        model.complete("f g", max_tokens=10)  # 4 more on user:9, from another session
    resumed = llmctx.session.resume(s.id, store=str(db), budget=keyed())
    with resumed as r:
        assert r.usage.total_tokens == 10  # the session's own totals, rebuilt
        assert r.remaining()["tokens"] == 100 - 14  # the key's spend, not reset to 10
