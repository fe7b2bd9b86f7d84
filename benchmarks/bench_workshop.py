"""Wall time of the whole workshop (all nine modules), the issue's target being <= 60 s.

Run:  python benchmarks/bench_workshop.py [--repeats 3]
Each repeat is a fresh `llmctx workshop` process (model load included); prints each run's
seconds, the median, and the per-module seconds of the last run as reported by the summary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: list[float] = []
    last = ""
    for i in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "llmctx", "workshop"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "120"},
        )
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            print(out.stdout[-3000:], out.stderr[-3000:])
            return 1
        last = out.stdout
        print(f"run {i + 1}: {times[-1]:.1f} s")
    print(f"median: {statistics.median(times):.1f} s over {len(times)} runs (target <= 60 s)")
    summary = last[last.find("Workshop summary") :]
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
