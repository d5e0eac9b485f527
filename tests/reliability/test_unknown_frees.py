"""Frees of pointers the shim never saw — blocks from libc's own malloc (the
stand-in for memory allocated before the shim), blocks allocated inside an
RTLD_DEEPBIND library, and pre-fork blocks freed by a forked child. No crash; each is
counted as an unknown free; live bytes never go negative, at any moment."""

import numpy as np
import pytest

from helpers import TARGETS, build, stats, streams, traced


@pytest.fixture(scope="module")
def unknown_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unknown")
    exe = build(TARGETS / "unknown_free.c", tmp / "unknown_free", "-ldl")
    lib = build(TARGETS / "unknown_free.c", tmp / "libdeep.so", "-shared", "-fPIC", "-DDEEP_LIB")
    cap = tmp / "u.mtrace"
    run = traced([exe, lib], cap, "--no-report", timeout=60)
    return run, cap


def test_program_runs_normally(unknown_run):
    run, _ = unknown_run
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok child 0" in run.stdout


def test_unknown_frees_counted_never_negative(unknown_run):
    _run, cap = unknown_run
    st = stats(cap)
    assert st["complete"]
    parent, child = sorted(
        st["processes"],
        key=lambda p: p["pid"] != p["ppid"] and p["ppid"] in [q["pid"] for q in st["processes"]],
    )
    assert parent["unknown_frees"] >= 20 + 20
    assert child["unknown_frees"] >= 30
    for p in st["processes"]:
        assert p["live_at_exit_bytes"] >= 0 and p["peak_heap_bytes"] >= 0
    for row in st["by_line"] + st["by_library"]:
        assert row["live_at_exit_bytes"] >= 0 and row["peak_bytes"] >= 0
    # the deep-bound library's frees are invisible: those blocks read as live until their
    # address is handed out again (the aggregator then retires the stale block), never more
    prog = [r for r in st["by_library"] if r["library"] == "unknown_free"][0]
    assert 0 <= prog["live_at_exit_bytes"] <= 10 * 3000


def test_heap_never_negative_at_any_event(unknown_run):
    from tracer.record.aggregate import Aggregator

    _run, cap = unknown_run
    for proc, events in streams(cap):
        agg = Aggregator()
        for start in range(0, len(events), 7):
            agg.feed(np.ascontiguousarray(events[start : start + 7]), 0.0)
            totals = agg.totals()
            assert totals["heap"] >= 0, (proc.pid, start)
        assert (agg.sites()["live_bytes"] >= 0).all()
        if len(proc.heap):
            assert (proc.heap["heap"] >= 0).all() and (proc.heap["max"] >= 0).all()
