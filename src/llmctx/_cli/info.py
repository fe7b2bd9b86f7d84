"""``llmctx info``: where llmctx keeps things and what is installed.

Prints the version, the database sessions write to by default (and whether ``$LLMCTX_DB``
chose it), the kept databases of ``llmctx workshop`` and ``llmctx demo``, each extra with
whether its packages are installed, and the bundled local model's file. ``--json`` prints
``{"version", "python", "database": {"path_or_url", "source", "default_path"},
"workshop_db", "demo_db", "extras": {NAME: {"installed", "missing"}}, "local_model":
{"path", "problem"}}``; a database URL's password never appears.
"""

from __future__ import annotations

import json
import platform
import re
from importlib import metadata
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["info", "installed_extras"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_extras(dist: str = "llmctx") -> dict[str, list[str]]:
    """Each extra of ``dist`` and the packages of it that are not installed ([] = installed).

    Read from the installed package's metadata; an extra that names other extras of the same
    package (``dev`` names ``local``, ``postgres``, ...) needs theirs too.
    """
    try:
        requires = metadata.requires(dist) or []
        extras = metadata.metadata(dist).get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        return {}
    direct: dict[str, list[tuple[str, list[str]]]] = {e: [] for e in extras}
    for line in requires:
        requirement, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        match = _NAME.match(requirement)
        if found is None or match is None:
            continue
        wanted = [x.strip() for x in (match.group(2) or "").split(",") if x.strip()]
        direct.setdefault(found.group(1), []).append((match.group(1), wanted))

    def missing(extra: str, seen: frozenset[str]) -> list[str]:
        out: list[str] = []
        for name, wanted in direct.get(extra, []):
            if _norm(name) == _norm(dist):
                for inner in wanted:
                    if inner not in seen:
                        out.extend(missing(inner, seen | {inner}))
                continue
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                out.append(name)
        return sorted(set(out))

    return {extra: missing(extra, frozenset({extra})) for extra in direct}


def _facts() -> dict[str, Any]:
    from .. import __version__
    from .._exceptions import ConfigError
    from .._redact import redact_dsn, redact_url
    from ..providers import local_model_path
    from ..stores._open import _env, default_sqlite_path, program_sqlite_path

    env = _env()
    model: dict[str, str | None]
    try:
        model = {"path": str(local_model_path()), "problem": None}
    except ConfigError as exc:
        model = {"path": None, "problem": str(exc)}
    return {
        "version": __version__,
        "python": platform.python_version(),
        "database": {
            "path_or_url": redact_dsn(redact_url(env), env) if env else str(default_sqlite_path()),
            "source": "LLMCTX_DB" if env else "default",
            "default_path": str(default_sqlite_path()),
        },
        "workshop_db": str(program_sqlite_path("workshop")),
        "demo_db": str(program_sqlite_path("demo")),
        "extras": {
            name: {"installed": not gone, "missing": gone}
            for name, gone in installed_extras().items()
        },
        "local_model": model,
    }


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Where llmctx keeps things: version, databases, extras, the bundled model's file.

    The default database, the workshop's and the demo's, the installed extras, and where the
    bundled local model lies."""
    facts = _facts()
    if as_json:
        typer.echo(json.dumps(facts, indent=2, ensure_ascii=False))
        return
    console = Console(highlight=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    db = facts["database"]
    where = Text(db["path_or_url"])
    where.append(
        "  (from LLMCTX_DB)" if db["source"] == "LLMCTX_DB" else "  (default; set LLMCTX_DB)",
        "dim",
    )
    grid.add_row("version", f"llmctx {facts['version']} (Python {facts['python']})")
    grid.add_row("database", where)
    if db["source"] == "LLMCTX_DB":
        grid.add_row("default", db["default_path"])
    grid.add_row("workshop", Text(facts["workshop_db"]).append("  (llmctx workshop)", "dim"))
    grid.add_row("demo", Text(facts["demo_db"]).append("  (llmctx demo)", "dim"))
    extras = Text()
    for name, state in facts["extras"].items():
        if extras:
            extras.append("  ")
        if state["installed"]:
            extras.append(f"{name} ✓", "green")
        else:
            extras.append(f"{name} ✗", "dim")
    grid.add_row("extras", extras)
    model = facts["local_model"]
    grid.add_row(
        "local model",
        Text(model["path"]) if model["path"] else Text(model["problem"], style="yellow"),
    )
    console.print(grid)
    absent = [n for n, state in facts["extras"].items() if not state["installed"]]
    if absent:
        console.print(
            Text(f"✗ not installed: pip install 'llmctx[{absent[0]}]' adds one", style="dim")
        )
