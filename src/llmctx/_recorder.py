"""``llmctx.record()``: capture the prompt/response pairs of a block (a PromptRecorder done right).

Recorders live in their own ContextVar, so a call made deep in the stack (or in a task started
inside the block) is captured without passing anything around, with or without a session.
Records are already redacted. Nested recorders each see the calls of their own block.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._context import bind_recorder, reset_recorder
from ._exceptions import SessionStateError
from ._interrupt import protected
from ._money import format_usd
from ._usage import CallRecord, Usage

if TYPE_CHECKING:
    from typing import Self

    from rich.table import Table

__all__ = ["PromptResponse", "Recorder", "prompt_text", "record"]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return "" if content is None else str(content)


def prompt_text(request: Any) -> str:
    """The human-readable prompt of a request: the last user message, or ``prompt``/``input``."""
    if not isinstance(request, dict):
        return "" if request is None else str(request)
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        last = messages[-1]
        return _content_text(last.get("content") if isinstance(last, dict) else last)
    for key in ("prompt", "input", "arguments"):
        if key in request:
            value = request[key]
            return value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(request, default=str)


@dataclass(frozen=True, slots=True)
class PromptResponse:
    """One captured exchange, flattened for reading."""

    prompt: str
    response: str | None
    model: str | None
    usage: Usage
    cost: Decimal | None
    status: str


class Recorder:
    """Captures every call completed inside its block. Made by :func:`record`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[CallRecord] = []
        self._token: Any = None
        self._state = "created"

    def __repr__(self) -> str:
        return f"<Recorder calls={len(self._calls)} {self._state}>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def __iter__(self) -> Iterator[PromptResponse]:
        return iter(self.pairs)

    def on_call_end(self, record: CallRecord) -> None:
        """Keep a finished call (the :class:`~llmctx.CallConsumer` interface)."""
        with self._lock:
            self._calls.append(record)

    @property
    def calls(self) -> list[CallRecord]:
        """A copy of the captured calls, in completion order."""
        with self._lock:
            return list(self._calls)

    @property
    def pairs(self) -> list[PromptResponse]:
        """The captured calls as prompt/response pairs."""
        return [
            PromptResponse(prompt_text(c.request), c.response, c.model, c.usage, c.cost, c.status)
            for c in self.calls
        ]

    @property
    def usage(self) -> Usage:
        """Total usage of the captured calls."""
        total = Usage()
        for call in self.calls:
            total = total + call.usage
        return total

    def to_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write one JSON object per captured call; returns how many were written."""
        calls = self.calls
        with open(path, "w", encoding="utf-8") as fh:
            for call in calls:
                fh.write(json.dumps(call.to_dict(), default=str, ensure_ascii=False) + "\n")
        return len(calls)

    def table(self, *, width: int = 60) -> Table:
        """A rich Table of the exchanges (prompt, response, tokens, cost)."""
        from rich.markup import escape
        from rich.table import Table

        def clip(text: str | None) -> str:
            # Model text may contain "[...]", which rich would read as markup.
            text = (text or "").replace("\n", " ")
            return escape(text if len(text) <= width else text[: width - 1] + "…")

        table = Table(title=f"Recorded calls ({len(self)})")
        for col in ("#", "model", "prompt", "response", "tokens", "cost"):
            table.add_column(col, overflow="fold")
        for i, pair in enumerate(self.pairs, 1):
            table.add_row(
                str(i),
                escape(pair.model or ""),
                clip(pair.prompt),
                clip(pair.response) if pair.status == "ok" else f"[red]{pair.status}[/red]",
                f"{pair.usage.input_tokens}+{pair.usage.output_tokens}",
                "?" if pair.cost is None else format_usd(pair.cost),
            )
        return table

    @protected
    def __enter__(self) -> Self:
        if self._state != "created":
            raise SessionStateError("a Recorder is entered once; call llmctx.record() again")
        self._state = "recording"
        self._token = bind_recorder(self)
        return self

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        token, self._token = self._token, None
        if token is not None:
            reset_recorder(token, self)

    @protected
    async def __aenter__(self) -> Self:
        return self.__enter__()

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def record() -> Recorder:
    """Capture the calls of a block: ``with llmctx.record() as rec: ...; rec.calls``.

    Works with ``with`` and ``async with``, with or without an active session; calls made in
    tasks started inside the block are captured too (threads via :func:`llmctx.wrap`).
    """
    return Recorder()
