"""Workshop modules 04, 05, 07 and 08: each self-check fails loudly when its lesson is broken.

Every test runs a module in this process through the runner's own loader
(``llmctx.workshop._run_script``, what ``llmctx workshop`` uses), with one thing the module
relies on mutated, and expects the module's ``checks.verify()`` to raise ``CheckFailed``. The
08 tests use the real local model and real MCP server processes.
"""

from __future__ import annotations

import contextvars
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import llmctx
from llmctx.mcp import Hub
from llmctx.mcp.hub import ToolCallResult
from llmctx.workshop import MODULES, _run_script
from llmctx.workshop._common import CheckFailed

pytest.importorskip("llama_cpp")


def _module(number: int) -> Any:
    return next(m for m in MODULES if m.number == number)


_RealContextVar = contextvars.ContextVar


class _SetNoneOnReset:
    """A ContextVar whose ``reset`` sets None, as the blog post's exit does: the bug 04 fixes."""

    def __init__(self, name: str, **default: Any) -> None:
        self._var: contextvars.ContextVar[Any] = _RealContextVar(name, **default)

    def get(self, *default: Any) -> Any:
        return self._var.get(*default)

    def set(self, value: Any) -> contextvars.Token[Any]:
        return self._var.set(value)

    def reset(self, token: contextvars.Token[Any]) -> None:
        self._var.set(None)


def test_04_catches_a_reset_that_does_not_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """04's self-check fails when ContextVar.reset(token) does not restore the previous value."""
    monkeypatch.setattr(contextvars, "ContextVar", _SetNoneOnReset)
    with pytest.raises(CheckFailed, match=r"with reset\(token\) each recorder logs its own block"):
        _run_script(_module(4))


def test_05_catches_a_pool_that_ignores_the_lease_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """05's self-check fails when the GPU pool leases 1 GB whatever a job asks for."""
    real = llmctx.ResourcePool

    class OneUnitPool(real):  # type: ignore[misc,valid-type]
        def acquire(self, amount: int = 1, *, timeout: float | None = None) -> Any:
            return super().acquire(1, timeout=timeout)

    monkeypatch.setattr(llmctx, "ResourcePool", OneUnitPool)
    with pytest.raises(CheckFailed, match="H still waited behind the 16 GB job G"):
        _run_script(_module(5))


@pytest.fixture
def leftover_temp_files() -> Iterator[None]:
    """Delete the temporary files 07 leaves behind when its cleanup is broken on purpose."""
    pattern = "llmctx-07-*.txt"
    before = set(Path(tempfile.gettempdir()).glob(pattern))
    yield
    for path in set(Path(tempfile.gettempdir()).glob(pattern)) - before:
        path.unlink(missing_ok=True)


@pytest.mark.usefixtures("leftover_temp_files")
def test_07_catches_a_cleanup_that_leaves_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """07's self-check fails when the temporary files are not really deleted on exit."""

    async def unlink_nothing(self: anyio.Path, missing_ok: bool = False) -> None:
        return None

    monkeypatch.setattr(anyio.Path, "unlink", unlink_nothing)
    with pytest.raises(CheckFailed, match="file deleted"):
        _run_script(_module(7))


def test_08_the_model_picked_tool_is_dispatched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """08 passes, and hub.dispatch runs exactly one model-chosen call on a real server."""
    real = Hub.dispatch
    answers: list[ToolCallResult] = []

    async def counting(self: Hub, tool_call: Any, **kwargs: Any) -> ToolCallResult:
        answer = await real(self, tool_call, **kwargs)
        answers.append(answer)
        return answer

    monkeypatch.setattr(Hub, "dispatch", counting)
    _run_script(_module(8))
    assert len(answers) == 1
    real_tools = {"notes__add_note", "notes__list_notes", "notes__search_notes"}
    real_tools |= {"notes__delete_note", "files__read_file", "files__list_dir"}
    assert answers[0].name in real_tools
    assert not answers[0].is_error, answers[0].content


def test_08_catches_a_dispatch_that_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """08's self-check fails when hub.dispatch answers without calling the tool."""

    async def pretend(self: Hub, tool_call: Any, **kwargs: Any) -> ToolCallResult:
        return ToolCallResult("call-1", "notes__list_notes", "[]", False)

    monkeypatch.setattr(Hub, "dispatch", pretend)
    with pytest.raises(CheckFailed, match=r"hub.dispatch really ran it \(once\)"):
        _run_script(_module(8))
