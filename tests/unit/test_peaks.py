"""The headline's pieces on made-up inputs: the process tree's simultaneous peak from
heap timelines, temporary counts that leave the exit point alone, smaps parsing."""

import os
from types import SimpleNamespace

import numpy as np

from tracer import _format as fmt
from tracer.analyze.model import _with_temporary
from tracer.record import procfs
from tracer.reports.peaks import tree_peak


def timeline(*rows):
    """rows of (t, heap, highest since the row before)"""
    return np.array(list(rows), dtype=fmt.HEAP_DTYPE)


def proc(pid, heap, peak, peak_time, t_start=0.0):
    return SimpleNamespace(
        pid=pid, heap=heap, t_start=t_start, totals={"peak_heap": peak, "peak_time": peak_time}
    )


def model(*procs):
    return SimpleNamespace(processes=list(procs), capture=SimpleNamespace(info={"sample_interval": 0.01}))


def test_tree_peak_adds_what_was_live_at_one_moment():
    # GIVEN a parent holding 100 while two children, one after the other, hold 50 and 70
    parent = proc(1, timeline((0.01, 100, 100), (0.05, 100, 100), (0.30, 100, 100)), 100, 0.01)
    first = proc(2, timeline((0.06, 50, 50), (0.10, 0, 50)), 50, 0.06, t_start=0.055)
    second = proc(3, timeline((0.16, 70, 70), (0.20, 0, 70)), 70, 0.16, t_start=0.155)
    tree = tree_peak(model(parent, first, second))
    # THEN the tree's peak is 170 at the second child's moment, never 220 (the sum)
    assert tree["bytes"] == 170 and tree["t"] == 0.16
    assert tree["upper_bytes"] == 170 and tree["resolution"] == 0.01


def test_tree_peak_upper_bound_keeps_processes_apart_within_one_sample_interval():
    # GIVEN a child whose last stretch ends 1 ms before the next child starts: both in
    # one 10 ms sampling interval, never alive at one moment
    parent = proc(1, timeline((0.01, 100, 100), (0.30, 100, 100)), 100, 0.01)
    first = proc(2, timeline((0.020, 50, 50), (0.046, 0, 50)), 50, 0.02, t_start=0.015)
    second = proc(3, timeline((0.049, 70, 70), (0.080, 0, 70)), 70, 0.049, t_start=0.047)
    tree = tree_peak(model(parent, first, second))
    # THEN the bound adds the parent to one child at a time, never both children
    assert tree["bytes"] == 170 and tree["upper_bytes"] == 170


def test_tree_peak_upper_bound_covers_a_peak_between_records():
    # a child's 90 lasted between two records (only its max column saw it), while the
    # parent's 40 then fell to 10 before its next record
    parent = proc(1, timeline((0.01, 40, 40), (0.05, 10, 40)), 40, 0.01)
    child = proc(2, timeline((0.02, 0, 0), (0.045, 0, 90)), 90, 0.04, t_start=0.015)
    tree = tree_peak(model(parent, child))
    assert tree["bytes"] == 90  # at least the child's own exact peak
    assert tree["upper_bytes"] == 130  # at most both maxima in one interval


def test_one_process_tree_peak_is_its_exact_peak():
    only = proc(1, timeline((0.01, 5, 5), (0.02, 3, 9)), 9, 0.015)
    assert tree_peak(model(only)) == {"bytes": 9, "upper_bytes": 9, "t": 0.015, "resolution": 0.0}


def test_temporary_counts_keep_live_at_the_exit_point():
    sites = np.zeros(2, dtype=fmt.SITE_DTYPE)
    sites["stack"] = [1, 2]
    sites["live_bytes"] = [100, 7]  # at the exit point
    replayed = sites.copy()
    replayed["live_bytes"] = [0, 0]  # the end of the stream: all freed
    replayed["temp_bytes"] = [3, 4]
    out = _with_temporary(sites, replayed)
    assert out["live_bytes"].tolist() == [100, 7] and out["temp_bytes"].tolist() == [3, 4]
    shuffled = replayed[::-1].copy()  # a replay that made its sites in another order
    out = _with_temporary(sites, shuffled)
    assert out["live_bytes"].tolist() == [100, 7] and out["temp_bytes"].tolist() == [3, 4]


def test_smaps_parser_matches_the_reference():
    with open(f"/proc/{os.getpid()}/smaps", "rb") as f:
        text = f.read()
    assert procfs.parse_smaps(text) == procfs.parse_smaps_py(text)
    odd = (
        b"7f0000000000-7f0000001000 r-xp 00000000 08:01 42    /opt/a b/lib x.so (deleted)\n"
        b"Rss:                   4 kB\nAnonymous:             0 kB\nSwap:  0 kB\n"
        b"7f0000001000-7f0000003000 rw-p 00000000 00:00 0 \n"
        b"Rss:                   8 kB\nAnonymous:             8 kB\nSwap:  4 kB\n"
        b"VmFlags: rd wr mr mw me ac\n"
    )
    rows = procfs.parse_smaps(odd)
    assert rows == procfs.parse_smaps_py(odd)
    assert rows[0][6] == "/opt/a b/lib x.so (deleted)" and rows[1][2:5] == [8192, 8192, 4096]
