"""Fixtures for the framework tests: the local llama.cpp server, SDK-wide instrumentation, a store.

The server fixtures are the provider tests' own (tests/providers/conftest.py), loaded from
that file so both directories start the server the same way. LiteLLM and DSPy would fetch
their model cost maps from the network at import; ``LITELLM_LOCAL_MODEL_COST_MAP`` makes them
use the copy they ship (this machine has no network, and a test must not need one).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from fw_support import SERVED_MODEL, Seen

import llmctx
from llmctx.stores import MemoryStore

_spec = importlib.util.spec_from_file_location(
    "_llmctx_provider_fixtures", Path(__file__).parent.parent / "providers" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _fixtures  # its dataclass looks its module up there
_spec.loader.exec_module(_fixtures)

smollm2_path = _fixtures.smollm2_path
llama_server = _fixtures.llama_server


@pytest.fixture(autouse=True)
def sdk_wide() -> Iterator[None]:
    """Every SDK instrumented for the test, put back after; the served model priced ($1/$2 per M)."""
    import litellm  # noqa: F401  (imported first, so the bare instrument() covers it too)

    with llmctx.price_override(SERVED_MODEL, input_per_mtok="1", output_per_mtok="2"):
        handle = llmctx.instrument()
        assert {"openai", "litellm"} <= set(handle.sdks)
        try:
            yield
        finally:
            llmctx.uninstrument()


@pytest.fixture
def store() -> MemoryStore:
    """A memory store whose refused records the tests read (list_calls(refused=True))."""
    return MemoryStore()


@pytest.fixture
def seen(llama_server: Any) -> Seen:
    """Requests the server saw since the test started."""
    return Seen(llama_server)
