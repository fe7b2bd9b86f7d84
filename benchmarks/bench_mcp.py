"""The MCP hub side by side with raw SDK sessions, FastMCP and langchain-mcp-adapters.

Run::

    python benchmarks/bench_mcp.py [--servers 10] [--repeats 3] [--calls 200]
        [--langchain-python PATH] [--soak] [--liveness] [--host-kills N] [--only-new]

Every server is the SDK example ``src/llmctx/mcp/examples/notes_server.py`` (SQLite in memory),
started as a real stdio subprocess by each contender.

What it prints:

* **startup**: wall time until N servers are ready (initialized, tools listed) for the hub
  (concurrent), a sequential ``AsyncExitStack`` of raw SDK ``ClientSession`` s, and FastMCP's
  multi-server ``Client`` (``pip install fastmcp``; skipped if missing). The baseline is the
  slowest single start: each server's own start time inside the sequential run, where it
  starts alone while the others idle. Target: hub <= 1.5x that. Also printed: the CPU time the
  N server processes burn while starting, divided by the cores, which bounds any concurrent
  start from below on this machine. Three fleets: the SDK notes server (CPU-bound start: its
  imports), the stdlib-only ``tests/mcp/servers/tiny_server.py`` (interpreter start only),
  and the tiny server waiting 0.5 s before serving (an I/O-bound start, as npx/uvx servers
  fetching packages or remote servers have);
* **tool-call latency**: median seconds per ``search_notes`` call on one live server for a raw
  ``ClientSession``, the hub outside any llmctx session, and the hub inside
  ``llmctx.session`` (the call is charged and recorded to a memory store), raw and hub calls
  alternating on two server processes so both see the same machine load. Target: hub <= 1.1x
  raw. langchain-mcp-adapters' default (a new session, hence a new server process, per call)
  is timed too: its releases pin ``mcp<2``, so it usually lives in another virtualenv, given
  with ``--langchain-python``; that interpreter times a raw ``ClientSession`` of its own SDK
  version as well, so its ratio compares like with like;
* **soak** (``--soak``): runs the randomized lifecycle test for the full 200 lifecycles
  (the test suite stops it after a time budget) and reports the count and leaked processes;
* **liveness** (``--liveness``): how long a hung server (SIGSTOPped right after an answered
  ping, the worst moment) takes to be found ``unhealthy``, in ping intervals (target <= 2),
  side by side with a raw SDK ``ClientSession``, whose call to the same hung server is still
  waiting when the bench gives up on it;
* **host kills** (``--host-kills N``): runs ``tests/mcp/test_host_death.py`` for N randomized
  SIGKILLs of a process running a hub (half mid-start, half while serving) and reports the
  processes left behind (target 0). ``--only-new`` runs just these two.

Each figure is the median over ``--repeats`` runs (for latency: of the per-run medians; the
ratios are the medians of the per-run ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "src" / "llmctx" / "mcp" / "examples" / "notes_server.py"
TINY = ROOT / "tests" / "mcp" / "servers" / "tiny_server.py"
TOOL, ARGS = "search_notes", {"query": "milk"}
TOOLS_PER_SERVER = 4  # both servers have four tools

# FastMCP logs every proxied connection at INFO through rich.
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")
# The servers' stderr (the SDK's stdio client wants a file); one for the whole run.
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115


def _notes_command(python: str) -> list[str]:
    return [python, str(NOTES), ":memory:"]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ raw SDK (any mcp version)


async def _raw_session(stack: AsyncExitStack, command: list[str]) -> Any:
    """Start one server with the SDK's own stdio client; return its initialized session."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=command[0], args=command[1:])
    read, write = await stack.enter_async_context(stdio_client(params, errlog=_DEVNULL))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    await session.list_tools()
    return session


