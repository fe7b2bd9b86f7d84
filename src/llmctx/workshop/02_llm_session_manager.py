"""02. LLM session manager: build one by hand, then use the production one.

The module opens with ``LLMSession``, a class-based session manager of about forty lines that
you can read whole: a lifecycle (created -> running -> completed | failed | cancelled, entered
once), token and cost totals from the model's own usage report, the failure that ended it
recorded, and an ``__exit__`` that returns False so the failure still reaches the caller. It
runs on the bundled SmolLM2 model. Then ``llmctx.session`` does the same job for production
and adds what a real application needs: a ``llmctx.Budget`` checked *before* each call is sent,
child sessions rolling up into their parent, every call written through to a store (SQLite
here) and ``llmctx.session.resume`` rebuilding a failed session from that store so the work
continues where it stopped. ``llmctx.count_tokens`` is compared with what the model reported.
"""

from __future__ import annotations

from contextlib import closing
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal

from rich import box
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
    priced,
    reply_note,
    run,
    say,
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


# ------------------------------------------------------------- the session, built by hand
class LLMSession:
    """A session by hand: a lifecycle, token and cost totals, the failure that ended it."""

    def __init__(self, name: str, llm: Any, usd_per_token: tuple[Decimal, Decimal]) -> None:
        self.name, self.llm = name, llm
        self.price_in, self.price_out = usd_per_token
        self.state = "created"  # -> running -> completed | failed | cancelled
        self.calls = self.input_tokens = self.output_tokens = 0
        self.cost = Decimal(0)
        self.error: str | None = None

    def __enter__(self) -> LLMSession:
        if self.state != "created":  # entered once: its totals belong to one piece of work
            raise RuntimeError(f"session {self.name!r} is {self.state}; start a new one")
        self.state = "running"
        return self

    def ask(self, question: str, max_tokens: int) -> str:
        reply = self.llm.create_chat_completion(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
        )
        used = reply["usage"]  # the model's own count, not an estimate
        self.calls += 1
        self.input_tokens += used["prompt_tokens"]
        self.output_tokens += used["completion_tokens"]
        self.cost += used["prompt_tokens"] * self.price_in
        self.cost += used["completion_tokens"] * self.price_out
        return str(reply["choices"][0]["message"]["content"] or "").strip()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.state = "completed"
        else:  # Ctrl-C or a cancelled task is not a failure of the work
            self.state = "failed" if issubclass(exc_type, Exception) else "cancelled"
            self.error = f"{exc_type.__name__}: {exc}"
        return False  # never swallow: the caller must learn that the block failed


# ---------------------------------------------------------------------------- helpers
def _expected_cost(call: llmctx.CallRecord) -> Decimal:
    """The cost of a call at the workshop price, computed here independently of llmctx."""
    return (
        call.usage.input_tokens * Decimal(WORKSHOP_PRICE["input_per_mtok"])
        + call.usage.output_tokens * Decimal(WORKSHOP_PRICE["output_per_mtok"])
    ) / _MTOK


def _totals(calls: list[llmctx.CallRecord]) -> tuple[int, int, Decimal]:
    return (
        sum(c.usage.input_tokens for c in calls),
        sum(c.usage.output_tokens for c in calls),
        sum((c.cost or Decimal(0) for c in calls), Decimal(0)),
    )


def _calls_table(calls: list[llmctx.CallRecord]) -> Table:
    table = Table("#", "status", "in", "out", "cost", "reply", box=box.SIMPLE_HEAD, show_edge=False)
    for i, call in enumerate(calls, 1):
        table.add_row(
            str(i),
            call.status,
            str(call.usage.input_tokens),
            str(call.usage.output_tokens),
            usd(call.cost),
            (call.response or "").strip()[:36],
        )
    return table


# ---------------------------------------------------------------------------- sections
def by_hand(checks: Checks, llm: Any) -> None:
    """Run the hand-written LLMSession on the real model: two calls, then a failure."""
    section("1. Build it: LLMSession, about forty lines (read it at the top of this file)")
    price = (
        Decimal(WORKSHOP_PRICE["input_per_mtok"]) / _MTOK,
        Decimal(WORKSHOP_PRICE["output_per_mtok"]) / _MTOK,
    )
    session = LLMSession("support-chat", llm, price)
    replies: list[str] = []
    propagated = False
    try:
        with session as s:
            replies.append(s.ask(QUESTIONS[0], MAX_TOKENS))
            replies.append(s.ask(QUESTIONS[1], MAX_TOKENS))
            raise ConnectionError("the ticket system did not answer")  # a later step fails
    except ConnectionError:
        propagated = True
    reply_note(MAX_TOKENS)
    for reply in replies:
        say(f"reply: {reply[:64]!r}", style="dim")
    say(
        f"{session.state}, the error recorded; {session.calls} calls, "
        f"{session.input_tokens}+{session.output_tokens} tokens, {usd(session.cost)}"
    )
    try:
        with session:
            pass
        reentered = "entered again"
    except RuntimeError as exc:
        reentered = f"RuntimeError: {exc}"
    say(f"again: {reentered}")
    checks.check(
        session.state == "failed" and propagated and "ConnectionError" in (session.error or ""),
        "LLMSession recorded the failure, and __exit__ returning False let it propagate",
        f"state {session.state}, error {session.error!r}",
    )
    checks.check(
        session.calls == 2 and session.input_tokens > 0 and session.output_tokens > 0,
        "LLMSession totalled the tokens the model reported for both calls",
        f"{session.input_tokens} in, {session.output_tokens} out",
    )
    checks.check(reentered.startswith("RuntimeError"), "LLMSession is entered once")


