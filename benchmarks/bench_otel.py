"""Per-call cost of OpenTelemetry GenAI instrumentation: llmctx vs openai-v2 vs Logfire.

Run::

    python benchmarks/bench_otel.py [--calls N] [--repeats N]

Needs ``pip install -e '.[dev]'`` (openai, the otel extra, opentelemetry-instrumentation-openai-v2,
logfire).

The same ``chat.completions.create`` through the real openai SDK over one in-process fake
transport (``httpx2.MockTransport`` returning a canned chat completion), so no network and no
model: what is left is each library's own work per call, as process CPU time (wall time on a
shared machine moves with other processes' load). Cases, measured in turns (``--repeats``
turns; what a case adds over the plain SDK is its run minus the plain run of the same turn,
the median over the turns, so load that comes and goes hits both sides of each difference):

* plain: the uninstrumented SDK call (the baseline every overhead is relative to);
* llmctx, no OTel: instrumented, in a session with a token budget (pre-flight prompt token
  count, reserve, settle, price, record to a memory store);
* llmctx, no OTel, no budget: the same in a session without a budget (no reservation: the
  call is priced, rolled up and recorded);
* llmctx + OTel: the budgeted session plus ``llmctx.otel.instrument`` (a call span and a
  session span, token / duration / cost metrics), BatchSpanProcessor into an exporter that
  drops spans;
* llmctx + OTel, no budget: the like-for-like case with the peers, which neither budget nor
  price nor record: the session without a budget, OTel on;
* llmctx + OTel API only: ``llmctx.otel.instrument`` into the API's no-op tracer and meter
  providers, so what it adds over "llmctx, no OTel" is llmctx's own OTel code (attributes,
  metric attribute sets, the cost total, the charge path's tracer hooks) and the rest of
  "llmctx + OTel" is the SDK's (span, attribute cleaning, measurements, exemplars);
* openai-v2: ``OpenAIInstrumentor`` (the conventions' reference instrumentation), same
  tracer and meter set-up;
* logfire: ``logfire.instrument_openai(client)`` after ``logfire.configure(send_to_logfire=
  False, console=False)`` with the same BatchSpanProcessor and exporter.

Every case records metrics into a MeterProvider whose reader is never collected. Targets:
llmctx + OTel costs no more per call than either peer, while it also exports cost, the
budget and the session tree; llmctx's OTel part (llmctx + OTel minus llmctx, no OTel) costs
at most 0.7x what openai-v2 adds, so that with a charge path of at most 0.3x the whole is
<= 1x. The split printed at the end (OTel part, charge path) is from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
import logfire
import openai
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

import llmctx
import llmctx.otel

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Name one colour."}]
_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
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


def _handler(request: Any) -> Any:
    return httpx2.Response(200, content=_BODY, headers={"content-type": "application/json"})


def _client() -> Any:
    return openai.OpenAI(
        api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(_handler))
    )


class _Drop(SpanExporter):
    """An exporter that takes every batch and sends nothing (no network)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _providers(exporter: SpanExporter) -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def _time_us(fn: Callable[[], Any], n: int) -> float:
    # CPU time of the whole process (the batch processor's worker thread included), not wall
    # time: on a shared 2-core machine other processes' load moves wall time far more than the
    # differences measured here.
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=30, help="runs per case (best is kept)")
    args = parser.parse_args()
    llmctx.set_price(MODEL, input_per_mtok="0.15", output_per_mtok="0.6")

    plain = _client()
    ours = llmctx.instrument(_client())
    drops = {"llmctx": _Drop(), "openai-v2": _Drop(), "logfire": _Drop()}
    ours_tp, ours_mp = _providers(drops["llmctx"])
    v2_tp, v2_mp = _providers(drops["openai-v2"])
    v2_client = _client()
    v2 = OpenAIInstrumentor()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        additional_span_processors=[BatchSpanProcessor(drops["logfire"])],
    )
    lf_client = _client()
    logfire.instrument_openai(lf_client)

    def call(client: Any) -> Callable[[], Any]:
        return lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

    budget = llmctx.Budget(tokens=10**15)

    def run_plain(n: int) -> float:
        return _time_us(call(plain), n)

    def run_llmctx(n: int) -> float:
        with llmctx.session("bench", store="memory:", budget=budget):
            return _time_us(call(ours), n)

    def run_llmctx_otel(n: int) -> float:
        llmctx.otel.instrument(ours_tp, ours_mp)
        try:
            with llmctx.session("bench", store="memory:", budget=budget):
                return _time_us(call(ours), n)
        finally:
            llmctx.otel.uninstrument()

    def run_llmctx_free(n: int) -> float:
        with llmctx.session("bench", store="memory:"):
            return _time_us(call(ours), n)

    def run_llmctx_otel_free(n: int) -> float:
        llmctx.otel.instrument(ours_tp, ours_mp)
        try:
            with llmctx.session("bench", store="memory:"):
                return _time_us(call(ours), n)
        finally:
            llmctx.otel.uninstrument()

    def run_llmctx_otel_api(n: int) -> float:
        llmctx.otel.instrument(NoOpTracerProvider(), NoOpMeterProvider())
        try:
            with llmctx.session("bench", store="memory:", budget=budget):
                return _time_us(call(ours), n)
        finally:
            llmctx.otel.uninstrument()

    def run_v2(n: int) -> float:
        v2.instrument(tracer_provider=v2_tp, meter_provider=v2_mp)
        try:
            return _time_us(call(v2_client), n)
        finally:
            v2.uninstrument()

    def run_logfire(n: int) -> float:
        return _time_us(call(lf_client), n)

    cases: dict[str, Callable[[int], float]] = {
        "plain openai SDK": run_plain,
        "llmctx, no OTel": run_llmctx,
        "llmctx, no OTel, no budget": run_llmctx_free,
        "llmctx + OTel": run_llmctx_otel,
        "llmctx + OTel, no budget": run_llmctx_otel_free,
        "llmctx + OTel API only": run_llmctx_otel_api,
        "openai-v2": run_v2,
        "logfire": run_logfire,
    }
    for run in cases.values():  # warm up imports, price caches, instruments
        run(20)
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, run in cases.items():
            runs[name].append(run(args.calls))
    for tp in (ours_tp, v2_tp):
        tp.force_flush()
    logfire.force_flush()
    plain_runs = runs["plain openai SDK"]
    best = {name: min(times) for name, times in runs.items()}
    # What each case adds over the plain SDK, paired by turn (the plain run of the same turn,
    # a few milliseconds before, under the same load), then the median over the turns: load
    # that comes and goes moves the best of each case apart, much less a paired difference.
    over = {
        name: statistics.median(t - p for t, p in zip(times, plain_runs, strict=True))
        for name, times in runs.items()
    }
    print(
        f"CPU time per call, openai SDK over a fake transport, {args.calls} calls x "
        f"{args.repeats} turns of every case:"
    )
    print(f"  {'case':<26} {'best':>9}  {'over plain (median of turns)':>30}")
    for name in cases:
        extra = "" if name.startswith("plain") else f"+{over[name]:7.1f} us"
        print(f"  {name:<26} {best[name]:6.1f} us  {extra:>30}")
    ours_cost = over["llmctx + OTel"]
    charge_path = over["llmctx, no OTel"]
    otel_part = ours_cost - charge_path
    own_part = over["llmctx + OTel API only"] - charge_path
    v2_cost = over["openai-v2"]
    print(
        f"  split of llmctx + OTel (+{ours_cost:.1f} us): charge path (llmctx, no OTel) "
        f"+{charge_path:.1f} us = {charge_path / v2_cost:.2f}x openai-v2's overhead; "
        f"OTel part (llmctx + OTel - llmctx, no OTel) +{otel_part:.1f} us = "
        f"{otel_part / v2_cost:.2f}x (llmctx's own OTel code +{own_part:.1f} us, the SDK "
        "the rest)"
    )
    verdict = "met" if otel_part <= 0.7 * v2_cost else "MISSED"
    print(
        f"  llmctx's OTel part / openai-v2 overhead: {otel_part / v2_cost:.2f}x "
        f"(target <= 0.70x: {verdict})"
    )
    for case in ("llmctx + OTel", "llmctx + OTel, no budget"):
        for peer in ("openai-v2", "logfire"):
            verdict = "met" if over[case] <= over[peer] else "MISSED"
            print(
                f"  {case} overhead / {peer} overhead: {over[case] / over[peer]:.2f}x "
                f"(target <= 1.00x: {verdict})"
            )
    print(f"  spans exported (dropped): { {k: v.spans for k, v in drops.items()} }")


if __name__ == "__main__":
    main()
