"""llmctx ui on a large store: server time of the list, session and call pages.

Builds (once; reused while the file exists) a SQLite store of 100,000 sessions and 1,000,000
calls in the store's own schema and encoding (rows made by the store's own parameter
builders, inserted in bulk), then times each page through Starlette's test client in this
process: the request, the queries and the rendering, not a browser. Beside the list page it
times ``SQLiteStore.list_sessions`` (what ``llmctx sessions ls`` runs) as the peer.

    python benchmarks/bench_ui.py [--db PATH] [--sessions 100000] [--calls-per 10] [--runs 15]

Results go in docs/benchmarks.md ("llmctx ui").
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from starlette.testclient import TestClient

from llmctx import CallRecord, Usage
from llmctx.stores import SessionRecord, SQLiteStore
from llmctx.stores import sqlite as sqlite_store
from llmctx.ui import create_app
from llmctx.ui._reader import LATENCY_EDGES

MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5", "SmolLM2-135M-Instruct"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(path: Path, n_sessions: int, calls_per: int) -> None:
    """Write ``n_sessions`` sessions (one in ten a child of an earlier root) and
    ``calls_per`` calls each, roll-ups consistent with the calls, in one transaction."""
    SQLiteStore(path).close()  # the schema and every index, as a store creates them
    rng = random.Random(7)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    n_cols_s = sqlite_store._SESSION_COLS.count(",") + 1
    n_cols_c = sqlite_store._CALL_COLS.count(",") + 1
    ins_s = (
        f"INSERT INTO sessions ({sqlite_store._SESSION_COLS}) VALUES ({', '.join('?' * n_cols_s)})"
    )
    ins_c = f"INSERT INTO calls ({sqlite_store._CALL_COLS}) VALUES ({', '.join('?' * n_cols_c)})"
    totals_at = sqlite_store._sql.TOTALS_AT
    conn.execute("BEGIN")
    sessions: list[list[object]] = []
    calls: list[list[object]] = []
    roots: list[int] = []
    root_of: dict[int, int] = {}
    agg: dict[int, list[object]] = {}
    t_start = time.perf_counter()
    for i in range(n_sessions):
        start = T0 + timedelta(seconds=i * 20 + rng.random())
        parent = None
        if i % 10 == 9 and roots:
            parent = roots[rng.randrange(max(0, len(roots) - 50), len(roots))]
        else:
            roots.append(i)
        root_of[i] = parent if parent is not None else i
        status = rng.choices(["completed", "failed", "cancelled"], [0.9, 0.07, 0.03])[0]
        budget = {"usd": "0.05", "tokens": None, "requests": None} if i % 4 == 0 else None
        usage_sum = [0, 0, 0, 0, 0, 0]
        cost_sum = Decimal(0)
        t = start
        for k in range(calls_per):
            model = MODELS[rng.randrange(len(MODELS))]
            inp, out = rng.randrange(50, 4000), rng.randrange(10, 800)
            cost = Decimal(inp * 3 + out * 15) / Decimal(10**7)
            latency = rng.lognormvariate(-0.5, 0.8)
            ok = rng.random() > 0.01
            rec = CallRecord(
                session_id=f"s{i:07d}",
                provider="openai",
                model=model,
                request={
                    "model": model,
                    "messages": [
                        {
                            "role": "user",
                            "content": f"question {i}.{k} about topic {rng.randrange(1000)}",
                        }
                    ],
                },
                response=f"answer {i}.{k}",
                usage=Usage(input_tokens=inp, output_tokens=out, requests=1),
                cost=cost,
                status="ok" if ok else "error",
                error=None if ok else "APIStatusError: 529",
                started_at=t,
                latency_s=latency,
                ttft_s=latency / 4,
                id=f"c{i:07d}{k:03d}",
            )
            t += timedelta(seconds=latency)
            calls.append(sqlite_store._call_params(rec))
            usage_sum[0] += inp
            usage_sum[1] += out
            usage_sum[5] += 1
            cost_sum += cost
        record = SessionRecord(
            id=f"s{i:07d}",
            name=f"run-{i:07d}",
            parent_id=None if parent is None else f"s{parent:07d}",
            status=status,  # type: ignore[arg-type]
            tags={"team": ["search", "chat", "eval"][i % 3]},
            budget=budget,
            started_at=start,
            ended_at=t + timedelta(seconds=0.2),
            error="RuntimeError: boom" if status == "failed" else None,
        )
        params = sqlite_store._session_params(record)
        sessions.append(params)
        agg[i] = [*usage_sum, cost_sum]
        if len(calls) >= 50_000:
            conn.executemany(ins_c, calls)
            calls.clear()
    # Roll-ups: each session its own calls, each root also its children's.
    for i, params in enumerate(sessions):
        own = agg[i]
        total = list(own)
        if root_of[i] == i:
            pass
        params[totals_at] = [total[0], total[1], 0, 0, 0, total[5], str(total[6]), 0, calls_per]
    for i in range(n_sessions):
        r = root_of[i]
        if r != i:
            rp = sessions[r]
            cur = rp[totals_at]
            own = agg[i]
            rp[totals_at] = [
                cur[0] + own[0],
                cur[1] + own[1],
                0,
                0,
                0,
                cur[5] + own[5],
                str(Decimal(cur[6]) + own[6]),
                0,
                cur[8] + calls_per,
            ]
    conn.executemany(ins_c, calls)
    conn.executemany(ins_s, sessions)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    SQLiteStore(path).close()
    print(
        f"built {n_sessions:,} sessions / {n_sessions * calls_per:,} calls in "
        f"{time.perf_counter() - t_start:.0f} s ({path.stat().st_size / 2**20:.0f} MiB)"
    )


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and max milliseconds of ``runs`` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db", type=Path, default=Path(tempfile.gettempdir()) / "llmctx-bench-ui.db"
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--calls-per", type=int, default=10)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if not args.db.exists():
        build(args.db, args.sessions, args.calls_per)
    app = create_app(str(args.db))
    store = SQLiteStore(args.db)
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cpus; {args.db}"
    )
    with TestClient(app, base_url="http://127.0.0.1") as c:

        def get(url: str) -> Callable[[], object]:
            def run() -> object:
                r = c.get(url)
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
                return r

            return run

        mid = args.sessions // 2
        rows = [
            ("list (roots, newest first)", get("/")),
            (
                "peer: SQLiteStore.list_sessions(50, roots_only)",
                lambda: store.list_sessions(limit=50, roots_only=True),
            ),
            ("list page 200 (offset 9,950)", get("/?page=200")),
            ("list sorted by cost", get("/?sort=cost")),
            ("list sorted by duration, ascending", get("/?sort=duration&order=asc")),
            ("list status=failed", get("/?status=failed")),
            ("list status=interrupted", get("/?status=interrupted")),
            ("list model=gpt-4o", get("/?model=gpt-4o")),
            ("list has errors", get("/?errors=1")),
            ("list over budget", get("/?over=1")),
            ("list one day (from/to)", get("/?from=2026-01-10&to=2026-01-11")),
            ("list search name 'run-00500'", get("/?q=run-00500")),
            ("list search model 'claude'", get("/?q=claude")),
            ("list search prompt text 'topic 999'", get("/?q=topic+999&text=1")),
            (
                "session page (root with a child, 20 calls)",
                get(f"/s/s{(9 if args.sessions > 9 else 0):07d}"),
            ),
            ("session page (10 calls)", get(f"/s/s{mid:07d}")),
            ("call page", get(f"/c/c{mid:07d}005")),
            ("live version poll (list)", get("/api/version")),
            ("live version poll (session)", get(f"/api/version?session=s{mid:07d}")),
            ("list charts, cached", get("/charts/models.svg")),
        ]
        # The charts' overview cold: a new range each run defeats the cache.
        counter = iter(range(10**6))
        cold = (
            "list charts, cold (4 charts, one overview)",
            lambda: get(f"/charts/models.svg?from=2025-12-{1 + next(counter) % 28:02d}")(),
        )
        # The peer of the cold charts: what the overview ran before its call charts were
        # bounded (CHART_CALLS), two GROUP BY scans of every call.
        ro = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
        cases = " ".join(f"WHEN latency_s < {e} THEN {i}" for i, e in enumerate(LATENCY_EDGES))

        def full_scans() -> object:
            ro.execute("SELECT model, sum(CAST(cost AS REAL)), count(*) FROM calls GROUP BY model")
            return ro.execute(
                f"SELECT CASE {cases} ELSE {len(LATENCY_EDGES)} END AS b, count(*) FROM calls "
                "WHERE latency_s IS NOT NULL GROUP BY b"
            ).fetchall()

        peer_cold = ("peer: full scans of every call (the former cold overview)", full_scans)
        root9 = c.get(f"/s/s{9:07d}")
        assert root9.status_code == 200
        print(f"{'page':52} {'median ms':>10} {'max ms':>8}")
        results = {}
        for name, fn in [*rows, cold, peer_cold]:
            runs = 3 if "cold" in name or "text" in name else args.runs
            med, worst = timed(fn, runs)
            results[name] = med
            print(f"{name:52} {med:10.1f} {worst:8.1f}")
        peer = results["peer: SQLiteStore.list_sessions(50, roots_only)"]
        print(f"list page / peer: {results['list (roots, newest first)'] / peer:.2f}x")
        print(f"cold charts / full scans: {results[cold[0]] / results[peer_cold[0]]:.2f}x")
        ro.close()
    store.close()


if __name__ == "__main__":
    sys.exit(main())
