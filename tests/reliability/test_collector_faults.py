"""What the traced program sees when the collector misbehaves: errno is never touched, a
stopped collector only makes the program wait and loses nothing, a killed collector
never kills or hangs the program nor changes its signal dispositions."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import (
    Raw,
    Shared,
    children_of,
    env_of,
    kill_if_running,
    live_model_check,
    proc_state,
    reaped,
    reaper_popen,
    spawned_pid,
    stats,
    traced_popen,
    wait_for,
    wait_until_blocked,
)


def _target_of(collector: int, exe_name: str, timeout=30) -> int:
    """The traced program: the collector's child running exe_name."""

    def find():
        for pid in children_of(collector):
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith(exe_name):
                    return pid
            except OSError:
                pass
        return None

    return wait_for(find, timeout, what=f"{exe_name} to start")


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- errno -------------------------------------------------------------------------


def test_errno_unchanged_while_collector_runs_stops_and_dies(cbuild, tmp_path):
    """errno = EILSEQ survives every hooked call (malloc, calloc, realloc, reallocarray,
    free, free(NULL), posix_memalign, aligned_alloc, memalign, mmap, mremap, munmap)
    with the collector running, with it stopped so the ring is full and the hooks
    wait, and after it was SIGKILLed so the stream is disabled."""
    exe = cbuild("errno_phases.c")
    shared = Shared(tmp_path / "shared")
    cap = tmp_path / "errno.mtrace"
    env = dict(os.environ, MEMTRACE_RING_SLOTS="1024")
    mt = traced_popen(
        [exe, shared.path, 2000], cap, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    target = None
    try:
        target = _target_of(mt.pid, "errno_phases")
        # memtrace runs the collector in its own process: that is the pid the shim watches
        # (/proc/PID/environ reads empty for a moment after exec: wait for it)
        env = wait_for(lambda: env_of(target), what="the target's environment")
        assert env["MEMTRACE_COLLECTOR_PID"] == str(mt.pid)
        wait_for(lambda: shared.counter == 1, what="phase 1")
        # phase 2: the collector is stopped; the ring (1024 slots) fills and hooks wait
        # (phase 2 makes 34,000 records: it cannot finish without the collector)
        os.kill(mt.pid, signal.SIGSTOP)
        shared.command(2)
        blocked_in = wait_until_blocked(target, lambda: shared.counter, what="phase 2 to block in a hook")
        assert blocked_in == 1, "phase 2 finished with the collector stopped: no backpressure?"
        os.kill(mt.pid, signal.SIGCONT)
        wait_for(lambda: shared.counter == 2, what="phase 2")
        # phase 3: the collector is killed (and reaped, as a shell would)
        os.kill(mt.pid, signal.SIGKILL)
        mt.wait(timeout=10)
        shared.command(3)
        out, err = mt.communicate(timeout=60)  # EOF once the orphaned target exits
    finally:
        if mt.poll() is None:
            os.kill(mt.pid, signal.SIGCONT)
            mt.kill()
            mt.wait()
        kill_if_running(target)
    assert shared.counter == 3
    assert out.split("\n")[:3] == ["phase 1 changed 0", "phase 2 changed 0", "phase 3 changed 0"]


# ---- a stopped collector: backpressure ---------------------------------------------


@pytest.mark.slow
def test_sigstop_collector_10s_target_waits_then_finishes_exactly(cbuild, tmp_path):
    """Backpressure: with the collector stopped for 10 s the program blocks in its hook
    (no progress, no memory growth, no deadlock), and after SIGCONT it finishes with
    every one of its allocations and frees in the capture, nothing dropped."""
    exe = cbuild("alloc_loop.c")
    shared = Shared(tmp_path / "shared")
    cap = tmp_path / "stop.mtrace"
    mt = traced_popen(
        [exe, shared.path, "free", 2345, 0, 0], cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    target = None
    try:
        target = _target_of(mt.pid, "alloc_loop")
        wait_for(lambda: shared.counter > 200_000, what="the target to allocate")
        os.kill(mt.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        # the ring (2^18 slots) fills; then the target waits in its hook
        c1 = wait_until_blocked(target, lambda: shared.counter, what="the target to block")
        rss1 = _rss(target)
        # it stays blocked, alive, without growing, for as long as the collector is
        # stopped (10 s in all): check all along, not only at the end
        counts, states = set(), set()
        while time.monotonic() - stopped < 10.0:
            counts.add(shared.counter)
            states.add(proc_state(target))
            time.sleep(0.05)
        c2, rss2 = shared.counter, _rss(target)
        counts.add(c2)
        os.kill(mt.pid, signal.SIGCONT)
        wait_for(lambda: shared.counter > c2 + 100_000, what="progress after SIGCONT")
        shared.command(1)
        out, err = mt.communicate(timeout=120)
    finally:
        shared.command(1)
        if mt.poll() is None:
            os.kill(mt.pid, signal.SIGCONT)
            mt.kill()
            mt.wait()
        kill_if_running(target)
    assert counts == {c1}, (
        f"the target kept allocating ({max(counts) - c1} more) while the collector was stopped"
    )
    assert rss2 - rss1 < 1 << 20, f"RSS grew by {rss2 - rss1} bytes while blocked"
    assert states <= {"S", "R"}, f"target not alive while blocked: states {states}"
    assert mt.returncode == 0, err
    done = int(re.search(r"done (\d+)", out).group(1))
    assert done > c2
    raw = Raw(cap)
    raw.assert_valid()
    ev = raw.events_of(target)
    assert raw.count(ev, "malloc", 2345) == done
    live, problems = live_model_check(ev)
    assert problems == []
    assert not [a for a, s in live.items() if s == 2345], "a freed 2345-byte block is still live"
    st = stats(cap)
    assert st["dropped_events"] == 0 and st["complete"]


# ---- a killed collector ------------------------------------------------------------


def _signal_masks(text: str) -> dict:
    return dict(re.findall(r"^(SigIgn|SigCgt|SigBlk):\s+([0-9a-f]+)$", text, re.M))


def test_collector_sigkill_target_exits_normally_without_sigpipe(cbuild, tmp_path):
    """The collector is SIGKILLed mid-run (and reaped): the program keeps running,
    fills its ring, notices the collector is gone, finishes, forks a child (whose
    connection is refused) and exits with its own status 7 — never SIGPIPE, never a
    hang. Its signal masks are those of the same program run without memtrace."""
    exe = cbuild("alloc_loop.c")
    untraced = subprocess.run(
        [str(x) for x in (exe, Shared(tmp_path / "plain").path, "free", 4321, 1000, 7)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert untraced.returncode == 7
    plain_masks = _signal_masks(untraced.stdout)
    assert set(plain_masks) == {"SigIgn", "SigCgt", "SigBlk"}

    shared = Shared(tmp_path / "shared")
    cap = tmp_path / "killed.mtrace"
    status_file = tmp_path / "status.jsonl"
    env = dict(os.environ, MEMTRACE_RING_SLOTS="4096")
    rp = reaper_popen(
        status_file,
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-q",
            "-f",
            "-o",
            cap,
            "--",
            exe,
            shared.path,
            "free",
            4321,
            0,
            7,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        collector = wait_for(lambda: spawned_pid(status_file), what="memtrace to start")
        target = _target_of(collector, "alloc_loop")
        wait_for(lambda: shared.counter > 50_000, what="the target to allocate")
        os.kill(collector, signal.SIGKILL)
        at_kill = shared.counter
        # the ring (4096 slots) fills within microseconds; the target must carry on
        wait_for(
            lambda: shared.counter > at_kill + 200_000, timeout=20, what="progress after the collector died"
        )
        shared.command(1)
        out, err = rp.communicate(timeout=60)
    finally:
        if rp.poll() is None:
            rp.kill()
            rp.wait()
    statuses = reaped(status_file)
    assert statuses[collector]["signal"] == signal.SIGKILL
    assert statuses[target] == {"pid": target, "exit_code": 7, "signal": None}, statuses
    assert re.search(r"child \d+ status 0$", out, re.M), out
    assert _signal_masks(out) == plain_masks
    # the capture holds what was drained before the kill, and says it was cut short
    st = stats(cap)
    assert not st["complete"]


@pytest.mark.slow
def test_collector_sigkill_not_yet_reaped_target_still_finishes(cbuild, tmp_path):
    """Same as above, but memtrace's parent does not reap it until the program's output
    ends (what subprocess.run(..., capture_output=True) does): the program must still
    finish within 20 s instead of waiting forever on a zombie collector."""
    exe = cbuild("alloc_loop.c")
    shared = Shared(tmp_path / "shared")
    cap = tmp_path / "zombie.mtrace"
    env = dict(os.environ, MEMTRACE_RING_SLOTS="4096")
    mt = traced_popen(
        [exe, shared.path, "free", 4321, 0, 7],
        cap,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = _target_of(mt.pid, "alloc_loop")
    try:
        wait_for(lambda: shared.counter > 50_000, what="the target to allocate")
        os.kill(mt.pid, signal.SIGKILL)
        wait_for(lambda: proc_state(mt.pid) == "Z", what="memtrace to be a zombie")
        at_kill = shared.counter
        # nothing drains the ring (4096 slots, 2 records an iteration) any more: the
        # target must get past a full ring, then stop when told to, within 20 s
        try:
            wait_for(lambda: shared.counter > at_kill + 100_000, timeout=20, what="progress past a full ring")
            shared.command(1)
            wait_for(lambda: proc_state(target) in (None, "Z"), timeout=20, what="the target to finish")
            finished = True
        except AssertionError:
            finished = False
        stuck_at = shared.counter
    finally:
        shared.command(1)
        mt.wait()  # reaping memtrace releases a stuck target
        mt.communicate(timeout=60)
        kill_if_running(target)
    assert finished, (
        f"target stuck at {stuck_at} allocations ({stuck_at - at_kill} after the kill) with memtrace a zombie"
    )
