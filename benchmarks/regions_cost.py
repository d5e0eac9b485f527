#!/usr/bin/env python3
"""What regions cost (docs/regions.md): each run is paired with the same run without
the feature, medians of --runs.

  marks     a loop of N `with tracer.region(...)` blocks: per enter+leave pair, traced
            (through the frame reader's C calls, and through ctypes) and untraced, next
            to the same loop over `contextlib.nullcontext()` (untraced)
  inside    an allocation loop (M bytearrays) run inside one region vs with no region:
            the program's wall time and the collector's CPU time (the aggregator's
            per-event region work)
  question  `tracer.usage()` round trips: the collector's answer latency

    python benchmarks/regions_cost.py [--runs 5] [--json OUT]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MARKS = r"""
import contextlib, sys, time, tracer
from tracer import _regions
if sys.argv[1] == "ctypes":
    _regions._bind()
    _regions._calls = _regions._ctypes_calls()
n = int(sys.argv[2])
r = contextlib.nullcontext() if sys.argv[1] == "null" else tracer.region("mark")
t = time.perf_counter()
for _ in range(n):
    with r:
        pass
print((time.perf_counter() - t) / n * 1e9)
"""

INSIDE = r"""
import sys, time, tracer
n = int(sys.argv[2])
def work():
    keep = []
    for i in range(n):
        keep.append(bytearray(64 + i % 512))
        if len(keep) > 1000:
            keep.clear()
t = time.perf_counter()
if sys.argv[1] == "region":
    with tracer.region("work"):
        work()
else:
    work()
print(time.perf_counter() - t)
"""

QUESTION = r"""
import sys, time, tracer
n = int(sys.argv[1])
with tracer.region("asked"):
    data = bytearray(1 << 20)
    t = time.perf_counter()
    for _ in range(n):
        tracer.usage()
    print((time.perf_counter() - t) / n * 1e6)
"""


def traced(script: Path, args, tmp: Path) -> tuple:
    """(the program's printed number, the collector's CPU seconds) of one traced run."""
    cap = tmp / "run.mtrace"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-q",
            "--no-report",
            "-f",
            "-o",
            str(cap),
            "--",
            sys.executable,
            str(script),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    from tracer.analyze.capture import read_capture

    return float(out.stdout.split()[-1]), read_capture(str(cap)).end["collector_cpu_seconds"]


def untraced(script: Path, args) -> float:
    out = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMTRACE")},
    )
    return float(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--marks", type=int, default=200_000)
    ap.add_argument("--allocs", type=int, default=2_000_000)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    scripts = {}
    for name, text in (("marks", MARKS), ("inside", INSIDE), ("question", QUESTION)):
        scripts[name] = tmp / f"{name}.py"
        scripts[name].write_text(text)
    rows = {
        k: []
        for k in (
            "mark_ext_ns",
            "mark_ctypes_ns",
            "mark_untraced_ns",
            "nullcontext_ns",
            "plain_s",
            "region_s",
            "plain_collector_s",
            "region_collector_s",
            "question_us",
        )
    }
    for _ in range(args.runs):
        rows["mark_ext_ns"].append(traced(scripts["marks"], ["ext", args.marks], tmp)[0])
        rows["mark_ctypes_ns"].append(traced(scripts["marks"], ["ctypes", args.marks], tmp)[0])
        rows["mark_untraced_ns"].append(untraced(scripts["marks"], ["ext", args.marks]))
        rows["nullcontext_ns"].append(untraced(scripts["marks"], ["null", args.marks]))
        for mode in ("plain", "region"):
            wall, cpu = traced(scripts["inside"], [mode, args.allocs], tmp)
            rows[f"{mode}_s"].append(wall)
            rows[f"{mode}_collector_s"].append(cpu)
        rows["question_us"].append(traced(scripts["question"], [args.questions], tmp)[0])
    result = {k: statistics.median(v) for k, v in rows.items()}
    result["runs"] = args.runs
    result["inside_ratio"] = result["region_s"] / result["plain_s"]
    result["collector_ratio"] = result["region_collector_s"] / result["plain_collector_s"]
    for k, v in result.items():
        print(f"{k:22} {v:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": result, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
