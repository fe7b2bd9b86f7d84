"""SDK-wide instrumentation: ``llmctx.instrument()`` patches the SDK classes, not one client.

The real ``openai`` and ``anthropic`` SDKs talk to ``httpx2.MockTransport`` (their own
``http_client`` hook; no provider server runs here), which counts the requests that reached
the network. ``llama_cpp.Llama`` runs the bundled SmolLM2 model in process. Unsupported
versions and missing SDK methods are simulated by replacing llmctx's version lookup and
target list: no installed SDK can be made older for one test.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
httpx2 = pytest.importorskip("httpx2")

import llmctx  # noqa: E402
from llmctx.providers import _sdkwide  # noqa: E402

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """Prices for the test models, and no SDK left patched after a test."""
    with (
        llmctx.price_override(MODEL, input_per_mtok="1", output_per_mtok="2"),
        llmctx.price_override(CLAUDE, input_per_mtok="3", output_per_mtok="15"),
    ):
        try:
            yield
        finally:
            llmctx.uninstrument()


class Transport:
    """Answers OpenAI chat / Anthropic messages calls; ``bodies`` are the requests sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content or b"{}")
        self.bodies.append({"path": request.url.path, **body})
        if self.status != 200:
            return httpx2.Response(self.status, json={"error": {"message": "overloaded"}})
        if request.url.path.endswith("/count_tokens"):
            return httpx2.Response(200, json={"input_tokens": 9})
        if request.url.path.endswith("/messages"):
            return httpx2.Response(
                200,
                json={
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": CLAUDE,
                    "content": [{"type": "text", "text": "Hi"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 11},
                },
            )
        return httpx2.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            },
        )


def openai_client(transport: Transport, **kwargs: Any) -> Any:
    return openai.OpenAI(
        api_key="sk-test-0000000000000000",
        http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
        **kwargs,
    )


def chat(client: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)


def test_every_client_is_charged_made_before_after_or_copied() -> None:
    """Clients made before and after instrument(), and with_options() copies, are all charged."""
    transport = Transport()
    before = openai_client(transport)
    handle = llmctx.instrument("openai")
    after = openai_client(transport)
    with llmctx.session("wide", store="memory:") as s:
        chat(before)
        chat(after)
        chat(before.with_options(timeout=5))
    assert handle.sdks == ("openai",) and llmctx.is_instrumented("openai")
    assert [c.usage.total_tokens for c in s.calls] == [11, 11, 11]
    assert s.usage.requests == 3 and len(transport.bodies) == 3


def test_async_clients_are_charged() -> None:
    """An AsyncOpenAI made anywhere is charged through the patched AsyncAPIClient.request."""
    transport = Transport()
    llmctx.instrument("openai")

    async def main() -> llmctx.Usage:
        client = openai.AsyncOpenAI(
            api_key="sk-test-0000000000000000",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(transport)),
        )
        try:
            async with llmctx.session("async", store="memory:") as s:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
            return s.usage
        finally:
            await client.close()

    usage = asyncio.run(main())
    assert usage.input_tokens == 9 and usage.output_tokens == 2 and usage.requests == 1


def test_uninstrument_puts_back_exactly_what_was_there() -> None:
    """uninstrument() restores the SDK's own functions; instrument() twice patches once."""
    base = openai._base_client
    originals = (base.SyncAPIClient.request, base.AsyncAPIClient.request)
    first = llmctx.instrument("openai")
    patched = base.SyncAPIClient.request
    second = llmctx.instrument("openai")
    assert base.SyncAPIClient.request is patched and second.sdks == first.sdks
    assert first.uninstrument() and not first.uninstrument()
    assert (base.SyncAPIClient.request, base.AsyncAPIClient.request) == originals
    assert not llmctx.is_instrumented("openai")
    transport = Transport()
    with llmctx.session("after", store="memory:") as s:
        chat(openai_client(transport))
    assert s.calls == [] and len(transport.bodies) == 1


def test_instance_and_sdk_wide_together_charge_once() -> None:
    """A client instrumented on its own inside an instrumented SDK is charged once, either order."""
    transport = Transport()
    early = llmctx.instrument(openai_client(transport))
    with llmctx.instrument("openai"):
        late = llmctx.instrument(openai_client(transport))
        with llmctx.session("both", store="memory:") as s:
            chat(early)
            chat(late)
    assert len(s.calls) == 2 and s.usage.requests == 2 and len(transport.bodies) == 2


def test_outside_a_session_nothing_is_recorded_or_changed() -> None:
    """With no session the patched SDK sends the request untouched and records nothing."""
    transport = Transport()
    recorded: list[Any] = []
    remove = llmctx.add_call_consumer(
        type("C", (), {"on_call_end": lambda self, r: recorded.append(r)})()
    )
    try:
        llmctx.instrument("openai")
        reply = chat(openai_client(transport))
    finally:
        remove()
    assert reply.choices[0].message.content == "Hi" and recorded == []
    assert "stream_options" not in transport.bodies[0]


def test_budget_refusal_is_not_retried_by_the_sdk() -> None:
    """A budget with no room raises BudgetExceeded once, before sending, with SDK retries on."""
    transport = Transport()
    llmctx.instrument("openai", "anthropic")
    client = openai_client(transport, max_retries=5)
    with (
        llmctx.session("tight", store="memory:", budget=llmctx.Budget(tokens=3)) as s,
        pytest.raises(llmctx.BudgetExceeded),
    ):
        chat(client)
    assert transport.bodies == [] and s.usage.requests == 0


