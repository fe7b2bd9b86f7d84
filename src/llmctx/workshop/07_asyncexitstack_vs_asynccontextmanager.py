"""07. AsyncExitStack vs @asynccontextmanager: one resource, many, a changing number, and errors.

``@asynccontextmanager`` turns one setup/teardown into a context manager; ``AsyncExitStack``
composes any number of them, decided at run time, and unwinds them in reverse order. The
module uses real resources (temporary files, TCP listeners on loopback, child processes) and
records every enter and exit, then checks the order, that each resource is really gone and
that no child process remains. It shows what happens when entering fails (``__aexit__`` does
not run for a manager whose ``__aenter__`` raised), how cancellation reaches a cleanup that
awaits (asyncio delivers a cancellation once; an anyio cancel scope interrupts every await
until it is shielded), and ends with the pitfall that bites MCP clients: a task group (an
anyio cancel scope) entered in one task and exited in another, shown broken and then fixed
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
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from rich.markup import escape
from rich.syntax import Syntax

from llmctx.workshop._common import (
    Checks,
    child_processes,
    console,
    header,
    run,
    section,
)

WORKER = [sys.executable, "-c", "import time; time.sleep(30)"]
TEMP_PREFIX = "llmctx-07-"


class Log:
    """What the resources did, in order, what each saw in its exit, and in which task."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.seen: dict[str, str | None] = {}
        self.tasks: dict[str, list[str]] = {}
        self.paths: dict[str, Path] = {}

    def add(self, event: str) -> None:
        self.events.append(event)

    def entered(self) -> list[str]:
        return [e.removeprefix("enter ") for e in self.events if e.startswith("enter ")]

    def exited(self) -> list[str]:
        return [e.removeprefix("exit ") for e in self.events if e.startswith("exit ")]

    def order(self) -> str:
        """The events as one line: ``+file +listener !device -listener -file``.

        ``+`` entered, ``-`` exited, ``!`` an ``__aenter__`` that raised.
        """
        marks = {"enter": "+", "exit": "-", "__aenter__": "!"}
        return " ".join(
            marks[kind] + rest.split(" ", 1)[0]
            for kind, rest in (e.split(" ", 1) for e in self.events if " " in e)
            if kind in marks
        )


# ---------------------------------------------------------------- three real resources
# Each is one @asynccontextmanager: setup before ``yield``, teardown in ``finally``. An
# exception raised in the body is thrown in at the ``yield``; each one notes what it saw.


@asynccontextmanager
async def temp_file(log: Log, name: str, encoding: str = "utf-8") -> AsyncIterator[Path]:
    """A temporary file, open for writing; closed and deleted on exit.

    The open is inside the ``try``: if it fails, ``finally`` still deletes the file that
    ``mkstemp`` created (the rule module 01 teaches: nothing acquired before the ``try``
    that protects it).
    """
    fd, raw = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".txt")
    os.close(fd)
    path = log.paths[name] = Path(raw)
    handle: anyio.AsyncFile[str] | None = None
    try:
        handle = await anyio.open_file(path, "w", encoding=encoding)
        log.add(f"enter {name}")
        await handle.write(f"{name} was here\n")
        yield path
        log.seen[name] = None
    except Exception as exc:
        log.seen[name] = type(exc).__name__
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if handle is not None:
                await handle.aclose()
            await anyio.Path(path).unlink(missing_ok=True)
        if handle is not None:
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
        # Shielded: inside a cancelled anyio scope every await would raise again (see
        # section 5), and the child must still be reaped, or it outlives us.
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
        log.add(f"exit {name}")


class FailingEnter:
    """A class-based manager whose ``__aenter__`` raises: its ``__aexit__`` must not run."""

    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    async def __aenter__(self) -> None:
        self.log.add(f"__aenter__ {self.name} (raises)")
        raise OSError(f"{self.name}: device busy")

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.log.add(f"exit {self.name}")  # never reached: __aenter__ did not return


def _yes(flags: tuple[bool, ...]) -> str:
    return "/".join("yes" if f else "no" for f in flags)


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


