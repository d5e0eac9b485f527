"""Time every report on a capture with many distinct stacks (medians of N runs).

    python benchmarks/report_times.py [-n 3] [--stacks 120000] [--capture FILE] [--json OUT]

Without --capture, it writes a Python program whose functions call each other along
~--stacks different paths and allocate at the end of each (so every path is a stack
of its own), traces it with `memtrace run --no-report`, and then runs each report
command on the capture, whole commands (interpreter start included), and the reports
`memtrace run` writes at exit (HTML + terminal summary), timed in a process that has
already imported them (as memtrace has by then). It needs only this repository
(memtrace installed from it, with its NumPy).
"""

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORTS = {
    "summary": ["summary"],
    "stats --json": ["stats", "--json"],
    "reconcile": ["reconcile"],
    "flamegraph": ["flamegraph", "-o", "{tmp}/out.html"],
    "tree": ["tree"],
    "lines": ["lines"],
    "export speedscope": ["export", "--format", "speedscope", "-o", "{tmp}/out.speedscope.json"],
    "export pprof": ["export", "--format", "pprof", "-o", "{tmp}/out.pb.gz"],
}
# The reports `memtrace run` writes at exit, timed after their imports (which
# memtrace makes while the program runs).
AT_EXIT = """
import sys, time
from tracer import cli
from tracer.analyze.model import load
from tracer.reports import html, summary
t = time.perf_counter()
if hasattr(cli, "write_reports"):
    cli.write_reports(sys.argv[1])
else:  # an older memtrace: the same steps
    model = load(sys.argv[1])
    small = sum(p.totals.get("n_events", 0) for p in model.processes) <= 2_000_000
    with open(sys.argv[1] + ".html", "w") as out:
        html.render(model, out, temporary=small)
    summary.render(model, sys.stderr)
print(time.perf_counter() - t)
"""


def program(n_stacks: int, n_functions: int = 300, depth: int = 6, seed: int = 1) -> str:
    """A program with n_functions functions, each with three call lines; it walks
    n_stacks random call paths `depth` deep and allocates 1-4 KiB at each path's end
    (above pymalloc's limit: one malloc each), keeping every fourth block."""
    rnd = random.Random(seed)
    lines = ["import random, sys", "KEEP = []", ""]
    for i in range(n_functions):
        lines += [
            f"def f{i}(path, d):",
            "    if d == len(path):",
            "        block = bytearray(1024 + 1024 * (len(path) % 4))",
            "        if path[0] % 4 == 0:",
            "            KEEP.append(block)",
            "        return",
            "    k = path[d]",
            "    if k % 3 == 0:",
            "        return FUNCS[k](path, d + 1)",
            "    if k % 3 == 1:",
            "        return FUNCS[k](path, d + 1)",
            "    return FUNCS[k](path, d + 1)",
            "",
        ]
    lines.append(f"FUNCS = [{', '.join(f'f{i}' for i in range(n_functions))}]")
    paths = {tuple(rnd.randrange(n_functions) for _ in range(rnd.randint(2, depth))) for _ in range(n_stacks)}
    lines += [
        f"rnd = random.Random({seed})",
        "def main():",
        f"    for _ in range({len(paths)}):",
        f"        path = [rnd.randrange({n_functions}) for _ in range(rnd.randint(2, {depth}))]",
        "        FUNCS[path[0]](path, 1)",
        "main()",
        "print(len(KEEP))",
    ]
    return "\n".join(lines) + "\n"


def timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def make_capture(tmp: Path, n_stacks: int) -> Path:
    script = tmp / "many_paths.py"
    script.write_text(program(n_stacks))
    capture = tmp / "many_paths.mtrace"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-q",
            "--no-report",
            "-o",
            str(capture),
            "--",
            sys.executable,
            str(script),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return capture


def describe(capture: Path) -> str:
    from tracer.analyze.model import load

    model = load(str(capture))
    stacks = sum(len(set(p.sites["stack"].tolist())) for p in model.processes)
    sites = sum(len(p.sites) for p in model.processes)
    size = capture.stat().st_size / 1e6
    return f"{capture.name}: {size:.1f} MB, {sites:,} sites, {stacks:,} distinct stacks"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--stacks", type=int, default=120_000, help="call paths of the generated program")
    ap.add_argument("--capture", help="time the reports on this capture instead")
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        capture = Path(args.capture) if args.capture else make_capture(tmp, args.stacks)
        print(describe(capture))
        copy = tmp / "at_exit.mtrace"  # the at-exit reports are written next to it
        shutil.copyfile(capture, copy)
        times = {name: [] for name in REPORTS}
        times["at-exit report (in process)"] = []
        for _ in range(args.runs):
            for name, cmd in REPORTS.items():
                argv = [py, "-m", "tracer", *(a.format(tmp=tmp) for a in cmd), str(capture)]
                times[name].append(timed(argv))
            out = subprocess.run(
                [py, "-c", AT_EXIT, str(copy)], check=True, capture_output=True, text=True
            ).stdout
            times["at-exit report (in process)"].append(float(out))
        medians = {name: statistics.median(v) for name, v in times.items()}
        print(f"{'report':32} {'median s':>9} {'min':>7} {'max':>7}   (runs: {args.runs})")
        for name, values in times.items():
            print(f"{name:32} {medians[name]:9.3f} {min(values):7.3f} {max(values):7.3f}")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"capture": describe(capture), "median_s": medians}, indent=1) + "\n"
            )


if __name__ == "__main__":
    main()
