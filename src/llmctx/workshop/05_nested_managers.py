"""05. Nested managers: a budget, a monitor and a session stacked around real model calls.

Real programs nest several context managers: a store, prices, a session with a budget, a
recorder, a performance monitor. This module builds that nest with ``contextlib.ExitStack``
(its shape decided at run time), runs a batch of questions through the bundled local model
with a made-up price (``priced()``), and lets the session's ``llmctx.Budget`` stop the batch:
the call that would overspend is refused *before it is sent*, which the module proves by
counting the runs of llama.cpp's generation loop. The ``BudgetExceeded`` then travels out
through every layer, and each one cleans up in reverse order: the monitor's measurement is
attached to the session (``s.events``), the session is stored as failed with its reason, the
price is restored and the store closed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, NamedTuple, TypeVar

from rich.markup import escape
from rich.table import Table

import llmctx
from llmctx.stores import SessionRecord, Store
from llmctx.workshop._common import (
    MODEL_NAME,
    WORKSHOP_PRICE,
    Checks,
    ask,
    console,
    header,
    model,
    note,
    priced,
    run,
    section,
    temp_store,
    usd,
)

T = TypeVar("T")

QUESTIONS = (
    "Name a primary colour.",
    "Name a planet.",
    "Say hello in French.",
    "Name a fruit.",
    "What is 2 + 2?",
)
MAX_TOKENS = 16
# Each question is ~35 prompt tokens, so a call reserves ~51 (prompt + MAX_TOKENS) and uses
# at least ~36: two calls always fit in 140 tokens, a fourth never does.
TOKEN_LIMIT = 140
USD_LIMIT = "0.001"
WARN_AFTER = 0.25  # seconds; a batch of real calls on two cores takes longer

# The layers of the nest, decided at run time (a config file or CLI flags in a real program).
FEATURES = {"record": True, "monitor": True}


class RunCounter:
    """How many times llama.cpp's generation loop ran (i.e. the model really computed)."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_model_runs(llama: Any) -> Iterator[RunCounter]:
    """Count calls of ``llama.generate`` inside the block, then put the original back.

    ``generate`` is the loop every completion goes through, so a refused call that never
    reached the model leaves the count unchanged.
    """
    counter = RunCounter()
    had_own = "generate" in vars(llama)
    previous = vars(llama).get("generate")
    inner = llama.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        counter.count += 1
        return inner(*args, **kwargs)

    llama.generate = generate
    try:
        yield counter
    finally:
        if had_own:
            llama.generate = previous
        else:
            del llama.generate