ONE_SOURCE = """\
@asynccontextmanager
async def worker_process(...):
    proc = await anyio.open_process([sys.executable, "-c", "...sleep(30)"])
    try:
        yield proc                  # the body of `async with` runs here
    finally:
        with anyio.CancelScope(shield=True):  # why shielded: section 5
            proc.kill(); await proc.aclose()"""


async def one_resource(checks: Checks) -> None:
    """Section 1: one resource as one @asynccontextmanager."""
    section("1. One resource: @asynccontextmanager (setup -> yield -> teardown)")
    console.print(Syntax(ONE_SOURCE, "python"))
    log = Log()
    async with worker_process(log, "worker") as proc:
        pid = proc.pid
        alive_inside = _alive(pid)
    alive_after = _alive(pid)
    console.print(f"child pid {pid}: alive inside the block {alive_inside}, after it {alive_after}")
    checks.check(
        alive_inside and not alive_after,
        "a single @asynccontextmanager resource: the child process lives exactly as long as "
        "the block",
        f"pid {pid}",
    )


async def several_resources(checks: Checks) -> None:
    """Section 2: nested `async with` and AsyncExitStack, side by side."""
    section("2. Several: nested `async with` and AsyncExitStack unwind the same way")
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
    console.print(
        f"both: {stacked.order()}\n"
        f"file exists, port open, child alive: inside {_yes(inside_b)}, after {_yes(after_b)}"
    )
    expected = ["enter file", "enter listener", "enter worker"]
    expected += ["exit worker", "exit listener", "exit file"]
    checks.check(
        nested.events == stacked.events == expected,
        "nested `async with` and AsyncExitStack enter in order and exit in exactly the reverse "
        "order",
        stacked.order(),
    )
    checks.check(
        inside_a == inside_b == (True, True, True) and after_a == after_b == (False, False, False),
        "the real resources existed inside and were gone after: file deleted, port closed, "
        "child reaped",
        f"inside {inside_b}, after {after_b}",
    )


async def dynamic_resources(checks: Checks) -> None:
    """Section 3: a number of resources known only at run time, plus callbacks."""
    section("3. A number decided at run time: AsyncExitStack + push_async_callback")
    n_workers = min(4, (os.cpu_count() or 1) + 1)  # one more worker than cores, at most 4
    console.print(
        f"{n_workers} workers (CPUs + 1), each with a connection: push_async_callback(aclose)"
    )
    dyn = Log()
    pids: list[int] = []

    async def close_conn(stream: anyio.abc.SocketStream, label: str) -> None:
        await stream.aclose()
        dyn.add(f"exit {label}")

    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(tcp_listener(dyn, "listener"))
        for i in range(n_workers):
            worker = await stack.enter_async_context(worker_process(dyn, f"w{i}"))
            pids.append(worker.pid)
            conn = await anyio.connect_tcp("127.0.0.1", port)
            dyn.add(f"enter c{i}")
            stack.push_async_callback(close_conn, conn, f"c{i}")
        alive_dyn = sum(_alive(p) for p in pids)
    console.print(f"  {dyn.order()}")
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


