#!/usr/bin/env python3
"""Instructions the shim adds per loop iteration of a workload, counted by callgrind.

Wall-time ratios on a shared VM move by 20-40% from run to run; instruction counts
do not. This traces a workload under `memtrace run` twice inside valgrind's
callgrind (N1 and N2 iterations) and divides the difference by N2 - N1, so start-up
and teardown cancel out: what is left is the cost of one iteration, split into the
program's own instructions and the shim's (csrc/, the frame reader included).

    python benchmarks/instructions.py                      # alloc_storm, full and 512K
    python benchmarks/instructions.py -w threads.py --n1 5000 --n2 15000 --per 4

It counts instructions, not cache misses or the atomic claim's wait: use it to see
what a change to the hot path does, and compare.py for what a run costs.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = HERE / "workloads"
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S+)")


def counts(out: Path) -> dict:
    """{file:function: instructions} from callgrind_annotate, plus the total."""
    text = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            key = "TOTAL" if m.group(2) == "PROGRAM" else m.group(2)
            table[key] = table.get(key, 0) + int(m.group(1).replace(",", ""))
    return table


def traced_counts(script: Path, n: int, extra, tmp: Path) -> dict:
    out = tmp / f"cg.{n}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "--no-report",
            "-f",
            *extra,
            "-o",
            str(tmp / "cg.mtrace"),
            "--",
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(script),
            str(n),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return counts(out)


def is_shim(key: str) -> bool:
    return "csrc/" in key or "pycore_frame" in key or "GILState" in key or "getspecific" in key


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workload", default="alloc_storm.py")
    ap.add_argument("--n1", type=int, default=100_000)
    ap.add_argument("--n2", type=int, default=300_000)
    ap.add_argument("--per", type=int, default=1, help="iterations per N (threads: 4)")
    ap.add_argument("--modes", nargs="*", default=["full", "512K"])
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py needs valgrind (apt install valgrind)")
    script = Path(args.workload)
    if not script.exists():
        script = WORKLOADS / args.workload
    iterations = (args.n2 - args.n1) * args.per
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            extra = [] if mode == "full" else ["--sample-rate", mode]
            a = traced_counts(script, args.n1, extra, Path(tmp))
            b = traced_counts(script, args.n2, extra, Path(tmp))
            per = {k: (b[k] - a.get(k, 0)) / iterations for k in b}
            shim = sum(v for k, v in per.items() if is_shim(k))
            print(
                f"{script.name} [{mode}]: {per['TOTAL']:.0f} instructions per iteration, "
                f"of which the shim {shim:.0f} ({100 * shim / per['TOTAL']:.1f}%); "
                f"the program alone {per['TOTAL'] - shim:.0f}"
            )
            for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
                if is_shim(k) and v >= 2:
                    print(f"    {v:7.1f}  {k}")


if __name__ == "__main__":
    main()
