"""04. Smart session: code deep in the call stack finds the session through contextvars.

Eric J. Ma's PromptRecorder post shows the trick: a context manager stores itself in a
``contextvars.ContextVar`` on entry, and any code running inside the block looks it up instead
of having it passed down. The module builds that recorder by hand first, exactly as the post
writes it, and shows it break when two recorders nest (its exit sets the variable to None);
then fixes it with ``var.reset(token)``. llmctx is built on the fixed version
(``llmctx/_context.py``): ``llmctx.session`` and ``llmctx.record`` are the same pattern, shown
on the real local model with a call three frames down. Then (on ``llmctx.testing.FakeModel``,
because it needs many calls) asyncio tasks inherit the context, and threads do or do not
depending on the Python build and flags, stated exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.markup import escape

import llmctx
from llmctx.testing import FakeModel
from llmctx.workshop._common import (
    MODEL_NAME,
    Checks,
    ask,
    console,
    header,
    reply_note,
    run,
    section,
    temp_store,
)

MAX_TOKENS = 16

# ---------------------------------------------------------------- 1. the blog post's recorder
# As the post writes it: the variable is module-global, __enter__ sets it, __exit__ sets None.

prompt_recorder_var: contextvars.ContextVar[Any] = contextvars.ContextVar("prompt_recorder")


class PromptRecorder:
    def __init__(self) -> None:
        self.log: list[str] = []

    def __enter__(self) -> PromptRecorder:
        prompt_recorder_var.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        prompt_recorder_var.set(None)


def autorecord(prompt: str) -> None:
    if (recorder := prompt_recorder_var.get(None)) is not None:
        recorder.log.append(prompt)


# ---------------------------------------------------------------- 2. the fix: reset(token)


class ResettingRecorder(PromptRecorder):
    def __enter__(self) -> ResettingRecorder:
        self._token = prompt_recorder_var.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        prompt_recorder_var.reset(self._token)  # the value before enter


def nest(recorder: type[PromptRecorder]) -> tuple[list[str], list[str], bool]:
    """Record a, then b in a nested recorder, then c; return both logs and if c was lost."""
    with recorder() as outer:
        autorecord("a")
        with recorder() as inner:
            autorecord("b")
        autorecord("c")  # the outer block is still open: c belongs to it
    return outer.log, inner.log, "c" not in outer.log


def _source(obj: Any, skip: int = 0) -> str:
    """The source of ``obj`` as it ran, indented, blank lines and the first ``skip`` dropped."""
    lines = inspect.getsource(obj).splitlines()
    lines = lines[:1] + lines[1 + skip :]
    return "\n".join(f"  {line}" for line in lines if line.strip())


def blog_recorder(checks: Checks) -> None:
    """Section 1: the post's recorder, verbatim, losing a call when two nest."""
    section("1. The blog post's recorder: a real contextvars.ContextVar")
    console.print("  prompt_recorder_var = contextvars.ContextVar('prompt_recorder')")
    first, rest = _source(PromptRecorder, skip=2).split("\n", 1)
    console.print(escape(f"{first}  # (__init__ sets self.log = [])\n{rest}"))
    console.print(escape(_source(autorecord)))
    outer, inner, lost = nest(PromptRecorder)
    console.print(
        f"nested: outer logged {outer}, inner {inner}: [red]'c' is lost[/red]: the inner\n"
        "exit set the variable to None while the outer block was still open"
    )
    checks.check(
        isinstance(prompt_recorder_var, contextvars.ContextVar) and lost and inner == ["b"],
        "the post's recorder (exit sets None) loses the outer block's calls after a nested one",
        f"outer {outer}, inner {inner}",
    )


def fixed_recorder(checks: Checks) -> None:
    """Section 2: the same recorder with reset(token): nesting works."""
    section("2. The fix: keep the token set() returns, reset() it on exit")
    console.print(escape(_source(ResettingRecorder)))
    outer, inner, lost = nest(ResettingRecorder)
    after = prompt_recorder_var.get("<unset>")
    console.print(
        f"nested: outer logged {outer}, inner {inner}; after both the variable holds\n"
        f"{after!r}, the value it had before them (reset restores it, even 'unset')"
    )
    checks.check(
        not lost and outer == ["a", "c"] and inner == ["b"] and after is None,
        "with reset(token) each recorder logs its own block, and the previous value returns",
        f"outer {outer}, inner {inner}, after {after!r}",
    )


