"""How close --sample-rate's per-line estimates come to full tracing.

    python benchmarks/sampling_accuracy.py [--rate 512K] [--runs 3] [WORKLOAD.py]

Traces the workload (default: workloads/numpy_churn.py) once in full and RUNS times
sampled, then compares the bytes allocated per line (by_line, innermost frames) for
every line holding at least 1% of the bytes: the worst relative error per run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "workloads" / "numpy_churn.py"


def by_line(script, tmp, name, extra=()):
    capture = Path(tmp) / f"{name}.mtrace"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-q",
            "-f",
            "--no-report",
            "-o",
            str(capture),
            *extra,
            "--",
            sys.executable,
            str(script),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stats = json.loads(
        subprocess.run(
            [sys.executable, "-m", "tracer", "stats", "--json", str(capture)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return {(r["file"], r["line"], r["function"]): r["allocated_bytes"] for r in stats["by_line"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?", default=str(DEFAULT))
    ap.add_argument("--rate", default="512K")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        full = by_line(args.workload, tmp, "full")
        total = sum(full.values())
        big = {k: v for k, v in full.items() if v >= 0.01 * total}
        runs = []
        for i in range(args.runs):
            est = by_line(args.workload, tmp, f"sampled{i}", ["--sample-rate", args.rate])
            errors = {f"{Path(k[0]).name}:{k[1]}": round(est.get(k, 0) / v - 1, 4) for k, v in big.items()}
            worst = max(abs(e) for e in errors.values())
            runs.append({"worst_relative_error": worst, "lines": errors})
            print(
                f"run {i + 1}: worst error {worst:.2%} over {len(big)} lines "
                f"holding >= 1% of {total:,} bytes",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rate": args.rate, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
