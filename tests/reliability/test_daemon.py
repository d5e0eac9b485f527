"""A daemon that closes every descriptor: the shim owns no descriptor once its stream is
set up (the memfd went over the socket, which it closed), so nothing it does can land in
the program's files, and the daemon is still traced."""

import os
import signal
import subprocess
import time

import pytest

from helpers import Raw, proc_state, traced, traced_popen, wait_for


def _run_daemon(cbuild, tmp_path, *extra):
    exe = cbuild("daemon.c")
    log, pidfile = tmp_path / "daemon.log", tmp_path / "daemon.pid"
    cap = tmp_path / "daemon.mtrace"
    run = traced([exe, log, pidfile, *extra], cap, timeout=60)
    if "no-rt" in run.stderr:
        pytest.skip("SCHED_FIFO not permitted: cannot order the intermediate's exit first")
    # the program's own status and output pass through
    assert run.returncode == 5, run.stderr
    # the shim holds no descriptor at main(): only the three the launcher gave it
    assert run.stdout == "fds 0 1 2\n"
    # memtrace ended once every traced process had (the daemon among them): its file
    # holds exactly what it wrote (the shim wrote nothing there, though fds 3..63 were
    # all that file)
    expected = "".join(f"line {i}\n" for i in range(500)) + "end\n"
    assert log.read_text() == expected
    daemon = int(pidfile.read_text())
    raw = Raw(cap)
    raw.assert_valid()
    main = raw.capture.end["main_pid"]
    procs = {sd.info["pid"]: sd for sd, _ in raw.streams.values()}
    # main -> intermediate child -> daemon -> its child: four streams, one each
    assert len(procs) == 4 and len(raw.streams) == 4, {p: sd.info for p, sd in procs.items()}
    middle = [p for p, sd in procs.items() if p != daemon and sd.info["ppid"] == main]
    assert len(middle) == 1
    return raw, daemon, middle[0], procs


def test_double_fork_daemon_closing_all_fds(cbuild, tmp_path):
    """main forks, the child setsid()s and forks the daemon, which closes every fd
    (close_range), reopens 0-2 on /dev/null, opens its log and dup2()s it over fds
    4..63, allocates and forks: the log is byte-identical to what it wrote, the exit
    status (5) and stdout pass through, every process is traced with exact counts."""
    raw, daemon, _middle, procs = _run_daemon(cbuild, tmp_path)
    ev = raw.events_of(daemon)
    assert raw.count(ev, "malloc", 7777) == 500
    assert procs[daemon].end["how"] == "exit"
    grandchild = [p for p, sd in procs.items() if sd.info["ppid"] == daemon]
    assert len(grandchild) == 1
    assert raw.count(raw.events_of(grandchild[0]), "malloc", 8888) == 10


def test_double_fork_daemon_stream_names_its_real_parent(cbuild, tmp_path):
    """The daemon's stream must name the process that forked it (the intermediate child),
    so the tree main -> child -> daemon can be rebuilt."""
    _raw, daemon, middle, procs = _run_daemon(cbuild, tmp_path, "pin")
    assert procs[daemon].info["ppid"] == middle


def test_child_forked_just_before_main_exits_is_traced(cbuild, tmp_path):
    """Main forks, then _exit(0)s before the child ran; the child is held 300 ms (as a
    busy machine might delay it), well inside the 2 s memtrace waits for children its
    processes forked (parents count their forks): the child is traced, its stream
    names main as its parent and holds its malloc(12001)."""
    exe = cbuild("fork_and_leave.c")
    cap = tmp_path / "leave.mtrace"
    mt = traced_popen([exe], cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = mt.stdout.readline()
        if not line.strip():
            err = mt.stderr.read()
            if "no-rt" in err:
                pytest.skip("SCHED_FIFO not permitted: cannot hold the child before it runs")
            raise AssertionError(err)
        child = int(line)
        wait_for(lambda: proc_state(child) == "T", timeout=5, what="the child to be stopped")
        time.sleep(0.3)  # the delay under test, not a wait for something
        os.kill(child, signal.SIGCONT)
        mt.communicate(timeout=30)
    finally:
        if mt.poll() is None:
            mt.kill()
            mt.wait()
    assert mt.returncode == 0
    raw = Raw(cap)
    raw.assert_valid()
    streams = raw.of_pid(child)
    assert len(streams) == 1, f"child {child}: {len(streams)} streams of {len(raw.streams)}"
    ((sd, events),) = streams
    assert sd.info["ppid"] == raw.capture.end["main_pid"]
    assert (sd.end["how"], sd.end.get("exit_code")) == ("_exit", 0), sd.end  # traced to its end
    assert raw.count(events, "malloc", 12001) == 1