# ---------------------------------------------------------------- 3. llmctx, deep call stack
# None of these functions takes a session: the model call at the bottom is charged to
# whichever session is current where the top one was called.

_trace: list[str | None] = []  # the session each frame saw, in call order


def _seen() -> str | None:
    current = llmctx.current_session()
    return None if current is None else current.name


def answer_question(question: str) -> str:
    """Top of the stack: what application code calls."""
    _trace.append(_seen())
    return _with_instructions(question)


def _with_instructions(question: str) -> str:
    _trace.append(_seen())
    return _call_model(f"{question} Answer in one short sentence.")


def _call_model(prompt: str) -> str:
    _trace.append(_seen())
    return ask(prompt, max_tokens=MAX_TOKENS)  # the instrumented local model


def llmctx_sessions(checks: Checks, before: llmctx.Session | None) -> None:
    """Section 3: llmctx.session and llmctx.record, a model call three frames down."""
    section("3. llmctx does the same: llmctx.session + llmctx.record (real local model)")
    console.print(
        "llmctx/_context.py sets a ContextVar on entry, resets it with the token in\n"
        "`finally`; a model call 3 frames down finds the session without being passed it:"
    )
    questions = ("What is the capital of France?", "What is 2 + 2?")
    _trace.clear()
    with temp_store() as store:
        with llmctx.session("04-outer", store=store) as outer, llmctx.record() as rec:
            answer_1 = answer_question(questions[0])
            # No store given: the parent's is used. The inner recorder nests like section 2's.
            with llmctx.session("04-inner") as inner, llmctx.record() as inner_rec:
                answer_2 = answer_question(questions[1])
            after_inner = llmctx.current_session()
        after_outer = llmctx.current_session()
        rows = {r.id: r for r in store.session_tree(outer.id)}
        stored_calls = store.list_calls(list(rows))
    trace = list(_trace)
    console.print(f"  call 1: each frame saw {_runs(trace[:3])}; call 2: {_runs(trace[3:])}")
    for question, answer in zip(questions, (answer_1, answer_2), strict=True):
        console.print(f"  {question!r} -> [bold]{escape(repr(answer))}[/bold]")
    reply_note(MAX_TOKENS)
    if before is not None:  # under `llmctx workshop`
        console.print(
            f"[dim]04-outer sits in the runner's '{before.name}', which counts each module's "
            "calls:[/dim]"
        )
    parts = " + ".join(str(c.usage.total_tokens) for c in outer.calls)
    console.print(
        f"  04-outer: {outer.usage.requests} calls, {outer.usage.total_tokens} tokens "
        f"({parts}: its own and the inner's, rolled up)\n"
        f"  └─ 04-inner: {inner.usage.requests} call, {inner.usage.total_tokens} tokens"
    )
    console.print(
        f"  after the inner `with`: {_name(after_inner)}; after the outer: {_name(after_outer)}"
    )
    console.print(
        f"  llmctx.record(): the outer recorder holds {len(rec)} pairs, the inner one "
        f"{len(inner_rec)}"
    )
    outer_calls, inner_calls = outer.calls, inner.calls
    checks.check(
        trace == ["04-outer"] * 3 + ["04-inner"] * 3,
        "every frame of the deep stack saw the innermost session, without being passed it",
        str(trace),
    )
    checks.check(
        inner.parent is outer and after_inner is outer and after_outer is before,
        "a nested session links to its parent, and leaving one restores the previous one",
        f"after inner: {_name(after_inner)}; after outer: {_name(after_outer)}",
    )
    checks.check(
        len(inner_calls) == 1
        and len(outer_calls) == 2
        and inner_calls[0].id in {c.id for c in outer_calls}
        and all(c.model == MODEL_NAME and c.status == "ok" for c in outer_calls)
        and outer.usage.total_tokens == sum(c.usage.total_tokens for c in outer_calls)
        and outer.usage.total_tokens > inner.usage.total_tokens > 0,
        "the inner call is charged to the inner session AND rolled up into the outer one",
        f"outer {outer.usage.total_tokens} = "
        f"{' + '.join(str(c.usage.total_tokens) for c in outer_calls)}",
    )
    checks.check(
        [p.prompt for p in rec.pairs] == [f"{q} Answer in one short sentence." for q in questions]
        and [(p.response or "").strip() for p in rec.pairs] == [answer_1, answer_2],
        "llmctx.record() captured both prompt/response pairs, the nested session's included",
        f"{len(rec)} pairs",
    )
    checks.check(
        [p.prompt for p in inner_rec.pairs] == [f"{questions[1]} Answer in one short sentence."],
        "a nested llmctx.record() captures only its own block's call (it resets its token)",
        f"{len(inner_rec)} pair",
    )
    inner_row, outer_row = rows.get(inner.id), rows.get(outer.id)
    checks.check(
        inner_row is not None
        and outer_row is not None
        and inner_row.parent_id == outer.id
        and outer_row.usage == outer.usage
        and [c.session_id for c in stored_calls] == [outer.id, inner.id],
        "the SQLite store holds both calls; the inner row points at its parent, whose row "
        "holds the rolled-up total",
        f"{len(rows)} session rows, {len(stored_calls)} calls",
    )


