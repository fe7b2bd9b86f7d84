"""Wall time of the whole workshop (all nine modules), the target being < 20 s on 2 cores.

Run:  python benchmarks/bench_workshop.py [--repeats 3]
Each repeat is a fresh `llmctx workshop --no-pause` process at 80 columns (model load
included); prints each run's seconds and output lines, the median, and the summary table of
the last run (the runner's per-module seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_S = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: list[float] = []
    last = ""
    for i in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "llmctx", "workshop", "--no-pause"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "80"},
        )
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            print(out.stdout[-3000:], out.stderr[-3000:])
            return 1
        last = out.stdout
        print(f"run {i + 1}: {times[-1]:.1f} s, {len(last.splitlines())} lines")
    median = statistics.median(times)
    verdict = "met" if median < TARGET_S else "MISSED"
    print(f"median: {median:.1f} s over {len(times)} runs (target < {TARGET_S:.0f} s: {verdict})")
    print(last[last.find("Workshop summary") :])
    return 0


if __name__ == "__main__":
    sys.exit(main())
