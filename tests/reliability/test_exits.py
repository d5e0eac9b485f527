"""How processes end: exit() from a worker thread while others allocate, the exits that
skip atexit, abort, SIGKILL from inside and outside, and an OOM kill in a memory-limited
cgroup. Whatever the process committed before it ended is in the capture, and the ending
is named."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import Raw, Shared, children_of, chunk_types, library_row, stats, traced, traced_popen, wait_for
from tracer import _format as fmt

ENDINGS = [  # mode, exit status of memtrace, end as stats names it
    ("_exit", 3, {"exit_code": 3, "signal": None}),
    ("_Exit", 3, {"exit_code": 3, "signal": None}),
    ("quick_exit", 3, {"exit_code": 3, "signal": None}),
    ("abort", 128 + 6, {"exit_code": None, "signal": 6}),
    ("sigkill", 128 + 9, {"exit_code": None, "signal": 9}),
    ("segv", 128 + 11, {"exit_code": None, "signal": 11}),
]


# ---- endings that skip atexit, and signal deaths -----------------------------------


@pytest.mark.parametrize("mode,status,end", ENDINGS, ids=[m for m, _, _ in ENDINGS])
def test_abrupt_exit_keeps_the_single_allocation(cbuild, tmp_path, mode, status, end):
    """bytehound's test_immediate_exit_*: one malloc(12001), then an ending that skips
    atexit and destructors. The block is in the capture, live at the end; the ending
    is named (exit code or signal); the stream is marked as not ended by exit()."""
    exe = cbuild("abrupt.c")
    cap = tmp_path / f"{mode}.mtrace"
    run = traced([exe, mode], cap, timeout=60)
    assert run.returncode == status, run.stderr
    st = stats(cap)
    row = library_row(st, "abrupt")
    assert (row["allocated_bytes"], row["n_allocations"], row["live_at_exit_bytes"]) == (12001, 1, 12001)
    assert st["processes"][0]["end"] == end
    assert st["complete"] and st["dropped_events"] == 0
    raw = Raw(cap)
    raw.assert_valid()
    ((sd, _),) = raw.streams.values()
    # not exit(): named from the status _exit() got, from the zombie's wait status
    # (when the launcher has not reaped it yet), or left as "killed_or_exit"
    assert sd.end["how"] in ("_exit", "signal", "killed_or_exit"), sd.end
    if sd.end["how"] == "_exit":
        assert sd.end["exit_code"] == end["exit_code"]
    if sd.end["how"] == "signal":
        assert sd.end["signal"] == end["signal"]
    summary = subprocess.run(
        [sys.executable, "-m", "tracer", "summary", str(cap)], capture_output=True, text=True, timeout=60
    )
    named = f"killed by signal {end['signal']}" if end["signal"] else f"exited with code {end['exit_code']}"
    assert named in summary.stdout


PY_ABRUPT = """
import ctypes, os, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
block = libc.malloc(12001)      # THE-BLOCK
if sys.argv[1] == "os._exit":
    os._exit(3)
os.abort()
"""


@pytest.mark.parametrize("how,status", [("os._exit", 3), ("os.abort", 128 + 6)])
def test_python_abrupt_exit_keeps_the_allocation_on_its_line(tmp_path, how, status):
    script = tmp_path / "abrupt.py"
    script.write_text(PY_ABRUPT)
    cap = tmp_path / "py.mtrace"
    run = traced([sys.executable, script, how], cap, timeout=60)
    assert run.returncode == status, run.stderr
    st = stats(cap)
    rows = [r for r in st["by_line"] if r["file"].endswith("abrupt.py") and r["line"] == 6]
    assert len(rows) == 1 and rows[0]["allocators"] == {"malloc": 12001}
    assert rows[0]["n_allocations"] == 1 and rows[0]["live_at_exit_bytes"] == 12001


FORKED_ENDING = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
pids = []
for how in ("exit3", "kill9"):
    pid = os.fork()
    if pid == 0:
        libc.malloc(12001)
        if how == "exit3":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    pids.append(pid)
print(*pids)
"""


def test_child_ending_is_named(tmp_path):
    script = tmp_path / "kids.py"
    script.write_text(FORKED_ENDING)
    cap = tmp_path / "kids.mtrace"
    run = traced([sys.executable, script], cap, timeout=60)
    assert run.returncode == 0, run.stderr
    exited, killed = map(int, run.stdout.split())
    st = stats(cap)
    ends = {p["pid"]: p["end"] for p in st["processes"]}
    assert ends[exited] != ends[killed], ends


# ---- exit() from a worker thread ---------------------------------------------------


def test_exit_from_worker_thread_while_eight_threads_allocate(cbuild, tmp_path):
    """A thread calls exit(0) while 8 threads loop malloc/free: no crash or hang, exit
    status 0, the capture ends with END (nothing after it), the stream is marked as
    ended by exit(), and each thread's recorded mallocs equal the calls it completed
    (at most one more: the call in flight when the process died). Five runs."""
    exe = cbuild("exit_from_thread.c", "-pthread")
    for attempt in range(5):
        shared = Shared(tmp_path / f"shared{attempt}")
        cap = tmp_path / f"exit{attempt}.mtrace"
        run = traced([exe, shared.path], cap, timeout=60)
        assert run.returncode == 0, (attempt, run.stderr)
        done = np.frombuffer(shared.path.read_bytes()[:64], dtype="<u8")
        raw = Raw(cap)
        raw.assert_valid(allow_lost=8)  # a thread killed between claim and commit
        assert chunk_types(cap)[-1] == fmt.CHUNK_END
        ((sd, ev),) = raw.streams.values()
        assert sd.end["how"] == "exit"
        for i in range(8):
            recorded = raw.count(ev, "malloc", 1000 + i)
            assert done[i] > 0 and done[i] <= recorded <= done[i] + 1, (attempt, i, done[i], recorded)
        assert stats(cap)["exit_code"] == 0


