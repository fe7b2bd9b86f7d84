"""The hub with the third-party servers issue 14 names: npm's server-filesystem, server-memory
and server-sequential-thinking, and PyPI's mcp-server-git (server-everything and
mcp-server-time have their own tests).

The npm packages are pinned in ``tests/mcp/npm`` (``npm ci --prefix tests/mcp/npm``); the PyPI
one is in the ``dev`` extra. Without them the tests skip with the reason; under ``CI=true``
they fail instead, so CI cannot silently lose them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from llmctx.mcp import CallbackContext, Hub, ServerCallbacks, ServerState, result_text
from llmctx.mcp._export import TRUNCATION_MARKER

pytestmark = pytest.mark.anyio

PACKAGES = Path(__file__).resolve().parent / "npm" / "node_modules" / "@modelcontextprotocol"


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def _npm(package: str, *args: str, **extra: Any) -> dict[str, Any]:
    node = shutil.which("node")
    entry = PACKAGES / package / "dist" / "index.js"
    _require(
        "node is not on PATH (install Node.js 18+)"
        if node is None
        else None
        if entry.is_file()
        else f"{package} not installed: run `npm ci --prefix tests/mcp/npm`"
    )
    assert node is not None
    return {"command": node, "args": [str(entry), *args], "timeout": 60, **extra}


async def test_filesystem_keeps_its_directories_when_roots_are_given_to_another_server(
    tmp_path: Path,
) -> None:
    """server-filesystem replaces its allowed directories with the client's roots; with roots
    given to fs_b only, fs_a keeps the directory it was started with, and fs_b serves its root."""
    a, b, root = tmp_path / "a", tmp_path / "b", tmp_path / "root"
    for folder in (a, b, root):
        folder.mkdir()
    (root / "hello.txt").write_text("from the root")
    asked: list[str] = []

    async def roots(ctx: CallbackContext) -> types.ListRootsResult:
        asked.append(ctx.server)
        return types.ListRootsResult(roots=[types.Root(uri=root.resolve().as_uri())])

    config = {
        "mcpServers": {
            "fs_a": _npm("server-filesystem", str(a)),
            "fs_b": _npm("server-filesystem", str(b)),
        }
    }
    with anyio.fail_after(90):
        async with Hub.from_config(
            config, callbacks={"fs_b": ServerCallbacks(list_roots=roots)}
        ) as hub:
            allowed_a = result_text(await hub.call("fs_a.list_allowed_directories"))
            # fs_b asks for roots right after the handshake; wait for it to take them.
            while str(root.resolve()) not in result_text(  # noqa: ASYNC110
                await hub.call("fs_b.list_allowed_directories")
            ):
                await anyio.sleep(0.05)
            read = await hub.call("fs_b.read_text_file", {"path": str(root / "hello.txt")})
    assert str(a.resolve()) in allowed_a and str(root.resolve()) not in allowed_a
    assert result_text(read) == "from the root"
    assert set(asked) == {"fs_b"}


async def test_memory_server_stores_and_reads_a_graph(tmp_path: Path) -> None:
    """server-memory (npm) creates entities and reads them back through the hub."""
    config = {
        "mcpServers": {
            "memory": _npm(
                "server-memory", env={"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")}
            )
        }
    }
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            created = await hub.call(
                "memory.create_entities",
                {
                    "entities": [
                        {"name": "llmctx", "entityType": "library", "observations": ["has a hub"]}
                    ]
                },
            )
            assert not created.is_error, result_text(created)
            graph = result_text(await hub.call("memory.read_graph"))
    assert "llmctx" in graph and "has a hub" in graph


async def test_sequential_thinking_description_is_cut_for_openai_and_the_tool_answers() -> None:
    """server-sequential-thinking's long description (over 1,024 characters) is cut for
    OpenAI exports with a marker, kept whole in the hub, and the tool answers a thought."""
    with anyio.fail_after(60):
        async with Hub.from_config(
            {"mcpServers": {"think": _npm("server-sequential-thinking")}}
        ) as hub:
            tool = hub.resolve("think.sequentialthinking")
            exported = hub.openai_tools()[0]["function"]
            reply = await hub.dispatch(
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": tool.exported,
                    "arguments": json.dumps(
                        {
                            "thought": "First, list the parts.",
                            "nextThoughtNeeded": False,
                            "thoughtNumber": 1,
                            "totalThoughts": 1,
                        }
                    ),
                }
            )
    assert len(tool.description) > 1024
    assert len(exported["description"]) <= 1024 and exported["description"].endswith(
        TRUNCATION_MARKER
    )
    assert not reply.is_error, reply.content
    assert reply.to_message()["type"] == "function_call_output"
    assert '"thoughtNumber": 1' in reply.content or '"thoughtNumber":1' in reply.content


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git repository with one commit and one untracked file."""
    git = shutil.which("git")
    _require(None if git is not None else "git is not on PATH")
    assert git is not None
    repo = tmp_path / "repo"
    repo.mkdir()
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env = {**os.environ, **who, "GIT_COMMITTER_EMAIL": "t@x"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "first commit"]):
        subprocess.run([git, *args], cwd=repo, check=True, env=env)
    (repo / "new.txt").write_text("untracked")
    return repo


async def test_git_server_reports_a_repositorys_status(repo: Path) -> None:
    """mcp-server-git (PyPI) answers git_status and git_log on a real repository."""
    exe = shutil.which("mcp-server-git", path=str(Path(sys.executable).parent))
    _require(None if exe is not None else "mcp-server-git is not installed (dev extra)")
    assert exe is not None
    config = {
        "mcpServers": {"git": {"command": exe, "args": ["--repository", str(repo)], "timeout": 60}}
    }
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            assert hub.status()["git"].state is ServerState.READY
            status = result_text(await hub.call("git.git_status", {"repo_path": str(repo)}))
            log = result_text(await hub.call("git.git_log", {"repo_path": str(repo)}))
    assert "new.txt" in status
    assert "first commit" in log