# ---------------------------------------------------------------- 4. asyncio tasks


async def _tasks_demo(fake: FakeModel) -> tuple[list[str | None], str | None, str | None]:
    async def one_task(i: int) -> str | None:
        await fake.acomplete(f"task {i}", max_tokens=2)
        return _seen()

    opened, release = asyncio.Event(), asyncio.Event()

    async def task_with_own_session() -> str | None:
        async with llmctx.session("04-task-child"):
            await fake.acomplete("child call", max_tokens=2)
            opened.set()
            await release.wait()  # the parent looks at its own context meanwhile
            return _seen()

    # asyncio.create_task (and gather, TaskGroup) copies the creating task's context.
    seen = await asyncio.gather(*(one_task(i) for i in range(8)))
    child = asyncio.create_task(task_with_own_session())
    await opened.wait()
    parent_meanwhile = _seen()
    release.set()
    return list(seen), await child, parent_meanwhile


def asyncio_tasks(checks: Checks, fake: FakeModel) -> None:
    """Section 4: asyncio tasks inherit the session; a child's never leaks back."""
    section("4. asyncio tasks copy the context when they are created (FakeModel)")
    with llmctx.session("04-tasks", store="memory:") as tasks_session:
        task_seen, child_seen, parent_meanwhile = asyncio.run(_tasks_demo(fake))
    console.print(
        f"  8 tasks started inside '04-tasks' saw {sorted(set(map(str, task_seen)))}. A task "
        f"that opened its\n  own session saw {child_seen!r} while its parent, at the same "
        f"moment, saw\n  {parent_meanwhile!r}. '04-tasks' was charged all "
        f"{tasks_session.usage.requests} calls (8 + the child's 1)."
    )
    checks.check(
        task_seen == ["04-tasks"] * 8 and tasks_session.usage.requests == 9,
        "every asyncio task saw the session it was created in, and all 9 calls were charged",
        f"{task_seen.count('04-tasks')}/8 tasks, {tasks_session.usage.requests} charged",
    )
    checks.check(
        child_seen == "04-task-child" and parent_meanwhile == "04-tasks",
        "a session opened inside a task never leaks into the parent task (each task has its "
        "own copy of the context)",
        f"child {child_seen!r}, parent {parent_meanwhile!r}",
    )


# ---------------------------------------------------------------- 5. threads


def thread_inherits_context() -> bool:
    """Whether a new ``threading.Thread`` starts with a copy of its starter's context.

    Python 3.14 added ``sys.flags.thread_inherit_context``: true by default on free-threaded
    builds, false on the default (GIL) build, set by ``-X thread_inherit_context=1`` or
    ``PYTHON_THREAD_INHERIT_CONTEXT=1``. Before 3.14 the flag does not exist and a thread
    always starts with an empty context.
    """
    return bool(getattr(sys.flags, "thread_inherit_context", 0))


