#!/usr/bin/env python3
"""What the reconciliation's sampling costs the traced program: CPU seconds of the
target (its own rusage, so the collector on the other core does not count), with
and without heap statistics, paired runs, medians.

    python benchmarks/heapstats_cost.py [-n RUNS] [WORKLOAD ...]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = Path(__file__).resolve().parent / "workloads"


def target_cpu(extra, script, out):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "--no-report",
            "-f",
            "-o",
            str(out),
            *extra,
            "--",
            sys.executable,
            str(script),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stats = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, json; from tracer.analyze.capture import read_capture; "
                "print(json.dumps(read_capture(sys.argv[1]).end))"
            ),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(stats.stdout)["main_cpu_seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--runs", type=int, default=7)
    ap.add_argument("workloads", nargs="*")
    args = ap.parse_args()
    names = args.workloads or sorted(p.stem for p in WORKLOADS.glob("*.py"))
    out = Path(tempfile.mkdtemp()) / "cost.mtrace"
    for name in names:
        script = WORKLOADS / f"{name}.py"
        ratios = []
        for _ in range(args.runs):
            on = target_cpu([], script, out)
            off = target_cpu(["--no-heap-stats"], script, out)
            ratios.append(on / off)
        print(
            f"{name:14} target CPU with/without heap statistics: median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