async def raw_call_latency(command: list[str], calls: int) -> list[float]:
    """Per-call seconds of ``calls`` sequential tool calls on one raw ``ClientSession``."""
    async with AsyncExitStack() as stack:
        session = await _raw_session(stack, command)
        for _ in range(10):  # warm-up
            await session.call_tool(TOOL, ARGS)
        out = []
        for _ in range(calls):
            began = time.perf_counter()
            await session.call_tool(TOOL, ARGS)
            out.append(time.perf_counter() - began)
        return out


# ------------------------------------------------------------------ startup


async def startup_sequential(commands: list[list[str]]) -> tuple[float, list[float]]:
    """A sequential AsyncExitStack of raw sessions: (wall time, each server's own start)."""
    each = []
    began = time.perf_counter()
    async with AsyncExitStack() as stack:
        for command in commands:
            one = time.perf_counter()
            await _raw_session(stack, command)
            each.append(time.perf_counter() - one)
        wall = time.perf_counter() - began
    return wall, each


async def startup_hub(commands: list[list[str]]) -> tuple[float, float]:
    """The hub: (wall time until every server is ready, CPU seconds the servers used)."""
    from llmctx.mcp import Hub, ServerState

    config = {
        "mcpServers": {
            f"notes{i}": {"command": c[0], "args": c[1:], "timeout": 120}
            for i, c in enumerate(commands)
        }
    }
    cpu = _children_cpu()
    began = time.perf_counter()
    async with Hub.from_config(config) as hub:
        wall = time.perf_counter() - began
        assert all(s.state is ServerState.READY for s in hub.status().values())
        assert len(hub.tools()) == TOOLS_PER_SERVER * len(commands)
    return wall, _children_cpu() - cpu


async def startup_fastmcp(commands: list[list[str]]) -> float | None:
    """FastMCP's multi-server Client: wall time until connected and tools listed."""
    try:
        from fastmcp import Client
    except ImportError:
        return None
    config = {
        "mcpServers": {
            f"notes{i}": {"command": c[0], "args": c[1:]} for i, c in enumerate(commands)
        }
    }
    began = time.perf_counter()
    async with Client(config, init_timeout=120) as client:
        tools = await client.list_tools()
        wall = time.perf_counter() - began
    assert len(tools) == TOOLS_PER_SERVER * len(commands), len(tools)
    return wall


# ------------------------------------------------------------------ call latency


async def paired_call_latency(
    command: list[str], calls: int, *, in_session: bool
) -> tuple[list[float], list[float]]:
    """Per-call seconds of a raw ``ClientSession`` and of ``hub.call``, calls alternating.

    Each has its own server process; alternating the calls makes both see the same machine
    load, which on a shared machine drifts more than the difference being measured. With
    ``in_session`` the hub's calls run inside ``llmctx.session`` (charged and recorded to a
    memory store; the raw calls do not go through llmctx at all).
    """
    import llmctx
    from llmctx.mcp import Hub
    from llmctx.stores.memory import MemoryStore

    config = {"mcpServers": {"notes": {"command": command[0], "args": command[1:]}}}
    name = f"notes.{TOOL}"
    async with AsyncExitStack() as stack:
        raw = await _raw_session(stack, command)
        hub = await stack.enter_async_context(Hub.from_config(config))
        if in_session:
            stack.enter_context(llmctx.session("bench-mcp", store=MemoryStore()))
        for _ in range(10):  # warm-up
            await raw.call_tool(TOOL, ARGS)
            await hub.call(name, ARGS)
        raw_times, hub_times = [], []
        for _ in range(calls):
            began = time.perf_counter()
            await raw.call_tool(TOOL, ARGS)
            raw_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            await hub.call(name, ARGS)
            hub_times.append(time.perf_counter() - began)
        return raw_times, hub_times


