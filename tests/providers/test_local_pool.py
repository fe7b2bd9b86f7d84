"""llmctx.local_model_pool: concurrent generation on a pool of real local model workers."""

from __future__ import annotations

import asyncio
import threading

import llmctx


def test_pool_of_local_workers_runs_calls_concurrently_and_charges_them() -> None:
    """Four tasks share two real workers: never more than two generate at once, all are charged."""
    busy = 0
    peak = 0
    lock = threading.Lock()

    def generate(worker: object, question: str) -> str:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        try:
            reply = worker.create_chat_completion(  # type: ignore[attr-defined]
                messages=[{"role": "user", "content": question}], max_tokens=4, temperature=0
            )
            return str(reply["choices"][0]["message"]["content"])
        finally:
            with lock:
                busy -= 1

    async def main(pool: llmctx.ResourcePool[object]) -> list[str]:
        async def one(q: str) -> str:
            async with pool.acquire() as lease:
                return await asyncio.to_thread(generate, lease.resource, q)

        return await asyncio.gather(*(one(f"Say {w}.") for w in ("one", "two", "three", "four")))

    with llmctx.local_model_pool(2, n_ctx=256) as pool, llmctx.session(store="memory:") as s:
        assert len(pool.resources) == 2
        answers = asyncio.run(main(pool))
        stats = pool.statistics()
    assert len(answers) == 4
    assert peak <= 2
    assert s.usage.requests == 4
    assert all(c.provider == "llama-cpp" and c.status == "ok" for c in s.calls)
    assert stats.borrowed == 0 and stats.waiting == 0 and stats.acquired == 4