def threads(checks: Checks, fake: FakeModel) -> None:
    """Section 5: what a thread sees, by Python version and flag, and the carriers."""
    section("5. Threads: an empty context, or a copy, depending on build and flags")
    inherits = thread_inherits_context()
    console.print(
        "Up to 3.13 a new Thread starts with an empty context. From 3.14 it copies the\n"
        "context that called start() if sys.flags.thread_inherit_context is 1 (default\n"
        "on free-threaded builds, or -X thread_inherit_context=1), else starts empty.\n"
        f"Here: Python {sys.version_info.major}.{sys.version_info.minor}, flag "
        f"{getattr(sys.flags, 'thread_inherit_context', 'absent')}: "
        f"[bold]{'a copy' if inherits else 'empty'}[/bold]. The carriers work on all:"
    )

    def call_in_thread(label: str) -> str | None:
        fake.complete(f"a call from {label}", max_tokens=2)
        return _seen()

    results: dict[str, str | None] = {}

    def target(label: str) -> None:
        results[label] = call_in_thread(label)

    def plain_thread() -> str | None:
        thread = threading.Thread(target=target, args=("plain",))
        thread.start()
        thread.join()
        return results.pop("plain")

    def wrapped_thread() -> str | None:
        thread = threading.Thread(target=llmctx.wrap(target), args=("wrapped",))
        thread.start()
        thread.join()
        return results.pop("wrapped")

    def pool_of(pool_type: type[ThreadPoolExecutor]) -> str | None:
        with pool_type(max_workers=2) as pool:
            seen = set(pool.map(call_in_thread, ["pool"] * 4))
        return seen.pop() if len(seen) == 1 else str(seen)

    rows: list[tuple[str, str | None, int]] = []
    with llmctx.session("04-threads", store="memory:") as s:
        for how, start in (
            ("Thread(target=fn)", plain_thread),
            ("Thread(target=llmctx.wrap(fn))", wrapped_thread),
            ("ThreadPoolExecutor (4 calls)", lambda: pool_of(ThreadPoolExecutor)),
            (
                "llmctx.ContextThreadPoolExecutor (4 calls)",
                lambda: pool_of(llmctx.ContextThreadPoolExecutor),
            ),
        ):
            n = s.usage.requests
            seen_name = start()
            rows.append((how, seen_name, s.usage.requests - n))
    for how, seen_name, charged in rows:
        style = "red" if seen_name is None else "green"
        console.print(f"  {how:<43} sees [{style}]{seen_name}[/{style}], charged {charged}")
    plain_expected = "04-threads" if inherits else None
    checks.check(
        rows[0][1] == rows[2][1] == plain_expected
        and rows[0][2] == (1 if inherits else 0)
        and rows[2][2] == (4 if inherits else 0),
        "a plain thread (and a plain ThreadPoolExecutor) "
        + (
            "inherits the session (thread_inherit_context is on)"
            if inherits
            else "sees None and its calls are charged to no session (no thread_inherit_context)"
        ),
        f"plain thread saw {rows[0][1]}, charged {rows[0][2] + rows[2][2]}",
    )
    checks.check(
        rows[1][1] == rows[3][1] == "04-threads" and rows[1][2] == 1 and rows[3][2] == 4,
        "llmctx.wrap and llmctx.ContextThreadPoolExecutor carry the session into threads; "
        "their calls are charged",
        f"wrap: {rows[1][2]} charged, ContextThreadPoolExecutor: {rows[3][2]} charged",
    )


def _runs(names: list[str | None]) -> str:
    return ", ".join(sorted({str(n) for n in names})) + f" ({len(names)} frames)"


def _name(s: llmctx.Session | None) -> str:
    return "None" if s is None else repr(s.name)


def main() -> None:
    """The module, section by section."""
    header(4, "Smart session", "contextvars: a session reaches code that was never handed it")
    checks = Checks()
    # None when run as a script; the runner's own session under `llmctx workshop`.
    before = llmctx.current_session()
    blog_recorder(checks)
    fixed_recorder(checks)
    llmctx_sessions(checks, before)
    # FakeModel from here on: many calls, answered at once through the same charge path.
    fake = FakeModel(reply="ok")
    asyncio_tasks(checks, fake)
    threads(checks, fake)
    checks.check(
        llmctx.current_session() is before,
        "after the module no session it opened is still current",
        _name(llmctx.current_session()),
    )
    checks.verify()


if __name__ == "__main__":
    run(main)
