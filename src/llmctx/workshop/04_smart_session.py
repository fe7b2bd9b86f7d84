"""04. Smart session: code deep in the call stack finds the session through contextvars.

Eric J. Ma's PromptRecorder post shows the trick: a context manager stores itself in a
``ContextVar`` on entry, and any code running inside the block looks it up instead of having
it passed down. llmctx is built on it (``llmctx/_context.py``): ``llmctx.current_session()``
and ``llmctx.record()`` read two ContextVars, so an instrumented model call made five frames
down is charged to the right session and recorded, with no parameter threaded through. The
module shows the deep call stack and nested sessions with their roll-up on the real local
model, then (on ``llmctx.testing.FakeModel``, because it needs many calls) that asyncio tasks
inherit the session, that plain threads do not, and how ``llmctx.wrap`` and
``llmctx.ContextThreadPoolExecutor`` carry it into threads.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from rich.table import Table

import llmctx
from llmctx.testing import FakeModel
from llmctx.workshop._common import (
    MODEL_NAME,
    Checks,
    ask,
    console,
    header,
    note,
    run,
    section,
    temp_store,
    usd,
)

# (function, session it saw) for every frame of the deep call stack, in call order.
_trace: list[tuple[str, str | None]] = []


def _seen() -> str | None:
    current = llmctx.current_session()
    return None if current is None else current.name


# ---------------------------------------------------------------- a deep call stack
# None of these functions takes a session: the model call at the bottom is charged to
# whichever session is current where the top one was called.


def answer_question(question: str) -> str:
    """Top of the stack: what application code calls."""
    _trace.append(("answer_question", _seen()))
    return _with_instructions(question)


def _with_instructions(question: str) -> str:
    _trace.append(("_with_instructions", _seen()))
    return _call_model(f"{question} Answer in one short sentence.")


def _call_model(prompt: str) -> str:
    _trace.append(("_call_model", _seen()))
    return ask(prompt, max_tokens=16)  # the instrumented local model


def _session_row(s: llmctx.Session) -> tuple[str, str, str, str, str]:
    cost = usd(s.cost)
    parent = s.parent.name if s.parent is not None else "-"
    return (
        s.name or s.id[:8],
        parent or "-",
        str(s.usage.requests),
        str(s.usage.total_tokens),
        cost,
    )


def main() -> None:
    header(
        4,
        "Smart session",
        "contextvars: the session and the recorder reach code that was never handed them",
    )
    checks = Checks()
    # None when run as a script; the workshop's own session under `llmctx workshop`.
    before = llmctx.current_session()

    note(
        "llmctx keeps the current session in one ContextVar and the active recorders in another "
        "(llmctx/_context.py). Entering `with llmctx.session(...)` sets the variable and keeps "
        "the token; exiting resets it with that token in `finally`, so the previous value comes "
        "back even after an exception. An instrumented model reads the variable when it is "
        "called: nothing has to be passed down the stack.",
        title="The blog post's trick, as llmctx does it",
    )

    # ------------------------------------------------------------ 1. deep stack, nesting
    section("1. A model call three frames down, in nested sessions (real local model, 2 calls)")
    question_1 = "What is the capital of France?"
    question_2 = "What is 2 + 2?"
    with temp_store() as store:
        with llmctx.session("04-outer", store=store) as outer, llmctx.record() as rec:
            answer_1 = answer_question(question_1)
            trace_outer = list(_trace)
            _trace.clear()
            with llmctx.session("04-inner") as inner:  # no store given: the parent's is used
                answer_2 = answer_question(question_2)
                inside_inner = llmctx.current_session()
            trace_inner = list(_trace)
            _trace.clear()
            after_inner = llmctx.current_session()
        after_outer = llmctx.current_session()
        # Read back what was written through, before the temporary store is closed.
        rows = {r.id: r for r in store.session_tree(outer.id)}
        stored_calls = store.list_calls(list(rows))
    outer_calls, inner_calls = outer.calls, inner.calls

    table = Table(title="What each frame saw: llmctx.current_session().name")
    for col in ("call", "function", "session seen"):
        table.add_column(col)
    for label, trace in (("1", trace_outer), ("2", trace_inner)):
        for fn, name in trace:
            table.add_row(label, fn, str(name))
    console.print(table)

    tree = Table(title="Nested sessions: totals roll up to every ancestor")
    for col in ("session", "parent", "requests", "tokens", "cost"):
        tree.add_column(col)
    tree.add_row(*_session_row(outer))
    tree.add_row(*_session_row(inner))
    console.print(tree)
    console.print(
        f"after the inner `with`: current_session() is [bold]{_seen_name(after_inner)}[/bold]; "
        f"after the outer one: [bold]{_seen_name(after_outer)}[/bold]"
    )

    checks.check(
        [name for _, name in trace_outer] == ["04-outer"] * 3
        and [name for _, name in trace_inner] == ["04-inner"] * 3,
        "every frame of the deep stack saw the innermost session, without being passed it",
        f"call 1: {[n for _, n in trace_outer]}, call 2: {[n for _, n in trace_inner]}",
    )
    checks.check(
        inside_inner is inner and inner.parent is outer,
        "a session entered inside another becomes current and links to it as its parent",
        f"inner.parent = {inner.parent.name if inner.parent else None}",
    )
    checks.check(
        after_inner is outer and after_outer is before,
        "leaving a session restores the previous one (the ContextVar token is reset)",
        f"after inner: {_seen_name(after_inner)}; after outer: {_seen_name(after_outer)} "
        f"(before: {_seen_name(before)})",
    )
    checks.check(
        len(inner_calls) == 1
        and len(outer_calls) == 2
        and inner_calls[0].id in {c.id for c in outer_calls}
        and all(c.model == MODEL_NAME and c.status == "ok" for c in outer_calls),
        "the inner call is charged to the inner session AND rolled up into the outer one",
        f"inner: {len(inner_calls)} call, outer: {len(outer_calls)} calls ({MODEL_NAME})",
    )
    checks.check(
        outer.usage.total_tokens == sum(c.usage.total_tokens for c in outer_calls)
        and inner.usage.total_tokens == inner_calls[0].usage.total_tokens
        and outer.usage.total_tokens > inner.usage.total_tokens > 0,
        "the outer session's tokens are its own call's plus the inner session's",
        f"outer {outer.usage.total_tokens} = "
        f"{' + '.join(str(c.usage.total_tokens) for c in outer_calls)}",
    )
    checks.check(
        [p.prompt for p in rec.pairs]
        == [
            f"{question_1} Answer in one short sentence.",
            f"{question_2} Answer in one short sentence.",
        ]
        and [(p.response or "").strip() for p in rec.pairs] == [answer_1, answer_2],
        "llmctx.record() captured both prompt/response pairs, the nested session's included",
        f"{len(rec)} pairs",
    )

    inner_row, outer_row = rows.get(inner.id), rows.get(outer.id)
    stored_by_id = {c.id: c for c in stored_calls}
    checks.check(
        inner_row is not None
        and outer_row is not None
        and inner_row.parent_id == outer.id
        and outer_row.usage == outer.usage
        and outer_row.status == inner_row.status == "completed"
        and len(stored_calls) == 2
        and all(c.id in stored_by_id and stored_by_id[c.id].usage == c.usage for c in outer_calls)
        and [c.session_id for c in stored_calls] == [outer.id, inner.id],
        "the SQLite store holds both calls with their usage, the inner row points at its "
        "parent, and the parent's row holds the rolled-up total",
        f"{len(rows)} session rows, {len(stored_calls)} calls; outer row: "
        f"{outer_row.usage.requests if outer_row else '?'} requests, "
        f"{outer_row.usage.total_tokens if outer_row else '?'} tokens",
    )

    # ------------------------------------------------------------ 2. asyncio tasks
    section("2. asyncio tasks inherit the session (FakeModel: 10 calls, no real model)")
    note(
        "The next sections need many calls, so they use llmctx.testing.FakeModel: it answers "
        "instantly but goes through the same charge path as the local model (budgets, "
        "sessions, recorders, stores). Its tokens are whitespace-separated words.",
        title="FakeModel from here on",
        style="yellow",
    )
    fake = FakeModel(reply="ok")

    async def one_task(i: int) -> str | None:
        await fake.acomplete(f"task {i} says hello", max_tokens=4)
        return _seen()

    async def task_with_own_session(
        opened: asyncio.Event, release: asyncio.Event
    ) -> tuple[str | None, llmctx.Session]:
        async with llmctx.session("04-task-child") as child:
            await fake.acomplete("first call of the child session", max_tokens=4)
            opened.set()
            await release.wait()  # the parent looks at its own context meanwhile
            await fake.acomplete("second call of the child session", max_tokens=4)
            inside = _seen()
        return inside, child

    async def tasks_demo() -> tuple[list[str | None], str | None, llmctx.Session, str | None]:
        # asyncio.create_task (and gather, TaskGroup) copies the creating task's context.
        seen = await asyncio.gather(*(one_task(i) for i in range(8)))
        opened, release = asyncio.Event(), asyncio.Event()
        child_task = asyncio.create_task(task_with_own_session(opened, release))
        await opened.wait()
        parent_meanwhile = _seen()
        release.set()
        seen_in_child, child = await child_task
        return list(seen), seen_in_child, child, parent_meanwhile

    with llmctx.session("04-tasks", store="memory:") as tasks_session:
        sent_before = fake.requests_sent
        task_seen, child_seen, child, parent_meanwhile = asyncio.run(tasks_demo())
        sent = fake.requests_sent - sent_before

    t = Table(title="asyncio tasks started inside session '04-tasks'")
    for col in ("task", "current_session() in the task"):
        t.add_column(col)
    for i, name in enumerate(task_seen):
        t.add_row(f"one_task({i})", str(name))
    t.add_row("task_with_own_session, inside its own `async with`", str(child_seen))
    t.add_row("the parent task, at the same moment", str(parent_meanwhile))
    console.print(t)
    console.print(
        f"'04-tasks' holds {tasks_session.usage.requests} calls "
        f"(8 from the tasks + {child.usage.requests} rolled up from '04-task-child')"
    )
    checks.check(
        task_seen == ["04-tasks"] * 8 and tasks_session.usage.requests == sent == 10,
        "every asyncio task saw the session it was created in, and all 10 calls were charged",
        f"{task_seen.count('04-tasks')}/8 tasks, {tasks_session.usage.requests} calls charged",
    )
    checks.check(
        child.parent is tasks_session
        and child.usage.requests == 2
        and child_seen == "04-task-child"
        and parent_meanwhile == "04-tasks",
        "a session opened inside a task nests under the task's session and never leaks into "
        "the parent task (each task has its own copy of the context)",
        f"child.parent = {child.parent.name if child.parent else None}",
    )

    # ------------------------------------------------------------ 3. threads
    section("3. Threads start with an empty context (FakeModel)")
    note(
        "A new threading.Thread starts with a fresh, empty context: llmctx.current_session() "
        "is None there, and its model calls are charged to nobody. llmctx.wrap(fn) binds fn to "
        "a copy of the caller's context; llmctx.ContextThreadPoolExecutor does it for every "
        "submitted task. (asyncio.to_thread and loop.run_in_executor(None, llmctx.wrap(fn)) "
        "carry it too.)",
        title="Threads do not inherit",
    )

    def call_in_thread(label: str) -> str | None:
        fake.complete(f"a call from {label}", max_tokens=3)
        return _seen()  # what this thread sees

    results: dict[str, str | None] = {}

    def thread_target(label: str) -> None:
        results[label] = call_in_thread(label)

    with llmctx.session("04-threads", store="memory:") as threads_session:
        rows_t: list[tuple[str, str | None, int]] = []

        def charged_since(start: int) -> int:
            return threads_session.usage.requests - start

        start = threads_session.usage.requests
        plain = threading.Thread(target=thread_target, args=("plain thread",))
        plain.start()
        plain.join()
        rows_t.append(("Thread(target=fn)", results["plain thread"], charged_since(start)))

        start = threads_session.usage.requests
        with ThreadPoolExecutor(max_workers=2) as pool:
            plain_pool = list(pool.map(call_in_thread, ["plain pool"] * 4))
        rows_t.append(("ThreadPoolExecutor.map (4 calls)", plain_pool[0], charged_since(start)))

        start = threads_session.usage.requests
        wrapped = threading.Thread(target=llmctx.wrap(thread_target), args=("wrapped thread",))
        wrapped.start()
        wrapped.join()
        rows_t.append(
            (
                "Thread(target=llmctx.wrap(fn))",
                results["wrapped thread"],
                charged_since(start),
            )
        )

        start = threads_session.usage.requests
        with llmctx.ContextThreadPoolExecutor(max_workers=2) as cpool:
            ctx_pool = list(cpool.map(call_in_thread, ["context pool"] * 4))
        rows_t.append(
            (
                "llmctx.ContextThreadPoolExecutor.map (4 calls)",
                ctx_pool[0],
                charged_since(start),
            )
        )

    tt = Table(title="Inside session '04-threads': what the thread saw, and what was charged")
    for col in ("thread started with", "current_session() there", "charged"):
        tt.add_column(col)
    for how, seen_name, charged in rows_t:
        style = "red" if seen_name is None else "green"
        tt.add_row(how, f"[{style}]{seen_name}[/{style}]", str(charged))
    console.print(tt)

    checks.check(
        results["plain thread"] is None
        and plain_pool == [None] * 4
        and rows_t[0][2] == 0
        and rows_t[1][2] == 0,
        "a plain thread (or plain ThreadPoolExecutor) sees None and its calls are charged to "
        "no session",
        f"plain thread saw {results['plain thread']}, charged {rows_t[0][2] + rows_t[1][2]}",
    )
    checks.check(
        results["wrapped thread"] == "04-threads"
        and ctx_pool == ["04-threads"] * 4
        and rows_t[2][2] == 1
        and rows_t[3][2] == 4,
        "llmctx.wrap and llmctx.ContextThreadPoolExecutor carry the session into threads; "
        "their calls are charged",
        f"wrap: {rows_t[2][2]} charged, ContextThreadPoolExecutor: {rows_t[3][2]} charged",
    )

    # ------------------------------------------------------------ 4. the PromptRecorder
    section("4. llmctx.record(): the blog post's PromptRecorder")
    note(
        "PromptRecorder()         ->  llmctx.record()\n"
        "with recorder: bot(...)  ->  with llmctx.record() as rec: model(...)\n"
        "autorecord(p, r)         ->  done by the instrumented client on every call\n"
        "recorder's pairs         ->  rec.pairs (prompt, response, model, usage, cost), "
        "rec.table()\n\n"
        "Unlike the post's version (which sets the variable to None on exit), llmctx resets "
        "the ContextVar with its token, so recorders nest: each sees the calls of its own block.",
        title="From the post to llmctx",
    )
    console.print(rec.table(width=50))

    with llmctx.record() as everything:
        fake.complete("first prompt to the bot", max_tokens=4)
        with llmctx.record() as only_this:
            fake.complete("second prompt to the bot", max_tokens=4)
        fake.complete("third prompt to the bot", max_tokens=4)
    console.print(
        f"outer recorder: {len(everything)} pairs {[p.prompt for p in everything.pairs]}\n"
        f"inner recorder: {len(only_this)} pair  {[p.prompt for p in only_this.pairs]}"
    )
    checks.check(
        [p.prompt for p in everything.pairs]
        == ["first prompt to the bot", "second prompt to the bot", "third prompt to the bot"]
        and [p.prompt for p in only_this.pairs] == ["second prompt to the bot"],
        "nested recorders: the outer one captured all three calls, the inner one only its own",
        f"outer {len(everything)}, inner {len(only_this)}",
    )
    checks.check(
        llmctx.current_session() is before,
        "after the module no session it opened is still current",
        f"current_session() = {_seen_name(llmctx.current_session())}",
    )
    checks.verify()


def _seen_name(s: llmctx.Session | None) -> str:
    return "None" if s is None else repr(s.name)


if __name__ == "__main__":
    run(main)
