"""What every workshop module shares: the console, the local model, a store, self-checks.

A module is a script with a ``main()`` (sync or async) that prints what it demonstrates and
ends with ``checks.verify()``, which prints one line ("14/14 held", every failed claim in
full) and raises :class:`CheckFailed` when a claim did not hold; with ``--verbose`` (or
``LLMCTX_WORKSHOP_VERBOSE=1``) it prints every claim. It runs on its own
(``python workshop/02_llm_session_manager.py [--verbose]``) through :func:`run`, and under
``llmctx workshop``, which imports it and calls ``main()`` inside a session that counts its
LLM calls, tokens and cost.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table

from .._exceptions import LLMCtxError
from .._money import format_usd

__all__ = [
    "MODEL_NAME",
    "VERBOSE_ENV",
    "WORKSHOP_PRICE",
    "CheckFailed",
    "Checks",
    "ask",
    "child_processes",
    "console",
    "header",
    "model",
    "note",
    "priced",
    "reply_note",
    "run",
    "say",
    "section",
    "temp_store",
    "verbose",
]

console = Console(highlight=False)

#: Set to a non-empty value other than ``0`` to print every self-check row (what
#: ``llmctx workshop --verbose`` and ``python NN_*.py --verbose`` do).
VERBOSE_ENV = "LLMCTX_WORKSHOP_VERBOSE"


def verbose() -> bool:
    """Whether self-checks print every row (see :data:`VERBOSE_ENV`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


#: The bundled model's name on every record (price it to see money budgets at work).
MODEL_NAME = "SmolLM2-135M-Instruct"
#: A made-up price for the local model (dollars per million tokens), used by the modules that
#: show money budgets; without it a local call costs $0.
WORKSHOP_PRICE = {"input_per_mtok": "0.50", "output_per_mtok": "1.50"}


class CheckFailed(LLMCtxError, AssertionError):
    """A workshop module's self-check did not hold."""


@dataclass
class Checks:
    """The claims a module makes, checked at its end.

    ``check(ok, claim)`` records one; ``verify()`` prints them all as a table and raises
    :class:`CheckFailed` naming every claim that did not hold.
    """

    title: str = "Self-check"
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, ok: bool, claim: str, detail: str = "") -> bool:
        """Record whether ``claim`` held; returns ``ok`` so it can guard later steps."""
        self.results.append((claim, bool(ok), detail))
        return bool(ok)

    def verify(self) -> None:
        """Print one line ("14/14 held"), failed claims in full, and raise if any failed.

        With :func:`verbose` every claim is printed as a table row first.

        Raises:
            CheckFailed: a claim did not hold (the message names each), or none were made.
        """
        if verbose():
            table = Table(title=self.title)
            table.add_column("claim", ratio=3)
            table.add_column("result", no_wrap=True)
            table.add_column("detail", ratio=2, overflow="fold")
            for claim, ok, detail in self.results:
                table.add_row(claim, "[green]ok[/green]" if ok else "[red]FAILED[/red]", detail)
            console.print(table)
        failed = [(claim, detail) for claim, ok, detail in self.results if not ok]
        held = len(self.results) - len(failed)
        for claim, detail in failed:
            console.print(
                f"[bold red]✗ FAILED:[/bold red] {escape(claim)}"
                + (f"\n    [red]{escape(detail)}[/red]" if detail else "")
            )
        if not self.results:
            raise CheckFailed("the module made no claims to check")
        style = "red" if failed else "green"
        mark = "✗" if failed else "✓"
        console.print(
            f"[{style}]{mark} {self.title}: {held}/{len(self.results)} held[/{style}]"
            + ("" if failed or verbose() else " [dim](--verbose lists them)[/dim]")
        )
        if failed:
            raise CheckFailed("self-check failed: " + "; ".join(claim for claim, _ in failed))


def usd(value: Any) -> str:
    """Dollars as the CLI writes them (exact, ``$0.0000004``); ``?`` for an unpriced cost."""
    return "?" if value is None else format_usd(value)


def header(number: int, title: str, summary: str) -> None:
    """The banner a module opens with."""
    console.rule(f"[bold]{number:02d}. {title}[/bold]")
    console.print(summary, style="dim")


def section(title: str) -> None:
    """A sub-heading inside a module."""
    console.print(f"\n[bold cyan]▶ {title}[/bold cyan]")


def say(text: str, *, style: str | None = None) -> None:
    """One indented paragraph; continuation lines keep the indent when it wraps."""
    console.print(Padding(text, (0, 0, 0, 2), expand=False), style=style)


def note(text: str, *, title: str | None = None, style: str = "blue") -> None:
    """A boxed explanation."""
    console.print(Panel(text, title=title, border_style=style))


@functools.cache
def model() -> Any:
    """The instrumented local model, loaded once per process (SmolLM2-135M-Instruct).

    Raises:
        ConfigError: the ``local`` extra is missing; the message names it.
    """
    from ..providers import local_model

    # One thread for prompt and generation: llama.cpp's OpenMP threads spin-wait, so two of
    # them on a busy two-core machine run several times slower than one.
    return local_model(n_ctx=1024, n_threads=1, n_threads_batch=1)


def ask(question: str, *, max_tokens: int = 16, system: str | None = None, **kwargs: Any) -> str:
    """One chat call to the local model (temperature 0), charged to the current session."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    reply = model().create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=0, **kwargs
    )
    return str(reply["choices"][0]["message"]["content"] or "").strip()


def reply_note(max_tokens: int) -> None:
    """The one-line caveat printed where the local model's replies appear."""
    console.print(
        f"[dim](a 135M model, cut at max_tokens={max_tokens}: read the replies' tokens, "
        "not their wisdom)[/dim]"
    )


@contextmanager
def priced() -> Iterator[None]:
    """Price the local model at :data:`WORKSHOP_PRICE` inside the block (restored after)."""
    from .._pricing import price_override

    with price_override(MODEL_NAME, **WORKSHOP_PRICE):
        yield


@contextmanager
def temp_store() -> Iterator[Any]:
    """A SQLite store: the file ``LLMCTX_DB`` names, else a temporary file removed afterwards."""
    from ..stores import SQLiteStore
    from ..stores._open import env_sqlite_file

    path = env_sqlite_file()
    if path is not None:
        store = SQLiteStore(path)
        try:
            yield store
        finally:
            store.close()
        return
    with tempfile.TemporaryDirectory(prefix="llmctx-workshop-") as tmp:
        store = SQLiteStore(Path(tmp) / "workshop.db")
        try:
            yield store
        finally:
            store.close()


def child_processes() -> list[Any]:
    """Live child processes of this process, grandchildren included (psutil)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


def run(main: Callable[[], Any]) -> None:
    """Entry point for ``python workshop/NN_*.py [--verbose]``: exit 1 on a failed check.

    ``--verbose`` (or ``-v``) prints every self-check row, as ``llmctx workshop --verbose`` does.
    """
    if {"--verbose", "-v"} & set(sys.argv[1:]):
        os.environ[VERBOSE_ENV] = "1"
    try:
        if inspect.iscoroutinefunction(main):
            asyncio.run(main())
        else:
            main()
    except CheckFailed as exc:
        console.print(f"[bold red]{escape(str(exc))}[/bold red]")
        sys.exit(1)
    except LLMCtxError as exc:
        console.print(f"[bold red]{type(exc).__name__}: {exc}[/bold red]")
        sys.exit(2)
