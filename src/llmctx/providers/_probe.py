"""Prove the native llama.cpp library works before the first model call in this process.

A llama.cpp built with ``-march=native`` (pip's default for ``llama-cpp-python``) can use
instructions that this CPU, its hypervisor or its container does not enable (AMX and
AVX-512 on cloud Xeons are the usual ones): the first token then kills the whole Python
process with SIGILL, and no ``try`` can catch it. So before :func:`llmctx.local_model` loads
the model in the caller's process, a child process loads it and generates a few tokens. A
child killed by a signal becomes a :class:`llmctx.ConfigError` that names the cause and the
exact reinstall command. A passing verdict is cached on disk per build (the native
libraries' names, sizes and modification times) and CPU, in the per-user cache directory,
so the probe costs its ~1 s once; within a process it runs at most once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

from .._exceptions import ConfigError

__all__ = ["REINSTALL_COMMAND", "check_native_model"]

#: A portable, AVX2-level rebuild of llama-cpp-python (no ``-march=native``, no AMX,
#: no AVX-512); ``--no-cache-dir`` because pip's wheel cache keys a source build by its URL,
#: not by ``CMAKE_ARGS``, and would hand back the native wheel.
REINSTALL_COMMAND: Final = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir --no-deps '
    "llama-cpp-python=={version}"
)

# The child: load the model the way local_model() does and decode a few tokens, the step
# where an unsupported instruction first runs.
_CHILD: Final = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False, seed=0)
llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
print(llama_cpp.llama_print_system_info().decode(errors="replace").strip())
"""

_TIMEOUT_S: Final = 120.0
_lock = threading.Lock()
# Once proven, the library this process has loaded cannot change under it.
_proven = threading.Event()


def _library_fingerprint() -> tuple[str, str]:
    """The llama-cpp-python version and a key that changes whenever its native build does."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    parts = [getattr(llama_cpp, "__version__", "?"), _cpu_tag()]
    for lib in sorted(lib_dir.glob("*.so*")) + sorted(lib_dir.glob("*.dylib")):
        st = lib.stat()
        parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    return parts[0], hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _cpu_tag() -> str:
    """This machine's CPU, as far as a verdict cached on disk must tell CPUs apart."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        pass  # not Linux: the platform and machine name are what there is
    return f"{sys.platform}-{platform.machine()}-{flags}"


def _cache_file(key: str) -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("llmctx")) / "native-probe" / f"{key}.json"


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def check_native_model(model_path: Path, *, python: str | None = None) -> None:
    """Raise :class:`ConfigError` unless llama.cpp can run ``model_path`` on this CPU.

    Runs once per build and process; a passing verdict is also cached on disk per build and
    CPU. ``LLMCTX_SKIP_NATIVE_PROBE=1`` skips it (for a build you have already proven).

    Raises:
        ConfigError: the child process that tried the model died by a signal (SIGILL: an
            instruction this CPU does not enable), exited with an error, or hung.
    """
    if _proven.is_set() or os.environ.get("LLMCTX_SKIP_NATIVE_PROBE") == "1":
        return
    with _lock:
        if _proven.is_set():
            return
        version, key = _library_fingerprint()
        cache = _cache_file(key)
        if not cache.is_file():
            info = _run_child(model_path, version, python or sys.executable)
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"version": version, "system_info": info}))
            except OSError:
                pass  # a read-only cache only costs the probe again next time
        _proven.set()


def _run_child(model_path: Path, version: str, python: str) -> str:
    reinstall = REINSTALL_COMMAND.format(version=version)
    env = {**os.environ, "PYTHONFAULTHANDLER": "0"}
    try:
        done = subprocess.run(
            [python, "-c", _CHILD, str(model_path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"llama.cpp did not answer a 4-token test generation within {_TIMEOUT_S:.0f} s; "
            f"if this build is broken, rebuild it portably with: {reinstall}"
        ) from exc
    if done.returncode == 0:
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    if done.returncode < 0:
        name = _signal_name(done.returncode)
        cause = (
            "it uses a CPU instruction this machine does not enable (llama-cpp-python is "
            "built with -march=native by default, and a CPU, hypervisor or container may "
            "not enable everything the CPU reports, AMX and AVX-512 most often)"
            if -done.returncode == signal.SIGILL
            else "the native library crashed"
        )
        raise ConfigError(
            f"llama.cpp (llama-cpp-python {version}) was killed by {name} while running the "
            f"bundled model in a test process: {cause}. Rebuild it portably with: {reinstall}"
        )
    raise ConfigError(
        f"llama.cpp (llama-cpp-python {version}) failed to run the bundled model in a test "
        f"process (exit {done.returncode}: {tail or 'no output'}); "
        f"reinstall it with: {reinstall}"
    )
