"""Edge cases of the OpenAI integration that llama.cpp's server cannot produce.

The real ``openai`` SDK is given ``http_client=httpx2.Client(transport=httpx2.MockTransport(...))``
(the SDK's own transport hook; it uses ``httpx2``). Payload shapes follow OpenAI's API
reference: the chat completion object, the chat completion chunk object (with the
usage-only final chunk that ``stream_options.include_usage`` adds), the Responses API
response object and its streaming events, and the embeddings response. The server-backed
tests are in test_openai_llama_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

import llmctx  # noqa: E402
from llmctx._tokens import unregister_tokenizer  # noqa: E402
from llmctx.providers import instrument, is_instrumented, uninstrument  # noqa: E402

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hi"}]
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """A fixed price for the test model."""
    with llmctx.price_override(MODEL, input_per_mtok="1", output_per_mtok="2"):
        yield


def chunk(delta: dict[str, Any] | None, *, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}],
        "usage": usage,
    }


def sse(events: list[dict[str, Any]], *, named: bool = False) -> bytes:
    lines = []
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        lines.append(f"{head}data: {json.dumps(event)}\n\n")
    return ("".join(lines) + ("" if named else "data: [DONE]\n\n")).encode()


def chat_handler(body: dict[str, Any]) -> Any:
    if body.get("stream"):
        events = [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk(None, usage=USAGE))
        return httpx2.Response(
            200, content=sse(events), headers={"content-type": "text/event-stream"}
        )
    return httpx2.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city":"Paris"}',
                                },
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": USAGE,
        },
        headers={"x-ratelimit-remaining-requests": "499"},
    )


class Transport:
    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        return self.respond(body)


def make(
    respond: Callable[[dict[str, Any]], Any] = chat_handler, **kw: Any
) -> tuple[Any, Transport]:
    transport = Transport(respond)
    http = httpx2.Client(transport=httpx2.MockTransport(transport))
    return instrument(
        openai.OpenAI(api_key="sk-test-000000000000000000", http_client=http), **kw
    ), transport


def test_usage_chunk_is_requested_and_hidden() -> None:
    """include_usage is added to a copy of the request and its usage-only chunk never reaches the user."""
    client, transport = make()
    options = {"include_obfuscation": False}
    with llmctx.session(store="memory:") as s:
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=5, stream=True, stream_options=options
            )
        )
    assert transport.bodies[0]["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert options == {"include_obfuscation": False}  # the caller's dict is untouched
    assert all(c.choices for c in chunks) and len(chunks) == 3
    (record,) = s.calls
    assert record.usage.input_tokens == 9 and record.usage.output_tokens == 2
    assert not record.estimated and record.response == "Hello"


def test_usage_chunk_is_kept_when_the_user_asked_for_it() -> None:
    """A caller who set include_usage gets the usage chunk, as without llmctx."""
    client, _transport = make()
    with llmctx.session(store="memory:") as s:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 11
    assert s.usage.total_tokens == 11


def test_include_usage_false_is_respected_and_estimated() -> None:
    """include_usage=False is left alone; the stream's usage is then estimated and marked."""
    client, transport = make()
    with llmctx.session(store="memory:") as s:
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": False},
            )
        )
    assert transport.bodies[0]["stream_options"] == {"include_usage": False}
    assert s.calls[0].estimated and s.calls[0].usage.output_tokens >= 1


def test_tool_calls_and_raw_response_are_recorded() -> None:
    """Tool calls land on the record; .with_raw_response is charged when parsed."""
    client, _ = make()
    with llmctx.session(store="memory:") as s:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=5
        )
        assert s.usage.requests == 1  # not parsed yet
        assert raw.parse().usage.total_tokens == 11
    first, second = s.calls
    assert first.tool_calls == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    ]
    assert second.usage == first.usage and s.usage.requests == 2


def responses_handler(body: dict[str, Any]) -> Any:
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o-mini-2024-07-18",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        },
    }
    if not body.get("stream"):
        return httpx2.Response(200, json=response)
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**response, "status": "in_progress", "output": [], "usage": None},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "lo",
            "logprobs": [],
        },
        {"type": "response.completed", "sequence_number": 3, "response": response},
    ]
    return httpx2.Response(
        200, content=sse(events, named=True), headers={"content-type": "text/event-stream"}
    )


