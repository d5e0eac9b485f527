"""Reconciliation on real programs: the dominant row within 10%, the residual at most
5% of RSS, and rows that add up to RSS."""

import json
import sys

import pytest

from helpers import ROOT, build, memtrace

ROWS = (
    "heap_resident_bytes",
    "tracer_bytes",
    "allocator_free_bytes",
    "allocator_overhead_bytes",
    "pymalloc_free_bytes",
    "file_backed_bytes",
    "stacks_and_other_anon_bytes",
    "untracked_bytes",
    "residual_bytes",
)
WORKLOADS = ROOT / "benchmarks" / "workloads"
MiB = 1 << 20


def reconciled(tmp_path, argv, name="r"):
    cap = tmp_path / f"{name}.mtrace"
    run = memtrace("run", "-q", "--no-report", "-o", cap, "--", *argv, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    main = str(stats["processes"][0]["pid"])
    return stats["reconciliation"][main], stats, cap


def check_adds_up(row):
    assert "error" not in row, row
    total = sum(row[k] or 0 for k in ROWS)
    assert total == row["rss_bytes"]
    assert abs(row["residual_bytes"]) <= 0.05 * row["rss_bytes"], row


def python(tmp_path, source, name):
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return [sys.executable, str(script)]


def test_glibc_keeps_freed_small_blocks(tmp_path):
    # GIVEN 300 MB of 1 KiB blocks, all freed but every 64th (which pins the arena)
    argv = python(
        tmp_path,
        """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(1024) for i in range(300 * 1024)]
for i, p in enumerate(blocks):
    if i % 64:
        libc.free(p)
""",
        "glibc",
    )
    rows, stats, _ = reconciled(tmp_path, argv, "glibc")
    at_exit = rows["at_exit"]
    check_adds_up(at_exit)
    freed = 300 * 1024 * 1024 * 63 // 64
    # THEN RSS stays high and glibc's free memory is about what was freed
    assert at_exit["rss_bytes"] > freed
    assert abs(at_exit["allocator_free_bytes"] - freed) <= 0.10 * freed, at_exit
    check_adds_up(rows["at_peak"])


def test_pymalloc_keeps_arenas_of_dead_objects(tmp_path):
    argv = python(
        tmp_path,
        """
objs = [(i,) for i in range(2_000_000)]
keep = objs[::1000]
del objs
""",
        "pym",
    )
    rows, stats, _ = reconciled(tmp_path, argv, "pym")
    at_exit = rows["at_exit"]
    check_adds_up(at_exit)
    # 2 M one-tuples (and their ints) died; every 1000th still pins its arena
    assert at_exit["pymalloc_free_bytes"] >= 100 * MiB, at_exit
    assert at_exit["pymalloc_free_bytes"] >= 0.5 * at_exit["rss_bytes"]


def test_untouched_arrays(tmp_path):
    pytest.importorskip("numpy")
    argv = python(
        tmp_path,
        """
import numpy as np
never = np.zeros(100_000_000)            # 800 MB, never written
half = np.empty(100_000_000)             # 800 MB, half written
half[:50_000_000] = 1.0
""",
        "untouched",
    )
    rows, stats, _ = reconciled(tmp_path, argv, "untouched")
    at_exit = rows["at_exit"]
    check_adds_up(at_exit)
    expected = 800_000_000 + 400_000_000
    assert abs(at_exit["untouched_bytes"] - expected) <= 0.10 * expected, at_exit
    assert at_exit["heap_resident_bytes"] >= 400_000_000


def test_mapped_file_is_library_memory(tmp_path):
    data = tmp_path / "big.bin"
    with open(data, "wb") as f:
        f.truncate(200 * MiB)
    argv = python(
        tmp_path,
        f"""
import mmap
with open({str(data)!r}, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    total = 0
    for off in range(0, len(m), 4096):
        total += m[off]
""",
        "files",
    )
    rows, stats, _ = reconciled(tmp_path, argv, "files")
    at_exit = rows["at_exit"]
    check_adds_up(at_exit)
    assert at_exit["file_backed_bytes"] >= 200 * MiB
    biggest = max(ROWS, key=lambda k: at_exit[k] or 0)
    assert biggest == "file_backed_bytes"


def test_thread_stacks(tmp_path):
    exe = build("parked_threads.c", tmp_path / "parked", "-pthread")
    rows, stats, _ = reconciled(tmp_path, [str(exe)], "threads")
    at_exit = rows["at_exit"]
    check_adds_up(at_exit)
    assert 16 * MiB <= at_exit["stacks_and_other_anon_bytes"] <= 1.10 * 16 * MiB + 2 * MiB, at_exit


@pytest.mark.slow
@pytest.mark.parametrize(
    "workload,args",
    [
        ("alloc_storm", ["2000000"]),
        ("malloc_heavy", ["5"]),
        ("numpy_churn", ["4000"]),
        ("py_objects", ["2"]),
        ("threads", ["20000"]),
    ],
)
def test_workloads_are_explained(tmp_path, workload, args):
    rows, stats, _ = reconciled(
        tmp_path, [sys.executable, str(WORKLOADS / f"{workload}.py"), *args], workload
    )
    check_adds_up(rows["at_peak"])
    check_adds_up(rows["at_exit"])


def test_reconcile_command_and_digest(tmp_path):
    # (it keeps allocating a moment: the collector, still importing while a program
    # starts, asks for glibc's books from its first round on, and a program answers
    # inside its next allocator call)
    argv = python(
        tmp_path,
        "import time\nx = [bytes(5000) for i in range(20000)]\n"
        "end = time.time() + 0.3\n"
        "while time.time() < end:\n    y = bytes(6000)\n",
        "digest",
    )
    cap = tmp_path / "digest.mtrace"
    run = memtrace("run", "-o", cap, "--", *argv, cwd=tmp_path)
    assert run.returncode == 0
    assert "RSS at the heap peak" in run.stderr and "explained" in run.stderr
    out = memtrace("reconcile", cap)
    assert out.returncode == 0, out.stderr
    assert "at the heap peak" in out.stdout and "at exit" in out.stdout
    assert "RSS (from /proc/" in out.stdout
    timeline = json.loads(memtrace("stats", "--json", cap).stdout)["timeline"]
    samples = next(iter(timeline.values()))
    assert samples and all(len(s) == 4 for s in samples)
    assert any(s[3] for s in samples)  # glibc's books arrived while it ran


def test_peak_held_in_a_long_call_is_read_at_once(tmp_path):
    # GIVEN a program that reaches its peak a moment after a large allocation (growth
    # too small to have asked for a snapshot by the old 2% rule), then holds it in a
    # long call without allocating, then frees it
    argv = python(
        tmp_path,
        """
import time
big = b"x" * (200 << 20)
top = b"y" * (1 << 20)                 # the peak: 0.5% more, just after
time.sleep(1.0)                        # a long call: no allocation, no pending call
del big, top
time.sleep(0.2)
""",
        "held",
    )
    rows, stats, cap = reconciled(tmp_path, argv, "held")
    peak = rows["at_peak"]
    check_adds_up(peak)
    # THEN /proc was read at the peak, not once the heap fell a second later
    d = peak["distance"]
    assert 0 <= d["snapshot"]["seconds"] <= 0.05, d
    assert peak["heap_at_snapshot_bytes"] == peak["peak_heap_bytes"]
    assert peak["heap_resident_bytes"] >= (200 << 20) + (1 << 20)
    # the program's own books come when it next runs (after the sleep), and say so
    out = memtrace("reconcile", cap).stdout
    assert "smaps and the traced heap: read" in out and "after the peak" in out
    if d["pymalloc"] is not None:
        assert d["pymalloc"]["seconds"] >= 0.5, d


def test_snapshots_from_older_captures_still_reconcile(tmp_path):
    # GIVEN a capture whose snapshots lack what newer collectors record (the event
    # count at the read, the peak's event, what the read cost)
    import io

    from tracer.analyze.model import load
    from tracer.reports import stats, summary

    argv = python(tmp_path, "x = [bytes(5000) for i in range(4000)]\n", "older")
    _, _, cap = reconciled(tmp_path, argv, "older")
    model = load(str(cap))
    older = ("events", "peak_event", "cost")
    for proc in model.processes:
        proc.snapshots = [{k: v for k, v in dict(snap).items() if k not in older} for snap in proc.snapshots]
    # THEN every report still has its numbers, distances taken from ring positions
    doc = stats.stats(model)
    at_peak = doc["reconciliation"][str(model.processes[0].pid)]["at_peak"]
    assert "error" not in at_peak and at_peak["distance"]["snapshot"]["seconds"] is not None
    out = io.StringIO()
    summary.render(model, out)
    assert "RSS at the heap peak" in out.getvalue()