async def langchain_call_latency(command: list[str], calls: int) -> list[float]:
    """Per-call seconds of langchain-mcp-adapters' default tool (a new session per call)."""
    from langchain_mcp_adapters.client import MultiServerMCPClient

    client = MultiServerMCPClient(
        {"notes": {"command": command[0], "args": command[1:], "transport": "stdio"}}
    )
    tools = {t.name: t for t in await client.get_tools()}
    tool = tools[TOOL]
    await tool.ainvoke(ARGS)  # warm-up
    out = []
    for _ in range(calls):
        began = time.perf_counter()
        await tool.ainvoke(ARGS)
        out.append(time.perf_counter() - began)
    return out


def _langchain_worker(server_python: str, calls: int, raw_calls: int) -> None:
    """Entry point inside the langchain interpreter: print its timings as JSON."""
    import importlib.metadata as md

    command = _notes_command(server_python)

    async def run() -> dict[str, Any]:
        lc = await langchain_call_latency(command, calls)
        raw = await raw_call_latency(command, raw_calls)
        return {
            "langchain": _median(lc),
            "raw": _median(raw),
            "versions": {p: md.version(p) for p in ("langchain-mcp-adapters", "mcp")},
        }

    print(json.dumps(anyio.run(run)))


def _langchain(
    python: str | None, calls: int, raw_calls: int, repeats: int
) -> dict[str, Any] | None:
    """Run the langchain timings in this interpreter or in ``python``; None if unavailable."""
    if python is None:
        try:
            import langchain_mcp_adapters  # noqa: F401
        except ImportError:
            return None
        python = sys.executable
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [
                python,
                __file__,
                "--langchain-worker",
                sys.executable,
                "--calls",
                str(raw_calls),
                "--langchain-calls",
                str(calls),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "langchain": _median([r["langchain"] for r in runs]),
        "raw": _median([r["raw"] for r in runs]),
        "versions": runs[0]["versions"],
    }


# ------------------------------------------------------------------ soak


def soak(lifecycles: int) -> int:
    """Run the lifecycle test for ``lifecycles`` lifecycles with no time budget."""
    env = {
        **os.environ,
        "LLMCTX_MCP_LIFECYCLES": str(lifecycles),
        "LLMCTX_MCP_LIFECYCLE_SECONDS": "100000",
    }
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "mcp" / "test_lifecycle.py"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = [line for line in proc.stdout.splitlines() if "lifecycles in" in line]
    print(f"soak ({time.perf_counter() - began:.0f}s): " + (summary[0] if summary else "?"))
    print(
        "  zero leaked processes (children and grandchildren)"
        if proc.returncode == 0
        else f"  FAILED:\n{proc.stdout[-3000:]}"
    )
    return proc.returncode


# ------------------------------------------------------------------ liveness


