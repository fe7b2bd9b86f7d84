"""The nine-module workshop, shipped with the package and run by ``llmctx workshop``.

Runnable modules are scripts (``NN_name.py``) with a ``main()``; reading modules are Markdown
(``NN_name.md``), paged on a terminal and otherwise summarised (their path, title, opening
lines and headings), whose references to llmctx's files and names are checked to exist.
:func:`run_module` runs one inside a session of its own (stored in the run's database by
``llmctx workshop``) and reports its seconds, LLM calls, tokens, cost and result.
``python -m llmctx.workshop`` is the same command as ``llmctx workshop``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..stores import Store

__all__ = [
    "HERE",
    "MODULES",
    "Module",
    "ModuleOutcome",
    "check_references",
    "markdown_summary",
    "run_module",
]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Module:
    """One workshop module."""

    number: int
    filename: str
    title: str
    #: What the module teaches, in one line.
    lesson: str = ""
    #: What it uses beyond plain Python: ``"model"`` (calls the local model), ``"processes"``
    #: (starts child processes).
    uses: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """Where the module's file is."""
        return HERE / self.filename

    @property
    def kind(self) -> Literal["run", "read"]:
        """``run`` for a script, ``read`` for a Markdown document."""
        return "read" if self.filename.endswith(".md") else "run"


MODULES: tuple[Module, ...] = (
    Module(
        1,
        "01_basic_concepts.py",
        "Basic concepts",
        "with open(), what `with` expands to, @contextmanager, __exit__, sqlite3",
    ),
    Module(
        2,
        "02_llm_session_manager.py",
        "LLM session manager",
        "an LLMSession by hand, then llmctx.session: tokens, cost, failure, resume",
        ("model",),
    ),
    Module(
        3,
        "03_async_manager.py",
        "Async manager",
        "@asynccontextmanager, cancellation, a pool of model workers, a rate limiter",
        ("model",),
    ),
    Module(
        4,
        "04_smart_session.py",
        "Smart session",
        "a ContextVar recorder by hand, reset(token) for nesting, then llmctx's own",
        ("model",),
    ),
    Module(
        5,
        "05_nested_managers.py",
        "Nested managers",
        "budget + monitor + session nested and unwound in reverse; a GPU-style pool",
        ("model",),
    ),
    Module(
        6,
        "06_mcp_implementation.md",
        "MCP implementation",
        "MCP transports, a server's lifecycle, the one-owner-task rule",
    ),
    Module(
        7,
        "07_asyncexitstack_vs_asynccontextmanager.py",
        "AsyncExitStack vs @asynccontextmanager",
        "one resource vs many, failed enters, cancellation in cleanup, task ownership",
        ("processes",),
    ),
    Module(
        8,
        "08_local_mcp_integration.py",
        "Local MCP integration",
        "leak, try/finally, @asynccontextmanager, then a Hub; the model picks a tool",
        ("model", "processes"),
    ),
    Module(
        9,
        "09_design_patterns_analysis.md",
        "Design patterns analysis",
        "seven design patterns, each found in llmctx's own code",
    ),
)


@dataclass(frozen=True, slots=True)
class ModuleOutcome:
    """What running one module produced."""

    module: Module
    seconds: float
    calls: int
    tokens: int
    cost: Decimal | None
    ok: bool
    error: str | None = None


_SRC = HERE.parent  # the llmctx package folder
_FILE_REF = re.compile(r"`((?:src/)?llmctx/[\w/]+\.(?:py|md))`")
_NAME_REF = re.compile(r"`llmctx\.([A-Za-z_][\w.]*)`")


def check_references(text: str) -> list[str]:
    """The llmctx files and names a document mentions in backticks that do not exist."""
    import llmctx

    missing: list[str] = []
    for ref in sorted(set(_FILE_REF.findall(text))):
        rel = ref.removeprefix("src/").removeprefix("llmctx/")
        if not (_SRC / rel).exists():
            missing.append(ref)
    for dotted in sorted(set(_NAME_REF.findall(text))):
        obj: object = llmctx
        for part in dotted.split("."):
            if part.endswith("()"):
                part = part[:-2]
            try:
                obj = getattr(obj, part)
            except AttributeError:
                try:
                    obj = importlib.import_module(f"{obj.__name__}.{part}")  # type: ignore[attr-defined]
                except (ImportError, AttributeError):
                    missing.append(f"llmctx.{dotted}")
                    break
    return missing


_SUMMARY_OPENING_LINES = 12
_SUMMARY_OPENING_CHARS = 240


