"""Test helpers for code that uses llmctx: a fast deterministic fake model and fixtures.

:class:`FakeModel` goes through the real charge path (budgets, pricing, recording, stores)
without any model or network, so users' tests can assert on sessions and budgets cheaply::

    from llmctx.testing import FakeModel

    def test_my_agent_stays_in_budget():
        model = FakeModel(reply="done")
        with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=100)) as s:
            my_agent(model)
        assert s.usage.requests == 3

Tokens are counted as whitespace-separated words, so counts are exact and predictable.

This module is also a pytest plugin, registered through the ``pytest11`` entry point, so its
fixtures are there in every test once llmctx is installed (no ``pytest_plugins`` line; an old
``pytest_plugins = ["llmctx.testing"]`` is harmless; ``-p no:llmctx.testing`` turns it off):

* ``llmctx_store``: a fresh :class:`~llmctx.stores.MemoryStore` that is also the default store
  for the test, so every session the code under test opens without ``store=`` is recorded
  there, never in the per-user database;
* ``llmctx_session``: a running session named ``"test"`` on that store.

::

    def test_agent_records_its_calls(llmctx_session, llmctx_store):
        my_agent(FakeModel(reply="done"))
        assert llmctx_session.usage.requests == 1
        assert llmctx_store.list_sessions()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ._charge import track_call
from ._interrupt import protected
from ._pricing import is_unpriced
from ._usage import CallRecord, Usage
from .stores.memory import MemoryStore

__all__ = [
    "DEFAULT_FAKE_MODEL",
    "FakeAsyncStream",
    "FakeModel",
    "FakeReply",
    "FakeStream",
    "count_words",
    "llmctx_session",
    "llmctx_store",
]

#: The default :class:`FakeModel` name: $0 unless priced with ``llmctx.set_price``. Any other
#: name is priced like a real model (genai-prices, ``set_price``, or ``UnknownPrice`` under a
#: money budget).
DEFAULT_FAKE_MODEL = "fake-model"


def count_words(text: str) -> int:
    """The fake model's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _messages_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


@dataclass(frozen=True, slots=True)
class FakeReply:
    """What :class:`FakeModel` returns: the text, its usage and the record written."""

    text: str
    usage: Usage
    record: CallRecord


