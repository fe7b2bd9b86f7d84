"""07. AsyncExitStack vs @asynccontextmanager: one resource, many, a changing number, and errors.

``@asynccontextmanager`` turns one setup/teardown into a context manager; ``AsyncExitStack``
composes any number of them, decided at run time, and unwinds them in reverse order. The
module uses real resources (temporary files, TCP listeners on loopback, child processes) and
records every enter and exit, then checks the order, that each resource is really gone and
that no child process remains. It ends with the pitfall that bites MCP clients: a task group
(an anyio cancel scope) entered in one task and exited in another, shown broken and then fixed
with the one-owner-task pattern that llmctx's MCP hub uses (``llmctx/mcp/hub.py``,
``llmctx/mcp/server.py``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from rich.markup import escape
from rich.table import Table

from llmctx.workshop._common import (
    Checks,
    child_processes,
    console,
    header,
    note,
    run,
    section,
)

WORKER = [sys.executable, "-c", "import time; time.sleep(30)"]


class Log:
    """What the resources did, in order, what each saw in its exit, and in which task."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.seen: dict[str, str | None] = {}
        self.tasks: dict[str, list[str]] = {}

    def add(self, event: str) -> None:
        self.events.append(event)

    def entered(self) -> list[str]:
        return [e.removeprefix("enter ") for e in self.events if e.startswith("enter ")]

    def exited(self) -> list[str]:
        return [e.removeprefix("exit ") for e in self.events if e.startswith("exit ")]


# ---------------------------------------------------------------- three real resources
# Each is one @asynccontextmanager: setup before ``yield``, teardown in ``finally``. An
# exception raised in the body is thrown in at the ``yield``; each one notes what it saw.


@asynccontextmanager
async def temp_file(log: Log, name: str) -> AsyncIterator[Path]:
    """A temporary file, open for writing; closed and deleted on exit."""
    fd, raw = tempfile.mkstemp(prefix="llmctx-07-", suffix=".txt")
    os.close(fd)
    path = Path(raw)
    handle = await anyio.open_file(path, "w")
    log.add(f"enter {name}")
    try:
        await handle.write(f"{name} was here\n")
        yield path
        log.seen[name] = None
    except Exception as exc:
        log.seen[name] = type(exc).__name__
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await handle.aclose()
            await anyio.Path(path).unlink(missing_ok=True)
        log.add(f"exit {name}")


