"""SDK-wide instrumentation: its idle cost per call, and its overhead through pydantic-ai and LangChain.

Run::

    python benchmarks/bench_integrations.py [--calls N] [--fake-calls N] [--base-url URL]

Needs ``llmctx[openai,local,integrations]`` and ``llama-cpp-python[server]``.

What it prints:

* the patched path outside any session: ``chat.completions.create`` through the real openai
  SDK over ``httpx2.MockTransport``, the SDK unpatched vs ``llmctx.instrument()`` on, batches
  interleaved, best of 9; the difference per call in microseconds (target <= 1 us);
* through pydantic-ai (``Agent.run_sync``) and LangChain (``ChatOpenAI.invoke``) against
  llama.cpp's server serving the bundled model: the same framework call with the SDKs
  unpatched vs ``llmctx.instrument()`` inside a budgeted session, alternating call by call
  (instrument / uninstrument between them), median latency and ratio (target <= 1.02x).
  Without ``--base-url`` a server is started on a free loopback port.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(__file__))

import bench_providers as bp

import llmctx
from llmctx.providers import local_model_path

MODEL = bp.MODEL
PROMPT = "Name one colour."


def bench_wrapper(n: int = 1_000_000, repeats: int = 9) -> None:
    """The patched method alone: llmctx's wrapper around a no-op in place of the SDK's request."""
    from llmctx.providers import _sdkwide

    def noop(self: object, cast_to: object, options: object, **kwargs: object) -> None:
        return None

    originals = {"SyncAPIClient.request": noop, "AsyncAPIClient.request": noop}
    wrapper = _sdkwide._wrappers(
        _sdkwide.SUPPORTED_SDKS["openai"], originals, _sdkwide._Active(None)
    )["SyncAPIClient.request"]
    me = object()
    raw = patched = float("inf")
    for _ in range(repeats):
        raw = min(raw, bp._time_us(lambda: noop(me, None, None, stream=False), n))
        patched = min(patched, bp._time_us(lambda: wrapper(me, None, None, stream=False), n))
    print(
        f"the patched request method alone, outside any session (best of {repeats}): "
        f"added {(patched - raw) * 1000:.0f} ns per call (target <= 1 us)"
    )


def bench_idle(n: int, repeats: int = 9) -> None:
    client = bp._fake_client()

    def call() -> None:
        client.chat.completions.create(model=MODEL, messages=bp.MESSAGES, max_tokens=8)

    call()
    raw = patched = float("inf")
    for _ in range(repeats):
        raw = min(raw, bp._time_us(call, n))
        with llmctx.instrument("openai"):
            patched = min(patched, bp._time_us(call, n))
    print(
        f"patched SDK outside any session (openai create over a fake transport, {n} calls, best of "
        f"{repeats}): unpatched {raw:.2f} us, llmctx.instrument() {patched:.2f} us, "
        f"added {patched - raw:+.2f} us per call (target <= 1 us)"
    )


@contextmanager
def server(base_url: str | None) -> Iterator[str]:
    if base_url:
        yield base_url
        return
    with tempfile.TemporaryFile() as log:
        port = bp._free_port()
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(local_model_path()),
                "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "1024", "--n_threads", "2", "--seed", "0", "--verbose", "False",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("llama_cpp.server did not start") from None
                    time.sleep(0.2)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


def _compare(label: str, call: Callable[[], None], calls: int) -> None:
    def timed() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    call()  # warm up: connections, model caches
    plain: list[float] = []
    charged: list[float] = []
    for i in range(calls):
        for on in (False, True) if i % 2 == 0 else (True, False):
            if on:
                with (
                    llmctx.instrument(),
                    llmctx.session("bench", store="memory:", budget=llmctx.Budget(tokens=10**9)),
                ):
                    charged.append(timed())
            else:
                plain.append(timed())
    p, c = statistics.median(plain), statistics.median(charged)
    print(
        f"  {label:<34} uninstrumented {p * 1e3:7.1f} ms | instrumented in a session "
        f"{c * 1e3:7.1f} ms | ratio {c / p:.3f}x (target <= 1.02x)"
    )


def bench_frameworks(base_url: str | None, calls: int) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.settings import ModelSettings

    llmctx.set_price(MODEL, input_per_mtok="1", output_per_mtok="2")
    with server(base_url) as url:
        settings = ModelSettings(max_tokens=8, temperature=0.0, extra_body={"max_tokens": 8})
        agent: Agent[None, str] = Agent(
            OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=url, api_key="unused")),
            model_settings=settings,
        )
        chat = ChatOpenAI(
            model=MODEL, base_url=url, api_key="unused", max_tokens=8, temperature=0.0,
            extra_body={"max_tokens": 8},
        )  # fmt: skip
        print(f"frameworks against llama.cpp's server (max_tokens=8, {calls} calls each way):")
        _compare("pydantic-ai Agent.run_sync", lambda: agent.run_sync(PROMPT) and None, calls)
        _compare("LangChain ChatOpenAI.invoke", lambda: chat.invoke(PROMPT) and None, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="framework calls each way")
    parser.add_argument(
        "--fake-calls", type=int, default=20_000, help="fake-transport calls per batch"
    )
    parser.add_argument("--base-url", help="a running llama.cpp server's /v1 URL")
    parser.add_argument("--no-server", action="store_true", help="only the fake-transport part")
    args = parser.parse_args()
    bench_wrapper()
    bench_idle(args.fake_calls)
    if not args.no_server:
        bench_frameworks(args.base_url, args.calls)


if __name__ == "__main__":
    main()