def test_responses_api_with_and_without_stream() -> None:
    """The Responses API is charged its reported usage, cache reads included, streamed or not."""
    client, _ = make(responses_handler)
    with llmctx.session(store="memory:") as s:
        assert (
            client.responses.create(model=MODEL, input="Say hi", max_output_tokens=10).output_text
            == "Hello"
        )
        events = list(
            client.responses.create(model=MODEL, input="Say hi", max_output_tokens=10, stream=True)
        )
    assert events[-1].type == "response.completed"
    first, second = s.calls
    assert first.usage.input_tokens == 12 and first.usage.cache_read_tokens == 4
    assert second.usage == first.usage and second.response == "Hello" and second.ttft_s is not None


def test_embeddings_are_charged_as_embeddings() -> None:
    """An embeddings call is a priced request: its input tokens at the embedding rate."""
    client, _ = make(
        lambda body: httpx2.Response(
            200,
            json={
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            },
        )
    )
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=100)) as s:
        client.embeddings.create(
            model="text-embedding-3-small", input="hello world", encoding_format="float"
        )
    (record,) = s.calls
    assert record.kind == "embedding" and record.usage.input_tokens == 5
    assert record.usage.requests == 1
    assert record.cost == llmctx.price_usage("text-embedding-3-small", record.usage, "openai")[0]
    assert record.cost is not None and record.cost > 0
    assert s.budget is not None and s.budget.ledger.snapshot().spent.tokens == 5


def test_limiter_gets_headers_and_settles() -> None:
    """With a limiter, each call is admitted, settled, and the rate-limit headers are fed back."""
    limiter = llmctx.RateLimiter(rpm=600, tpm=100_000)
    fed: list[dict[str, Any]] = []
    real = limiter.feedback

    def spy(**kwargs: Any) -> None:
        fed.append(kwargs)
        real(**kwargs)

    limiter.feedback = spy  # type: ignore[method-assign]
    client, _ = make(limiter=limiter)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert fed == [{"retry_after": None, "remaining_requests": 499, "remaining_tokens": None}]
    stats = limiter.statistics()
    assert stats.admitted == 1 and stats.in_flight == 0


def test_idle_client_is_untouched_and_undo_works() -> None:
    """Outside any session nothing is recorded; uninstrument restores the SDK's own method."""
    client, transport = make()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert transport.bodies[0].get("stream_options") is None
    assert is_instrumented(client) and uninstrument(client)
    assert "request" not in vars(client) and not is_instrumented(client)


def test_unsupported_client_is_refused() -> None:
    """instrument() of something it does not know raises ConfigError naming what it supports."""
    with pytest.raises(llmctx.ConfigError, match="openai.OpenAI"):
        instrument(object())
    with pytest.raises(llmctx.ConfigError, match="rate limiter"):
        make(limiter=object())


def test_a_changed_base_url_is_the_server_of_the_next_call() -> None:
    """Setting client.base_url between two calls moves server_address/server_port with it."""
    client, _ = make()
    with llmctx.session(store="memory:") as s:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        client.base_url = "http://llm.internal:8080/v1"
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    first, second = s.calls
    assert (first.metadata["server_address"], first.metadata["server_port"]) == (
        "api.openai.com",
        443,
    )
    assert (second.metadata["server_address"], second.metadata["server_port"]) == (
        "llm.internal",
        8080,
    )


def test_the_prompt_is_counted_only_when_something_needs_the_count() -> None:
    """The pre-flight input count (a walk of the whole prompt, the most of llmctx's work on a
    long chat) is made only for a budget's or a rate limiter's reservation, or for a response
    that reports no usage: a call in a session without either never counts its prompt."""
    counted: list[str] = []

    def tokenizer(text: str) -> int:
        counted.append(text)
        return len(text.split())

    llmctx.register_tokenizer(MODEL, tokenizer)
    try:
        client, _ = make()
        with llmctx.session(store="memory:") as s:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        assert "Say hi" not in counted
        assert s.calls[0].usage.input_tokens == 9  # what the response reported

        with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
            # The reservation included the counted prompt: 2 words + chat overhead + 5 out.
            assert counted.count("Say hi") == 1

        limited, _ = make(limiter=llmctx.RateLimiter(rpm=600, tpm=100_000))
        with llmctx.session(store="memory:"):
            limited.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        assert counted.count("Say hi") == 2

        # No usage in the response: the estimate is the counted prompt plus the reply.
        def no_usage(body: dict[str, Any]) -> Any:
            reply = chat_handler(body)
            data = json.loads(reply.content)
            data["usage"] = None
            return httpx2.Response(200, json=data)

        bare, _ = make(no_usage)
        with llmctx.session(store="memory:") as s:
            bare.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
        assert counted.count("Say hi") == 3
        (record,) = s.calls
        assert record.estimated
        assert record.usage.input_tokens == llmctx.count_tokens(MESSAGES, MODEL).tokens
    finally:
        unregister_tokenizer(MODEL)
