"""llmctx: every resource of an LLM application inside a context manager."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmctx")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+unknown"