class FakeModel:
    """A deterministic model that answers instantly and is charged like a real one.

    Args:
        model: the model name used for pricing, like a real model's: genai-prices' price,
            or one set with ``llmctx.set_price``; a model with neither is ``UnknownPrice``
            under a money budget (cost None otherwise). The default, ``"fake-model"``,
            costs $0 unless you set a price for it.
        reply: a fixed reply, or a function of the prompt text; by default the prompt's words
            reversed.
        provider: provider name on the records.
        fail_with: an exception to raise after the reservation (to test failure paths).
    """

    def __init__(
        self,
        model: str = DEFAULT_FAKE_MODEL,
        *,
        reply: str | Callable[[str], str] | None = None,
        provider: str = "fake",
        fail_with: BaseException | None = None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.fail_with = fail_with
        self._reply = reply
        self.requests_sent = 0

    def _answer(self, text: str, max_tokens: int) -> str:
        if callable(self._reply):
            out = self._reply(text)
        elif self._reply is not None:
            out = self._reply
        else:
            out = " ".join(reversed(text.split()))
        return " ".join(out.split()[:max_tokens])

    def _tracker(self, prompt: str | Sequence[Mapping[str, Any]], max_tokens: int) -> Any:
        text = _messages_text(prompt)
        request = {"model": self.model, "max_tokens": max_tokens}
        request["messages" if not isinstance(prompt, str) else "prompt"] = (
            prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
        )
        return text, track_call(
            provider=self.provider,
            model=self.model,
            request=request,
            input_tokens=count_words(text),
            max_output_tokens=max_tokens,
            # Only the default name is free when unpriced: any other model must be priced,
            # so a money budget fails closed on it as on a real one.
            free=self.model == DEFAULT_FAKE_MODEL and is_unpriced(self.model, self.provider),
        )

    def complete(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> FakeReply:
        """Answer ``prompt`` (a string or chat messages), charging the current session."""
        text, tracker = self._tracker(prompt, max_tokens)
        with tracker as call:
            self.requests_sent += 1
            if self.fail_with is not None:
                raise self.fail_with
            answer = self._answer(text, max_tokens)
            usage = Usage(
                input_tokens=count_words(text), output_tokens=count_words(answer), requests=1
            )
            rec = call.finish(usage=usage, response=answer)
        return FakeReply(answer, usage, rec)

    async def acomplete(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> FakeReply:
        """Async twin of :meth:`complete` (yields to the event loop once, like real I/O).

        Charged like an instrumented async SDK call: the budgets are reserved, settled and the
        call written through the tracker's async faces, never blocking the event loop.
        """
        import anyio

        text, tracker = self._tracker(prompt, max_tokens)
        async with tracker as call:
            self.requests_sent += 1
            await anyio.sleep(0)
            if self.fail_with is not None:
                raise self.fail_with
            answer = self._answer(text, max_tokens)
            usage = Usage(
                input_tokens=count_words(text), output_tokens=count_words(answer), requests=1
            )
            rec = await call.afinish(usage=usage, response=answer)
        return FakeReply(answer, usage, rec)

    @protected
    def stream(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> FakeStream:
        """Start a call now and return its words as a stream; charged when the stream ends.

        Like an SDK's ``stream=True``, the budgets are checked and the reservation made at
        this call, before anything is iterated: ``BudgetExceeded`` and ``UnknownPrice`` are
        raised here, and the call belongs to the session current here, wherever the stream
        is consumed. A consumer that stops early (``break`` then ``close()``, the end of a
        ``with`` block, or the stream being garbage-collected) is charged for the words it
        received, marked ``estimated``; the reservation is always settled or released.
        """
        text, tracker = self._tracker(prompt, max_tokens)
        tracker.start()
        self.requests_sent += 1
        return FakeStream(
            tracker, self._answer(text, max_tokens).split(), count_words(text), self.fail_with
        )

    def astream(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> FakeAsyncStream:
        """Async twin of :meth:`stream` (started at this call; yields to the loop per word)."""
        return FakeAsyncStream(self.stream(prompt, max_tokens=max_tokens))


class FakeStream:
    """The words of one started :class:`FakeModel` call; iterate, then it is charged.

    Also a context manager: leaving the block closes the stream (charging what was read).
    """

    def __init__(
        self,
        tracker: Any,
        words: list[str],
        input_tokens: int,
        fail_with: BaseException | None,
    ) -> None:
        self._tracker = tracker
        self._words = words
        self._input_tokens = input_tokens
        self._fail_with = fail_with
        self._sent: list[str] = []
        self._ended = False

    def _usage(self) -> Usage:
        return Usage(input_tokens=self._input_tokens, output_tokens=len(self._sent), requests=1)

    def __iter__(self) -> FakeStream:
        return self

    @protected
    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        if self._fail_with is not None:
            self.throw(self._fail_with)
        if len(self._sent) == len(self._words):
            self._ended = True
            self._tracker.finish(usage=self._usage(), response=" ".join(self._sent))
            raise StopIteration
        self._tracker.mark_first_token()
        word = self._words[len(self._sent)]
        self._sent.append(word)
        return word

    @protected
    def throw(self, exc: BaseException) -> NoReturn:
        """Fail the stream mid-read, as a dropped connection would, and raise ``exc``.

        The call is recorded as an error, charged for the words already received; its
        reservation is released.
        """
        if not self._ended:
            self._ended = True
            self._tracker.fail(exc, usage=self._usage(), response=" ".join(self._sent))
        raise exc

    @protected
    def close(self) -> None:
        """Stop reading: charge the words received so far (estimated); harmless twice."""
        if self._ended:
            return
        self._ended = True
        self._tracker.finish(
            usage=self._usage(),
            response=" ".join(self._sent),
            estimated=True,
            metadata={"abandoned": True},
        )

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @protected
    def __del__(self) -> None:
        # A stream dropped unread must not hold its reservation until the process ends.
        if not getattr(self, "_ended", True):
            with contextlib.suppress(Exception):  # a finaliser never raises
                self.close()


class FakeAsyncStream:
    """Async iteration over a :class:`FakeStream`, one event-loop checkpoint per word."""

    def __init__(self, stream: FakeStream) -> None:
        self._stream = stream

    def __aiter__(self) -> FakeAsyncStream:
        return self

    async def __anext__(self) -> str:
        import anyio

        await anyio.sleep(0)
        try:
            return next(self._stream)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop reading: charge the words received so far (estimated); harmless twice."""
        self._stream.close()

    async def __aenter__(self) -> FakeAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stream.close()


try:  # the fixtures need pytest; the rest of this module does not
    import pytest
except ImportError:  # pragma: no cover
    pass
else:
    from collections.abc import Generator

    @pytest.fixture
    def llmctx_store(monkeypatch: pytest.MonkeyPatch) -> Generator[MemoryStore, None, None]:
        """A fresh in-memory store, also the test's default store (never the per-user database).

        ``$LLMCTX_DB`` is ``memory:`` during the test and the process-wide default store is
        this one, so a session opened without ``store=`` lands here; both are restored after.
        """
        from .stores import _open

        store = MemoryStore()
        monkeypatch.setenv("LLMCTX_DB", "memory:")
        # default_store() hands out the store it holds for the current $LLMCTX_DB value.
        monkeypatch.setattr(_open, "_default", ("memory:", store))
        yield store
        store.close()

    @pytest.fixture
    def llmctx_session(llmctx_store: MemoryStore) -> Generator[Any, None, None]:
        """A running session named ``"test"`` on :func:`llmctx_store`; it ends with the test."""
        from ._session import session

        with session("test", store=llmctx_store) as s:
            yield s