async def liveness(interval: float, repeats: int) -> None:
    """Time from SIGSTOP to ``unhealthy``, and what a raw ClientSession does meanwhile."""
    import signal

    from llmctx.mcp import Hub, ServerState

    failures = 2
    config = {
        "mcpServers": {
            "t": {
                "command": sys.executable,
                "args": [str(TINY)],
                "pingInterval": interval,
                "pingFailures": failures,
                "maxRestarts": 1000,  # every repeat is a hang: keep the breaker shut
            }
        }
    }
    detections: list[float] = []
    async with Hub.from_config(config) as hub:
        server = hub.server("t")
        for _ in range(repeats):
            await server.wait_settled(after=server.generation - 1)
            # The worst moment: right after an answered ping, a full interval before the next.
            seen = server.status().last_ping_seconds
            before = server.status().hangs
            while server.status().last_ping_seconds == seen:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            pid = server.status().pid
            assert pid is not None
            began = time.perf_counter()
            os.kill(pid, signal.SIGSTOP)
            while server.status().hangs == before:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            detections.append(time.perf_counter() - began)
            assert server.state in (
                ServerState.UNHEALTHY,
                ServerState.RESTARTING,
                ServerState.READY,
            )
            generation = server.generation
            await server.wait_settled(after=generation)

    # The peer: a raw SDK session with no ping and no timeout, calling the same kind of hung
    # server. It gets no error; the bench stops waiting after `give_up` seconds.
    give_up = 3 * interval * failures
    async with AsyncExitStack() as stack:
        from mcp.client.session import ClientSession
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=sys.executable, args=[str(TINY)])
        read, write = await stack.enter_async_context(stdio_client(params, errlog=_DEVNULL))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        import psutil

        pids = [
            p.pid
            for p in psutil.Process().children(recursive=True)
            if str(TINY) in " ".join(p.cmdline())
        ]
        os.kill(int(pids[-1]), signal.SIGSTOP)
        raw_answer = "no error"
        with anyio.move_on_after(give_up) as waited:
            try:
                await session.call_tool("echo", {"text": "x"})
                raw_answer = "answered"
            except Exception as exc:
                raw_answer = f"{type(exc).__name__}"
        os.kill(int(pids[-1]), signal.SIGKILL)
    print(
        f"\nliveness: a SIGSTOPped server, pingInterval {interval:g} s, pingFailures {failures} "
        f"(median / max of {repeats}):"
    )
    print(
        f"  hub: unhealthy after {_median(detections):.3f} s / {max(detections):.3f} s = "
        f"{_median(detections) / interval:.2f} / {max(detections) / interval:.2f} intervals "
        "(target <= 2)"
    )
    still = "still waiting" if waited.cancelled_caught else raw_answer
    print(f"  raw ClientSession.call_tool: {still} after {give_up:g} s (no ping, no timeout)")


def host_kills(runs: int) -> int:
    """Run the host-death test for ``runs`` randomized SIGKILLs; print its summary."""
    env = {**os.environ, "LLMCTX_MCP_HOST_KILLS": str(runs)}
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "mcp" / "test_host_death.py"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = [line for line in proc.stdout.splitlines() if line.startswith("host kills:")]
    print(
        f"\nhost SIGKILLs ({time.perf_counter() - began:.0f}s): " + (summary[0] if summary else "?")
    )
    if proc.returncode:
        print(f"  FAILED:\n{proc.stdout[-3000:]}")
    return proc.returncode


# ------------------------------------------------------------------ main


def _versions() -> str:
    import importlib.metadata as md

    out = []
    for name in ("llmctx", "mcp", "fastmcp"):
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


async def _startup_report(label: str, commands: list[list[str]], repeats: int, cores: int) -> None:
    hub_walls, hub_cpu, seq_walls, singles, fast_walls = [], [], [], [], []
    for _ in range(repeats):
        wall, cpu = await startup_hub(commands)
        hub_walls.append(wall)
        hub_cpu.append(cpu)
        wall, each = await startup_sequential(commands)
        seq_walls.append(wall)
        singles.append(max(each))
        fast = await startup_fastmcp(commands)
        if fast is not None:
            fast_walls.append(fast)
    slowest = _median(singles)
    hub_wall = _median(hub_walls)
    seq_wall = _median(seq_walls)
    bound = _median(hub_cpu) / cores
    print(f"\nstartup of {len(commands)} {label} (median of {repeats}):")
    print(f"  slowest single start          {slowest:7.3f} s")
    print(
        f"  hub (concurrent)              {hub_wall:7.3f} s  = {hub_wall / slowest:.2f}x "
        "(target <= 1.5x)"
    )
    print(f"  sequential AsyncExitStack     {seq_wall:7.3f} s  = {seq_wall / slowest:.2f}x")
    if fast_walls:
        fast_wall = _median(fast_walls)
        print(f"  FastMCP Client(mcpServers)    {fast_wall:7.3f} s  = {fast_wall / slowest:.2f}x")
    else:
        print("  FastMCP                       skipped (pip install fastmcp)")
    print(
        f"  CPU the servers used          {_median(hub_cpu):7.3f} s -> >= {bound:.3f} s wall "
        f"on {cores} cores = {bound / slowest:.2f}x (floor for any concurrent start)"
    )


