"""08. Local MCP integration: real MCP servers, from a leak to a fleet with nothing leaked.

Four steps, each on real server processes built on the official ``mcp`` SDK (notes on
SQLite, read-only files) and counted with psutil. First the bad way: a server started by
hand, an exception before the cleanup line, and a process left behind (then reaped here, so
nothing really leaks). Then try/finally, which fixes that one process. Then a hand-written
``@asynccontextmanager`` around the SDK's ``stdio_client`` and ``ClientSession`` for one
server: the handshake, the calls and the teardown in one ``async with``. Then
:class:`llmctx.mcp.Hub` for many: a config with ``dev`` and ``prod`` profiles (``${VAR}``
expansion included), servers started concurrently, tool calls charged to the current llmctx
session as calls of kind ``tool``, and the local model choosing a tool under a JSON schema
that allows only the hub's real tool names, so ``hub.dispatch`` really runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
from mcp.client.stdio import stdio_client
from rich.markup import escape
from rich.syntax import Syntax

import llmctx
from llmctx.mcp import Hub, MCPConfigError, ToolNotFound, load_config, result_text
from llmctx.mcp.examples import path_of
from llmctx.workshop._common import (
    Checks,
    ask,
    child_processes,
    console,
    header,
    reply_note,
    run,
    section,
    temp_store,
)
from mcp import ClientSession, StdioServerParameters

README_TEXT = "llmctx workshop: this file is served by the files MCP server.\n"
PICK_MAX_TOKENS = 24
PICK_QUESTION = "Which tool lists the notes?"

# The bad version, as it reads: the error is one line between "start" and "stop", and
# nothing guarantees the stop.
BAD_SOURCE = """\
proc = subprocess.Popen([sys.executable, script, db], stdin=PIPE, stdout=PIPE)
timeout = float(settings["callTimeout"])  # KeyError: terminate() never runs
proc.terminate()"""

FINALLY_SOURCE = """\
proc = subprocess.Popen([sys.executable, script, db], stdin=PIPE, stdout=PIPE)
try:
    timeout = float(settings["callTimeout"])  # the same KeyError
finally:
    proc.terminate(); proc.wait()             # runs on the way out"""

ONE_SERVER_SOURCE = """\
@asynccontextmanager
async def notes_session(db):
    params = StdioServerParameters(command=sys.executable, args=[script, db])
    async with stdio_client(params) as (read, write), \\
               ClientSession(read, write) as session:
        await session.initialize()
        yield session"""

HUB_SOURCE = """\
async with Hub.from_config("mcp.json", profile="dev", environ=env) as hub:
    await hub.call("notes.add_note", {"title": ..., "body": ...})
# every server's process group is gone here: after success, error or cancel"""


# ---------------------------------------------------------------- 1 and 2: by hand


