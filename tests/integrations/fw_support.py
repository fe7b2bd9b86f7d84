"""Helpers shared by the framework tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from typing import Any

import llmctx

SERVED_MODEL = "SmolLM2-135M-Instruct"  # the --model_alias the server fixture starts with
API_KEY = "sk-local-unused-0000000000"
#: Output limit of every framework call: the model runs on 2 shared cores in CI.
MAX_TOKENS = 8
PROMPT = "Name one colour."


class Seen:
    """Counts the server's POST requests from its access log, from a starting point."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.start = server.requests_seen()

    def __call__(self) -> int:
        return int(self.server.requests_seen()) - self.start


def assert_exact(calls: list[llmctx.CallRecord], requests: int) -> None:
    """One ok record per request the server saw, each with reported (not estimated) usage."""
    assert len(calls) == requests
    for call in calls:
        assert call.status == "ok" and not call.estimated
        assert call.raw_usage is not None
        assert call.usage.input_tokens == call.raw_usage["prompt_tokens"]
        assert call.usage.output_tokens == call.raw_usage["completion_tokens"]


def refused(store: Any, session: Any) -> list[llmctx.CallRecord]:
    """The refused records the store kept for ``session`` (one per refusal, retried or not)."""
    return [c for c in store.list_calls([session.id], refused=True) if c.status == "refused"]
