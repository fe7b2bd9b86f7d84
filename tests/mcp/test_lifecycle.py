"""Randomized hub lifecycles (start / call / cancel / crash / stop) leave no process behind.

Each lifecycle draws a seeded random script of operations against real server processes
(the stdlib fixture server, which starts in milliseconds). The run stops after
``LLMCTX_MCP_LIFECYCLES`` lifecycles (default 200) or ``LLMCTX_MCP_LIFECYCLE_SECONDS`` seconds
(default 20, to keep the suite fast), whichever comes first, and reports how many it ran.
``python benchmarks/bench_mcp.py --soak`` runs all 200 with no time limit.
"""

from __future__ import annotations

import contextlib
import os
import random
import time

import anyio
import pytest
from mcp_helpers import gone, live_children, new_children, tiny

from llmctx.mcp import Hub, ServerCrashed, ServerUnavailable, ToolTimeout, result_text

pytestmark = pytest.mark.anyio

_OPS = ("echo", "echo", "slow_cancel", "timeout", "crash", "spawn", "concurrent")


async def _lifecycle(rng: random.Random, grandchildren: list[int]) -> None:
    names = [f"s{i}" for i in range(rng.randint(1, 3))]
    config = {"mcpServers": {n: tiny(maxRestarts=50) for n in names}}
    ops = [rng.choice(_OPS) for _ in range(rng.randint(0, 6))]
    abort_at = rng.choice([None, None, None, rng.uniform(0.0, 0.3)])  # cancel the whole hub
    with anyio.move_on_after(abort_at if abort_at is not None else 60):
        async with Hub.from_config(config) as hub:
            for op in ops:
                name = rng.choice(names)
                if op == "echo":
                    result = await hub.call(f"{name}.echo", {"text": "x"})
                    assert result_text(result) == "x"
                elif op == "slow_cancel":
                    with anyio.move_on_after(rng.uniform(0, 0.05)):
                        await hub.call(f"{name}.slow", {"seconds": 30})
                elif op == "timeout":
                    with pytest.raises(ToolTimeout):
                        await hub.call(f"{name}.slow", {"seconds": 30}, timeout=0.02)
                elif op == "crash":
                    with anyio.fail_after(5), pytest.raises(ServerCrashed):
                        await hub.call(f"{name}.crash")
                elif op == "spawn":
                    result = await hub.call(f"{name}.spawn")
                    grandchildren.append(int(result_text(result)))
                else:
                    async with anyio.create_task_group() as tg:
                        for _ in range(rng.randint(2, 8)):
                            tg.start_soon(hub.call, f"{name}.echo", {"text": "y"})
            if rng.random() < 0.3:
                # Stop with a call in flight: it must end with a hub error, not hang.
                async with anyio.create_task_group() as tg:

                    async def in_flight() -> None:
                        with contextlib.suppress(ServerUnavailable):
                            await hub.call(f"{names[0]}.slow", {"seconds": 30})

                    tg.start_soon(in_flight)
                    await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()


async def test_randomized_lifecycles_leave_no_process(
    record_property: pytest.RecordProperty,
) -> None:
    """Hundreds of random start/call/cancel/crash/stop scripts leave zero children or grandchildren."""
    budget = float(os.environ.get("LLMCTX_MCP_LIFECYCLE_SECONDS", "20"))
    limit = int(os.environ.get("LLMCTX_MCP_LIFECYCLES", "200"))
    rng = random.Random(20260505)
    grandchildren: list[int] = []
    before = {p.pid for p in live_children()}
    began = time.perf_counter()
    done = 0
    while done < limit and time.perf_counter() - began < budget:
        await _lifecycle(rng, grandchildren)
        done += 1
        leaked = new_children(before)
        assert leaked == [], f"lifecycle {done} leaked {[p.pid for p in leaked]}"
    elapsed = time.perf_counter() - began
    assert all(gone(pid) for pid in grandchildren)
    record_property("lifecycles", done)
    print(f"\n{done} lifecycles in {elapsed:.1f}s, {len(grandchildren)} grandchildren reaped")
    assert done >= min(limit, 10)