def production(checks: Checks, llm: Any, store: SQLiteStore) -> tuple[llmctx.Session, str]:
    """The same story on ``llmctx.session``: a budget, a child rolled up, the failure stored.

    Returns:
        The failed session and the id of its child session.
    """
    section("2. Use it: llmctx.session, the production version")
    say(
        "It adds a Budget checked before each call is sent, child sessions rolling up into "
        "their parent, every call stored before the reply returns, and resume()."
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
            # A sub-task in a session of its own: its totals roll up into the parent.
            with llmctx.session("address-lookup") as child:
                ask(QUESTIONS[1], system=SYSTEM, max_tokens=MAX_TOKENS)
            raise ConnectionError("the ticket system did not answer")
    except ConnectionError as exc:
        failure = exc
    row = store.get_session(s.id)
    stored = store.list_calls([s.id, child.id])
    in_tok, out_tok, cost = _totals(stored)
    left = s.remaining()
    say(
        f"child 'address-lookup': {child.usage.requests} call, rolled up: 'support-chat' "
        f"counts {s.usage.requests}"
    )
    say(
        f"{s.status}, error stored; in SQLite: {len(stored)} calls, {in_tok}+{out_tok} tok, "
        f"{usd(cost)}; {left['tokens']} tok left"
    )
    checks.check(
        child.usage.requests == 1 and s.usage.requests == 2 and row is not None and row.calls == 2,
        "the child session's call rolled up into its parent (live and in the store)",
        f"child {child.usage.requests}, parent {s.usage.requests}, "
        f"stored {row.calls if row else None}",
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
        reentered = False
    except llmctx.SessionStateError:
        reentered = True
    checks.check(reentered, "a session object is entered once; again raises SessionStateError")
    return s, child.id


def counted_vs_reported(checks: Checks, llm: Any, first: llmctx.CallRecord) -> None:
    """``count_tokens`` before the call against the usage llama.cpp reported after it."""
    section("3. Tokens counted before the call vs reported after it")

    def tokenizer(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    text_only = sum(tokenizer(m["content"]) for m in messages)
    counted = llmctx.count_tokens(messages, tokenizer=tokenizer)
    estimate = llmctx.count_tokens(messages)
    reported = int((first.raw_usage or {}).get("prompt_tokens", -1))
    table = Table("what", "tokens", "how", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_row("the messages' text", str(text_only), "the model's tokenizer: exact")
    table.add_row(
        "count_tokens(messages, tokenizer=)", str(counted.tokens), "text + framing estimate"
    )
    table.add_row("count_tokens(messages)", str(estimate.tokens), "heuristic, no tokenizer")
    table.add_row("prompt llama.cpp reported", str(reported), "text + the real chat template")
    console.print(table)
    say(
        f"The chat template adds {reported - text_only} tokens of role markers; count_tokens "
        f"adds a fixed estimate of them ({counted.tokens - text_only}): exact for the text "
        "only. llmctx's llama.cpp client renders the real template, so it reserves exactly."
    )
    checks.check(
        first.usage.input_tokens == reported,
        "llmctx recorded exactly the prompt tokens llama.cpp reported",
        f"{first.usage.input_tokens} vs {reported}",
    )
    checks.check(
        abs(reported - counted.tokens) <= 2 < reported - text_only,
        "count_tokens with the model's tokenizer came within 2 tokens of the real prompt",
        f"counted {counted.tokens}, reported {reported}, text alone {text_only}",
    )


def recovery(checks: Checks, store: SQLiteStore, failed: llmctx.Session, child_id: str) -> None:
    """A new connection to the same file plays the restarted process; resume and finish."""
    section("4. Recovery: llmctx.session.resume() from the store")
    with closing(SQLiteStore(store.path)) as reopened:
        stored_row = reopened.get_session(failed.id)
        if stored_row is None:
            raise CheckFailed(f"session {failed.id} is not in the reopened store")
        resumed = llmctx.session.resume(failed.id, store=reopened)
        left = resumed.remaining()
        say(
            f"resumed on a new connection: {resumed.usage.requests} calls, "
            f"{resumed.usage.total_tokens} tokens; budget left {usd(left['usd'])} / "
            f"{left['tokens']}"
        )
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
        all_calls = reopened.list_calls([r.id, child_id])
        console.print(_calls_table(all_calls))
        after = r.remaining()
        say(
            f"{r.status}: {r.usage.requests} calls, {r.usage.total_tokens} tokens, "
            f"{usd(r.cost)}; budget left {usd(after['usd'])} / {after['tokens']}"
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


def main() -> None:
    """The module, section by section; then verify what each section claimed."""
    header(2, "LLM session manager", "a session by hand, then llmctx.session: tokens, cost, resume")
    checks = Checks()
    llm = model()
    with priced(), temp_store() as store:
        by_hand(checks, llm)
        failed, child_id = production(checks, llm, store)
        counted_vs_reported(checks, llm, store.list_calls([failed.id])[0])
        recovery(checks, store, failed, child_id)
    checks.verify()


if __name__ == "__main__":
    run(main)
