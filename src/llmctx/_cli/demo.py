"""``llmctx demo``: a short tour on the embedded defaults (SQLite + the bundled local model).

It makes real calls to SmolLM2-135M-Instruct inside a budgeted session, streams one answer,
lets the budget stop a call before it is sent, crashes the session on purpose and resumes it
from SQLite, then checks that everything it claimed is in the database. Any failed check
exits non-zero. It records into ``--db PATH``, else the SQLite file ``$LLMCTX_DB`` names, else
``demo.db`` beside the per-user default database (emptied at the start of each run), and ends
by printing that path and the commands to look at it.
"""

from __future__ import annotations

import shlex
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

# A made-up price for the local model, so the demo can show money budgets; without
# set_price a local call costs $0.
DEMO_PRICE = {"input_per_mtok": "0.50", "output_per_mtok": "1.50"}
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What do bees make?",
]


def _check(ok: bool, what: str, results: list[tuple[str, bool]]) -> None:
    results.append((what, ok))


def demo(
    max_tokens: int = typer.Option(24, help="Output tokens per answer."),
    db: str | None = typer.Option(
        None,
        "--db",
        metavar="PATH",
        help="SQLite file to record into (default: the SQLite file LLMCTX_DB names, else "
        "demo.db beside the default database, reset at each run; see llmctx info).",
        show_default=False,
    ),
) -> None:
    """Run a short tour of llmctx on the bundled local model and check what it claims."""
    import llmctx
    from llmctx._money import format_usd
    from llmctx.providers import LOCAL_MODEL_NAME, local_model
    from llmctx.stores import SQLiteStore

    from .workshop import print_where, recording_db

    console = Console()
    try:
        llm = local_model(n_ctx=1024)
    except llmctx.ConfigError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    model_name = LOCAL_MODEL_NAME

    with ExitStack() as stack:
        path, where_note = recording_db(db, "demo")
        store = SQLiteStore(path)
        stack.callback(store.close)
        stack.enter_context(llmctx.price_override(model_name, **DEMO_PRICE))
        checks: list[tuple[str, bool]] = []
        console.rule("[bold]llmctx demo[/bold]")
        console.print(f"model: {model_name} (bundled, local) - store: SQLite at {path}")
        console.print(
            f"price: ${DEMO_PRICE['input_per_mtok']} input / ${DEMO_PRICE['output_per_mtok']} "
            "output per million tokens, made up by this demo (llmctx.price_override) to show "
            "money budgets; the local model is otherwise free "
            f"(llmctx prices {model_name})",
            markup=False,
            highlight=False,
        )

        # 1. Real calls in a budgeted session.
        budget = llmctx.Budget(usd="0.001", tokens=600)
        answers = Table(title="Answers (charged to session 'demo')")
        for col in ("question", "answer", "in", "out", "cost"):
            answers.add_column(col)
        with llmctx.session("demo", store=store, budget=budget) as s:
            for question in QUESTIONS:
                reply: Any = llm.create_chat_completion(
                    messages=[{"role": "user", "content": question}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                usage = reply["usage"]
                answers.add_row(
                    question,
                    reply["choices"][0]["message"]["content"].strip()[:60],
                    str(usage["prompt_tokens"]),
                    str(usage["completion_tokens"]),
                    format_usd(s.calls[-1].cost or 0),
                )
            console.print(answers)

            # 2. A streamed answer: charged when the stream ends.
            console.print("[bold]Streaming:[/bold] ", end="")
            for chunk in llm.create_chat_completion(
                messages=[{"role": "user", "content": "Say hello in French."}],
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
            ):
                console.print(chunk["choices"][0]["delta"].get("content", ""), end="")
            console.print()

            # 3. A call that could overspend is stopped before it is sent.
            calls_before = len(s.calls)
            try:
                llm.create_chat_completion(
                    messages=[{"role": "user", "content": "Write a long story."}], max_tokens=900
                )
                stopped: llmctx.BudgetExceeded | None = None
            except llmctx.BudgetExceeded as exc:
                stopped = exc
                console.print(
                    Panel(Text(str(exc)), title="budget stopped a call", border_style="yellow")
                )
            _check(stopped is not None, "the budget stopped the 900-token call", checks)
            _check(len(s.calls) == calls_before, "the stopped call was never sent", checks)
            refused = [c for c in store.list_calls([s.id], refused=True) if c.status == "refused"]
            _check(
                len(refused) == 1
                and "BudgetExceeded" in (refused[0].error or "")
                and refused[0].cost == 0,
                "the stopped call is recorded as refused, with the reason and no cost",
                checks,
            )

        _check(s.usage.requests == len(QUESTIONS) + 1, "4 calls charged to the session", checks)
        stored = store.list_calls([s.id])
        _check(len(stored) == len(QUESTIONS) + 1, "4 calls committed to SQLite", checks)
        _check(
            sum((c.cost or Decimal(0) for c in stored), Decimal(0)) == s.cost,
            "stored costs add up to the session's cost",
            checks,
        )

        # 4. A crash mid-session, then state recovery from the store.
        crashed_id = None
        try:
            with llmctx.session("flaky-job", store=store, budget=llmctx.Budget(tokens=400)) as job:
                crashed_id = job.id
                llm.create_chat_completion(
                    messages=[{"role": "user", "content": "Count to three."}], max_tokens=max_tokens
                )
                raise RuntimeError("worker lost its connection")
        except RuntimeError:
            pass
        assert crashed_id is not None
        with llmctx.session.resume(crashed_id, store=store) as job:
            restored = job.usage.total_tokens
            console.print(
                f"resumed [bold]{crashed_id[:12]}[/bold] with {restored} tokens already spent, "
                f"{job.remaining()['tokens']} left"
            )
            llm.create_chat_completion(
                messages=[{"role": "user", "content": "And to four?"}], max_tokens=max_tokens
            )
        row = store.get_session(crashed_id)
        _check(restored > 0, "the resumed session kept the crashed run's spend", checks)
        _check(
            row is not None and row.status == "completed" and row.usage.requests == 2,
            "after resuming, the job completed with both calls",
            checks,
        )

        summary = Table(title="Self-check")
        summary.add_column("claim")
        summary.add_column("result")
        for what, ok in checks:
            summary.add_row(what, "[green]ok[/green]" if ok else "[red]FAILED[/red]")
        console.print(summary)
        totals = (
            f"session 'demo': {s.usage.input_tokens} in / {s.usage.output_tokens} out tokens, "
            f"{format_usd(s.cost)}"
        )
        console.print(f"{totals}.")
        print_where(console, path, where_note)
        console.print(
            f"  llmctx sessions show {s.id[:12]} --db {shlex.quote(path)}",
            markup=False,
            soft_wrap=True,
        )
        if not all(ok for _, ok in checks):
            raise typer.Exit(1)
