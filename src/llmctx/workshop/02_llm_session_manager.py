"""02. LLM session manager: a session's lifecycle around real calls, a failure, and recovery.

An ``llmctx.session`` is the context manager an LLM application lives in: every call made
inside it is counted (tokens from the model's own report), priced (``llmctx.price_override``
through the workshop's ``priced()``), checked against a ``llmctx.Budget`` before it is sent, and
written through to a store (SQLite here) before the caller gets the reply. This module makes
real calls to the bundled SmolLM2 model, compares ``llmctx.count_tokens`` with the usage the
model reported, lets an exception end the session as ``failed``, and then recovers: a fresh
connection to the same SQLite file and ``llmctx.session.resume`` rebuild the totals and the
budget's spend from the stored calls, and the work continues where it stopped.
"""

from __future__ import annotations

from contextlib import closing
from decimal import Decimal
from typing import Any

from rich.table import Table

import llmctx
from llmctx.stores import SQLiteStore
from llmctx.workshop._common import (
    WORKSHOP_PRICE,
    CheckFailed,
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

SYSTEM = "You are a support agent. Answer in one short sentence."
QUESTIONS = (
    "My order has not arrived. What should I do?",
    "Can I change the delivery address?",
    "How do I get a refund?",
)
MAX_TOKENS = 12
USD_LIMIT = Decimal("0.001")
TOKEN_LIMIT = 400
_MTOK = Decimal(1_000_000)


def _expected_cost(call: llmctx.CallRecord) -> Decimal:
    """The cost of a call at the workshop price, computed here independently of llmctx."""
    return (
        call.usage.input_tokens * Decimal(WORKSHOP_PRICE["input_per_mtok"])
        + call.usage.output_tokens * Decimal(WORKSHOP_PRICE["output_per_mtok"])
    ) / _MTOK


def _calls_table(title: str, calls: list[llmctx.CallRecord]) -> Table:
    table = Table(title=title)
    for col in ("#", "status", "input tok", "output tok", "cost", "reply"):
        table.add_column(col, justify="right" if "tok" in col or col == "cost" else "left")
    for i, call in enumerate(calls, 1):
        table.add_row(
            str(i),
            call.status,
            str(call.usage.input_tokens),
            str(call.usage.output_tokens),
            "unpriced" if call.cost is None else usd(call.cost),
            (call.response or "").strip()[:48],
        )
    return table


def _totals(calls: list[llmctx.CallRecord]) -> tuple[int, int, Decimal]:
    return (
        sum(c.usage.input_tokens for c in calls),
        sum(c.usage.output_tokens for c in calls),
        sum((c.cost or Decimal(0) for c in calls), Decimal(0)),
    )


def main() -> None:
    """Run a session that fails mid-way, then resume it from the store and finish."""
    header(
        2,
        "LLM session manager",
        "token counting, cost tracking, a failure mid-session and recovery from SQLite",
    )
    checks = Checks()
    llm = model()

    def tokenizer(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    with priced(), temp_store() as store:
        # ------------------------------------------------------------------ 1
        section("1. A session around real calls; tokens counted before vs reported after")
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTIONS[0]},
        ]
        exact = llmctx.count_tokens(messages, tokenizer=tokenizer)
        estimate = llmctx.count_tokens(messages)
        note(
            "A session is entered once: created -> running -> completed | failed | cancelled. "
            "Inside it, every call of an instrumented client reserves its worst case "
            "(prompt + max_tokens, priced) against the budget *before* it is sent, then settles "
            "with the usage the model reports and commits the call to the store before the "
            "reply is returned.",
            title="llmctx.session",
        )
        session = llmctx.session(
            "support-chat",
            budget=llmctx.Budget(usd=USD_LIMIT, tokens=TOKEN_LIMIT),
            store=store,
            tags={"workshop": "02"},
        )
        failure: Exception | None = None
        try:
            with session as s:
                ask(QUESTIONS[0], system=SYSTEM, max_tokens=MAX_TOKENS)
                first = s.calls[-1]
                ask(QUESTIONS[1], system=SYSTEM, max_tokens=MAX_TOKENS)
                left_now = s.remaining()
                console.print(
                    f"  two calls done: {s.usage.total_tokens} tokens, {usd(s.cost)}; "
                    f"budget left: {usd(left_now['usd'])} of {usd(USD_LIMIT)}, "
                    f"{left_now['tokens']} of {TOKEN_LIMIT} tokens"
                )
                # A later step fails (the model's calls are real, the outage is simulated):
                # the exception leaves the block, the session records why and re-raises it.
                raise ConnectionError("the ticket system did not answer")
        except ConnectionError as exc:
            failure = exc

        reported_in = int((first.raw_usage or {}).get("prompt_tokens", -1))
        reported_out = int((first.raw_usage or {}).get("completion_tokens", -1))
        table = Table(title="tokens of call 1")
        table.add_column("what")
        table.add_column("tokens", justify="right")
        table.add_column("how")
        table.add_row("count_tokens(messages)", str(estimate.tokens), estimate.method)
        table.add_row(
            "count_tokens(messages, tokenizer=llm)", str(exact.tokens), exact.method + " (exact)"
        )
        table.add_row("prompt tokens llama.cpp reported", str(reported_in), "the model's usage")
        table.add_row(
            "llmctx recorded input / output",
            f"{first.usage.input_tokens} / {first.usage.output_tokens}",
            "CallRecord.usage",
        )
        console.print(table)
        note(
            "With the model's tokenizer the count is exact for the text; the rest is the chat "
            "template's framing (role markers, the assistant header), which count_tokens adds "
            "as a documented constant per message. llmctx's llama.cpp integration goes further: "
            "it renders the model's own template before the call, so its reservation is exact. "
            "Without a tokenizer, count_tokens falls back to a labelled heuristic estimate "
            "(exact=False) meant for reservations. Note SmolLM2's template also adds a default "
            "system prompt when you give none.",
            title="why the numbers differ",
        )
        checks.check(
            first.usage.input_tokens == reported_in and first.usage.output_tokens == reported_out,
            "llmctx recorded exactly the usage llama.cpp reported",
            f"{first.usage.input_tokens} in / {first.usage.output_tokens} out",
        )
        checks.check(
            exact.exact and abs(reported_in - exact.tokens) <= 2,
            "count_tokens with the model's tokenizer came within 2 tokens of the real prompt",
            f"counted {exact.tokens}, reported {reported_in} (the gap is template framing)",
        )

        # ------------------------------------------------------------------ 2
        section("2. Cost tracking and the failure, as the store saw them")
        row = store.get_session(s.id)
        stored = store.list_calls([s.id])
        console.print(_calls_table("calls committed to SQLite before the failure", stored))
        in_tok, out_tok, cost = _totals(stored)
        console.print(
            f"  session {s.id[:12]}: status [bold]{s.status}[/bold], error {s.error!r}\n"
            f"  price: {usd(WORKSHOP_PRICE['input_per_mtok'])} / "
            f"{usd(WORKSHOP_PRICE['output_per_mtok'])} per million input / output tokens "
            "(made up, via priced())"
        )
        checks.check(
            failure is not None
            and s.status == "failed"
            and row is not None
            and row.status == "failed"
            and "ConnectionError" in (row.error or ""),
            "the exception ended the session `failed`, with the error recorded in the store",
            f"stored status {row.status if row else None!r}, error {row.error if row else None!r}",
        )
        checks.check(
            len(stored) == 2 == s.usage.requests
            and (in_tok, out_tok) == (s.usage.input_tokens, s.usage.output_tokens)
            and cost == s.cost,
            "the calls made before the failure are in SQLite and add up to the session's totals",
            f"{len(stored)} calls, {in_tok}+{out_tok} tokens, {usd(cost)}",
        )
        checks.check(
            all(c.cost == _expected_cost(c) for c in stored) and s.cost == cost > 0,
            "each call was priced exactly at the workshop price (Decimal, no float rounding)",
            f"session cost {usd(s.cost)}",
        )
        try:
            with s:
                pass
            reentered = "entered again"
        except llmctx.SessionStateError as exc:
            reentered = f"SessionStateError: {str(exc)[:60]}..."
        console.print(f"  entering the finished session object again: {reentered}")
        checks.check(
            reentered.startswith("SessionStateError"),
            "a session object is entered once; re-entering it raises SessionStateError",
        )

        # ------------------------------------------------------------------ 3
        section("3. State recovery: resume the failed session from the store")
        note(
            "A crash, a deploy or an exception ends the process's session, not the work. "
            "llmctx.session.resume(id, store=...) rebuilds usage, cost and the budget's spend "
            "from the calls in the store, so the resumed session stops exactly where the "
            "original would have. Here a *new connection* to the same SQLite file plays the "
            "restarted process.",
            title="llmctx.session.resume",
        )
        with closing(SQLiteStore(store.path)) as reopened:
            stored_row = reopened.get_session(s.id)
            if stored_row is None:
                raise CheckFailed(f"session {s.id} is not in the reopened store")
            resumed = llmctx.session.resume(s.id, store=reopened)
            left = resumed.remaining()
            table = Table(title="before and after resume")
            for col in ("", "requests", "tokens", "cost", "budget left (usd / tokens)"):
                table.add_column(col)
            table.add_row(
                "stored row",
                str(stored_row.calls),
                str(stored_row.usage.total_tokens),
                f"{usd(stored_row.cost)}",
                "",
            )
            table.add_row(
                "resumed session",
                str(resumed.usage.requests),
                str(resumed.usage.total_tokens),
                f"{usd(resumed.cost)}",
                f"{usd(left['usd'])} / {left['tokens']}",
            )
            console.print(table)
            checks.check(
                resumed.usage == stored_row.usage
                and resumed.cost == stored_row.cost
                and resumed.usage.requests == stored_row.calls == 2,
                "the resumed session's totals equal the stored ones",
                f"{resumed.usage.requests} calls, {resumed.usage.total_tokens} tokens",
            )
            checks.check(
                left["usd"] == USD_LIMIT - stored_row.cost
                and left["tokens"] == TOKEN_LIMIT - stored_row.usage.total_tokens,
                "its budget remaining is limit - spent (the spend was restored, not reset)",
                f"usd {left['usd']}, tokens {left['tokens']}",
            )

            with resumed as r:
                ask(QUESTIONS[2], system=SYSTEM, max_tokens=MAX_TOKENS)
            final_row = reopened.get_session(r.id)
            all_calls = reopened.list_calls([r.id])
            console.print(_calls_table("the session's calls after recovery", all_calls))
            after = r.remaining()
            console.print(
                f"  status [bold]{r.status}[/bold]; {r.usage.requests} calls, "
                f"{r.usage.total_tokens} tokens, {usd(r.cost)}; budget left {usd(after['usd'])} / "
                f"{after['tokens']} tokens"
            )
            meta: dict[str, Any] = final_row.metadata if final_row is not None else {}
            checks.check(
                final_row is not None
                and final_row.status == "completed"
                and final_row.calls == len(all_calls) == 3
                and meta.get("resumed") == 1,
                "the resumed session continued under the same id and completed with 3 calls",
                f"status {final_row.status if final_row else None}, resumed {meta.get('resumed')}",
            )
            in3, out3, cost3 = _totals(all_calls)
            checks.check(
                (in3 + out3, cost3) == (r.usage.total_tokens, r.cost)
                and after["tokens"] == TOKEN_LIMIT - r.usage.total_tokens,
                "the store, the session totals and the budget agree after the new call",
                f"{in3 + out3} tokens, {usd(cost3)}",
            )

    checks.verify()


if __name__ == "__main__":
    run(main)
