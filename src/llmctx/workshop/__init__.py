"""The nine-module workshop, shipped with the package and run by ``llmctx workshop``.

Runnable modules are scripts (``NN_name.py``) with a ``main()``; reading modules are Markdown
(``NN_name.md``) rendered in the terminal, whose references to llmctx's files and names are
checked to exist. :func:`run_module` runs one inside a session of its own and reports its
seconds, LLM calls, tokens, cost and result.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import sys
import time
import traceback
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

__all__ = ["MODULES", "HERE", "Module", "ModuleOutcome", "check_references", "run_module"]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Module:
    """One workshop module."""

    number: int
    filename: str
    title: str

    @property
    def path(self) -> Path:
        """Where the module's file is."""
        return HERE / self.filename

    @property
    def kind(self) -> Literal["run", "read"]:
        """``run`` for a script, ``read`` for a Markdown document."""
        return "read" if self.filename.endswith(".md") else "run"


MODULES: tuple[Module, ...] = (
    Module(1, "01_basic_concepts.py", "Basic concepts"),
    Module(2, "02_llm_session_manager.py", "LLM session manager"),
    Module(3, "03_async_manager.py", "Async manager"),
    Module(4, "04_smart_session.py", "Smart session"),
    Module(5, "05_nested_managers.py", "Nested managers"),
    Module(6, "06_mcp_implementation.md", "MCP implementation"),
    Module(
        7, "07_asyncexitstack_vs_asynccontextmanager.py", "AsyncExitStack vs @asynccontextmanager"
    ),
    Module(8, "08_local_mcp_integration.py", "Local MCP integration"),
    Module(9, "09_design_patterns_analysis.md", "Design patterns analysis"),
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


def _run_read(module: Module) -> None:
    from rich.markdown import Markdown

    from ._common import CheckFailed, console

    text = module.path.read_text(encoding="utf-8")
    console.print(Markdown(text))
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


def run_module(module: Module) -> ModuleOutcome:
    """Run one module inside a session of its own and report what it did.

    Exceptions from the module are caught and reported in the outcome (``ok=False``);
    KeyboardInterrupt and cancellation propagate.
    """
    import llmctx
    from llmctx.stores import MemoryStore

    start = time.perf_counter()
    error: str | None = None
    with llmctx.session(f"workshop-{module.number:02d}", store=MemoryStore()) as s:
        try:
            if module.kind == "read":
                _run_read(module)
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