async def main(args: argparse.Namespace) -> None:
    """Run the startup and latency comparisons and print a report."""
    command = _notes_command(sys.executable)
    cores = os.cpu_count() or 1
    print(f"python {sys.version.split()[0]}, {cores} cores; {_versions()}")
    if args.liveness or args.only_new:
        await liveness(args.ping_interval, max(args.repeats, 5))
    if args.host_kills:
        code = host_kills(args.host_kills)
        if code:
            raise SystemExit(code)
    if args.only_new:
        return
    await _startup_report("notes servers (SDK)", [command] * args.servers, args.repeats, cores)
    tiny = [sys.executable, str(TINY)]
    await _startup_report("stdlib-only tiny servers", [tiny] * args.servers, args.repeats, cores)
    waiting = [*tiny, "--delay", "0.5"]
    await _startup_report(
        "tiny servers that wait 0.5 s on I/O first", [waiting] * args.servers, args.repeats, cores
    )

    raws, hubs, ratios, charged, charged_ratios = [], [], [], [], []
    for _ in range(args.repeats):
        raw_times, hub_times = await paired_call_latency(command, args.calls, in_session=False)
        raws.append(_median(raw_times))
        hubs.append(_median(hub_times))
        ratios.append(hubs[-1] / raws[-1])
        raw_times, hub_times = await paired_call_latency(command, args.calls, in_session=True)
        charged.append(_median(hub_times))
        charged_ratios.append(charged[-1] / _median(raw_times))
    raw, hub = _median(raws), _median(hubs)
    print(
        f"\ntool-call latency, {TOOL} (median of {args.repeats} runs x {args.calls} calls, "
        "raw and hub calls alternating; ratios: median of the per-run ratios):"
    )
    print(f"  raw ClientSession             {raw * 1e3:7.3f} ms")
    print(
        f"  hub.call                      {hub * 1e3:7.3f} ms = {_median(ratios):.2f}x "
        "(target <= 1.1x)"
    )
    print(
        f"  hub.call in llmctx.session    {_median(charged) * 1e3:7.3f} ms = "
        f"{_median(charged_ratios):.2f}x"
    )
    lc = _langchain(args.langchain_python, args.langchain_calls, args.calls, args.repeats)
    if lc is None:
        print("  langchain-mcp-adapters        skipped (not importable; see --langchain-python)")
    else:
        versions = ", ".join(f"{k} {v}" for k, v in lc["versions"].items())
        print(
            f"  langchain default (session/call) {lc['langchain'] * 1e3:7.1f} ms = "
            f"{lc['langchain'] / lc['raw']:.0f}x its own raw ClientSession "
            f"({lc['raw'] * 1e3:.3f} ms; {versions})"
        )

    if args.soak:
        code = soak(200)
        if code:
            raise SystemExit(code)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--langchain-calls", type=int, default=10)
    parser.add_argument(
        "--langchain-python",
        default=None,
        help="a python with langchain-mcp-adapters installed (it pins mcp<2)",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="also run 200 randomized hub lifecycles and count leaked processes",
    )
    parser.add_argument(
        "--liveness", action="store_true", help="time how long a hung server takes to be found"
    )
    parser.add_argument("--ping-interval", type=float, default=0.5)
    parser.add_argument(
        "--host-kills",
        type=int,
        default=0,
        metavar="N",
        help="SIGKILL N hosts running a hub and count the processes left behind",
    )
    parser.add_argument(
        "--only-new", action="store_true", help="run only --liveness and --host-kills"
    )
    parser.add_argument("--langchain-worker", metavar="SERVER_PYTHON", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _parse()
    if arguments.langchain_worker:
        _langchain_worker(arguments.langchain_worker, arguments.langchain_calls, arguments.calls)
    else:
        anyio.run(main, arguments)
