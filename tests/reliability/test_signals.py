"""Signals: allocation inside a 10 kHz SIGALRM handler, an application that routes
signals to its own sigtimedwait thread, and a Python fork with
-W always::DeprecationWarning (3.12+ warns when the process has other threads)."""

import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import Raw, live_model_check, stats, traced


@pytest.fixture(scope="module")
def alarm_run(cbuild, tmp_path_factory):
    """One traced run of sigalrm.c for 1 s, shared by the two tests below."""
    exe = cbuild("sigalrm.c")
    cap = tmp_path_factory.mktemp("alarm") / "alarm.mtrace"
    # malloc in a signal handler is undefined behaviour in glibc itself: a handler
    # interrupting glibc's own malloc (not the shim) can corrupt its tcache, traced or
    # not. Such a run (glibc's abort message) is retried; any other failure is not.
    for _attempt in range(3):
        run = traced([exe, 1.0], cap, timeout=120)
        glibc_heap = run.returncode != 0 and any(
            m in run.stderr for m in ("double free or corruption", "malloc():", "free():", "corrupted")
        )
        if not glibc_heap:
            break
        cap.unlink(missing_ok=True)
    assert run.returncode == 0, run.stderr
    handled, main = map(int, re.search(r"handler (\d+) main (\d+)", run.stdout).groups())
    raw = Raw(cap)
    ((sd, ev),) = raw.streams.values()
    return raw, sd, ev, handled, main


def test_malloc_in_sigalrm_handler_at_10khz(alarm_run):
    """A handler doing malloc/free and mmap/munmap fires every 100 us while main loops
    malloc(4321)/free for 1 s: no deadlock, no torn record (the stream replays cleanly
    against the live-set model), every one of main's allocations is there, and the
    handler's recorded calls never exceed what it did."""
    raw, sd, ev, handled, main = alarm_run
    raw.assert_valid()
    assert handled > 2000, handled
    assert raw.count(ev, "malloc", 4321) == main
    live, problems = live_model_check(ev)
    assert problems == []
    assert 4321 not in live.values() and 777 not in live.values()
    assert raw.count(ev, "malloc", 777) <= handled
    assert raw.count(ev, "mmap", 3 * 4096) == raw.count(ev, "munmap", 3 * 4096) <= handled


def test_sigalrm_handler_allocations_recorded_or_counted(alarm_run):
    """Each handler run does one malloc(777) (+ free, mmap, munmap): every one that is
    not recorded (the handler interrupted a hook) is counted as an unrecorded call."""
    raw, sd, ev, handled, _main = alarm_run
    recorded = raw.count(ev, "malloc", 777)
    unrecorded = sd.end.get("unrecorded_reentrant", 0)
    missing = handled - recorded
    assert missing <= unrecorded, (
        f"{handled} handler mallocs: {recorded} recorded, {unrecorded} calls counted "
        f"as unrecorded, {missing} missing"
    )
    assert (missing == 0) == (unrecorded == 0), (missing, unrecorded)
    st = stats(raw.capture.path)
    assert st["processes"][0]["unrecorded_calls"] == unrecorded


# ---- signals routed to the application's own thread --------------------------------


def _sigwait_run(argv):
    proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        m = re.match(r"ready (\d+) (\d+)", ready)
        assert m, (ready, proc.stderr.read() if proc.poll() is not None else "")
        pid, threads = int(m.group(1)), int(m.group(2))
        os.kill(pid, signal.SIGTERM)  # process-directed: any unblocking thread may take it
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, threads, out


def test_sigterm_reaches_the_applications_sigwait_thread(cbuild, tmp_path):
    """Main blocks every signal, a dedicated thread sigtimedwait()s; SIGTERM sent to the
    process reaches that thread, exactly as without memtrace: same exit status (42),
    same output, same thread count (the shim adds no thread that could steal it)."""
    exe = cbuild("sigwait_thread.c", "-pthread")
    plain_rc, plain_threads, plain_out = _sigwait_run([exe])
    assert (plain_rc, plain_threads, plain_out) == (42, 2, "waiter got 15\n")
    cap = tmp_path / "sigwait.mtrace"
    cmd = [sys.executable, "-m", "tracer", "run", "-q", "-f", "-o", cap, "--", exe]
    rc, threads, out = _sigwait_run(cmd)
    assert (rc, threads, out) == (plain_rc, plain_threads, plain_out)
    raw = Raw(cap)
    raw.assert_valid()


# ---- no thread of memtrace's in the program ----------------------------------------

FORK_SCRIPT = """
import os, sys
def threads():
    stat = open("/proc/self/stat").read()
    return int(stat[stat.rindex(")") + 2:].split()[17])   # field 20: num_threads
before = threads()
pid = os.fork()
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(before, threads(), status)
"""


def test_traced_python_has_one_thread_before_fork(tmp_path):
    """Any Python: under memtrace a single-threaded script still has exactly one thread
    (field 20 of /proc/self/stat, what CPython 3.12+ reads to decide to warn)."""
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    cap = tmp_path / "fork.mtrace"
    run = traced([sys.executable, "-W", "always::DeprecationWarning", script], cap, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1 1 0\n"
    assert run.stderr == ""


def test_python312_fork_warning_not_triggered(tmp_path):
    """Python 3.12+: os.fork() in a single-threaded traced script emits no
    DeprecationWarning. (-W always, not -W error: 3.12 swallows the error raised from
    the warning inside os.fork, so only a printed warning is observable.) A control run
    with one extra thread proves the warning would be seen."""
    if sys.version_info < (3, 12):
        pytest.skip(f"the fork-with-threads warning exists from 3.12; this is {sys.version.split()[0]}")
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    cap = tmp_path / "fork312.mtrace"
    run = traced([sys.executable, "-W", "always::DeprecationWarning", script], cap, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout == "1 1 0\n"
    st = stats(cap)
    assert st["processes"][0]["python"], "traced without frames: memtrace not installed here?"
    control = tmp_path / "control.py"
    control.write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n" + FORK_SCRIPT
    )
    run = traced(
        [sys.executable, "-W", "always::DeprecationWarning", control], tmp_path / "control.mtrace", timeout=60
    )
    assert run.returncode == 0 and "is multi-threaded, use of fork()" in run.stderr
