"""08. Local MCP integration: a fleet of real MCP servers from one config, with nothing leaked.

A config with ``dev`` and ``prod`` profiles is written at run time (``${VAR}`` expansion
included) and two real MCP servers built on the official SDK (notes on SQLite, read-only
files) are started from it by :class:`llmctx.mcp.Hub`. First the bad way: a server started by
hand, an exception before the cleanup line, and a process left behind, counted with psutil
(then reaped here so nothing really leaks). Then the good way: ``async with
Hub.from_config(...)``, tool calls charged to the current llmctx session as calls of kind
``tool``, the ``prod`` profile's narrower tool set, an exception inside the hub's block, and no
process left behind in either case.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

import llmctx
from llmctx.mcp import Hub, MCPConfigError, ToolNotFound, load_config, result_text
from llmctx.mcp.examples import path_of
from llmctx.workshop._common import (
    Checks,
    ask,
    child_processes,
    console,
    header,
    note,
    run,
    section,
    temp_store,
)

README_TEXT = "llmctx workshop: this file is served by the files MCP server.\n"

# The bad version, shown as it is run. It reads like harmless code: the error is one line
# between "start" and "stop", and nothing guarantees the stop.
BAD_SOURCE = """\
def start_notes_by_hand(script, db, settings):
    proc = subprocess.Popen([sys.executable, script, db],
                            stdin=PIPE, stdout=PIPE, stderr=DEVNULL)
    timeout = float(settings["callTimeout"])  # KeyError: terminate() never runs
    proc.terminate()
"""

GOOD_SOURCE = """\
async with Hub.from_config(config_path, profile="dev", environ=env) as hub:
    await hub.call("notes.add_note", {"title": ..., "body": ...})
    await hub.call("files.read_file", {"path": "README.txt"})