def markdown_summary(text: str) -> tuple[str, list[str], list[str]]:
    """A reading module's title, opening lines and section headings (fenced code skipped).

    Args:
        text: the Markdown document.

    Returns:
        ``(title, opening, headings)``: the ``#`` title, the first lines of the text after it
        (up to the first blank line, at most a few), and the ``##``/``###`` headings in order,
        each indented two spaces per level below ``##``.
    """
    title = ""
    opening: list[str] = []
    headings: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        level = len(line) - len(line.lstrip("#"))
        if in_code or not (level and line[level : level + 1] == " "):
            # The opening is the first paragraph after the title.
            if title and not headings and len(opening) < _SUMMARY_OPENING_LINES:
                if line.strip():
                    opening.append(line.strip())
                elif opening:
                    opening.append("")  # paragraph ended: stop filling
            continue
        if level == 1 and not title:
            title = line[2:].strip()
        elif level >= 2:
            headings.append("  " * (level - 2) + line[level + 1 :].strip())
    if "" in opening:
        opening = opening[: opening.index("")]
    return title, opening, headings


def _first_sentences(text: str, limit: int = _SUMMARY_OPENING_CHARS) -> str:
    """The whole sentences of ``text`` that fit in ``limit`` characters (at least one)."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind(": ", 0, limit))
    return text[: cut + 1] if cut > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."


@contextmanager
def _less_shows_colour() -> Iterator[None]:
    """Let ``less`` (pydoc's default pager) show rich's colours: ``LESS=-R`` unless set."""
    if "LESS" in os.environ or "PAGER" in os.environ:
        yield
        return
    os.environ["LESS"] = "-R"
    try:
        yield
    finally:
        os.environ.pop("LESS", None)


def _run_read(module: Module, *, pager: bool = False) -> None:
    from rich.markdown import Markdown

    from ._common import CheckFailed, console

    text = module.path.read_text(encoding="utf-8")
    if pager:
        with _less_shows_colour(), console.pager(styles=True):
            console.print(Markdown(text))
    else:
        title, opening, headings = markdown_summary(text)
        console.rule(f"[bold]{module.number:02d}. {module.title}[/bold] (reading)")
        console.print(f"[bold]{title}[/bold]")
        plain = " ".join(opening).replace("`", "").replace("*", "")
        console.print(_first_sentences(plain), style="dim")
        console.print("Sections: " + " · ".join(h.strip() for h in headings))
        console.print(
            f"Read it whole: `llmctx workshop {module.number}` on a terminal (paged), "
            "or open the file:"
        )
        console.print(f"  {module.path}", soft_wrap=True)
    missing = check_references(text)
    if missing:
        raise CheckFailed(f"{module.filename} refers to llmctx parts that do not exist: {missing}")
    console.print(f"[green]✓ every llmctx file and name {module.filename} refers to exists[/green]")


def _run_script(module: Module) -> None:
    spec = importlib.util.spec_from_file_location(
        f"llmctx_workshop_{module.number:02d}", module.path
    )
    if spec is None or spec.loader is None:  # pragma: no cover - the files ship with the package
        raise FileNotFoundError(module.path)
    mod = importlib.util.module_from_spec(spec)
    # Registered while it runs, as a script's __main__ is: dataclasses and pickling look
    # their module up in sys.modules.
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        main = mod.main
        if inspect.iscoroutinefunction(main):
            asyncio.run(main())
        else:
            main()
    finally:
        sys.modules.pop(spec.name, None)


def run_module(module: Module, *, pager: bool = False, store: Store | None = None) -> ModuleOutcome:
    """Run one module inside a session of its own and report what it did.

    Args:
        module: the module to run.
        pager: show a reading module whole through rich's pager (on a terminal) instead of
            its summary.
        store: where the module's session (``workshop-NN``) is recorded: ``llmctx
            workshop`` passes the run's database, so the module's own sessions are stored
            under it. Default: a :class:`~llmctx.stores.MemoryStore`.

    Returns:
        The module's seconds, real model calls, tokens, cost and result.

    Exceptions from the module are caught and reported in the outcome (``ok=False``), and
    end the module's session ``failed`` with the error; KeyboardInterrupt and cancellation
    propagate.
    """
    import llmctx
    from llmctx.stores import MemoryStore

    start = time.perf_counter()
    error: str | None = None
    s = llmctx.session(
        f"workshop-{module.number:02d}", store=store if store is not None else MemoryStore()
    )
    try:
        with s:
            if module.kind == "read":
                _run_read(module, pager=pager)
            else:
                _run_script(module)
    except Exception as exc:
        from .._exceptions import ConfigError
        from ._common import CheckFailed

        # A ConfigError (a missing extra, a llama.cpp build this CPU cannot run) says
        # what to do in its message; a traceback would bury that.
        plain = isinstance(exc, CheckFailed | ConfigError)
        error = str(exc) if plain else traceback.format_exc(limit=6)
        error = error or type(exc).__name__
    # Count real model calls only: some modules use llmctx.testing.FakeModel for volume.
    real = [c for c in s.calls if c.kind != "tool" and c.provider != "fake"]
    return ModuleOutcome(
        module=module,
        seconds=time.perf_counter() - start,
        calls=len(real),
        tokens=sum(c.usage.total_tokens for c in real),
        cost=s.cost,
        ok=error is None,
        error=error,
    )
