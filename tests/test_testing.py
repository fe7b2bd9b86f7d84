"""llmctx.testing: FakeModel is charged like a real model (eager streams, prices, async streams);
the pytest fixtures record into their own MemoryStore."""

from __future__ import annotations

import gc

import pytest

import llmctx
from llmctx.stores import MemoryStore, default_store
from llmctx.testing import FakeModel


@pytest.fixture
def anyio_backend() -> str:
    """Run the anyio-marked tests on asyncio."""
    return "asyncio"


def test_stream_checks_the_budget_when_created_not_when_read() -> None:
    """model.stream() over budget raises BudgetExceeded at once, and nothing is sent."""
    model = FakeModel()
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=10)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            model.stream("a b c", max_tokens=50)  # never iterated
    assert model.requests_sent == 0 and s.calls == []


def test_stream_created_in_a_session_and_first_read_after_it_is_charged_to_it() -> None:
    """A stream created in a session but first iterated after it exited is charged to it."""
    store = MemoryStore()
    with llmctx.session(store=store) as s:
        stream = FakeModel().stream("alpha beta")
    assert llmctx.current_session() is None
    assert list(stream) == ["beta", "alpha"]
    assert s.usage.output_tokens == 2 and s.usage.requests == 1
    assert store.list_calls([s.id])[0].usage.output_tokens == 2


def test_stream_dropped_unread_releases_its_reservation() -> None:
    """A stream created and dropped without reading settles its reservation (charged 0 words)."""
    budget = llmctx.Budget(tokens=1_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        stream = FakeModel().stream("one two", max_tokens=100)
        assert budget.ledger.snapshot().reservations == 1
        del stream
        gc.collect()
        assert budget.ledger.snapshot().reservations == 0
    (call,) = s.calls
    assert call.estimated and call.usage.output_tokens == 0


def test_unknown_model_under_a_money_budget_is_unknown_price() -> None:
    """A FakeModel named after an unpriced model raises UnknownPrice under a money budget."""
    model = FakeModel("no-such-model-anywhere")
    with llmctx.session(store="memory:", budget=llmctx.Budget(usd="1")):
        with pytest.raises(llmctx.UnknownPrice, match="no-such-model-anywhere"):
            model.complete("hi")
        with pytest.raises(llmctx.UnknownPrice):
            model.stream("hi")
    assert model.requests_sent == 0


def test_default_model_is_free_and_a_set_price_is_charged() -> None:
    """The default fake model costs $0; a price set for a named fake model is charged."""
    with llmctx.session(store="memory:", budget=llmctx.Budget(usd="1")) as s:
        FakeModel().complete("a b")
    assert s.cost == 0
    with llmctx.price_override("priced-fake", input_per_mtok="1000000", output_per_mtok="0"):
        with llmctx.session(store="memory:", budget=llmctx.Budget(usd="100")) as s:
            FakeModel("priced-fake").complete("a b c")  # 3 input tokens at $1 each
    assert s.cost == 3


@pytest.mark.anyio
async def test_astream_charges_the_words_read_and_early_stops() -> None:
    """astream() reserves at once, yields each word, and an early aclose() is estimated."""
    budget = llmctx.Budget(tokens=1_000)
    model = FakeModel()
    async with llmctx.session(store="memory:", budget=budget) as s:
        words = [w async for w in model.astream("x y z")]
        stream = model.astream("p q r s", max_tokens=10)
        async with stream:
            async for word in stream:
                assert word == "s"
                break
    assert words == ["z", "y", "x"]
    full, early = s.calls
    assert full.usage.output_tokens == 3 and not full.estimated
    assert early.usage.output_tokens == 1 and early.estimated
    assert budget.ledger.snapshot().reservations == 0


@pytest.mark.anyio
async def test_astream_over_budget_raises_before_iteration() -> None:
    """astream() over budget raises BudgetExceeded when called, like stream()."""
    model = FakeModel()
    async with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=5)):
        with pytest.raises(llmctx.BudgetExceeded):
            model.astream("a b c", max_tokens=50)
    assert model.requests_sent == 0


def test_llmctx_store_is_the_default_store_of_the_test(llmctx_store: MemoryStore) -> None:
    """Under the llmctx_store fixture, a session opened without store= is recorded there."""
    with llmctx.session("no-store-given"):
        FakeModel(reply="ok").complete("hello")
    (row,) = llmctx_store.list_sessions(limit=None)
    assert row.name == "no-store-given" and row.usage.requests == 1
    assert default_store() is llmctx_store


def test_llmctx_session_charges_its_memory_store(
    llmctx_session: llmctx.Session, llmctx_store: MemoryStore
) -> None:
    """The llmctx_session fixture is a running session named "test" on llmctx_store."""
    FakeModel(reply="ok").complete("hello there")
    assert llmctx_session.name == "test" and llmctx_session.usage.requests == 1
    assert [c.session_id for c in llmctx_store.list_calls([llmctx_session.id])] == [
        llmctx_session.id
    ]
