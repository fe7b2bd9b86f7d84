"""The real ``google-genai`` SDK, instrumented, through its own HTTP transport hook.

The SDK is given ``HttpOptions(httpx_client=httpx2.Client(transport=httpx2.MockTransport(...)))``
(its documented way to bring an HTTP client). No Gemini server can run here; the bodies
follow the Gemini API reference: ``GenerateContentResponse`` with ``candidates``,
``usageMetadata`` (``promptTokenCount``, ``candidatesTokenCount``, ``thoughtsTokenCount``,
``cachedContentTokenCount``) and ``modelVersion``, streamed as server-sent events by
``:streamGenerateContent?alt=sse``, each chunk carrying the running usage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

genai = pytest.importorskip("google.genai")
httpx2 = pytest.importorskip("httpx2")

from google.genai import errors, types  # noqa: E402

import llmctx  # noqa: E402

MODEL = "gemini-2.5-flash"
USAGE = {
    "promptTokenCount": 7,
    "candidatesTokenCount": 2,
    "thoughtsTokenCount": 5,
    "totalTokenCount": 14,
}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """A fixed price ($1 in, $2 out per million) and no SDK left patched after a test."""
    with llmctx.price_override(MODEL, input_per_mtok="1", output_per_mtok="2"):
        try:
            yield
        finally:
            llmctx.uninstrument()


def candidate(*parts: dict[str, Any], finish: str | None = "STOP") -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}}
    if finish:
        out["finishReason"] = finish
    return out


class Gemini:
    """Answers generateContent / streamGenerateContent / countTokens; counts what was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.paths: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        self.paths.append(request.url.path)
        self.bodies.append(json.loads(request.content or b"{}"))
        if self.status != 200:
            return httpx2.Response(
                self.status,
                json={
                    "error": {"code": self.status, "message": "overloaded", "status": "UNAVAILABLE"}
                },
            )
        if request.url.path.endswith(":countTokens"):
            return httpx2.Response(200, json={"totalTokens": 7})
        if request.url.path.endswith(":streamGenerateContent"):
            chunks = [
                {
                    "candidates": [candidate({"text": "Hel"}, finish=None)],
                    "usageMetadata": {"promptTokenCount": 7},
                },
                {
                    "candidates": [candidate({"text": "lo"})],
                    "usageMetadata": {
                        "promptTokenCount": 7,
                        "candidatesTokenCount": 2,
                        "totalTokenCount": 9,
                    },
                },
            ]
            data = "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks)
            return httpx2.Response(
                200, content=data.encode(), headers={"content-type": "text/event-stream"}
            )
        return httpx2.Response(
            200,
            json={
                "candidates": [
                    candidate(
                        {"text": "Let me think.", "thought": True},
                        {"text": "Hello"},
                        {"functionCall": {"name": "lookup", "args": {"q": "hi"}}},
                    )
                ],
                "usageMetadata": USAGE,
                "modelVersion": "gemini-2.5-flash-001",
            },
        )


def make(server: Gemini) -> Any:
    return genai.Client(
        api_key="AIza-test-00000000000000000000",
        http_options=types.HttpOptions(
            httpx_client=httpx2.Client(transport=httpx2.MockTransport(server)),
            httpx_async_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server)),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


CONFIG = types.GenerateContentConfig(max_output_tokens=50, system_instruction="Be brief.")


def test_generate_content_charges_usage_metadata_with_thinking_as_reasoning() -> None:
    """Input is the prompt count, output candidates + thoughts, reasoning the thoughts, priced."""
    server = Gemini()
    llmctx.instrument("google-genai")
    client = make(server)
    with llmctx.session("gemini", store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        reply = client.models.generate_content(model=MODEL, contents="Hi", config=CONFIG)
    assert reply.text == "Hello"
    (record,) = s.calls
    assert record.provider == "google" and record.model == MODEL and not record.estimated
    assert (
        record.usage.input_tokens,
        record.usage.output_tokens,
        record.usage.reasoning_tokens,
    ) == (7, 7, 5)
    assert record.cost == Decimal(7 * 1 + 7 * 2) / 10**6
    assert record.response == "Hello" and record.tool_calls[0]["name"] == "lookup"
    assert record.metadata["response_model"] == "gemini-2.5-flash-001"
    assert record.request["systemInstruction"]["parts"][0]["text"] == "Be brief."


def test_stream_is_charged_once_with_the_last_usage_and_ttft() -> None:
    """generate_content_stream: one record, the final chunk's usage, time to first token set."""
    server = Gemini()
    llmctx.instrument("google")
    client = make(server)
    with llmctx.session("stream", store="memory:") as s:
        text = "".join(
            c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="Hi")
        )
    assert text == "Hello"
    (record,) = s.calls
    assert record.usage.input_tokens == 7 and record.usage.output_tokens == 2
    assert not record.estimated and record.ttft_s is not None and record.metadata["stream"]