async def failing_enter(checks: Checks) -> None:
    """Section 4a: an __aenter__ that raises, and a temp_file whose open fails."""
    section("4. Errors: a failing enter, all or nothing, a failing body")
    console.print("a) resource 3 fails while being entered: 0..2 unwind, its exit never runs")
    fail = Log()
    failure: OSError | None = None
    kept: list[tuple[Path, int, int]] = []
    try:
        async with AsyncExitStack() as stack:
            path_c = await stack.enter_async_context(temp_file(fail, "file"))
            port_c = await stack.enter_async_context(tcp_listener(fail, "listener"))
            proc_c = await stack.enter_async_context(worker_process(fail, "worker"))
            kept.append((path_c, port_c, proc_c.pid))
            await stack.enter_async_context(FailingEnter(fail, "device"))
            fail.add("body ran")  # never reached
    except OSError as exc:
        failure = exc
    console.print(
        f"  {fail.order()}   (!: raised)\n"
        f"  {escape(repr(failure))}: __aexit__ runs only after __aenter__ returned,\n"
        "  so a manager must undo its own half-done __aenter__"
    )
    path_c, port_c, pid_c = kept[0]
    checks.check(
        failure is not None
        and fail.events
        == [
            "enter file",
            "enter listener",
            "enter worker",
            "__aenter__ device (raises)",
            "exit worker",
            "exit listener",
            "exit file",
        ],
        "a failure while entering resource 3 unwound resources 2, 1, 0 in that order, and the "
        "body never ran",
        fail.order(),
    )
    checks.check(
        "exit device" not in fail.events,
        "__aexit__ did not run for the manager whose __aenter__ raised",
        f"{len(fail.exited())} exits, none for 'device'",
    )
    checks.check(
        not path_c.exists() and not await _port_open(port_c) and not _alive(pid_c),
        "after the failed setup nothing is left: file deleted, port closed, child reaped",
        f"port {port_c}, pid {pid_c}",
    )
    bad = Log()
    with suppress(LookupError):
        async with temp_file(bad, "bad-open", encoding="no-such-codec"):  # the open fails
            pass  # pragma: no cover - never reached
    console.print(
        "  temp_file opens inside its try: after a failed open, a file was left: "
        f"{bad.paths['bad-open'].exists()}"
    )
    checks.check(
        not bad.paths["bad-open"].exists() and not bad.events,
        "a temp_file whose open failed left no file behind (the open is inside the try)",
        bad.paths["bad-open"].name,
    )


async def hand_over(checks: Checks, baseline: set[int]) -> None:
    """Section 4b: open all or none, then hand the stack over with pop_all()."""
    console.print("b) all or nothing, then hand over: pop_all()")

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
        f"  open_pool() returned: {len(pool_pids)} workers alive; new owner's aclose(): "
        f"{pool_log.order().split(' ', 2)[-1]}"
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


async def body_raises(checks: Checks) -> None:
    """Section 4c: an exception in the body reaches every exit."""
    console.print("c) an exception in the body reaches every resource's exit")
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
    console.print(
        f"  the exits of {', '.join(body.seen)} saw "
        f"{', '.join(set(map(str, body.seen.values())))}, then the caller did\n"
        "  (an exit returning True would swallow it: the outer exits would see none)"
    )
    checks.check(
        raised is not None
        and body.seen == {"file": "ValueError", "listener": "ValueError", "worker": "ValueError"}
        and body.exited() == ["worker", "listener", "file"],
        "the body's ValueError reached all three exits (in reverse order) and then the caller",
        str(raised),
    )


# ---------------------------------------------------------------- 5. cancellation


async def asyncio_cancel_once() -> list[str]:
    """Cancel a task; its cleanup awaits. asyncio raised CancelledError once: the await runs."""
    steps: list[str] = []

    async def job() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            steps.append("cleanup started")
            await asyncio.sleep(0.01)  # e.g. telling a server goodbye
            steps.append("cleanup awaited and finished")

    task = asyncio.create_task(job())
    await asyncio.sleep(0)  # let it start waiting
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return steps


async def anyio_cancel_scope(shield: bool) -> list[str]:
    """The same in a cancelled anyio scope: each await raises again, unless shielded."""
    steps: list[str] = []

    async def job() -> None:
        try:
            await anyio.sleep(30)
        finally:
            steps.append("cleanup started")
            with anyio.CancelScope(shield=shield):
                await anyio.sleep(0.01)
                steps.append("cleanup awaited and finished")

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    return steps


async def cancellation(checks: Checks) -> None:
    """Section 5: asyncio's deliver-once cancellation vs an anyio scope's."""
    section("5. Cancellation and a cleanup that awaits: asyncio vs an anyio scope")
    plain = await asyncio_cancel_once()
    scoped = await anyio_cancel_scope(shield=False)
    shielded = await anyio_cancel_scope(shield=True)
    console.print(
        "task.cancel() raises CancelledError once, at the next await: cleanup's awaits\n"
        "then run. A cancelled anyio scope raises at every await inside it, cleanup's\n"
        "too, unless a CancelScope(shield=True) protects them. Each cleanup got to:"
    )
    for label, steps in (
        ("asyncio task.cancel()", plain),
        ("anyio scope, unshielded", scoped),
        ("anyio scope, shield=True", shielded),
    ):
        console.print(f"  {label:<26} {' -> '.join(steps)}")
    done = "cleanup awaited and finished"
    checks.check(
        done in plain,
        "asyncio delivers a cancellation once: a cleanup's await after it completes",
        " -> ".join(plain),
    )
    checks.check(
        scoped == ["cleanup started"] and done in shielded,
        "in a cancelled anyio scope the cleanup's await is interrupted, unless shielded",
        f"unshielded {scoped}, shielded {shielded}",
    )


