"""The workshop: every module runs through `llmctx workshop` and its self-checks hold.

The whole run is made once, at 80 columns without pausing, and shared by the tests that read
its output. Modules 01-03 are also run in this process through the runner's loader with one
thing their lesson relies on broken, to see their self-check catch it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

import llmctx
from llmctx.workshop import MODULES, _run_script, check_references, markdown_summary
from llmctx.workshop._common import CheckFailed, Checks, console

REPO = Path(__file__).resolve().parent.parent


def _llmctx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctx", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )


@pytest.fixture(scope="module")
def whole_run() -> subprocess.CompletedProcess[str]:
    """One `llmctx workshop --no-pause` at 80 columns, as a learner's terminal would be."""
    return _llmctx("workshop", "--no-pause", env={"COLUMNS": "80"})


def test_all_nine_modules_pass_their_self_checks(
    whole_run: subprocess.CompletedProcess[str],
) -> None:
    """`llmctx workshop` runs all nine modules and every self-check holds (exit 0, 9/9 ok)."""
    out = whole_run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "9/9 ok" in out.stdout
    for module in MODULES:
        assert module.title in out.stdout


def test_every_module_file_ships_with_the_package() -> None:
    """Each module named in the registry exists in the package (and so in the wheel)."""
    for module in MODULES:
        assert module.path.is_file(), module.filename


def test_modules_run_from_a_checkout_as_scripts() -> None:
    """`python workshop/01_basic_concepts.py` works from the repository root."""
    out = subprocess.run(
        [sys.executable, "workshop/01_basic_concepts.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_reference_check_catches_made_up_names() -> None:
    """The Markdown modules' reference check flags files and names that do not exist."""
    text = "See `llmctx/_session.py`, `llmctx.Session`, `llmctx/nope.py` and `llmctx.Nope`."
    assert check_references(text) == ["llmctx/nope.py", "llmctx.Nope"]


def test_unknown_module_number_is_a_clear_error() -> None:
    """Asking for module 12 names the valid range instead of a traceback."""
    out = _llmctx("workshop", "12")
    assert out.returncode == 2
    assert "1-9" in out.stdout


@pytest.mark.parametrize("blocked", ["llama_cpp"])
def test_missing_local_extra_names_the_extra(blocked: str) -> None:
    """Without the `local` extra the workshop says what to install instead of a traceback."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['llmctx', 'workshop', '2']; "
        "from llmctx._cli import main; main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "pip install 'llmctx[local]'" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_whole_run_fits_400_lines_of_80_columns(
    whole_run: subprocess.CompletedProcess[str],
) -> None:
    """The whole run prints under 400 lines, none wider than 80 columns, one check line each."""
    lines = whole_run.stdout.splitlines()
    per_module = {m.number: 0 for m in MODULES}
    current = 0
    for line in lines:
        for m in MODULES:
            if f"{m.number:02d}. {m.title}" in line and line.startswith("─"):
                current = m.number
        if current:
            per_module[current] += 1
    assert len(lines) < 400, f"{len(lines)} lines; per module {per_module}"
    wide = [line for line in lines if cell_len(line.rstrip()) > 80]
    assert not wide, wide[:5]
    # One check line per runnable module.
    assert len(re.findall(r"^[✓✗] Self-check: \d+/\d+ held", whole_run.stdout, re.M)) == 7
    assert "┃ claim" not in whole_run.stdout  # no table of every claim without --verbose


def test_verbose_prints_every_claim() -> None:
    """`--verbose` prints each self-check row; without it only the count line is printed."""
    claim = "contextlib.closing() closed it"
    quiet = _llmctx("workshop", "1", "--no-pause", env={"COLUMNS": "120"})
    loud = _llmctx("workshop", "1", "--no-pause", "--verbose", env={"COLUMNS": "120"})
    assert quiet.returncode == loud.returncode == 0, quiet.stdout[-2000:] + loud.stdout[-2000:]
    assert claim not in quiet.stdout and "24/24 held" in quiet.stdout
    assert claim in loud.stdout and "24/24 held" in loud.stdout


def test_failed_claims_are_printed_in_full() -> None:
    """A failed self-check prints the claim and its detail, the count, and raises naming it."""
    checks = Checks()
    checks.check(True, "the file was closed")
    checks.check(False, "the row was rolled back", "rows seen: ['book', 'half an order']")
    with console.capture() as captured, pytest.raises(CheckFailed, match="rolled back"):
        checks.verify()
    text = captured.get()
    assert "the row was rolled back" in text
    assert "rows seen: ['book', 'half an order']" in text
    assert "1/2 held" in text
    assert "the file was closed" not in text


def test_python_m_llmctx_workshop_lists_the_modules() -> None:
    """`python -m llmctx.workshop --list` shows each lesson, file and both ways to run it."""
    out = subprocess.run(
        [sys.executable, "-m", "llmctx.workshop", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(MODULES[0].path.parent) in out.stdout
    for m in MODULES:
        assert m.lesson and m.lesson in out.stdout
        assert f"llmctx workshop {m.number}  |  " in out.stdout
        assert m.filename in out.stdout
    assert "calls the local model" in out.stdout and "starts child processes" in out.stdout


def test_reading_modules_are_summarised_off_a_terminal() -> None:
    """Without a terminal 06 and 09 print their path, title and headings, not the whole text."""
    out = _llmctx("workshop", "6", "9", env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stdout[-2000:]
    for m in MODULES[5], MODULES[8]:
        title, _, headings = markdown_summary(m.path.read_text(encoding="utf-8"))
        assert title in out.stdout and str(m.path) in out.stdout
        assert headings[0] in out.stdout
    assert len(out.stdout.splitlines()) < 50


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal_the_run_pauses_between_modules() -> None:
    """On a terminal the runner waits for Enter before the next module, and q stops it."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctx", "workshop", "9", "6"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "80", "PAGER": "cat", "TERM": "dumb"},
    )
    os.close(slave)
    try:
        before = _read_until(master, b"q to stop", timeout=60)
        assert b"press Enter for module 6, q to stop" in before, before[-2000:]
        assert b"How the patterns work together" in before  # 09 shown whole (paged)
        os.write(master, b"q\n")
        after = _read_until(master, b"1/1 ok", timeout=30)
        assert proc.wait(timeout=30) == 0
        assert b"1/1 ok" in after and b"MCP implementation" not in after
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        os.close(master)