def _popen_notes(script: Path, db: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def start_notes_by_hand(
    script: Path, db: str, settings: Mapping[str, Any], spawned: list[subprocess.Popen[bytes]]
) -> None:
    """BAD: start a server with no try/finally, so an error before ``terminate()`` leaks it.

    ``spawned`` is this demo's own bookkeeping, so that the workshop can reap what the bad
    code leaked; real code of this shape simply loses the process.
    """
    proc = _popen_notes(script, db)
    spawned.append(proc)
    timeout = float(settings["callTimeout"])  # raises KeyError: the cleanup never runs
    proc.terminate()  # pragma: no cover - never reached, which is the point
    del timeout


def start_notes_with_finally(
    script: Path, db: str, settings: Mapping[str, Any], spawned: list[subprocess.Popen[bytes]]
) -> None:
    """Better: the same error, but ``finally`` terminates and reaps the process."""
    proc = _popen_notes(script, db)
    spawned.append(proc)
    try:
        timeout = float(settings["callTimeout"])  # the same KeyError
        del timeout
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def reap(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill and wait for processes this module started, closing their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def child_pids() -> set[int]:
    """The pids of this process's live children (grandchildren included)."""
    return {p.pid for p in child_processes()}


def by_hand(checks: Checks) -> None:
    """Section 1: a server leaked by hand, then try/finally."""
    section("1. By hand: a server leaked by an exception before the cleanup, then fixed")
    console.print(Syntax(BAD_SOURCE, "python"))
    spawned: list[subprocess.Popen[bytes]] = []
    before = child_pids()
    caught = "nothing was raised; "
    try:
        start_notes_by_hand(path_of("notes"), ":memory:", {}, spawned)
    except KeyError as exc:
        caught = f"the caller caught [red]KeyError({exc})[/red] and carried on; "
    leaked = child_pids() - before
    console.print(
        f"{caught}[bold red]{len(leaked)}[/bold red] server process\nis still running "
        f"(pid {', '.join(map(str, sorted(leaked)))}), waiting on a pipe nobody reads."
    )
    checks.check(
        leaked == {p.pid for p in spawned} and len(leaked) == 1,
        "the bad version leaked exactly the one process it started",
        f"leaked pids {sorted(leaked)}",
    )
    reap(spawned)  # the workshop cleans up after the bad example itself
    checks.check(not (leaked & child_pids()), "after reaping by pid, the leaked process is gone")

    console.print("With try/finally the cleanup runs on the way out:")
    console.print(Syntax(FINALLY_SOURCE, "python"))
    spawned.clear()
    before = child_pids()
    with suppress(KeyError):
        start_notes_with_finally(path_of("notes"), ":memory:", {}, spawned)
    left = child_pids() - before
    console.print(
        f"the same KeyError, and {len(left)} processes left (pid {spawned[0].pid} exited with "
        f"{spawned[0].returncode}).\nThat fixes one process; an MCP client has more to undo "
        "(session, tasks)."
    )
    checks.check(
        len(spawned) == 1 and not left and spawned[0].returncode is not None,
        "with try/finally the same error leaves no process behind",
        f"returncode {spawned[0].returncode if spawned else None}",
    )
    reap(spawned)  # closes the pipes


# ---------------------------------------------------------------- 3: one server, by hand


@asynccontextmanager
async def notes_session(db: str) -> AsyncIterator[ClientSession]:
    """One notes server over stdio, initialized; stopped and reaped when the block exits."""
    params = StdioServerParameters(command=sys.executable, args=[str(path_of("notes")), db])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def one_server(checks: Checks) -> None:
    """Section 2: one server behind a hand-written @asynccontextmanager."""
    section("2. One server: @asynccontextmanager around stdio_client + ClientSession")
    console.print(Syntax(ONE_SERVER_SOURCE, "python"))
    before = child_pids()
    async with notes_session(":memory:") as session:
        inside = child_pids() - before
        tools = [t.name for t in (await session.list_tools()).tools]
        added = structured(await session.call_tool("add_note", {"title": "hi", "body": "x"}))
    after = child_pids() - before
    console.print(
        f"inside: {len(inside)} server process, {len(tools)} tools ({', '.join(tools[:2])}, "
        f"...);\nadd_note -> {json.dumps(added)}; after the block: {len(after)} processes"
    )
    checks.check(
        len(inside) == 1
        and not after
        and "add_note" in tools
        and added == {"id": 1, "title": "hi"},
        "the hand-written manager started one server, talked MCP to it, and left no process",
        f"inside {sorted(inside)}, after {sorted(after)}",
    )


# ---------------------------------------------------------------- 4: many, the hub


def write_config(tmp: Path) -> Path:
    """Write the mcpServers config with its two profiles; return its path."""
    notes, files = str(path_of("notes")), str(path_of("files"))
    config: dict[str, Any] = {
        "mcpServers": {
            # Startup timeout: the default 60 s; files' calls time out after 10 s.
            "notes": {"command": sys.executable, "args": [notes, "${NOTES_DB:-:memory:}"]},
            "files": {
                "command": sys.executable,
                "callTimeout": 10,
                "args": [files, "${WORKSHOP_DIR}/docs"],
            },
        },
        "profiles": {
            # dev: both servers, every tool, a scratch notes DB.
            "dev": {"servers": ["notes", "files"]},
            # prod: the notes server only, read-only, on a DB that must be named explicitly.
            "prod": {
                "servers": ["notes"],
                "mcpServers": {
                    "notes": {"args": [notes, "${PROD_NOTES_DB}"], "exclude": ["add_*", "delete_*"]}
                },
            },
        },
    }
    path = tmp / "mcp.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def show_config(path: Path) -> str:
    """The config file as written, one line per server and profile, script paths shortened."""
    raw = json.loads(path.read_text(encoding="utf-8"))

    def text(value: Any) -> str:
        items = value if isinstance(value, list) else [value]
        return " ".join(Path(v).name if str(v).endswith(".py") else str(v) for v in items)

    def words(entry: dict[str, Any]) -> str:
        extra = [f", {k} {text(v)}" for k, v in entry.items() if k not in ("command", "args")]
        return text(entry.get("args", [])) + "".join(extra)

    lines = [f'{path.name}: "mcpServers" (the standard shape), plus llmctx\'s "profiles":']
    for name, entry in raw["mcpServers"].items():
        command = "python" if entry["command"] == sys.executable else entry["command"]
        lines.append(f"  {name:<6} {command} {words(entry)}")
    for name, profile in raw["profiles"].items():
        overrides = "".join(
            f", as {words(entry)}" for entry in profile.get("mcpServers", {}).values()
        )
        lines.append(f"  {name:<6} {', '.join(profile['servers'])}{overrides}")
    return "\n".join(lines)


def structured(result: Any) -> Any:
    """A tool result's structured content, unwrapped from the SDK's ``{"result": ...}``."""
    data = result.structured_content
    if isinstance(data, dict) and set(data) == {"result"}:
        return data["result"]
    return data


async def wait_for_resources(hub: Hub, count: int, limit: float = 5.0) -> list[str]:
    """Wait (bounded) until the hub has re-listed ``count`` resources; return their URIs."""
    with anyio.move_on_after(limit):
        # The hub re-lists in the server's owner task after the notification and offers no
        # event for "re-listed": a short, bounded poll.
        while len(hub.resources()) < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return [str(r.uri) for _, r in hub.resources()]


def config_and_profiles(checks: Checks, config_path: Path, env: dict[str, str]) -> None:
    """Section 3: the config, its profiles and ${VAR} expansion."""
    section("3. Many servers: one config, two profiles, ${VAR} expansion, llmctx.mcp.Hub")
    console.print(escape(show_config(config_path)))
    try:
        load_config(config_path, profile="prod", environ=env)
        prod_error = ""
    except MCPConfigError as exc:
        prod_error = str(exc)
    console.print(
        "prod without PROD_NOTES_DB fails before anything starts:\n"
        f"  [red]{escape(prod_error.split('; ')[0])}[/red]"
    )
    checks.check(
        "PROD_NOTES_DB" in prod_error and "mcpServers.notes.args" in prod_error,
        "an unset ${VAR} is a config error naming the server and field",
        prod_error[:80],
    )
    env["PROD_NOTES_DB"] = env["NOTES_DB"]  # prod reads the notes dev will write
    dev = load_config(config_path, profile="dev", environ=env)
    prod = load_config(config_path, profile="prod", environ=env)
    checks.check(
        dev.servers["notes"].args[-1] == env["NOTES_DB"]
        and dev.servers["files"].args[-1] == f"{env['WORKSHOP_DIR']}/docs",
        "${NOTES_DB} and ${WORKSHOP_DIR} expanded from the given environment",
    )
    checks.check(
        list(prod.servers) == ["notes"] and prod.servers["notes"].exclude == ("add_*", "delete_*"),
        "prod selects only notes, with add_* and delete_* excluded (read-only)",
    )


async def dev_hub(checks: Checks, config_path: Path, env: dict[str, str], base: set[int]) -> None:
    """Section 3, continued: the dev hub, its tool calls and the model's pick."""
    console.print(Syntax(HUB_SOURCE, "python"))
    console.print(
        "Beyond notes_session in a loop: concurrent start, an owner task per server,\n"
        "restarts, process-group kill, tool names prefixed by their server."
    )
    with temp_store() as store, llmctx.session("workshop-08-mcp", store=store) as s:
        notifications: list[str] = []

        async def on_message(message: Any) -> None:
            # Observer: the hub forwards every server notification it receives.
            method = getattr(message, "method", None)
            if isinstance(method, str):
                notifications.append(method)

        hub = Hub.from_config(config_path, profile="dev", environ=env, message_handler=on_message)
        async with hub:
            dev_pids = {st.pid for st in hub.status().values() if st.pid is not None}
            states = {name: str(st.state) for name, st in hub.status().items()}
            console.print(f"dev hub: {states}, {len(hub.tools())} tools, pids {sorted(dev_pids)}")
            checks.check(
                set(states.values()) == {"ready"}
                and len(dev_pids) == 2
                and dev_pids <= child_pids(),
                "dev: both servers ready, each a live child process",
                f"pids {sorted(dev_pids)}",
            )
            first = await hub.call("notes.add_note", {"title": "ship it", "body": "after checks"})
            second = await hub.call("notes.add_note", {"title": "tests", "body": "real ones"})
            listed = structured(await hub.call("notes.list_notes"))
            readme = await hub.call("files.read_file", {"path": "README.txt"})
            outside = await hub.call("files.read_file", {"path": "../secret.txt"})
            uris = await wait_for_resources(hub, 2)
            console.print(
                f"  notes.add_note x2 -> ids {structured(first)['id']}, {structured(second)['id']};"
                f" notes.list_notes -> ids {[n['id'] for n in listed]}\n"
                f"  files.read_file: README.txt -> its {len(result_text(readme))} chars; "
                f"../secret.txt -> isError={outside.is_error}\n"
                f"  {notifications.count('notifications/resources/list_changed')} list_changed "
                f"notifications; resources re-listed: {uris}"
            )
            checks.check(
                structured(first) == {"id": 1, "title": "ship it"}
                and structured(second) == {"id": 2, "title": "tests"}
                and listed == [{"id": 2, "title": "tests"}, {"id": 1, "title": "ship it"}],
                "notes.add_note returned ids 1 and 2; notes.list_notes both, newest first",
                json.dumps(listed),
            )
            checks.check(
                result_text(readme) == README_TEXT
                and not readme.is_error
                and outside.is_error
                and "outside the served root" in result_text(outside),
                "files.read_file returned the file's exact text and refused a path outside its "
                "root (isError)",
            )
            checks.check(
                uris == ["note://1", "note://2"]
                and notifications.count("notifications/resources/list_changed") == 2,
                "each add_note's list_changed notification made the hub re-list resources",
                f"{len(notifications)} notification(s)",
            )
            await model_picks_a_tool(checks, hub, s)
        after_dev = child_pids()
        tool_calls = [(c.model, c.status) for c in s.calls if c.kind == "tool"]
        stored = [(c.model, c.status) for c in store.list_calls([s.id]) if c.kind == "tool"]
        zero = all(c.usage.total_tokens == 0 and c.cost == 0 for c in s.calls if c.kind == "tool")
    console.print(
        f"session {s.name!r}: {len(tool_calls)} calls of kind 'tool' ($0), stored; "
        f"{len(after_dev - base)} processes left"
    )
    expected = [
        ("notes.add_note", "ok"),
        ("notes.add_note", "ok"),
        ("notes.list_notes", "ok"),
        ("files.read_file", "ok"),
        ("files.read_file", "error"),
    ]
    checks.check(
        tool_calls[: len(expected)] == expected and zero,
        "every tool call was charged to the session as kind 'tool' (no tokens, $0)",
        ", ".join(f"{m}:{st}" for m, st in tool_calls),
    )
    checks.check(
        stored == tool_calls,
        "the tool calls were written through to the SQLite store",
        f"{len(stored)} stored",
    )
    checks.check(
        not (dev_pids & after_dev) and after_dev - base == set(),
        "after the dev hub exited no server process remains",
        f"children now: {sorted(after_dev - base)}",
    )


def tool_choice_schema(names: Sequence[str]) -> dict[str, Any]:
    """A JSON schema whose only valid documents name one of ``names``."""
    return {
        "type": "object",
        "properties": {"tool": {"type": "string", "enum": list(names)}},
        "required": ["tool"],
    }


async def model_picks_a_tool(checks: Checks, hub: Hub, s: llmctx.Session) -> None:
    """The local model picks a tool under a schema of the hub's real names; the hub runs it."""
    # The names a model sees are the exported ones (server__tool), as in hub.openai_tools().
    names = [t["function"]["name"] for t in hub.openai_tools()]
    question = f"Tools: {', '.join(names)}. {PICK_QUESTION} Reply with its name."
    # llama.cpp turns the schema into a grammar: at each step only tokens that keep the
    # output valid can be sampled, so the reply is one of the real names, spelled exactly.
    schema = tool_choice_schema(names)
    console.print(
        f"The local model picks the tool for {PICK_QUESTION!r} under\n"
        'response_format={"type": "json_object", "schema": S}, S naming only real tools:'
    )
    # A worker thread keeps the event loop (and the servers' owner tasks) responsive;
    # anyio copies the context into it, so the call is charged to the session.
    try:
        reply = await anyio.to_thread.run_sync(
            lambda: ask(
                question,
                max_tokens=PICK_MAX_TOKENS,
                response_format={"type": "json_object", "schema": schema},
            )
        )
    except llmctx.ConfigError as exc:  # no local extra: the MCP part still stands
        console.print(f"[dim](local model unavailable: {escape(str(exc))})[/dim]")
        return
    try:
        picked = str(json.loads(reply)["tool"])
    except (ValueError, KeyError, TypeError):
        picked = ""
    tool_calls_before = sum(1 for c in s.calls if c.kind == "tool")
    answer = await hub.dispatch({"id": "call-1", "function": {"name": picked, "arguments": "{}"}})
    dispatched = sum(1 for c in s.calls if c.kind == "tool") - tool_calls_before
    console.print(
        f"  model: [bold]{escape(reply)}[/bold] -> hub.dispatch ran {dispatched} call:\n"
        f"  {escape(textwrap.shorten(answer.content, 76))}"
    )
    reply_note(PICK_MAX_TOKENS)
    checks.check(
        picked in names and dispatched == 1 and not answer.is_error,
        "the constrained model named a real tool and hub.dispatch really ran it (once)",
        f"picked {picked!r}, dispatched {dispatched}",
    )


async def prod_hub(checks: Checks, config_path: Path, env: dict[str, str], base: set[int]) -> None:
    """Section 4: the prod profile, and an exception inside the hub's block."""
    section("4. The prod profile, and an exception inside the hub's block")
    prod_pids: set[int] = set()
    add_refused = ""
    prod_listed: Any = None
    prod_tools: list[str] = []
    try:
        async with Hub.from_config(config_path, profile="prod", environ=env) as prod:
            prod_pids = {st.pid for st in prod.status().values() if st.pid is not None}
            prod_tools = [t.qualified for t in prod.tools()]
            prod_listed = structured(await prod.call("notes.list_notes"))
            try:
                await prod.call("notes.add_note", {"title": "x", "body": "y"})
            except ToolNotFound as exc:
                add_refused = str(exc)
            console.print(
                f"prod tools: {', '.join(prod_tools)}; it reads dev's {len(prod_listed or [])} "
                f"notes;\nnotes.add_note: [yellow]{escape(add_refused.split(';')[0])}[/yellow]"
            )
            settings: dict[str, Any] = {}
            float(settings["callTimeout"])  # the same bug as the bad version
    except KeyError as exc:
        console.print(f"the same [red]KeyError({exc})[/red] escaped the hub's block ...")
    after_prod = child_pids()
    console.print(f"... and {len(after_prod - base)} server processes remain.")
    checks.check(
        [t["title"] for t in prod_listed or []] == ["tests", "ship it"],
        "prod's notes server reads the notes dev wrote",
    )
    checks.check(
        "notes.add_note" in add_refused
        and prod_tools == ["notes.list_notes", "notes.search_notes"],
        "prod does not expose notes.add_note (excluded by the profile)",
    )
    checks.check(
        len(prod_pids) == 1 and not (prod_pids & after_prod) and not after_prod - base,
        "after an exception inside the prod hub's block no server process remains",
    )


async def main() -> None:
    """The module, section by section: by hand, try/finally, one manager, the hub."""
    header(8, "Local MCP integration", "real MCP servers: a leak, try/finally, one manager, a hub")
    checks = Checks()
    baseline = child_pids()
    by_hand(checks)
    await one_server(checks)
    with tempfile.TemporaryDirectory(prefix="llmctx-mcp-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "docs").mkdir()
        (tmp / "docs" / "README.txt").write_text(README_TEXT, encoding="utf-8")
        (tmp / "secret.txt").write_text("outside the served root\n", encoding="utf-8")
        config_path = write_config(tmp)
        # ${VAR} is looked up here (not in os.environ), so the demo changes no global state.
        env = {"WORKSHOP_DIR": str(tmp), "NOTES_DB": str(tmp / "notes.db")}
        config_and_profiles(checks, config_path, env)
        await dev_hub(checks, config_path, env, baseline)
        await prod_hub(checks, config_path, env, baseline)
    checks.verify()


if __name__ == "__main__":
    run(main)
