"""An unprefixed jemalloc preloaded with the shim, in both orders.

- shim first (`LD_PRELOAD=libjemalloc.so.2 memtrace …`: the launcher puts the shim in
  front): RTLD_NEXT from the shim finds jemalloc, so every block comes from and goes
  back to jemalloc. Allocs and frees balance exactly, no unknown frees.
- jemalloc first (re-exec'd by `env` with `LD_PRELOAD=libjemalloc:shim`): jemalloc's
  malloc shadows the shim's, so the malloc family is not seen at all (documented
  limit); the program must still run normally, nothing is freed across allocators,
  and nothing goes negative.
- jemalloc's malloc calls mmap while holding its locks: the shim's guard
  makes those nested mmaps pass through unrecorded — each user malloc is exactly one
  event and no jemalloc mmap is counted on top of it — and nothing deadlocks.
"""

import ctypes.util
import glob
import os
import sys

import numpy as np
import pytest

from helpers import TARGETS, build, shim_so, stats, streams, traced


def jemalloc_path():
    for pattern in (
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "/usr/lib/*/libjemalloc.so.2",
        "/usr/lib64/libjemalloc.so.2",
        "/usr/local/lib/libjemalloc.so.2",
    ):
        found = glob.glob(pattern)
        if found:
            return found[0]
    name = ctypes.util.find_library("jemalloc")
    if name is None:
        pytest.skip("jemalloc is not installed (apt-get install libjemalloc2)")
    return name


WORKLOAD = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
for rnd in range(5):
    blocks = [libc.malloc(50_000) for i in range(200)]      # ALLOC
    for b in blocks:
        libc.free(b)                                        # FREE
kept = [libc.malloc(70_000) for i in range(10)]             # KEEP
big = [bytearray(3_000_000) for i in range(3)]
del big
print("done")
"""


def run_python(tmp_path, env_preload=None, jemalloc_first=False):
    script = tmp_path / "work.py"
    script.write_text(WORKLOAD)
    cap = tmp_path / "je.mtrace"
    env = dict(os.environ, PYTHONMALLOC="malloc")
    je = jemalloc_path()
    if jemalloc_first:
        argv = ["env", f"LD_PRELOAD={je}:{shim_so()}", sys.executable, script]
    else:
        env["LD_PRELOAD"] = je
        argv = [sys.executable, script]
    run = traced(argv, cap, "--no-report", timeout=60, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "done" in run.stdout
    return cap, script


def rows(st, script):
    text = script.read_text().splitlines()
    marks = {m: n for n, line in enumerate(text, 1) for m in ("ALLOC", "FREE", "KEEP") if f"# {m}" in line}
    by = {}
    for r in st["by_line"]:
        if r["file"].endswith("work.py"):
            by[r["line"]] = r
    return {m: by.get(n) for m, n in marks.items()}


def test_shim_before_jemalloc_balances(tmp_path):
    cap, script = run_python(tmp_path)
    st = stats(cap)
    python = [p for p in st["processes"] if p["exe"] and "python" in os.path.basename(p["exe"])]
    assert python and all(p["unknown_frees"] == 0 for p in python)
    # ctypes calls malloc through libffi: exactly the program's blocks, all freed but KEEP's
    ffi = [r for r in st["by_library"] if r["library"].startswith("libffi")]
    assert len(ffi) == 1, st["by_library"]
    assert ffi[0]["allocated_bytes"] == 5 * 200 * 50_000 + 10 * 70_000
    assert ffi[0]["n_allocations"] == 5 * 200 + 10
    assert ffi[0]["live_at_exit_bytes"] == 10 * 70_000
    r = rows(st, script)
    assert (
        r["ALLOC"]["libraries"].get("libffi.so.8", 0)
        + sum(
            row["libraries"].get("libffi.so.8", 0)
            for row in st["by_line"]
            if row["file"].endswith("work.py") and row["line"] == r["ALLOC"]["line"] and row is not r["ALLOC"]
        )
        == 5 * 200 * 50_000
    )
    # the caller of every recorded block is the program (ctypes), never jemalloc itself
    ((proc, events),) = [(p, e) for p, e in streams(cap) if p.exe and "python" in p.exe]
    allocations = events[(events["kind"] >= 1) & (events["kind"] <= 9)]
    callers = {proc.libs.get(int(lid), "<unknown>") for lid in np.unique(allocations["lib"])}
    assert not [path for path in callers if "jemalloc" in path], callers


def test_jemalloc_before_shim_runs_and_stays_consistent(tmp_path):
    cap, script = run_python(tmp_path, jemalloc_first=True)
    st = stats(cap)
    python = [p for p in st["processes"] if p["exe"] and "python" in os.path.basename(p["exe"])]
    assert python, st["processes"]
    for p in python:
        assert p["unknown_frees"] == 0  # no jemalloc block was freed through the shim
        assert p["live_at_exit_bytes"] >= 0 and p["peak_heap_bytes"] >= 0
    # jemalloc's malloc shadows the shim's: the program's mallocs are not seen (documented)
    assert not [r for r in st["by_library"] if r["library"].startswith("libffi")]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jeguard")
    exe = build(TARGETS / "jemalloc_guard.c", tmp / "jemalloc_guard")
    cap = tmp / "g.mtrace"
    env = dict(os.environ, LD_PRELOAD=jemalloc_path())
    run = traced([exe], cap, "--no-report", timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    return cap, int(run.stdout.split()[1])


def test_each_malloc_is_one_event_under_jemalloc(guarded):
    cap, calls = guarded
    ((proc, events),) = streams(cap)
    exe = {lid for lid, path in proc.libs.items() if path.endswith("/jemalloc_guard")}
    mine = events[np.isin(events["lib"], list(exe))]
    assert int((mine["kind"] == 1).sum()) == calls
    assert int((mine["size"] == 4 << 20).sum()) == calls // 2
    # jemalloc maps its extents with mmap from inside malloc: none of that is recorded
    je = {lid for lid, path in proc.libs.items() if "jemalloc" in os.path.basename(path)}
    je_maps = events[np.isin(events["lib"], list(je)) & np.isin(events["kind"], [11, 13])]
    assert len(je_maps) == 0, je_maps
    st = stats(cap)
    row = [r for r in st["by_library"] if r["library"] == "jemalloc_guard"][0]
    assert row["allocated_bytes"] == (calls // 2) * (4 << 20) + 3 * sum(24 + i for i in range(48))
    assert row["live_at_exit_bytes"] == 0
    assert st["processes"][0]["unknown_frees"] == 0