def test_server_errors_are_retried_inside_one_charged_call() -> None:
    """The SDK's own retries of a 529 stay inside the one call: one failed record, nothing held."""
    transport = Transport(status=529)
    llmctx.instrument("anthropic")
    client = anthropic.Anthropic(
        api_key="sk-ant-test-000000000000",
        http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
        max_retries=2,
    )
    client._calculate_retry_timeout = lambda *a, **k: 0.0  # no back-off sleeps in a unit test
    with llmctx.session("retry", store="memory:", budget=llmctx.Budget(tokens=1_000)) as s:
        with pytest.raises(anthropic.APIStatusError):
            client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
        snap = s.budget.ledger.snapshot()
    assert len(transport.bodies) == 3
    (record,) = s.calls
    assert record.status == "error" and snap.reservations == 0 and s.usage.total_tokens == 0


def test_anthropic_messages_charged_and_count_tokens_free() -> None:
    """messages.create is charged Anthropic's usage; messages.count_tokens is passed through."""
    transport = Transport()
    llmctx.instrument("anthropic")
    client = anthropic.Anthropic(
        api_key="sk-ant-test-000000000000",
        http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
    )
    with llmctx.session("claude", store="memory:") as s:
        client.messages.count_tokens(model=CLAUDE, messages=MESSAGES)
        client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    (record,) = s.calls
    assert record.provider == "anthropic" and record.usage.input_tokens == 25
    assert len(transport.bodies) == 2


def test_unknown_sdk_name_lists_the_supported_ones() -> None:
    """instrument('nonsense') is a ConfigError naming every supported SDK; nothing is patched."""
    with pytest.raises(llmctx.ConfigError) as info:
        llmctx.instrument("openai", "nonsense")
    for name in ("openai", "anthropic", "google-genai", "llama-cpp"):
        assert name in str(info.value)
    assert _sdkwide.active_sdks() == ()
    with pytest.raises(llmctx.ConfigError, match="one client instance"):
        llmctx.instrument(object(), object())


def test_unsupported_version_is_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK outside the supported range: named, a ConfigError with the range; unnamed, a warning; never patched."""
    base = openai._base_client
    original = base.SyncAPIClient.request
    monkeypatch.setattr(_sdkwide, "_installed_version", lambda sdk, module: "9.0.0")
    with pytest.raises(llmctx.ConfigError, match=r"openai>=3\.54,<4"):
        llmctx.instrument("openai")
    assert base.SyncAPIClient.request is original
    with pytest.warns(UserWarning, match="left uninstrumented") as caught:
        handle = llmctx.instrument()
    assert any("openai>=3.54,<4" in str(w.message) for w in caught)
    assert handle.sdks == () and base.SyncAPIClient.request is original


def test_a_missing_method_leaves_the_sdk_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """If any method llmctx replaces is missing, no method of that SDK is replaced."""
    base = openai._base_client
    original = base.SyncAPIClient.request
    real = _sdkwide._targets
    monkeypatch.setattr(
        _sdkwide, "_targets", lambda sdk, module: [*real(sdk, module), (base.SyncAPIClient, "gone")]
    )
    with pytest.raises(llmctx.ConfigError, match=r"SyncAPIClient\.gone is missing"):
        llmctx.instrument("openai")
    assert base.SyncAPIClient.request is original and _sdkwide.active_sdks() == ()


def test_no_argument_instruments_every_installed_sdk() -> None:
    """instrument() with no argument patches each supported SDK installed here, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = llmctx.instrument()
    assert {"openai", "anthropic"} <= set(handle.sdks)
    assert set(handle.sdks) == set(_sdkwide.active_sdks())
    assert llmctx.uninstrument() and _sdkwide.active_sdks() == ()


def test_sdk_wide_limiter_takes_every_call() -> None:
    """instrument(limiter=...) admits and settles every call of the SDK, and gets its headers."""
    limiter = llmctx.RateLimiter(rpm=600, tpm=100_000)
    llmctx.instrument("openai", limiter=limiter)
    transport = Transport()
    chat(openai_client(transport))  # outside a session too
    with llmctx.session("limited", store="memory:"):
        chat(openai_client(transport))
    stats = limiter.statistics()
    assert stats.admitted == 2 and stats.in_flight == 0


def test_llama_cpp_sdk_wide_charges_a_plain_llama(smollm2_path: Path) -> None:
    """A Llama llmctx never saw is charged its exact usage; local_model() over it, once."""
    import llama_cpp

    llmctx.instrument("llama-cpp")
    plain = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, verbose=False, seed=0)
    local = llmctx.local_model(n_ctx=256)
    with llmctx.session("llama", store="memory:") as s:
        result = plain.create_chat_completion(messages=MESSAGES, max_tokens=4, temperature=0.0)
        chunks = list(
            plain.create_chat_completion(
                messages=MESSAGES, max_tokens=4, temperature=0.0, stream=True
            )
        )
        local.create_chat_completion(messages=MESSAGES, max_tokens=4, temperature=0.0)
    first, streamed, own = s.calls
    assert first.usage.input_tokens == result["usage"]["prompt_tokens"]
    assert first.usage.output_tokens == result["usage"]["completion_tokens"]
    assert first.model == Path(smollm2_path).stem and not first.estimated
    assert chunks and not streamed.estimated and streamed.usage.output_tokens >= 1
    assert own.model == llmctx.providers.LOCAL_MODEL_NAME and len(s.calls) == 3
