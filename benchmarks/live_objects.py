"""Overhead of `--live` and of `--objects`, side by side with the same run without them.

    python benchmarks/live_objects.py [RUNS] [WORKLOAD...] [--json OUT]   (tmux for --live)

For each workload, RUNS rounds, each running the variants back to back in turn (so a
slow moment of the machine hits every variant of a round): untraced, memtrace, and
memtrace with the option. The time is the program's: wall seconds from its start to
its end as the capture records them (`duration` of the end chunk; untraced: measured
around it), and its CPU seconds (`main_cpu_seconds`). A --live run is made in a tmux
terminal of 160 x 40 with the view open the whole time; q is sent once the program
has ended. Prints medians and ratios; --json writes every number.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

# malloc-heavy: ~6 M allocator calls from Python, mostly freed at once, a few kept
ALLOC_HEAVY = """
keep = []
for i in range(1_500_000):
    b = bytearray(600 + i % 4000)
    if i % 1000 == 0:
        keep.append(b)
    s = [i] * (i % 200)
print(len(keep))
"""

# many objects and NumPy arrays alive at the peak: what a census has to walk
OBJECTS = """
import numpy as np
class Row:
    def __init__(self, i):
        self.i = i
        self.name = "row%d" % i
rows = [Row(i) for i in range(300_000)]
arrays = [np.ones(1000 + i) for i in range(2000)]
views = [a[::2] for a in arrays]
total = 0.0
for step in range(30):
    tmp = [np.ones(50_000) for _ in range(20)]
    total += sum(float(t[::1000].sum()) for t in tmp)
    del tmp
print(total, len(rows), len(views))
"""

# the same for about ten seconds: a job long enough to watch
ALLOC_LONG = ALLOC_HEAVY.replace("1_500_000", "10_000_000")

# real programs (benchmarks/realworld), smaller than their defaults
REAL = {"pandas": ("pandas_roundtrip.py", "500000", "67108864"), "pure_python": ("pure_python.py", "300000")}

WORKLOADS = {"alloc_heavy": ALLOC_HEAVY, "alloc_long": ALLOC_LONG, "objects": OBJECTS, **REAL}
VARIANTS = {
    "alloc_heavy": ("untraced", "memtrace", "--live"),
    "alloc_long": ("memtrace", "--live"),
    "objects": ("untraced", "memtrace", "--objects"),
    "pandas": ("untraced", "memtrace", "--objects"),
    "pure_python": ("untraced", "memtrace", "--objects"),
}


def _end(capture: str) -> dict:
    from tracer.analyze.capture import read_capture  # (the installed memtrace)

    return read_capture(capture).end or {}


def run_untraced(script) -> dict:
    t0 = time.monotonic()
    subprocess.run([sys.executable, *script], check=True, stdout=subprocess.DEVNULL)
    return {"wall": time.monotonic() - t0, "cpu": None}


def run_traced(script, tmp: str, *options) -> dict:
    cap = os.path.join(tmp, f"run-{uuid.uuid4().hex[:6]}.mtrace")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-q",
            "--no-report",
            "-o",
            cap,
            *options,
            "--",
            sys.executable,
            *script,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    end = _end(cap)
    return {
        "wall": end["duration"],
        "cpu": end["main_cpu_seconds"],
        "collector_cpu": end["collector_cpu_seconds"],
    }


def run_live(script, tmp: str) -> dict:
    cap = os.path.join(tmp, f"live-{uuid.uuid4().hex[:6]}.mtrace")
    name = "mtbench" + uuid.uuid4().hex[:6]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    tmux = ["tmux", "-L", name]
    subprocess.run(
        tmux
        + [
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "40",
            "-c",
            tmp,
            f"{sys.executable} -m tracer run -q --no-report -o {cap} --live -- "
            f"{sys.executable} {' '.join(script)}; echo EXIT=$?; sleep 30",
        ],
        check=True,
        env=env,
    )
    try:
        while True:
            screen = subprocess.run(
                tmux + ["capture-pane", "-p", "-t", name], capture_output=True, text=True, env=env
            ).stdout
            if "the program ended" in screen:
                subprocess.run(tmux + ["send-keys", "-t", name, "q"], env=env)
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, env=env)
    end = _end(cap)
    return {
        "wall": end["duration"],
        "cpu": end["main_cpu_seconds"],
        "collector_cpu": end["collector_cpu_seconds"],
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 3
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        only = [a for a in sys.argv[1:] if a in WORKLOADS]
        for workload, source in WORKLOADS.items():
            if only and workload not in only:
                continue
            if isinstance(source, tuple):
                script = [os.path.join(HERE, "realworld", source[0]), *source[1:]]
            else:
                script = [os.path.join(tmp, workload + ".py")]
                with open(script[0], "w") as f:
                    f.write(source)
            rows = {v: [] for v in VARIANTS[workload]}
            for _ in range(runs):
                for variant in VARIANTS[workload]:
                    if variant == "untraced":
                        rows[variant].append(run_untraced(script))
                    elif variant == "memtrace":
                        rows[variant].append(run_traced(script, tmp))
                    elif variant == "--live":
                        rows[variant].append(run_live(script, tmp))
                    else:
                        rows[variant].append(run_traced(script, tmp, variant))
            results[workload] = rows
            base = statistics.median(r["wall"] for r in rows["memtrace"])
            plain = statistics.median(r["wall"] for r in rows.get("untraced", rows["memtrace"]))
            for variant, values in rows.items():
                wall = [r["wall"] for r in values]
                cpu = [r["cpu"] for r in values if r["cpu"] is not None]
                col = [r["collector_cpu"] for r in values if r.get("collector_cpu") is not None]
                paired = statistics.median(v["wall"] / m["wall"] for v, m in zip(values, rows["memtrace"]))
                print(
                    f"{workload:12} {variant:9} wall median {statistics.median(wall):6.2f} s "
                    f"(runs {', '.join(f'{w:.2f}' for w in wall)})  "
                    f"x untraced {statistics.median(wall) / plain:5.2f}  "
                    f"x memtrace {statistics.median(wall) / base:5.2f}  paired x memtrace "
                    f"{paired:5.2f}"
                    + (f"  program CPU {statistics.median(cpu):.2f} s" if cpu else "")
                    + (f"  collector CPU {statistics.median(col):.2f} s" if col else "")
                )
    if out_json:
        with open(out_json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    if shutil.which("tmux") is None:
        sys.exit("tmux is needed for the --live runs")
    main()
