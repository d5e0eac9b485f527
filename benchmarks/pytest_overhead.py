#!/usr/bin/env python3
"""What the pytest plugin costs (docs/pytest.md): one generated suite run four ways,
interleaved, medians of --runs wall times:

  pytest           python -m pytest (untraced)
  traced           memtrace run -- python -m pytest -p no:memtrace (traced, no plugin)
  memtrace pytest  every test a region, the tests table at the end
  + limit_memory   the same suite with @pytest.mark.limit_memory on every test (each
                   test asks the collector at its end)

    python benchmarks/pytest_overhead.py [--runs 5] [--tests 400] [--json OUT]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST = """
{marker}
def test_{i}():
    data = [bytearray(1000) for _ in range(200)]
    assert sum(map(len, data)) == 200_000
"""


def make_suite(folder: Path, n: int, marker: str) -> None:
    folder.mkdir()
    per_file = 50
    for f in range(0, n, per_file):
        body = "import pytest\n" + "".join(
            TEST.format(i=i, marker=marker) for i in range(f, min(n, f + per_file))
        )
        (folder / f"test_{f // per_file}.py").write_text(body)


def timed(argv, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tests", type=int, default=400)
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    make_suite(tmp / "plain", args.tests, "")
    make_suite(tmp / "limited", args.tests, '@pytest.mark.limit_memory("24 MB")')
    py, mt = (
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        [sys.executable, "-m", "tracer"],
    )
    modes = {
        "pytest": py + ["plain"],
        "traced": mt
        + ["run", "-q", "--no-report", "-f", "-o", "t.mtrace", "--"]
        + py
        + ["-p", "no:memtrace", "plain"],
        "memtrace pytest": mt
        + ["pytest", "-q", "-p", "no:cacheprovider", "--memtrace-output", "p.mtrace", "plain"],
        "+ limit_memory": mt
        + ["pytest", "-q", "-p", "no:cacheprovider", "--memtrace-output", "l.mtrace", "limited"],
    }
    times = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode, argv in modes.items():
            times[mode].append(timed(argv, tmp))
    med = {m: statistics.median(v) for m, v in times.items()}
    for mode in modes:
        extra = (med[mode] - med["traced"]) / args.tests * 1e3 if mode != "pytest" else 0
        print(
            f"{mode:16} {med[mode]:7.2f} s  x{med[mode] / med['pytest']:.2f} of pytest"
            + (f"  {extra:+.2f} ms per test over traced" if mode not in ("pytest", "traced") else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"tests": args.tests, "runs": times, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
