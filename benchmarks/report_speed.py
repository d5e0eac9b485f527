"""Report speed on 10-million-allocation runs: memtrace vs memray, medians of N.

    python benchmarks/report_speed.py [-n 5]

For each workload (the shared alloc_storm: one stack; benchmarks/workloads/many_stacks.py:
~1,500 stacks), both tracers record the same program, then, alternating run by run:
  - `memtrace flamegraph CAPTURE` and `memray flamegraph CAPTURE` (whole commands,
    interpreter start included), and the --temporary views of both;
  - `memtrace stats --json CAPTURE`;
  - the HTML report as `memtrace run` makes it at exit: load + render + write, timed
    inside an interpreter that already has memtrace imported.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "alloc_storm": HERE.parent.parent / "shared" / "bench" / "workloads" / "alloc_storm.py",
    "many_stacks": HERE / "workloads" / "many_stacks.py",
}
IN_PROCESS = """
import sys, time
from tracer.analyze.model import load
from tracer.reports import html
t = time.perf_counter()
model = load(sys.argv[1])
with open(sys.argv[2], "w") as out:
    html.render(model, out)
print(time.perf_counter() - t)
"""


def timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    py, results = sys.executable, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, script in WORKLOADS.items():
            if not script.exists():
                print(f"{name}: {script} missing, skipped")
                continue
            ours, theirs = tmp / f"{name}.mtrace", tmp / f"{name}.memray"
            subprocess.run(
                [py, "-m", "tracer", "run", "-q", "--no-report", "-o", str(ours), "--", py, str(script)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            subprocess.run(
                [py, "-m", "memray", "run", "-q", "-o", str(theirs), str(script)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cases = {
                "memtrace flamegraph": [
                    py,
                    "-m",
                    "tracer",
                    "flamegraph",
                    "-o",
                    str(tmp / "m.html"),
                    str(ours),
                ],
                "memray flamegraph": [
                    py,
                    "-m",
                    "memray",
                    "flamegraph",
                    "-f",
                    "-o",
                    str(tmp / "r.html"),
                    str(theirs),
                ],
                "memtrace flamegraph --temporary": [
                    py,
                    "-m",
                    "tracer",
                    "flamegraph",
                    "--temporary",
                    "-o",
                    str(tmp / "m2.html"),
                    str(ours),
                ],
                "memray flamegraph --temporary-allocations": [
                    py,
                    "-m",
                    "memray",
                    "flamegraph",
                    "--temporary-allocations",
                    "-f",
                    "-o",
                    str(tmp / "r2.html"),
                    str(theirs),
                ],
                "memtrace stats --json": [py, "-m", "tracer", "stats", "--json", str(ours)],
            }
            times = {k: [] for k in cases}
            times["memtrace report at exit (in process)"] = []
            for _ in range(args.runs):
                for label, cmd in cases.items():
                    times[label].append(timed(cmd))
                out = subprocess.run(
                    [py, "-c", IN_PROCESS, str(ours), str(tmp / "m3.html")],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                times["memtrace report at exit (in process)"].append(float(out))
            med = {k: statistics.median(v) for k, v in times.items()}
            results[name] = {
                k: {"median_s": round(med[k], 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3)}
                for k, v in times.items()
            }
            results[name]["capture_bytes"] = {
                "memtrace": ours.stat().st_size,
                "memray": theirs.stat().st_size,
            }
            base = med["memray flamegraph"]
            print(f"== {name} (medians of {args.runs})")
            for k in times:
                print(f"  {k:45} {med[k]:7.3f} s   memray flamegraph / this: {base / med[k]:5.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
