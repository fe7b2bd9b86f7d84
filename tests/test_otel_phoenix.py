"""End to end: llmctx's spans reach a real Phoenix server over OTLP/HTTP, read back through
Phoenix's own REST API.

Phoenix (PyPI ``arize-phoenix``) lives in its own virtual environment (it pins many packages
llmctx must not share). ``LLMCTX_TEST_PHOENIX_URL`` names a running server (``.ci/run``
starts one on loopback); without it the fixture starts ``phoenix serve`` itself from
``LLMCTX_TEST_PHOENIX_BIN`` (or a ``phoenix`` on PATH) on free loopback ports with a private
working directory. Without either the tests skip, and under ``CI=true`` they fail.
The model calls are real: the bundled SmolLM2 model through ``llmctx.local_model()``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import llmctx
import llmctx.otel
from llmctx.stores import SQLiteStore

MODEL = "SmolLM2-135M-Instruct"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(message: str) -> None:
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def phoenix_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real Phoenix server (started here when none is given)."""
    given = os.environ.get("LLMCTX_TEST_PHOENIX_URL")
    if given:
        if not _up(given.rstrip("/")):
            _missing(f"LLMCTX_TEST_PHOENIX_URL={given} does not answer /healthz")
        yield given.rstrip("/")
        return
    binary = os.environ.get("LLMCTX_TEST_PHOENIX_BIN") or shutil.which("phoenix")
    if not binary or not Path(binary).exists():
        _missing(
            "Phoenix is not available: set LLMCTX_TEST_PHOENIX_URL to a running server, or "
            "LLMCTX_TEST_PHOENIX_BIN to the phoenix executable of a venv with "
            "arize-phoenix==20.26.1 (bash .ci/run does both)"
        )
    workdir = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_free_port()),
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (workdir / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (workdir / "phoenix.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"phoenix serve did not come up on {url}:\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def model() -> Any:
    """The bundled SmolLM2 model, instrumented (fails in CI when the local extra is missing)."""
    try:
        return llmctx.local_model(n_ctx=512)
    except (ImportError, llmctx.ConfigError) as exc:
        _missing(f"the local model is not installed: {exc}")


def _spans(url: str, project: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = _get(
            f"{url}/v1/projects/{urllib.parse.quote(project)}/spans?"
            + urllib.parse.urlencode(query)
        )
        out.extend(page.get("data") or [])
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def _wait_for(url: str, project: str, predicate: Any, timeout: float = 60.0) -> list[Any]:
    """Poll Phoenix until the project's spans satisfy ``predicate`` (ingestion is async)."""
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            spans = _spans(url, project)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # the project appears with its first span
                raise
        if predicate(spans):
            return spans
        time.sleep(0.25)
    pytest.fail(f"Phoenix did not show the expected spans within {timeout}s: {spans}")


def test_live_spans_of_real_model_calls_reach_phoenix(phoenix_url: str, model: Any) -> None:
    """A session with real local-model calls (one streamed) and a child session arrives in
    Phoenix as the same span tree, with the token counts and model names llmctx recorded."""
    project = f"llmctx-test-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "llmctx-tests", "openinference.project.name": project}
        )
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{phoenix_url}/v1/traces"))
    )
    llmctx.otel.instrument(provider)
    try:
        with llmctx.session("phoenix-root", store="memory:") as root:
            model.create_chat_completion(
                messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
            )
            with llmctx.session("phoenix-child") as child:
                chunks = model.create_chat_completion(
                    messages=[{"role": "user", "content": "Count to three"}],
                    max_tokens=8,
                    stream=True,
                )
                for _ in chunks:
                    pass
    finally:
        llmctx.otel.uninstrument()
        provider.force_flush()
        provider.shutdown()
    calls = {c.session_id: c for c in root.calls}
    spans = _wait_for(phoenix_url, project, lambda s: len(s) >= 4)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (root_span,) = by_name["invoke_agent phoenix-root"]
    (child_span,) = by_name["invoke_agent phoenix-child"]
    chat_spans = by_name[f"chat {MODEL}"]
    assert len(chat_spans) == 2
    assert root_span["parent_id"] is None
    assert child_span["parent_id"] == root_span["context"]["span_id"]
    assert {s["context"]["trace_id"] for s in spans} == {root_span["context"]["trace_id"]}
    for span in chat_spans:
        a = span["attributes"]
        record = calls[a["llmctx.session.id"]]
        parent = root_span if record.session_id == root.id else child_span
        assert span["parent_id"] == parent["context"]["span_id"]
        assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == MODEL
        assert a["gen_ai.provider.name"] == "llama-cpp"
        assert a["gen_ai.usage.input_tokens"] == record.usage.input_tokens > 0
        assert a["gen_ai.usage.output_tokens"] == record.usage.output_tokens > 0
    streamed = calls[child.id]
    assert streamed.ttft_s is not None
    assert root_span["attributes"]["llmctx.usage.output_tokens"] == root.usage.output_tokens
    assert root_span["attributes"]["llmctx.session.id"] == root.id


def test_cli_replay_of_a_stored_session_reaches_phoenix_with_its_timestamps(
    phoenix_url: str, model: Any, tmp_path: Path
) -> None:
    """`llmctx sessions export --format otlp --endpoint URL ID` sends a session recorded in
    SQLite without OpenTelemetry; Phoenix shows it with the stored start time and tokens."""
    from typer.testing import CliRunner

    from llmctx._cli.app import app

    db = tmp_path / "recorded.db"
    store = SQLiteStore(db)
    with llmctx.session("replayed-later", store=store) as s:
        model.create_chat_completion(messages=[{"role": "user", "content": "Hello"}], max_tokens=6)
    store.close()
    result = CliRunner().invoke(
        app,
        [
            "sessions",
            "export",
            s.id,
            "--format",
            "otlp",
            "--endpoint",
            phoenix_url,
            "--db",
            str(db),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Sent 1 sessions and 1 calls as 2 spans" in result.output

    def mine(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [x for x in spans if x["attributes"].get("llmctx.session.id") == s.id]

    spans = mine(_wait_for(phoenix_url, "default", lambda all_: len(mine(all_)) >= 2))
    session_span = next(x for x in spans if x["name"] == "invoke_agent replayed-later")
    call_span = next(x for x in spans if x["name"] == f"chat {MODEL}")
    stored = SQLiteStore(db)
    row = stored.get_session(s.id)
    (call,) = stored.list_calls([s.id])
    stored.close()
    assert row is not None
    shown = datetime_of(session_span["start_time"])
    assert abs((shown - row.started_at).total_seconds()) < 1e-3
    assert abs((datetime_of(call_span["start_time"]) - call.started_at).total_seconds()) < 1e-3
    ended = call.started_at + timedelta(seconds=call.latency_s or 0.0)
    assert abs((datetime_of(call_span["end_time"]) - ended).total_seconds()) < 1e-3
    assert call_span["parent_id"] == session_span["context"]["span_id"]
    assert call_span["attributes"]["gen_ai.usage.output_tokens"] == call.usage.output_tokens
    assert call_span["attributes"]["llmctx.replayed"] is True


def datetime_of(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)
