#!/usr/bin/env python3
"""Overhead of memtrace against the untraced run and other tracers, side by side.

Each round runs the workload untraced, then under each tracer, in the same order
(U A B U A B ...), so every ratio is taken against the untraced run of its own round
and slow drifts of a shared machine cancel out. Prints, per workload and tracer, the
median wall-time ratio traced/untraced with its range, the median peak-RSS ratio
(the whole process tree), and the size of what the tracer wrote.

    python benchmarks/compare.py                          # benchmarks/workloads, memtrace + memray
    python benchmarks/compare.py -n 7 -w alloc_storm deep_stack:150
    python benchmarks/compare.py --dir benchmarks/realworld --json out.json
    python benchmarks/compare.py --tracer \
        'sampled={python} -m tracer run --sample-rate 512K -o {out} -- {python} {script}'

A workload is a script of the folder, with arguments after a colon (deep_stack:150).
A tracer is NAME=TEMPLATE: {python}, {script} (with its arguments) and {out} are
filled in. memray is used where it is installed in the Python that runs the workloads.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACERS = {
    "memtrace": "{python} -m tracer run --no-report -f -o {out} -- {python} {script}",
    "memray": "{python} -m memray run -f -q -o {out} {script}",
}


def run_once(cmd):
    """Wall seconds and peak RSS (KiB) of one run: wait4 gives the largest of the
    process and the descendants it waited for."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"compare: {' '.join(map(str, cmd))} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss


def installed(name, template, python):
    if name == "memray" and "memray" in template:
        return subprocess.run([python, "-c", "import memray"], capture_output=True).returncode == 0
    return True


def command(template, python, script, out):
    """The tracer's command line; {script} stands for the script and its arguments."""
    words = []
    for part in shlex.split(template):
        if part == "{script}":
            words += shlex.split(script)
        else:
            words.append(part.format(python=python, out=out))
    return words


def workload_script(folder: Path, spec: str):
    """(name, script words) of 'name' or 'name:arg1,arg2'."""
    name, _, args = spec.partition(":")
    path = folder / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"compare: no workload {path}")
    return spec, " ".join([shlex.quote(str(path))] + (args.split(",") if args else []))


def compare(folder, specs, tracers, runs, python, scratch):
    results = {}
    print(f"{'workload':22} {'tracer':12} {'time x':>7} {'(min-max)':>13} {'rss x':>6} {'output':>9}")
    for spec in specs:
        name, script = workload_script(folder, spec)
        base = [python] + shlex.split(script)
        run_once(base)  # warm the page cache and the .pyc files
        walls = {key: [] for key in ["untraced", *tracers]}
        rss = {key: [] for key in walls}
        sizes = {}
        for _ in range(runs):
            wall, peak = run_once(base)
            walls["untraced"].append(wall)
            rss["untraced"].append(peak)
            for tracer, template in tracers.items():
                out = scratch / f"{name.replace(':', '_')}.{tracer}"
                for old in scratch.glob(out.name + "*"):
                    if old.is_file():
                        old.unlink()
                wall, peak = run_once(command(template, python, script, out))
                walls[tracer].append(wall)
                rss[tracer].append(peak)
                sizes[tracer] = sum(p.stat().st_size for p in scratch.glob(out.name + "*") if p.is_file())
        results[name] = {"untraced_seconds": statistics.median(walls["untraced"])}
        for tracer in tracers:
            ratios = [t / u for t, u in zip(walls[tracer], walls["untraced"])]
            row = {
                "ratio": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "rss_ratio": statistics.median(t / u for t, u in zip(rss[tracer], rss["untraced"])),
                "output_bytes": sizes[tracer],
            }
            results[name][tracer] = row
            print(
                f"{name:22} {tracer:12} {row['ratio']:7.2f} {row['min']:6.2f}-{row['max']:<6.2f} "
                f"{row['rss_ratio']:6.2f} {sizes[tracer] / 1e6:8.1f}M",
                flush=True,
            )
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("-w", "--workloads", nargs="*", help="names in the folder (default: all)")
    ap.add_argument("--dir", default=str(HERE / "workloads"), help="folder of workload scripts")
    ap.add_argument("--tracer", action="append", default=[], help="NAME=TEMPLATE (repeatable)")
    ap.add_argument("--only", nargs="*", help="of the default tracers, only these")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    tracers = {k: v for k, v in TRACERS.items() if args.only is None or k in args.only}
    for spec in args.tracer:
        name, _, template = spec.partition("=")
        tracers[name] = template
    for name in list(tracers):
        if not installed(name, tracers[name], args.python):
            print(f"# {name}: not installed here, skipped", file=sys.stderr)
            del tracers[name]
    folder = Path(args.dir)
    specs = args.workloads or sorted(p.stem for p in folder.glob("*.py"))
    with tempfile.TemporaryDirectory(prefix="memtrace-bench-") as scratch:
        results = compare(folder, specs, tracers, args.runs, args.python, Path(scratch))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
