"""The native-library probe: a llama.cpp build this CPU cannot run is a ConfigError, not SIGILL."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import llmctx
from llmctx.providers import _probe


@pytest.fixture
def fresh_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No verdict in memory or on disk: the next check runs the child again."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("LLMCTX_SKIP_NATIVE_PROBE", raising=False)
    monkeypatch.setattr(_probe, "_proven", threading.Event())
    return cache


@pytest.fixture
def sigill_python(tmp_path: Path) -> Path:
    """An interpreter stand-in that dies by SIGILL, as a native build with AMX does on the
    first token. A fake: no CPU here lacks an instruction on demand, but the child really
    dies by the real signal."""
    script = tmp_path / "python-sigill"
    script.write_text("#!/bin/sh\nkill -ILL $$\n")
    script.chmod(0o755)
    return script


def test_real_build_passes_once_and_is_cached(smollm2_path: Path, fresh_probe: Path) -> None:
    """The installed build runs the bundled model; its verdict and build flags are cached."""
    _probe.check_native_model(smollm2_path)
    [verdict] = list((fresh_probe / "llmctx" / "native-probe").glob("*.json"))
    info = json.loads(verdict.read_text())["system_info"]
    assert "CPU" in info
    _probe.check_native_model(smollm2_path, python="/nonexistent/python")  # cached: no child
    _probe._proven.clear()  # a new process: the verdict on disk serves, still no child
    _probe.check_native_model(smollm2_path, python="/nonexistent/python")


@pytest.mark.skipif(platform.machine() not in {"x86_64", "AMD64"}, reason="x86-64 build flags")
def test_installed_build_is_portable(smollm2_path: Path, fresh_probe: Path) -> None:
    """The README's install builds llama.cpp for any AVX2 CPU: no AMX, no AVX-512."""
    _probe.check_native_model(smollm2_path)
    [verdict] = list((fresh_probe / "llmctx" / "native-probe").glob("*.json"))
    info = json.loads(verdict.read_text())["system_info"]
    assert "AVX2 = 1" in info, info
    assert "AMX" not in info and "AVX512" not in info, (
        f"llama.cpp was built for this CPU only ({info}); rebuild it with: "
        + _probe.REINSTALL_COMMAND.format(version="0.3.36")
    )


def test_sigill_in_the_child_is_a_config_error_with_the_fix(
    smollm2_path: Path, fresh_probe: Path, sigill_python: Path
) -> None:
    """A child killed by SIGILL raises ConfigError naming the signal and the reinstall command."""
    with pytest.raises(llmctx.ConfigError) as info:
        _probe.check_native_model(smollm2_path, python=str(sigill_python))
    message = str(info.value)
    assert "SIGILL" in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir' in message
    assert not (fresh_probe / "llmctx" / "native-probe").exists()  # a failure is not cached


def test_child_error_exit_names_its_last_lines(
    smollm2_path: Path, fresh_probe: Path, tmp_path: Path
) -> None:
    """A child that exits non-zero raises ConfigError quoting the end of its stderr."""
    script = tmp_path / "python-broken"
    script.write_text("#!/bin/sh\necho 'GGML_ASSERT failed: bad tensor' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(llmctx.ConfigError, match=r"exit 3: GGML_ASSERT failed: bad tensor"):
        _probe.check_native_model(smollm2_path, python=str(script))


def test_local_model_refuses_a_crashing_build(
    smollm2_path: Path, fresh_probe: Path, sigill_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """local_model() raises the probe's ConfigError instead of loading the model in process."""
    monkeypatch.setattr(sys, "executable", str(sigill_python))
    with pytest.raises(llmctx.ConfigError, match="SIGILL"):
        llmctx.local_model()


def test_workshop_reports_a_crashing_model_and_runs_the_rest(
    smollm2_path: Path, tmp_path: Path, sigill_python: Path
) -> None:
    """`llmctx workshop 1 2` with a SIGILL build: 02 fails with the fix, 01 passes, no signal."""
    driver = (
        "import sys; from llmctx._cli import main; "
        f"sys.executable = {str(sigill_python)!r}; sys.argv = ['llmctx', 'workshop', '1', '2']; "
        "main()"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "200"}
    env.pop("LLMCTX_SKIP_NATIVE_PROBE", None)
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # failed, not killed
    assert "1/2 ok" in out.stdout, out.stdout[-3000:]
    assert "SIGILL" in out.stdout and "-DGGML_NATIVE=OFF" in out.stdout, out.stdout[-3000:]