@contextmanager
def traced(name: str, cm: AbstractContextManager[T], log: list[str]) -> Iterator[T]:
    """Enter ``cm`` and note in ``log`` when it was entered and when it had fully exited."""
    try:
        with cm as value:
            log.append(f"enter {name}")
            yield value
    except Exception as exc:
        log.append(f"exit  {name}  (the {type(exc).__name__} passed through it)")
        raise
    log.append(f"exit  {name}")


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_warnings(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the warnings a logger emits inside the block."""
    records: list[logging.LogRecord] = []
    handler = _ListHandler(records)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


class Refusal(NamedTuple):
    """The state just before and just after the refused call."""

    error: llmctx.BudgetExceeded
    question: str
    runs: tuple[int, int]
    requests: tuple[int, int]
    stored_calls: tuple[int, int]
    reserved_after: llmctx.LedgerSnapshot | None


def run_batch(
    s: llmctx.Session,
    runs: RunCounter,
    store: Store,
    rows: list[tuple[str, str, str, str, str, str]],
    refusals: list[Refusal],
) -> None:
    """Ask every question until the budget refuses one; the refusal propagates."""
    for i, question in enumerate(QUESTIONS, 1):
        before = (runs.count, s.usage.requests, len(store.list_calls([s.id])))
        try:
            answer = ask(question, max_tokens=MAX_TOKENS)
        except llmctx.BudgetExceeded as exc:
            after = (runs.count, s.usage.requests, len(store.list_calls([s.id])))
            snapshot = s.budget.ledger.snapshot() if s.budget is not None else None
            refusals.append(
                Refusal(
                    exc,
                    question,
                    (before[0], after[0]),
                    (before[1], after[1]),
                    (before[2], after[2]),
                    snapshot,
                )
            )
            rows.append(
                (
                    str(i),
                    question,
                    "[red]refused before sending[/red]",
                    f"needs {exc.requested}",
                    "-",
                    str(s.remaining()["tokens"]),
                )
            )
            raise
        call = s.calls[-1]
        rows.append(
            (
                str(i),
                question,
                escape(answer[:40]),  # model output is text, not rich markup
                f"{call.usage.input_tokens}+{call.usage.output_tokens}",
                usd(call.cost),
                str(s.remaining()["tokens"]),
            )
        )


def main() -> None:
    header(
        5,
        "Nested managers",
        "budget control + performance monitoring + session management, cleaned up in reverse",
    )
    checks = Checks()
    llama = model()  # load the model before anything is measured
    price_before = llmctx.lookup_price(MODEL_NAME)
    generate_before = vars(llama).get("generate")

    note(
        "Written by hand, the nest is one `with` statement:\n\n"
        "  with temp_store() as store, priced(), \\\n"
        "       llmctx.session('05-nested', store=store,\n"
        f"                      budget=llmctx.Budget(usd='{USD_LIMIT}', tokens={TOKEN_LIMIT})) "
        "as s, \\\n"
        "       llmctx.record() as rec, \\\n"
        f"       llmctx.monitor('batch', warn_after={WARN_AFTER}) as m:\n"
        "      ...\n\n"
        "Here the optional layers come from FEATURES at run time, so the nest is built on an "
        "ExitStack: enter_context() enters a manager and registers its exit; callback() "
        "registers a plain function. On the way out (normally or by an exception) they run "
        "last-in, first-out.",
        title="The nest",
    )

    section(
        f"1. A batch of questions under Budget(usd={USD_LIMIT}, tokens={TOKEN_LIMIT}) "
        f"(real local model, priced at {usd(WORKSHOP_PRICE['input_per_mtok'])}/"
        f"{usd(WORKSHOP_PRICE['output_per_mtok'])} per million tokens)"
    )
    log: list[str] = []
    rows: list[tuple[str, str, str, str, str, str]] = []
    refusals: list[Refusal] = []
    stored: dict[str, Any] = {}
    session: llmctx.Session | None = None
    mon: llmctx.monitor | None = None
    rec: llmctx.Recorder | None = None
    warnings_seen: list[logging.LogRecord] = []
    escaped: BaseException | None = None

    def read_back(store: Store) -> None:
        # Registered right after the store: it runs after every inner layer has exited and
        # before the store closes, so it sees the session's final row.
        if session is not None:
            stored["session"] = store.get_session(session.id)
            stored["calls"] = store.list_calls([session.id])
        log.append("read the session back from the store")

    try:
        with ExitStack() as stack:
            store = stack.enter_context(traced("store (SQLite)", temp_store(), log))
            stack.callback(read_back, store)
            stack.enter_context(traced("priced()", priced(), log))
            runs = stack.enter_context(traced("model-run counter", counting_model_runs(llama), log))
            budget = llmctx.Budget(usd=USD_LIMIT, tokens=TOKEN_LIMIT)
            session = stack.enter_context(
                traced("session", llmctx.session("05-nested", store=store, budget=budget), log)
            )
            if FEATURES["record"]:
                rec = stack.enter_context(traced("record()", llmctx.record(), log))
            if FEATURES["monitor"]:
                # The log capture is entered first so it is still there when monitor warns on exit.
                warnings_seen = stack.enter_context(
                    traced("warning capture", captured_warnings("llmctx.monitor"), log)
                )
                mon = stack.enter_context(
                    traced("monitor", llmctx.monitor("batch", warn_after=WARN_AFTER), log)
                )
            run_batch(session, runs, store, rows, refusals)
    except llmctx.BudgetExceeded as exc:
        escaped = exc

    table = Table(title="The batch")
    for col in ("#", "question", "answer", "tokens in+out", "cost", "tokens left"):
        table.add_column(col, overflow="fold")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)

    # ------------------------------------------------------------ the refusal
    section("2. The budget refused the next call before it was sent")
    refusal = refusals[0] if refusals else None
    if refusal is not None:
        err = refusal.error
        ft = Table(title="BudgetExceeded")
        ft.add_column("field")
        ft.add_column("value", overflow="fold")
        for field_name, value in (
            ("dimension", err.dimension),
            ("limit", err.limit),
            ("spent", err.spent),
            ("reserved", err.reserved),
            ("requested", err.requested),
            ("remaining", err.remaining),
            ("session_name", err.session_name),
            ("str(exc)", str(err)),
        ):
            ft.add_row(field_name, str(value))
        console.print(ft)
        pt = Table(title=f"Around the refused call ({refusal.question!r})")
        for col in ("measure", "before", "after"):
            pt.add_column(col)
        pt.add_row("llama.cpp generation runs", *map(str, refusal.runs))
        pt.add_row("session requests", *map(str, refusal.requests))
        pt.add_row("calls in the store", *map(str, refusal.stored_calls))
        console.print(pt)

    checks.check(
        refusal is not None and escaped is refusal.error,
        "the budget stopped the batch with BudgetExceeded, which propagated out of the nest",
        f"refused call #{len(rows)} of {len(QUESTIONS)}" if refusal else "nothing was refused",
    )
    if refusal is not None and session is not None:
        err = refusal.error
        ok_calls = len(rows) - 1
        checks.check(
            refusal.runs[0] == refusal.runs[1] == ok_calls
            and refusal.requests[0] == refusal.requests[1] == ok_calls
            and refusal.stored_calls[0] == refusal.stored_calls[1] == ok_calls,
            "the refused call never reached the model: llama.cpp's generation loop ran once per "
            "accepted call and not for the refused one; no request or record was added",
            f"generation runs {refusal.runs[0]} -> {refusal.runs[1]}, "
            f"requests {refusal.requests[0]} -> {refusal.requests[1]}",
        )
        snap = refusal.reserved_after
        checks.check(
            err.dimension == "tokens"
            and err.limit == TOKEN_LIMIT
            and err.spent == session.usage.total_tokens
            and err.spent + err.requested > err.limit
            and snap is not None
            and snap.reservations == 0
            and snap.reserved.tokens == 0,
            "the refusal is exact: spent + requested > limit, and nothing stayed reserved",
            f"{err.spent} + {err.requested} > {err.limit}",
        )
        checks.check(
            2 <= ok_calls <= 3
            and session.cost is not None
            and session.cost == sum(c.cost or 0 for c in session.calls)
            and session.cost > 0,
            "the accepted calls were charged in dollars (priced() gave the local model a price)",
            f"{ok_calls} calls, {usd(session.cost)}",
        )

    # ------------------------------------------------------------ unwinding
    section("3. Every layer cleaned up, in reverse order, while the exception passed through")
    lt = Table(title="Enter / exit log")
    lt.add_column("#", justify="right")
    lt.add_column("event")
    for i, line in enumerate(log, 1):
        lt.add_row(str(i), line)
    console.print(lt)

    entered = [line.removeprefix("enter ") for line in log if line.startswith("enter ")]
    exited = [
        line.removeprefix("exit  ").split("  (")[0] for line in log if line.startswith("exit  ")
    ]
    checks.check(
        exited == entered[::-1]
        and log.index("read the session back from the store") == len(log) - 2,
        "the layers exited in exactly the reverse order of entry (the store last, after the "
        "read-back callback)",
        " -> ".join(exited),
    )
    checks.check(
        all("passed through" in line for line in log if line.startswith("exit  ")),
        "the BudgetExceeded reached every layer's exit on its way out",
        f"{len(exited)} layers",
    )
    checks.check(
        llmctx.lookup_price(MODEL_NAME) == price_before
        and vars(llama).get("generate") is generate_before,
        "global state was restored: the model's price and its generate method are as before",
        f"price now: {llmctx.lookup_price(MODEL_NAME)}",
    )

    # ------------------------------------------------------------ monitor + session
    section("4. The monitor's measurement, attached to the session, and the stored session")
    if not FEATURES["monitor"]:
        console.print("(monitor layer disabled in FEATURES)")
    elif mon is not None and mon.result is not None and session is not None:
        r = mon.result
        mt = Table(title="monitor('batch')")
        mt.add_column("measure")
        mt.add_column("value")
        mt.add_row("wall", f"{r.wall_s:.3f} s")
        mt.add_row("CPU (process)", f"{r.cpu_s:.3f} s")
        mt.add_row("RSS change", "?" if r.rss_delta is None else f"{r.rss_delta / 1e6:+.1f} MB")
        mt.add_row("error", str(r.error))
        mt.add_row(f"slow (> warn_after={WARN_AFTER} s)", str(r.slow))
        mt.add_row("warnings logged", str(len(warnings_seen)))
        console.print(mt)
        events = [e for e in session.events if e.get("kind") == "monitor"]
        checks.check(
            len(events) == 1
            and events[0]["name"] == "batch"
            and events[0]["wall_s"] == r.wall_s
            and r.error == "BudgetExceeded",
            "the monitor's result (with the error that ended the block) is attached to the "
            "session as an event",
            f"s.events[0]: wall_s={r.wall_s:.3f}, error={r.error}",
        )
        checks.check(
            r.slow == (r.wall_s > WARN_AFTER) and len(warnings_seen) == int(r.slow),
            "warn_after works: the block is flagged slow exactly when it took longer, and then "
            "one warning was logged on 'llmctx.monitor'",
            warnings_seen[0].getMessage() if warnings_seen else "not slow: no warning",
        )
    else:
        checks.check(False, "the monitor measured the batch", "no monitor result")

    row: SessionRecord | None = stored.get("session")
    stored_calls = stored.get("calls") or []
    if row is not None and session is not None:
        console.print(
            f"stored session {row.name!r}: status [bold]{row.status}[/bold], "
            f"{row.usage.requests} requests, {row.usage.total_tokens} tokens, {usd(row.cost)}\n"
            f"error: {row.error}"
        )
    checks.check(
        row is not None
        and session is not None
        and row.status == "failed"
        and "BudgetExceeded" in (row.error or "")
        and row.usage == session.usage
        and [c.id for c in stored_calls] == [c.id for c in session.calls]
        and any(e.get("kind") == "monitor" for e in row.metadata.get("events", [])),
        "the session was written to SQLite as failed, with the reason, its calls, its totals "
        "and the monitor event",
        f"{len(stored_calls)} calls stored" if row else "no row",
    )
    if FEATURES["record"]:
        checks.check(
            rec is not None and session is not None and len(rec) == len(session.calls),
            "the recorder layer captured exactly the accepted calls",
            f"{len(rec) if rec else 0} pairs",
        )
    note(
        "A budget stop is an exception, so everything around it unwinds like any other error. "
        "To carry on with more money, reopen the stored session with a bigger budget: "
        "llmctx.session.resume(session_id, budget=llmctx.Budget(...)) restores its spend.",
        title="What next",
    )
    checks.verify()


if __name__ == "__main__":
    run(main)