# ------------------------------------------------------------ self-checks catch a broken claim
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra"
)


def _module(number: int) -> Any:
    return next(m for m in MODULES if m.number == number)


class _Unclosing:
    """``contextlib.closing`` with its one job undone: the thing is never closed."""

    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def __enter__(self) -> Any:
        return self.thing

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def unclosed_connections() -> Iterator[list[Any]]:
    """Collect what the broken closing() left open, and close it after the test."""
    left: list[Any] = []
    yield left
    for thing in left:
        thing.close()


def test_01_catches_a_closing_that_does_not_close(
    monkeypatch: pytest.MonkeyPatch, unclosed_connections: list[Any]
) -> None:
    """01's self-check fails when contextlib.closing() leaves the sqlite3 connection open."""

    def unclosing(thing: Any) -> _Unclosing:
        unclosed_connections.append(thing)
        return _Unclosing(thing)

    monkeypatch.setattr(contextlib, "closing", unclosing)
    with pytest.raises(CheckFailed, match=r"contextlib\.closing\(\) closed it"):
        _run_script(_module(1))


@needs_llama
def test_02_catches_a_token_count_far_from_the_real_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """02's self-check fails when count_tokens is 10 tokens away from what llama.cpp reported."""
    real = llmctx.count_tokens

    def off_by_ten(*args: Any, **kwargs: Any) -> Any:
        counted = real(*args, **kwargs)
        return type(counted)(counted.tokens + 10, counted.exact, counted.method)

    monkeypatch.setattr(llmctx, "count_tokens", off_by_ten)
    with pytest.raises(CheckFailed, match="came within 2 tokens of the real prompt"):
        _run_script(_module(2))


@needs_llama
def test_03_catches_a_limiter_that_does_not_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """03's self-check fails when the rate limiter lets all four requests go at once."""
    real = llmctx.RateLimiter

    class NoPacing(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "burst": 60.0})

    monkeypatch.setattr(llmctx, "RateLimiter", NoPacing)
    with pytest.raises(CheckFailed, match="the limiter paced the batch"):
        _run_script(_module(3))
