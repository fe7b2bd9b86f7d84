"""The workshop: every module runs through `llmctx workshop` and its self-checks hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctx.workshop import MODULES, check_references

REPO = Path(__file__).resolve().parent.parent


def _llmctx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctx", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )


def test_all_nine_modules_pass_their_self_checks() -> None:
    """`llmctx workshop` runs all nine modules and every self-check holds (exit 0, 9/9 ok)."""
    out = _llmctx("workshop")
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