@asynccontextmanager
async def tcp_listener(log: Log, name: str, port: int = 0) -> AsyncIterator[int]:
    """A TCP listener on 127.0.0.1 (any free port by default); yields its port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    log.add(f"enter {name}")
    try:
        yield listener.extra(SocketAttribute.local_port)
        log.seen[name] = None
    except Exception as exc:
        log.seen[name] = type(exc).__name__
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()
        log.add(f"exit {name}")


@asynccontextmanager
async def worker_process(log: Log, name: str) -> AsyncIterator[anyio.abc.Process]:
    """A child Python process that would sleep 30 s; killed and reaped on exit."""
    proc = await anyio.open_process(
        WORKER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log.add(f"enter {name}")
    log.tasks.setdefault(name, []).append(_task_name())
    try:
        yield proc
        log.seen[name] = None
    except Exception as exc:
        log.seen[name] = type(exc).__name__
        raise
    finally:
        # Shielded: even a cancelled owner must reap its child, or it outlives us.
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
        log.add(f"exit {name}")


def _task_name() -> str:
    task = anyio.get_current_task()
    return f"{(task.name or 'task').rsplit('.', 1)[-1]}#{task.id % 10_000}"


def _alive(pid: int) -> bool:
    return pid in {p.pid for p in child_processes()}


async def _port_open(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


def _log_table(title: str, log: Log) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("event")
    for i, event in enumerate(log.events, 1):
        table.add_row(str(i), event)
    return table


async def main() -> None:
    header(
        7,
        "AsyncExitStack vs @asynccontextmanager",
        "one resource, several, a number decided at run time, errors, and the cross-task pitfall",
    )
    checks = Checks()
    baseline = {p.pid for p in child_processes()}

    # ------------------------------------------------------------ 1. one resource
    section("1. One resource: @asynccontextmanager")
    note(
        escape(
            "@asynccontextmanager\n"
            "async def worker_process(...):\n"
            "    proc = await anyio.open_process([sys.executable, '-c', 'import time; "
            "time.sleep(30)'])\n"
            "    try:\n"
            "        yield proc                 # the body of `async with` runs here\n"
            "    finally:\n"
            "        with anyio.CancelScope(shield=True):   # even if cancelled\n"
            "            proc.kill(); await proc.aclose()\n\n"
            "One function, setup and teardown side by side: the right tool for ONE resource."
        ),
        title="setup -> yield -> teardown",
    )
    log1 = Log()
    async with worker_process(log1, "worker") as proc:
        pid = proc.pid
        alive_inside = _alive(pid)
    alive_after = _alive(pid)
    console.print(
        f"child pid {pid}: alive inside the block: [bold]{alive_inside}[/bold], "
        f"after it: [bold]{alive_after}[/bold] (a 30 s sleep, killed and reaped by the exit)"
    )
    checks.check(
        alive_inside and not alive_after,
        "a single @asynccontextmanager resource: the child process lives exactly as long as "
        "the block",
        f"pid {pid}",
    )

    # ------------------------------------------------------------ 2. several, fixed
    section("2. Several resources: nested `async with` and AsyncExitStack unwind the same way")
    nested, stacked = Log(), Log()
    async with (
        temp_file(nested, "file") as path_a,
        tcp_listener(nested, "listener") as port_a,
        worker_process(nested, "worker") as proc_a,
    ):
        inside_a = (path_a.exists(), await _port_open(port_a), _alive(proc_a.pid))
    after_a = (path_a.exists(), await _port_open(port_a), _alive(proc_a.pid))

    async with AsyncExitStack() as stack:
        path_b = await stack.enter_async_context(temp_file(stacked, "file"))
        port_b = await stack.enter_async_context(tcp_listener(stacked, "listener"))
        proc_b = await stack.enter_async_context(worker_process(stacked, "worker"))
        inside_b = (path_b.exists(), await _port_open(port_b), _alive(proc_b.pid))
    after_b = (path_b.exists(), await _port_open(port_b), _alive(proc_b.pid))

    t2 = Table(title="file / listener / worker")
    for col in ("", "nested async with", "AsyncExitStack"):
        t2.add_column(col)
    t2.add_row("order", " -> ".join(nested.events), " -> ".join(stacked.events))
    t2.add_row("inside: file, port open, child alive", str(inside_a), str(inside_b))
    t2.add_row("after", str(after_a), str(after_b))
    console.print(t2)
    expected = ["enter file", "enter listener", "enter worker"]
    expected += ["exit worker", "exit listener", "exit file"]
    checks.check(
        nested.events == stacked.events == expected,
        "nested `async with` and AsyncExitStack enter in order and exit in exactly the reverse "
        "order",
        " -> ".join(stacked.events),
    )
    checks.check(
        inside_a == inside_b == (True, True, True) and after_a == after_b == (False, False, False),
        "the real resources existed inside and were gone after: file deleted, port closed, "
        "child reaped",
        f"inside {inside_b}, after {after_b}",
    )

    # ------------------------------------------------------------ 3. dynamic
    section("3. A number of resources decided at run time: AsyncExitStack + push_async_callback")
    n_workers = min(4, (os.cpu_count() or 1) + 1)  # one more worker than cores, at most 4
    note(
        f"This machine has {os.cpu_count()} CPU(s), so the pool gets {n_workers} workers: a "
        "number no `async with` statement can spell out. Each worker also gets a TCP client "
        "connection, a resource with a close method but no context manager of its own: "
        "push_async_callback(conn.aclose) registers it. Callbacks and contexts unwind together, "
        "last-in, first-out.",
        title="Dynamic resources",
    )
    dyn = Log()
    pids: list[int] = []

    async def close_conn(stream: anyio.abc.SocketStream, label: str) -> None:
        await stream.aclose()
        dyn.add(f"exit {label}")

    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(tcp_listener(dyn, "listener"))
        for i in range(n_workers):
            worker = await stack.enter_async_context(worker_process(dyn, f"worker-{i}"))
            pids.append(worker.pid)
            conn = await anyio.connect_tcp("127.0.0.1", port)
            dyn.add(f"enter conn-{i}")
            stack.push_async_callback(close_conn, conn, f"conn-{i}")
        alive_dyn = sum(_alive(p) for p in pids)
    console.print(_log_table(f"{n_workers} workers + {n_workers} connections", dyn))
    checks.check(
        alive_dyn == n_workers and not any(_alive(p) for p in pids),
        f"all {n_workers} workers chosen at run time were running inside, and none after",
        f"{alive_dyn} alive inside",
    )
    checks.check(
        dyn.exited() == dyn.entered()[::-1] and len(dyn.entered()) == 2 * n_workers + 1,
        "push_async_callback callbacks and entered contexts unwound together in reverse order",
        " -> ".join(dyn.exited()),
    )

    # ------------------------------------------------------------ 4. errors
    section("4a. Resource k fails while being entered: resources 0..k-1 unwind in reverse")
    fail = Log()
    failure: OSError | None = None
    kept: list[tuple[Path, int, int]] = []
    try:
        async with AsyncExitStack() as stack:
            path_c = await stack.enter_async_context(temp_file(fail, "file"))
            port_c = await stack.enter_async_context(tcp_listener(fail, "listener"))
            proc_c = await stack.enter_async_context(worker_process(fail, "worker"))
            kept.append((path_c, port_c, proc_c.pid))
            # A second listener on the same port: a real bind failure (EADDRINUSE).
            await stack.enter_async_context(tcp_listener(fail, "listener-2", port=port_c))
            fail.add("body ran")  # never reached
    except OSError as exc:
        failure = exc
    console.print(f"entering resource 3 failed with: [red]{failure!r}[/red]")
    console.print(_log_table("enter / exit", fail))
    path_c, port_c, pid_c = kept[0]
    checks.check(
        failure is not None
        and fail.events
        == [
            "enter file",
            "enter listener",
            "enter worker",
            "exit worker",
            "exit listener",
            "exit file",
        ],
        "a failure while entering resource 3 unwound resources 2, 1, 0 in that order, and the "
        "body never ran",
        f"{type(failure).__name__}: errno {failure.errno}" if failure else "no failure",
    )
    checks.check(
        not path_c.exists() and not await _port_open(port_c) and not _alive(pid_c),
        "after the failed setup nothing is left: file deleted, port closed, child reaped",
        f"port {port_c}, pid {pid_c}",
    )

    section("4b. All or nothing, then hand over: pop_all()")

    async def open_pool(log: Log, n: int) -> AsyncExitStack:
        """Start n workers; if any fails the started ones are closed, else the caller owns all."""
        async with AsyncExitStack() as stack:
            for i in range(n):
                await stack.enter_async_context(worker_process(log, f"pool-{i}"))
            return stack.pop_all()  # success: this `async with` now closes nothing

    pool_log = Log()
    pool = await open_pool(pool_log, 2)
    events_after_open = list(pool_log.events)
    pool_pids = [p.pid for p in child_processes() if p.pid not in baseline]
    await pool.aclose()  # later, by the new owner
    console.print(
        f"after open_pool() returned: {events_after_open} ({len(pool_pids)} workers alive); "
        f"after pool.aclose(): {pool_log.exited()}"
    )
    checks.check(
        events_after_open == ["enter pool-0", "enter pool-1"]
        and len(pool_pids) == 2
        and pool_log.exited() == ["pool-1", "pool-0"]
        and not any(_alive(p) for p in pool_pids),
        "pop_all() moved the workers out of the function's stack: they outlived its `async "
        "with` and were closed, in reverse, by the new owner's aclose()",
        f"pids {pool_pids}",
    )

    section("4c. An exception in the body reaches every resource's exit")
    body = Log()
    raised: ValueError | None = None
    try:
        async with AsyncExitStack() as stack:
            for name, cm in (
                ("file", temp_file(body, "file")),
                ("listener", tcp_listener(body, "listener")),
                ("worker", worker_process(body, "worker")),
            ):
                await stack.enter_async_context(cm)
                body.seen[name] = "not exited yet"
            raise ValueError("step 2 of the job failed")
    except ValueError as exc:
        raised = exc
    t4 = Table(title="What each exit saw")
    t4.add_column("resource")
    t4.add_column("exception seen in its exit")
    for name, seen in body.seen.items():
        t4.add_row(name, str(seen))
    console.print(t4)
    note(
        "The exception is thrown into each generator at its `yield`; AsyncExitStack passes it "
        "to every exit, innermost first, and re-raises it to the caller. An exit that returns "
        "True (or a generator that swallows the exception) would stop it there: the outer "
        "exits would then see no exception.",
        title="Exceptions travel outward",
    )
    checks.check(
        raised is not None
        and body.seen == {"file": "ValueError", "listener": "ValueError", "worker": "ValueError"}
        and body.exited() == ["worker", "listener", "file"],
        "the body's ValueError reached all three exits (in reverse order) and then the caller",
        str(raised),
    )

    # ------------------------------------------------------------ 5. the pitfall
    section("5. The pitfall: a task group entered in one task and exited in another")
    note(
        "MCP clients (stdio_client, ClientSession) hold anyio task groups. A class that enters "
        "them in `start()` and exits them in `stop()` breaks as soon as start and stop run in "
        "different tasks (a web framework's startup hook vs its shutdown hook, a background "
        "task vs the caller): a cancel scope must be exited by the task that entered it. "
        "Below, start() runs in its own asyncio task and stop() in the main task. (Started from "
        "an anyio task group instead, start()'s task itself fails as it returns with the scope "
        "still open: 'Attempted to exit a cancel scope that isn't the current tasks's current "
        "cancel scope'.)",
        title="Why it matters",
        style="yellow",
    )

    @asynccontextmanager
    async def supervised_worker(log: Log, name: str) -> AsyncIterator[anyio.abc.Process]:
        """A worker plus a watcher task in a task group, like an MCP transport."""
        async with worker_process(log, name) as proc:
            async with anyio.create_task_group() as tg:
                tg.start_soon(proc.wait)  # the watcher: notices if the child dies
                log.tasks.setdefault(f"{name} task group", []).append(_task_name())
                try:
                    yield proc
                finally:
                    log.tasks[f"{name} task group"].append(_task_name())
                    tg.cancel_scope.cancel()

    class BrokenClient:
        """The anti-pattern: enter in start(), exit in stop(), whatever task calls them."""

        def __init__(self, log: Log) -> None:
            self._stack = AsyncExitStack()
            self._log = log
            self.pid: int | None = None

        async def start(self) -> None:
            proc = await self._stack.enter_async_context(supervised_worker(self._log, "broken"))
            self.pid = proc.pid

        async def stop(self) -> None:
            await self._stack.aclose()

    broken_log = Log()
    broken = BrokenClient(broken_log)
    broken_error: RuntimeError | None = None
    # A framework's startup hook runs in a task of its own, and its shutdown hook in another.
    await asyncio.create_task(broken.start(), name="startup-hook")  # entered in that task...
    try:
        await broken.stop()  # ...stopped in another (this one)
    except RuntimeError as exc:
        broken_error = exc
    leaked = [p for p in child_processes() if p.pid == broken.pid]
    for p in leaked:  # a safety net so the workshop never leaves a process behind
        p.kill()
        p.wait(timeout=5)
    console.print(
        f"[red]RuntimeError: {broken_error}[/red]"
        if broken_error
        else "[yellow]no error this time[/yellow]"
    )
    console.print(
        f"task group entered in task {broken_log.tasks['broken task group'][0]}, "
        f"exit attempted in task {broken_log.tasks['broken task group'][-1]}; its child: "
        + (
            f"[red]left running, killed by hand ({len(leaked)})[/red]"
            if leaked
            else "reaped by worker_process's `finally` (the RuntimeError passed through it)"
        )
    )

    class OwnedWorker:
        """The fix: one owner task enters AND exits the resource; stop() only signals it."""

        def __init__(self, log: Log) -> None:
            self._log = log
            self._stop = anyio.Event()
            self.pid: int | None = None

        async def run(
            self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            async with supervised_worker(self._log, "owned") as proc:
                self.pid = proc.pid
                task_status.started(proc.pid)  # tg.start() returns here, the task lives on
                await self._stop.wait()
            # exited right here, in the task that entered it

        def stop(self) -> None:
            """Ask the owner to close; safe from any task (or a sync callback)."""
            self._stop.set()

    fixed_log = Log()
    owner = OwnedWorker(fixed_log)
    fixed_error: RuntimeError | None = None
    try:
        async with anyio.create_task_group() as tg:
            owned_pid = await tg.start(owner.run, name="owner")
            alive_fixed = _alive(owned_pid)

            async def shutdown_hook() -> None:
                owner.stop()  # from yet another task: fine, it only sets an event

            tg.start_soon(shutdown_hook, name="shutdown-hook")
    except RuntimeError as exc:  # pragma: no cover - what the fix prevents
        fixed_error = exc
    console.print(
        f"[green]fixed: no error[/green]; task group entered in task "
        f"{fixed_log.tasks['owned task group'][0]} and exited in task "
        f"{fixed_log.tasks['owned task group'][-1]}"
    )
    note(
        "llmctx's MCP hub works this way. In llmctx/mcp/hub.py, Hub._lifespan starts each "
        "server with `starters.start_soon(tg.start, server.run)`: the owner task lives in the "
        "hub's task group. In llmctx/mcp/server.py, ManagedServer.run is that owner: "
        "_serve_once enters the transport and the ClientSession on an AsyncExitStack and exits "
        "them in the same task; ManagedServer.stop() only sets an event and sends a signal. "
        "Other tasks just send requests through the session.",
        title="The one-owner-task rule, in llmctx",
        style="green",
    )
    checks.check(
        broken_error is not None
        and "different task" in str(broken_error)
        and broken_log.tasks["broken task group"][0] != broken_log.tasks["broken task group"][-1],
        "the broken version (enter in one task, exit in another) raised anyio's RuntimeError",
        str(broken_error),
    )
    checks.check(
        fixed_error is None
        and alive_fixed
        and not _alive(owned_pid)
        and fixed_log.tasks["owned task group"][0] == fixed_log.tasks["owned task group"][-1]
        and fixed_log.exited() == ["owned"],
        "the fixed version (one owner task, started with TaskGroup.start) raised nothing and "
        "closed its worker, exiting in the task that entered",
        f"owner task {fixed_log.tasks['owned task group'][0]}",
    )

    # ------------------------------------------------------------ summary
    section("Which one when")
    guide = Table(title="Combine them: each resource a @asynccontextmanager, composed on a stack")
    guide.add_column("situation")
    guide.add_column("use")
    guide.add_row(
        "one resource, setup + teardown", "@asynccontextmanager (try/finally around yield)"
    )
    guide.add_row("a fixed few resources", "one `async with a, b, c:` statement")
    guide.add_row("a number known only at run time", "AsyncExitStack.enter_async_context in a loop")
    guide.add_row("a close function, no context manager", "AsyncExitStack.push_async_callback")
    guide.add_row("open all or none, then hand over", "AsyncExitStack + pop_all()")
    guide.add_row(
        "a resource used from many tasks", "one owner task (TaskGroup.start) + a stop event"
    )
    console.print(guide)

    remaining = [p for p in child_processes() if p.pid not in baseline]
    checks.check(
        not remaining,
        "no child process remains: every worker this module started is gone",
        f"{len(remaining)} left" + (f"; the broken demo leaked {len(leaked)}" if leaked else ""),
    )
    checks.verify()


if __name__ == "__main__":
    run(main)