# here every server's process group is gone: after success, error or cancel
"""


def start_notes_by_hand(
    script: Path, db: str, settings: Mapping[str, Any], spawned: list[subprocess.Popen[bytes]]
) -> None:
    """BAD: start a server with no try/finally, so an error before ``terminate()`` leaks it.

    ``spawned`` is this demo's own bookkeeping, so that the workshop can reap what the bad
    code leaked; real code of this shape simply loses the process.
    """
    proc = subprocess.Popen(
        [sys.executable, str(script), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    spawned.append(proc)
    timeout = float(settings["callTimeout"])  # raises KeyError: the cleanup never runs
    proc.terminate()  # pragma: no cover - never reached, which is the point
    del timeout


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


def write_config(tmp: Path) -> Path:
    """Write the mcpServers config with its two profiles; return its path."""
    notes, files = str(path_of("notes")), str(path_of("files"))
    config: dict[str, Any] = {
        "mcpServers": {
            "notes": {
                "command": sys.executable,
                "args": [notes, "${NOTES_DB:-:memory:}"],
                "timeout": 30,
            },
            "files": {
                "command": sys.executable,
                "args": [files, "${WORKSHOP_DIR}/docs"],
                "timeout": 30,
                "callTimeout": 10,
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
    """The config file as written, one server or profile per line, local paths shortened."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    lines = ["{"]
    for i, key in enumerate(("mcpServers", "profiles")):
        lines.append(f'  "{key}": {{')
        items = list(raw[key].items())
        for j, (name, entry) in enumerate(items):
            comma = "," if j < len(items) - 1 else ""
            lines.append(f'    "{name}": {json.dumps(entry)}{comma}')
        lines.append("  }" + ("," if i == 0 else ""))
    lines.append("}")
    text = "\n".join(lines)
    return text.replace(sys.executable, "python").replace(
        str(path_of("notes").parent), "<llmctx>/mcp/examples"
    )


def profile_table(config_path: Path, environ: Mapping[str, str]) -> tuple[Table, dict[str, Any]]:
    """Resolve both profiles and tabulate what each would start."""
    table = Table(title="Profiles resolved from mcp.json")
    for col in ("profile", "server", "last arg (after ${VAR})", "tool filter", "callTimeout"):
        table.add_column(col, overflow="fold")
    resolved: dict[str, Any] = {}
    for profile in ("dev", "prod"):
        cfg = load_config(config_path, profile=profile, environ=environ)
        resolved[profile] = cfg
        for server in cfg.enabled():
            filters = []
            if server.include is not None:
                filters.append(f"include {list(server.include)}")
            if server.exclude:
                filters.append(f"exclude {list(server.exclude)}")
            table.add_row(
                profile,
                server.name,
                server.args[-1],
                ", ".join(filters) or "all",
                "-" if server.call_timeout is None else f"{server.call_timeout:g}s",
            )
    return table, resolved


def status_table(hub: Hub, title: str) -> Table:
    """Tabulate hub.status(): state, start time, pid and tools of every server."""
    table = Table(title=title)
    for col in ("server", "state", "started in", "pid", "tools"):
        table.add_column(col)
    for name, st in hub.status().items():
        tools = ", ".join(t.name for t in hub.tools() if t.server == name)
        table.add_row(
            name,
            str(st.state),
            "-" if st.startup_seconds is None else f"{st.startup_seconds:.2f}s",
            str(st.pid),
            tools,
        )
    return table


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


async def main() -> None:
    """Run the module: config and profiles, the bad version, the hub, the prod profile."""
    header(8, "Local MCP integration", "real MCP servers from a config: the bad way, the hub way")
    checks = Checks()
    baseline = child_pids()

    with tempfile.TemporaryDirectory(prefix="llmctx-mcp-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "docs").mkdir()
        (tmp / "docs" / "README.txt").write_text(README_TEXT, encoding="utf-8")
        (tmp / "secret.txt").write_text("outside the served root\n", encoding="utf-8")
        notes_db = str(tmp / "notes.db")
        config_path = write_config(tmp)
        # ${VAR} is looked up here (not in os.environ), so the demo changes no global state.
        env = {"WORKSHOP_DIR": str(tmp), "NOTES_DB": notes_db}

        # ------------------------------------------------------------ config
        section("1. One config, two profiles, ${VAR} expansion")
        console.print(Syntax(show_config(config_path), "json", word_wrap=True))
        try:
            load_config(config_path, profile="prod", environ=env)
            prod_error = ""
        except MCPConfigError as exc:
            prod_error = str(exc)
        note(
            "prod without PROD_NOTES_DB fails before anything starts:\n"
            f"[red]{escape(prod_error)}[/red]",
            title="fail fast on an unset variable",
        )
        checks.check(
            "PROD_NOTES_DB" in prod_error and "mcpServers.notes.args" in prod_error,
            "an unset ${VAR} is a config error naming the server and field",
            prod_error[:80],
        )
        env["PROD_NOTES_DB"] = notes_db  # prod reads the notes dev will write
        table, resolved = profile_table(config_path, env)
        console.print(table)
        dev_notes = resolved["dev"].servers["notes"]
        checks.check(
            dev_notes.args[-1] == notes_db
            and resolved["dev"].servers["files"].args[-1] == f"{tmp}/docs",
            "${NOTES_DB} and ${WORKSHOP_DIR} expanded from the given environment",
        )
        checks.check(
            list(resolved["prod"].servers) == ["notes"]
            and resolved["prod"].servers["notes"].exclude == ("add_*", "delete_*"),
            "prod selects only notes, with add_* and delete_* excluded (read-only)",
        )

        # ------------------------------------------------------------ bad
        section("2. BAD: a server started by hand, an exception before the cleanup")
        console.print(Syntax(BAD_SOURCE, "python"))
        spawned: list[subprocess.Popen[bytes]] = []
        before = child_pids()
        try:
            start_notes_by_hand(path_of("notes"), ":memory:", {}, spawned)
        except KeyError as exc:
            console.print(f"the caller caught [red]KeyError({exc})[/red] and carried on ...")
        leaked = child_pids() - before
        console.print(
            f"... and [bold red]{len(leaked)}[/bold red] server process(es) are still running "
            f"(pid {', '.join(map(str, sorted(leaked)))}), waiting on a pipe nobody reads."
        )
        checks.check(
            leaked == {p.pid for p in spawned} and len(leaked) == 1,
            "the bad version leaked exactly the one process it started",
            f"leaked pids {sorted(leaked)}",
        )
        reap(spawned)  # the workshop cleans up after the bad example itself
        still = child_pids() - baseline
        checks.check(
            not (leaked & child_pids()) and not still,
            "after reaping by pid, no process of the bad version remains",
        )
        note(
            "In a long-lived program (a web server, a notebook) that process lives on until "
            "the program exits. try/finally fixes this one server; a fleet also needs "
            "concurrent startup, one owner task per server, group kill, and cleanup on "
            "cancellation. That is what the hub is.",
            title="why it leaks",
            style="red",
        )

        # ------------------------------------------------------------ good: dev
        section("3. GOOD: async with Hub.from_config(..., profile='dev')")
        console.print(Syntax(GOOD_SOURCE, "python"))
        with temp_store() as store, llmctx.session("workshop-08-mcp", store=store) as s:
            notifications: list[str] = []

            async def on_message(message: Any) -> None:
                # Observer: the hub forwards every server notification it receives.
                method = getattr(message, "method", None)
                if isinstance(method, str):
                    notifications.append(method)

            hub = Hub.from_config(
                config_path, profile="dev", environ=env, message_handler=on_message
            )
            dev_pids: set[int] = set()
            async with hub:
                console.print(status_table(hub, "dev hub: both servers started concurrently"))
                dev_pids = {st.pid for st in hub.status().values() if st.pid is not None}
                checks.check(
                    all(str(st.state) == "ready" for st in hub.status().values())
                    and len(dev_pids) == 2
                    and dev_pids <= child_pids(),
                    "dev: both servers ready, each a live child process",
                    f"pids {sorted(dev_pids)}",
                )
                first = await hub.call(
                    "notes.add_note", {"title": "ship it", "body": "after the checks pass"}
                )
                second = await hub.call("notes.add_note", {"title": "tests", "body": "real ones"})
                listed = structured(await hub.call("notes.list_notes"))
                readme = await hub.call("files.read_file", {"path": "README.txt"})
                outside = await hub.call("files.read_file", {"path": "../secret.txt"})
                uris = await wait_for_resources(hub, 2)

                calls = Table(title="Tool calls through the hub")
                for col in ("call", "result", "isError"):
                    calls.add_column(col, overflow="fold")
                calls.add_row("notes.add_note", json.dumps(structured(first)), str(first.is_error))
                calls.add_row(
                    "notes.add_note", json.dumps(structured(second)), str(second.is_error)
                )
                calls.add_row("notes.list_notes", json.dumps(listed), "False")
                calls.add_row("files.read_file README.txt", result_text(readme).strip(), "False")
                calls.add_row("files.read_file ../secret.txt", result_text(outside), "True")
                console.print(calls)
                console.print(f"notifications received: {escape(str(notifications))}")
                console.print(f"resources after the hub re-listed: {escape(str(uris))}")

                checks.check(
                    structured(first) == {"id": 1, "title": "ship it"}
                    and structured(second) == {"id": 2, "title": "tests"},
                    "notes.add_note returned ids 1 and 2",
                )
                checks.check(
                    listed == [{"id": 2, "title": "tests"}, {"id": 1, "title": "ship it"}],
                    "notes.list_notes returned both notes, newest first",
                    json.dumps(listed),
                )
                checks.check(
                    result_text(readme) == README_TEXT and not readme.is_error,
                    "files.read_file returned the file's exact text",
                )
                checks.check(
                    outside.is_error and "outside the served root" in result_text(outside),
                    "files.read_file refused a path outside its root (isError)",
                )
                checks.check(
                    uris == ["note://1", "note://2"]
                    and notifications.count("notifications/resources/list_changed") == 2,
                    "each add_note's list_changed notification made the hub re-list resources",
                    f"{len(notifications)} notification(s)",
                )

                await pick_tool_with_model(hub)
            after_dev = child_pids()
            tool_calls = [c for c in s.calls if c.kind == "tool"]
            stored = [c for c in store.list_calls([s.id]) if c.kind == "tool"]

        ledger = Table(title=f"Session {s.name!r}: calls of kind 'tool' (s.calls)")
        for col in ("model", "kind", "provider", "status", "latency", "tokens", "cost"):
            ledger.add_column(col)
        for c in tool_calls:
            ledger.add_row(
                c.model or "",
                c.kind,
                c.provider or "",
                c.status,
                f"{(c.latency_s or 0) * 1000:.1f} ms",
                str(c.usage.total_tokens),
                str(c.cost),
            )
        console.print(ledger)
        expected = [
            ("notes.add_note", "ok"),
            ("notes.add_note", "ok"),
            ("notes.list_notes", "ok"),
            ("files.read_file", "ok"),
            ("files.read_file", "error"),
        ]
        got = [(c.model, c.status) for c in tool_calls][: len(expected)]
        checks.check(
            got == expected and all(c.usage.total_tokens == 0 and c.cost == 0 for c in tool_calls),
            "every tool call was charged to the session as kind 'tool' (no tokens, $0)",
            ", ".join(f"{m}:{st}" for m, st in got),
        )
        checks.check(
            [(c.model, c.status) for c in stored][: len(expected)] == expected,
            "the tool calls were written through to the SQLite store",
            f"{len(stored)} stored",
        )
        checks.check(
            not (dev_pids & after_dev) and after_dev - baseline == set(),
            "after the dev hub exited no server process remains",
            f"children now: {sorted(after_dev - baseline)}",
        )

        # ------------------------------------------------------------ good: prod + error
        section("4. The prod profile, and an exception inside the hub's block")
        prod_pids: set[int] = set()
        add_refused = ""
        prod_listed: Any = None
        prod_tools: list[str] = []
        try:
            async with Hub.from_config(config_path, profile="prod", environ=env) as prod:
                console.print(status_table(prod, "prod hub: notes only, read-only"))
                prod_pids = {st.pid for st in prod.status().values() if st.pid is not None}
                prod_tools = [t.qualified for t in prod.tools()]
                prod_listed = structured(await prod.call("notes.list_notes"))
                try:
                    await prod.call("notes.add_note", {"title": "x", "body": "y"})
                except ToolNotFound as exc:
                    add_refused = str(exc)
                console.print(f"notes.add_note in prod: [yellow]{escape(add_refused)}[/yellow]")
                start_notes_settings: dict[str, Any] = {}
                float(start_notes_settings["callTimeout"])  # the same bug as the bad version
        except KeyError as exc:
            console.print(f"the same [red]KeyError({exc})[/red] escaped the hub's block ...")
        after_prod = child_pids()
        console.print(
            f"... and {len(after_prod - baseline)} server processes remain "
            f"(prod pid {', '.join(map(str, sorted(prod_pids)))} is gone)."
        )
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
            len(prod_pids) == 1 and not (prod_pids & after_prod) and not after_prod - baseline,
            "after an exception inside the prod hub's block no server process remains",
        )
    checks.verify()


async def pick_tool_with_model(hub: Hub) -> None:
    """Let the local model pick a tool by name (shown, not checked: the model is tiny)."""
    # The names a model sees are the exported ones (server__tool), as in hub.openai_tools().
    names = [t["function"]["name"] for t in hub.openai_tools()]
    question = f"Tools: {', '.join(names)}. Which tool lists the notes? Reply with its name."
    try:
        # A worker thread keeps the event loop (and the servers' owner tasks) responsive;
        # anyio copies the context into it, so the call is charged to the session.
        reply = await anyio.to_thread.run_sync(lambda: ask(question, max_tokens=10))
    except llmctx.ConfigError as exc:  # no local extra: the MCP part still stands
        console.print(f"[dim](local model unavailable: {escape(str(exc))})[/dim]")
        return
    picked = next((n for n in names if n in reply), None)
    console.print(
        f"the local model, asked which tool lists the notes, said: [bold]{escape(repr(reply))}[/]"
    )
    if picked is None:
        console.print("[dim]no exact tool name in the reply (a 135M model); nothing dispatched[/]")
        return
    answer = await hub.dispatch({"id": "call-1", "function": {"name": picked, "arguments": "{}"}})
    console.print(f"hub.dispatch({picked!r}) -> {escape(repr(answer.content[:80]))}")


if __name__ == "__main__":
    run(main)
