"""The pytest plugin: llmctx's fixtures are found in a project without ``pytest_plugins``.

Each test runs a real pytest in a subprocess, in a temporary project that only has llmctx
installed (the ``pytest11`` entry point of the installed package), as a user's would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

USER_TEST = """
import llmctx
from llmctx.testing import FakeModel


def test_fixtures_record_into_a_memory_store(llmctx_session, llmctx_store):
    FakeModel(reply="ok").complete("hello there")
    with llmctx.session("opened-without-a-store"):
        FakeModel(reply="fine").complete("again")
    assert llmctx_session.usage.requests == 2
    names = {s.name for s in llmctx_store.list_sessions(limit=None)}
    assert names == {"test", "opened-without-a-store"}


def test_each_test_gets_a_fresh_store(llmctx_store):
    assert llmctx_store.list_sessions(limit=None) == []
"""


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLMCTX_"))}
    # The per-user places: if anything wrote to the per-user database, it would be here.
    env["XDG_DATA_HOME"] = str(project / "user-data")
    env["XDG_CONFIG_HOME"] = str(project / "user-config")
    env["HOME"] = str(project / "home")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_entry_point_names_the_testing_module() -> None:
    """The installed package declares llmctx.testing as a pytest11 plugin."""
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("llmctx.testing") == "llmctx.testing"


def test_fixtures_are_found_without_pytest_plugins(tmp_path: Path) -> None:
    """A project with no conftest uses llmctx_session/llmctx_store; nothing reaches the user DB."""
    (tmp_path / "test_user.py").write_text(USER_TEST)
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert not (tmp_path / "user-data").exists()  # no per-user database was created


def test_an_old_pytest_plugins_line_is_harmless(tmp_path: Path) -> None:
    """A conftest that still says pytest_plugins = ["llmctx.testing"] runs as before."""
    (tmp_path / "test_user.py").write_text(USER_TEST)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["llmctx.testing"]\n')
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_plugin_can_be_turned_off(tmp_path: Path) -> None:
    """-p no:llmctx.testing removes the fixtures, so they came from the entry point."""
    (tmp_path / "test_user.py").write_text(USER_TEST)
    done = _pytest(tmp_path, "-p", "no:llmctx.testing")
    assert done.returncode == 1
    assert "fixture 'llmctx_session' not found" in done.stdout
