"""fork under load: no deadlock, every child's own stream holds exactly what the child
did, the parent's stream holds exactly what the parent did."""

import re
from collections import Counter

import pytest

from helpers import Raw, live_model_check, traced


def _children(raw, main):
    return [(sd, ev) for sd, ev in raw.streams.values() if sd.info["pid"] != main]


@pytest.mark.slow
def test_fork_storm_under_threads(cbuild, tmp_path):
    """glibc tst-malloc-fork-deadlock under the shim: 4 threads fork for 3 s (children
    malloc+free and _exit(17)) while 8 threads getline/malloc/free and one fflush(NULL)s."""
    exe = cbuild("fork_storm.c", "-pthread")
    cap = tmp_path / "storm.mtrace"
    run = traced([exe, 3], cap, timeout=120)
    assert run.returncode == 0, run.stderr
    forks, bad = map(int, re.search(r"forks (\d+) bad (\d+)", run.stdout).groups())
    assert bad == 0 and forks > 100
    per_thread = {int(s): int(c) for s, c in re.findall(r"size (\d+) count (\d+)", run.stdout)}
    assert len(per_thread) == 8

    raw = Raw(cap)
    raw.assert_valid()
    main = raw.capture.end["main_pid"]
    # the parent's stream: exactly each thread's allocations of its own size
    ev = raw.events_of(main)
    assert {size: raw.count(ev, "malloc", size) for size in per_thread} == per_thread
    assert raw.count(ev, "malloc", 3131) == 0, "a child's allocation in the parent's stream"
    _live, problems = live_model_check(ev)
    assert problems == []
    # one stream per child, each child's own malloc(3131) + free, ended by _exit
    kids = _children(raw, main)
    assert len(kids) == forks
    assert {sd.info["ppid"] for sd, _ in kids} == {main}
    assert len({sd.info["pid"] for sd, _ in kids}) == forks
    assert Counter(raw.count(ev, "malloc", 3131) for _, ev in kids) == {1: forks}
    assert Counter(sd.end["how"] for sd, _ in kids) == {"_exit": forks}
    assert Counter(sd.end.get("exit_code") for sd, _ in kids) == {17: forks}
    for _, kev in kids:
        live, problems = live_model_check(kev, forked=True)
        assert problems == [] and 3131 not in live.values()


def test_fork_in_signal_handler_1000_times(cbuild, tmp_path):
    """glibc tst-mallocfork2 under the shim: SIGUSR1 from another process, the handler
    forks (often while the interrupted main loop is inside a hook); 1000 signals, no
    deadlock, every child exits 0 and has its own stream; the main loop's allocations
    are all in the parent's stream."""
    exe = cbuild("fork_in_handler.c")
    cap = tmp_path / "handler.mtrace"
    run = traced([exe, 1000], cap, timeout=120)
    assert run.returncode == 0, run.stderr
    handled, forks, bad, main_allocs = map(
        int, re.search(r"handled (\d+) forks (\d+) bad (\d+) main (\d+)", run.stdout).groups()
    )
    assert handled >= 1000 and forks == handled and bad == 0
    raw = Raw(cap)
    raw.assert_valid()
    main = raw.capture.end["main_pid"]
    ev = raw.events_of(main)
    assert sum(raw.count(ev, "malloc", s) for s in (16, 300, 4000, 70000, 200000)) == main_allocs
    _live, problems = live_model_check(ev)
    assert problems == []
    kids = _children(raw, main)
    # the handler's children plus the signal-sender process
    assert len(kids) == forks + 1
    assert {sd.info["ppid"] for sd, _ in kids} == {main}


def test_fork_in_signal_handler_child_allocations_accounted(cbuild, tmp_path):
    """Each handler child maps 13 pages (mmap + munmap, async-signal-safe): the mapping
    must be in the child's stream or be counted (as an unrecorded call of that child,
    when the signal interrupted a hook) — never silently missing."""
    exe = cbuild("fork_in_handler.c")
    cap = tmp_path / "handler.mtrace"
    run = traced([exe, 1000], cap, timeout=120)
    assert run.returncode == 0, run.stderr
    raw = Raw(cap)
    main = raw.capture.end["main_pid"]
    children = [(sd, ev) for sd, ev in _children(raw, main) if sd.info["pid"] != main]
    forks = int(re.search(r"forks (\d+)", run.stdout).group(1))
    child_map = 13 * 4096
    # (one more child is the process sending the signals: it maps nothing)
    accounted = sum(
        1 for sd, ev in children if raw.count(ev, "mmap", child_map) or sd.end.get("unrecorded_reentrant", 0)
    )
    recorded = sum(raw.count(ev, "mmap", child_map) for _, ev in children)
    assert recorded == sum(raw.count(ev, "munmap", child_map) for _, ev in children)
    # (how many are recorded depends on where the signals land: under load, signals
    # queue behind the handler and land at the same interrupted point, often a hook,
    # and all 1,300 children of a run were counted, none recorded: 0-16% recorded here)
    neither = [
        (sd.info, sd.end, len(ev))
        for sd, ev in children
        if not raw.count(ev, "mmap", child_map) and not sd.end.get("unrecorded_reentrant", 0)
    ]
    assert accounted == forks, (
        f"{forks} handler children each mmap({child_map}): {recorded} "
        f"recorded, {forks - accounted} silently missing it; "
        f"{len(children)} child streams, without it: {neither}"
    )


def test_fork_torture_while_threads_sit_in_hooks(cbuild, tmp_path):
    """300 forks at random moments while 4 threads loop in malloc/calloc/realloc/free/
    mmap/munmap: every child can malloc(32), malloc(1024), malloc(2 MiB), free them and
    _exit(0); each child's stream holds exactly those three blocks, all freed."""
    exe = cbuild("fork_torture.c", "-pthread")
    cap = tmp_path / "torture.mtrace"
    run = traced([exe, 300], cap, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "forks 300 bad 0"
    raw = Raw(cap)
    raw.assert_valid()
    main = raw.capture.end["main_pid"]
    _live, problems = live_model_check(raw.events_of(main))
    assert problems == []
    kids = _children(raw, main)
    assert len(kids) == 300
    for sd, ev in kids:
        mallocs = sorted(int(s) for s in ev["size"][ev["kind"] == 1])
        assert mallocs == [32, 1024, 2 << 20], (sd.info, mallocs)
        live, problems = live_model_check(ev, forked=True)
        assert problems == [] and live == {}, (sd.info, live, problems)
