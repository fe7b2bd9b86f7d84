"""The public surface: __all__ is honest and sorted, and the CLI starts."""

from __future__ import annotations

import subprocess
import sys
import types

import llmctx


def test_all_lists_exactly_the_public_names() -> None:
    """Every name in __all__ exists, and every public non-module attribute is in __all__."""
    public = {
        name
        for name, value in vars(llmctx).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(llmctx.__all__) - {"__version__"} == public - {"annotations"}
    for name in llmctx.__all__:
        assert hasattr(llmctx, name), name


def test_all_is_sorted_case_insensitively_with_classes_first() -> None:
    """__all__ keeps one order, so additions land in a predictable place."""
    names = [n for n in llmctx.__all__ if n != "__version__"]
    key = [(n[0].islower(), n.lower()) for n in names]
    assert key == sorted(key)


def test_every_error_derives_from_the_root() -> None:
    """Every exception llmctx exports derives from LLMCtxError (warnings from LLMCtxWarning)."""
    for name in llmctx.__all__:
        obj = getattr(llmctx, name)
        if isinstance(obj, type) and issubclass(obj, Warning):
            assert issubclass(obj, llmctx.LLMCtxWarning), name
        elif isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, llmctx.LLMCtxError), name


def test_cli_version() -> None:
    """`llmctx --version` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "llmctx", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"llmctx {llmctx.__version__}"