# ---- SIGKILL and the OOM killer ----------------------------------------------------


def test_sigkill_after_100k_events_keeps_every_one(cbuild, tmp_path):
    """memray's test_tracking_with_SIGKILL, natively: 1 + 100,000 allocations, then the
    process SIGKILLs itself. Status 128+9, signal 9 named, every allocation kept."""
    exe = cbuild("abrupt.c")
    cap = tmp_path / "kill.mtrace"
    run = traced([exe, "sigkill", 100_000], cap, timeout=60)
    assert run.returncode == 128 + 9
    st = stats(cap)
    row = library_row(st, "abrupt")
    assert row["n_allocations"] == 100_001
    assert row["allocated_bytes"] == 12001 + 100_000 * 101
    assert st["signal"] == 9 and st["dropped_events"] == 0


def test_external_sigkill_mid_run_keeps_everything_committed(cbuild, tmp_path):
    """SIGKILL from outside while the program allocates as fast as it can: the capture
    holds exactly the allocations the program completed (its own counter, written after
    each malloc returned), or one more (the call in flight)."""
    exe = cbuild("alloc_loop.c")
    shared = Shared(tmp_path / "shared")
    cap = tmp_path / "extkill.mtrace"
    mt = traced_popen(
        [exe, shared.path, "free", 5555, 0, 0], cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        target = wait_for(lambda: children_of(mt.pid), what="the target")[0]
        wait_for(lambda: shared.counter > 300_000, what="allocations")
        os.kill(target, signal.SIGKILL)
        mt.communicate(timeout=60)
    finally:
        if mt.poll() is None:
            mt.kill()
            mt.wait()
    assert mt.returncode == 128 + 9
    done = shared.counter
    raw = Raw(cap)
    raw.assert_valid(allow_lost=1)
    recorded = raw.count(raw.events_of(target), "malloc", 5555)
    assert done <= recorded <= done + 1, (done, recorded)
    assert stats(cap)["signal"] == 9


def _memory_cgroup_parent():
    """Our own cgroup v1 memory directory, or (None, reason)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc}"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            break
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            if "memory" not in (base / "cgroup.controllers").read_text().split():
                return None, f"cgroup v2 {base} has no memory controller"
            break
    else:
        return None, "no memory cgroup in /proc/self/cgroup"
    if not os.access(base, os.W_OK):
        return None, f"{base} is not writable (needs root or a delegated cgroup)"
    return base, None


def test_oom_kill_in_memory_limited_cgroup(cbuild, tmp_path):
    """The program (alone, not memtrace) runs in a cgroup limited to 64 MiB and touches
    64 KiB blocks until the kernel's OOM killer SIGKILLs it: memtrace names signal 9,
    the cgroup counts one OOM kill, and the capture holds the allocations the program
    completed (or one more)."""
    parent, reason = _memory_cgroup_parent()
    if parent is None:
        pytest.skip(f"cannot create a memory cgroup here: {reason}")
    group = parent / f"memtrace-oom-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: mkdir {group}: {exc}")
    try:
        v1 = (group / "memory.limit_in_bytes").exists()
        (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(64 << 20))
        if not v1:
            (group / "memory.swap.max").write_text("0")
        exe = cbuild("alloc_loop.c")
        shared = Shared(tmp_path / "shared")
        cap = tmp_path / "oom.mtrace"
        # only the program joins the cgroup: sh moves itself there, then execs it
        script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        run = traced(["/bin/sh", "-c", script, "sh", exe, shared.path, "leak", 65536, 0, 0], cap, timeout=120)
        events = (group / ("memory.oom_control" if v1 else "memory.events")).read_text()
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert run.returncode == 128 + 9, run.stderr
    assert int(re.search(r"oom_kill (\d+)", events).group(1)) == 1, events
    done = shared.counter
    assert 100 < done < 1100, done  # 64 MiB / 64 KiB, less what the ring and libc use
    raw = Raw(cap)
    raw.assert_valid(allow_lost=1)
    prog = [sd.info["pid"] for sd, _ in raw.streams.values()][-1]
    recorded = raw.count(raw.events_of(prog), "malloc", 65536)
    assert done <= recorded <= done + 1, (done, recorded)
    st = stats(cap)
    assert st["signal"] == 9


def test_exit_point_has_every_event_of_a_burst(cbuild, tmp_path):
    """20,000 frees made just before exit() are still in the ring when the process says
    it is exiting (the collector drains a page behind busy producers): the exit
    checkpoint holds every one of them, every time."""
    exe = cbuild("free_then_exit.c")
    for i in range(5):
        cap = tmp_path / f"burst{i}.mtrace"
        run = traced([exe, "20000"], cap, timeout=60)
        assert run.returncode == 0, run.stderr
        row = library_row(stats(cap), "free_then_exit")
        assert row["n_allocations"] == 20000 + 1 + 10
        assert row["live_at_exit_bytes"] == 10 * 70_000, row