# ---------------------------------------------------------------- 6. the pitfall


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


async def cross_task_pitfall(checks: Checks) -> list[int]:
    """Section 6: a task group exited in a foreign task, then the owner-task fix."""
    section("6. The pitfall: a task group entered in one task, exited in another")
    console.print(
        "MCP clients hold task groups; entering them in start() and exiting in stop()\n"
        "breaks once a framework calls those from different tasks:"
    )
    broken_log = Log()
    broken = BrokenClient(broken_log)
    broken_error: RuntimeError | None = None
    await asyncio.create_task(broken.start(), name="startup-hook")  # entered in that task...
    try:
        await broken.stop()  # ...stopped in another (this one)
    except RuntimeError as exc:
        broken_error = exc
    leaked = [p for p in child_processes() if p.pid == broken.pid]
    for p in leaked:  # a safety net so the workshop never leaves a process behind
        p.kill()
        p.wait(timeout=5)
    tasks = broken_log.tasks["broken task group"]
    console.print(
        f"  broken: entered in {tasks[0]}, exited in {tasks[-1]}: "
        f"[red]RuntimeError[/red]\n  [red]{escape(str(broken_error))[:76]}[/red]"
    )

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
    owned = fixed_log.tasks["owned task group"]
    console.print(
        f"  fixed (an owner task started by tg.start; stop() sets an event): entered and\n"
        f"  exited in {owned[0]}, [green]no error[/green]. llmctx's Hub runs each server so."
    )
    checks.check(
        broken_error is not None
        and "different task" in str(broken_error)
        and tasks[0] != tasks[-1],
        "the broken version (enter in one task, exit in another) raised anyio's RuntimeError",
        str(broken_error),
    )
    checks.check(
        fixed_error is None
        and alive_fixed
        and not _alive(owned_pid)
        and owned[0] == owned[-1]
        and fixed_log.exited() == ["owned"],
        "the fixed version (one owner task, started with TaskGroup.start) raised nothing and "
        "closed its worker, exiting in the task that entered",
        f"owner task {owned[0]}",
    )
    return [p.pid for p in leaked]


GUIDE = (
    ("one resource, setup + teardown", "@asynccontextmanager, try/finally at yield"),
    ("a fixed few resources", "one `async with a, b, c:` statement"),
    ("a number known only at run time", "AsyncExitStack.enter_async_context in a loop"),
    ("a close function, no manager", "AsyncExitStack.push_async_callback"),
    ("open all or none, then hand over", "AsyncExitStack + pop_all()"),
    ("a resource used from many tasks", "one owner task (tg.start) + a stop event"),
)


def which_one_when() -> None:
    """The summary: which tool for which situation."""
    section("Which one when (combine them: each resource a manager, composed on a stack)")
    for situation, use in GUIDE:
        console.print(f"  {situation:<33} {use}")


async def main() -> None:
    """The module, section by section."""
    header(
        7,
        "AsyncExitStack vs @asynccontextmanager",
        "one, several, a run-time number, errors, cancellation, the cross-task pitfall",
    )
    checks = Checks()
    baseline = {p.pid for p in child_processes()}
    await one_resource(checks)
    await several_resources(checks)
    await dynamic_resources(checks)
    await failing_enter(checks)
    await hand_over(checks, baseline)
    await body_raises(checks)
    await cancellation(checks)
    leaked = await cross_task_pitfall(checks)
    which_one_when()
    remaining = [p for p in child_processes() if p.pid not in baseline]
    checks.check(
        not remaining,
        "no child process remains: every worker this module started is gone",
        f"{len(remaining)} left" + (f"; the broken demo leaked {len(leaked)}" if leaked else ""),
    )
    checks.verify()


if __name__ == "__main__":
    run(main)
