#!/usr/bin/env python3
"""Per-allocation cost against stack depth: deep_stack.py at depth 5 and 150,
untraced and under memtrace, paired runs, medians. Prints the traced/untraced
ratio at each depth and the ratio of the two (target: deep <= 1.2x shallow).

    python benchmarks/depth.py [-n RUNS]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "workloads" / "deep_stack.py"


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--runs", type=int, default=5)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "depth.mtrace"
    ratios = {}
    for depth in (5, 150):
        base = [sys.executable, str(SCRIPT), str(depth)]
        traced = [sys.executable, "-m", "tracer", "run", "--no-report", "-f", "-o", str(out), "--"] + base
        pairs = [(timed(base), timed(traced)) for _ in range(args.runs)]
        ratios[depth] = statistics.median(t / u for u, t in pairs)
        print(
            f"depth {depth:3}: untraced {statistics.median(u for u, _ in pairs):.3f} s, "
            f"traced/untraced {ratios[depth]:.2f} (min {min(t / u for u, t in pairs):.2f}, "
            f"max {max(t / u for u, t in pairs):.2f})"
        )
    print(f"depth 150 vs 5: {ratios[150] / ratios[5]:.2f}x")


if __name__ == "__main__":
    main()