def test_async_twins_are_charged() -> None:
    """client.aio.models.generate_content and its stream are charged like the sync ones."""
    server = Gemini()
    llmctx.instrument("google-genai")

    async def main() -> list[llmctx.CallRecord]:
        client = make(server)
        async with llmctx.session("aio", store="memory:") as s:
            await client.aio.models.generate_content(model=MODEL, contents="Hi")
            stream = await client.aio.models.generate_content_stream(model=MODEL, contents="Hi")
            async for _ in stream:
                pass
        return s.calls

    whole, streamed = asyncio.run(main())
    assert whole.usage.total_tokens == 14 and streamed.usage.total_tokens == 9
    assert streamed.ttft_s is not None


def test_budget_refuses_before_sending_even_for_a_stream() -> None:
    """A budget with no room raises BudgetExceeded and the transport sees no request."""
    server = Gemini()
    llmctx.instrument("google-genai")
    client = make(server)
    with llmctx.session("tight", store="memory:", budget=llmctx.Budget(tokens=20)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            client.models.generate_content(model=MODEL, contents="Hi", config=CONFIG)
        with pytest.raises(llmctx.BudgetExceeded):
            for _ in client.models.generate_content_stream(model=MODEL, contents="Hi"):
                pass
        assert s.budget.ledger.snapshot().reservations == 0
    assert server.paths == [] and s.usage.requests == 0


def test_count_tokens_is_free_and_errors_release_the_reservation() -> None:
    """count_tokens is not charged; a 503 is one failed record that holds and charges nothing."""
    llmctx.instrument("google-genai")
    ok = make(Gemini())
    failing = make(Gemini(status=503))
    with llmctx.session("errors", store="memory:", budget=llmctx.Budget(tokens=10_000)) as s:
        assert ok.models.count_tokens(model=MODEL, contents="Hi").total_tokens == 7
        with pytest.raises(errors.APIError):
            failing.models.generate_content(model=MODEL, contents="Hi")
        with pytest.raises(errors.APIError):
            for _ in failing.models.generate_content_stream(model=MODEL, contents="Hi"):
                pass
        snap = s.budget.ledger.snapshot()
    assert [c.status for c in s.calls] == ["error", "error"]
    assert s.usage.total_tokens == 0 and snap.reservations == 0


def test_stream_broken_early_is_charged_estimated() -> None:
    """A consumer that stops after the first chunk is charged what it got, marked estimated."""
    llmctx.instrument("google-genai")
    client = make(Gemini())
    with llmctx.session("early", store="memory:") as s:
        stream = client.models.generate_content_stream(model=MODEL, contents="Hi")
        next(iter(stream))
        stream.close()
        assert s.budget is None or s.budget.ledger.snapshot().reservations == 0
    (record,) = s.calls
    assert record.estimated and record.usage.input_tokens == 7 and record.metadata.get("abandoned")


def test_one_client_instrumented_alone_and_with_the_sdk_is_charged_once() -> None:
    """instrument(genai.Client(...)) charges that client; with the SDK patched too, still once."""
    server = Gemini()
    client = llmctx.instrument(make(server))
    assert llmctx.is_instrumented(client)
    with llmctx.session("one", store="memory:") as s:
        client.models.generate_content(model=MODEL, contents="Hi")
        with llmctx.instrument("google-genai"):
            client.models.generate_content(model=MODEL, contents="Hi")
    assert len(s.calls) == 2 and len(server.paths) == 2
    assert llmctx.uninstrument(client) and "request" not in vars(client._api_client)
