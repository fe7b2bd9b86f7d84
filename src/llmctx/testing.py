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
The pytest fixtures (``llmctx_store``, ``llmctx_session``) are available with
``pytest_plugins = ["llmctx.testing"]`` in a conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._charge import track_call
from ._pricing import lookup_price
from ._usage import CallRecord, Usage
from .stores.memory import MemoryStore

__all__ = ["FakeModel", "FakeReply", "count_words", "llmctx_session", "llmctx_store"]


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
        model: the model name used for pricing (set a price with ``llmctx.set_price``; without
            one the calls are free, like a local model).
        reply: a fixed reply, or a function of the prompt text; by default the prompt's words
            reversed.
        provider: provider name on the records.
        fail_with: an exception to raise after the reservation (to test failure paths).
    """

    def __init__(
        self,
        model: str = "fake-model",
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
            free=lookup_price(self.model, self.provider) is None,
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
        """Async twin of :meth:`complete` (yields to the event loop once, like real I/O)."""
        import anyio

        text, tracker = self._tracker(prompt, max_tokens)
        with tracker as call:
            self.requests_sent += 1
            await anyio.sleep(0)
            if self.fail_with is not None:
                raise self.fail_with
            answer = self._answer(text, max_tokens)
            usage = Usage(
                input_tokens=count_words(text), output_tokens=count_words(answer), requests=1
            )
            rec = call.finish(usage=usage, response=answer)
        return FakeReply(answer, usage, rec)

    def stream(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> Iterator[str]:
        """Yield the answer word by word; the call is charged when the stream ends.

        A consumer that stops early (``break``, ``close()``) is charged for the words it
        received, marked ``estimated``; the reservation is always settled or released.
        """
        text, tracker = self._tracker(prompt, max_tokens)
        tracker.start()
        self.requests_sent += 1
        answer = self._answer(text, max_tokens)
        sent: list[str] = []

        def used() -> Usage:
            return Usage(input_tokens=count_words(text), output_tokens=len(sent), requests=1)

        try:
            if self.fail_with is not None:
                raise self.fail_with
            for word in answer.split():
                tracker.mark_first_token()
                sent.append(word)
                yield word
        except GeneratorExit:
            # The consumer stopped early: the words it got were generated and are charged.
            tracker.finish(
                usage=used(), response=" ".join(sent), estimated=True, metadata={"abandoned": True}
            )
            raise
        except BaseException as exc:
            tracker.fail(exc, usage=used(), response=" ".join(sent))
            raise
        tracker.finish(usage=used(), response=" ".join(sent))

    async def astream(
        self, prompt: str | Sequence[Mapping[str, Any]], *, max_tokens: int = 64
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`stream`."""
        import anyio

        for word in self.stream(prompt, max_tokens=max_tokens):
            await anyio.sleep(0)
            yield word


try:  # the fixtures need pytest; the rest of this module does not
    import pytest
except ImportError:  # pragma: no cover
    pass
else:
    from collections.abc import Generator

    @pytest.fixture
    def llmctx_store() -> Generator[MemoryStore, None, None]:
        """A fresh in-memory store."""
        store = MemoryStore()
        yield store
        store.close()

    @pytest.fixture
    def llmctx_session(llmctx_store: MemoryStore) -> Generator[Any, None, None]:
        """A running session on an in-memory store."""
        from ._session import session

        with session("test", store=llmctx_store) as s:
            yield s
