"""Every error llmctx raises on purpose is an llmctx.LLMCtxError; misuse is a UsageError."""

from __future__ import annotations

import inspect

import pytest

import llmctx
import llmctx.mcp
from llmctx import _exceptions


@pytest.mark.parametrize("rpm", [1e-300, 1e12])
def test_rate_out_of_range_is_a_config_error(rpm: float) -> None:
    """RateLimiter(rpm=1e-300) or an absurdly high rate raises ConfigError with the range."""
    with pytest.raises(llmctx.ConfigError, match="out of range: use a rate between"):
        llmctx.RateLimiter(rpm=rpm)
    with pytest.raises(llmctx.ConfigError, match="out of range"):
        llmctx.RateLimiter(tpm=rpm)


def test_limiter_reservation_misuse_is_a_usage_error() -> None:
    """settle() before admission and entering a reservation twice raise UsageError."""
    limiter = llmctx.RateLimiter(rpm=600)
    pending = limiter.acquire(10)
    with pytest.raises(llmctx.UsageError, match="not admitted") as info:
        pending.settle(5)
    assert isinstance(info.value, RuntimeError)
    with pending:
        pass
    with pytest.raises(llmctx.UsageError, match="already admitted"):
        with pending:
            pass  # pragma: no cover


def test_pool_lease_misuse_is_a_usage_error() -> None:
    """A lease's resource read before it is granted, or a lease reused, raises UsageError."""
    pool = llmctx.ResourcePool(["gpu0"], capacity=1)
    lease = pool.acquire()
    with pytest.raises(llmctx.UsageError, match="not granted yet"):
        _ = lease.resource
    with lease as held:
        assert held.resource == "gpu0"
    with pytest.raises(llmctx.UsageError, match="already used"):
        with lease:
            pass  # pragma: no cover


def test_every_public_exception_is_under_the_one_root() -> None:
    """Each exception class llmctx exports derives from LLMCtxError (warnings aside)."""
    for module in (llmctx, llmctx.mcp):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                if issubclass(obj, Warning):
                    continue
                assert issubclass(obj, llmctx.LLMCtxError), f"{module.__name__}.{name}"


def test_the_exception_tree_names_every_error_and_where_it_lives() -> None:
    """The tree in _exceptions' docstring lists every root-level error, with true file names."""
    tree = _exceptions.__doc__ or ""
    for name in ("UsageError", "SessionStateError", "WouldBlock", "AcquireTimeout", "MCPHubError"):
        assert name in tree, name
    assert "_waiting.py" in tree and "in _limits.py" not in tree
    assert llmctx.WouldBlock.__module__ == "llmctx._waiting"
    assert issubclass(llmctx.SessionStateError, llmctx.UsageError)
