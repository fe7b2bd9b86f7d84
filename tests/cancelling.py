"""Shared by the limiter and pool tests: run an acquire in a task that is already cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import pytest


async def acquire_while_cancelled(acquire: Callable[[], Awaitable[None]], cancel: str) -> None:
    """Await ``acquire()`` in a task already cancelled by ``Task.cancel()`` ("asyncio task") or
    inside a cancelled anyio CancelScope ("anyio scope"), and check the cancellation came out."""

    async def cancelled() -> None:
        if cancel == "asyncio task":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await acquire()
        else:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await acquire()
            assert scope.cancelled_caught

    if cancel == "asyncio task":
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(cancelled())
    else:
        await cancelled()
