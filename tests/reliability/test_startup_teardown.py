"""Start-up and thread teardown, and the load test: 8 threads x 1,000,000 allocations
with nothing dropped."""

import os
import re

import pytest

from helpers import Raw, build, library_row, live_model_check, stats, traced


@pytest.fixture(scope="module")
def boot_program(tmp_path_factory):
    out = tmp_path_factory.mktemp("boot")
    build("boot_lib.c", out / "libbootctor.so", "-shared", "-fPIC", opt="-O1")
    exe = build("boot_main.c", out / "boot_main", f"-L{out}", "-lbootctor", f"-Wl,-rpath,{out}", opt="-O1")
    return exe


@pytest.mark.parametrize("bind_now", [False, True], ids=["lazy", "LD_BIND_NOW"])
def test_first_allocation_is_calloc_in_a_constructor(boot_program, tmp_path, bind_now):
    """A library's constructor and the program's constructor each make their first
    allocation with calloc, before main: the program runs normally (exit 0, zeroed
    memory), and both callocs are recorded exactly, under their own shared object."""
    env = dict(os.environ)
    env.pop("LD_BIND_NOW", None)
    if bind_now:
        env["LD_BIND_NOW"] = "1"
    cap = tmp_path / "boot.mtrace"
    run = traced([boot_program], cap, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"
    st = stats(cap)
    lib = library_row(st, "libbootctor.so")
    main = library_row(st, "boot_main")
    assert (lib["allocated_bytes"], lib["n_allocations"]) == (4321, 1)
    assert (main["allocated_bytes"], main["n_allocations"]) == (5432, 1)
    Raw(cap).assert_valid()


def test_ten_thousand_threads_with_allocating_teardown(cbuild, tmp_path):
    """10,000 short threads, each with a pthread-key destructor and a C++ thread_local
    destructor that allocate and free while the thread is torn down: no crash, every
    body/teardown allocation recorded exactly and freed, and private memory does not
    grow with the number of threads (the shim keeps no per-thread heap state)."""
    exe = cbuild("thread_teardown.cpp", "-pthread", compiler="g++")
    cap = tmp_path / "teardown.mtrace"
    run = traced([exe, 10_000], cap, timeout=120)
    assert run.returncode == 0, run.stderr
    a1, a2 = map(int, re.search(r"anon_after_1000 (\d+) anon_after_all (\d+)", run.stdout).groups())
    assert a2 - a1 < 256 << 10, f"RssAnon grew {a2 - a1} bytes over 9,000 threads"
    raw = Raw(cap)
    raw.assert_valid()
    ((sd, ev),) = raw.streams.values()
    for size in (1111, 2222, 2223, 3333):
        assert raw.count(ev, "malloc", size) == 10_000, size
    live, problems = live_model_check(ev)
    assert problems == []
    assert not set(live.values()) & {1111, 2222, 2223, 3333}


@pytest.mark.slow
def test_eight_threads_one_million_allocations_each_nothing_dropped(cbuild, tmp_path):
    """Load: 8 threads x 1,000,000 malloc+free (16 M events through a 262,144-slot
    ring): every allocation is in the capture under its thread's size, every block
    freed, dropped = 0, lost = 0."""
    exe = cbuild("load_threads.c", "-pthread")
    cap = tmp_path / "load.mtrace"
    run = traced([exe, 8, 1_000_000], cap, timeout=300)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr
    raw = Raw(cap)
    raw.assert_valid()
    ((sd, ev),) = raw.streams.values()
    counts = [raw.count(ev, "malloc", 5000 + i) for i in range(8)]
    assert counts == [1_000_000] * 8
    # each of the 8 sizes on exactly one thread
    for i in range(8):
        tids = set(ev["tid"][(ev["kind"] == 1) & (ev["size"] == 5000 + i)].tolist())
        assert len(tids) == 1
    live, problems = live_model_check(ev)
    assert problems == []
    assert not [s for s in live.values() if 5000 <= s < 5008]
    st = stats(cap)
    assert st["dropped_events"] == 0
    assert library_row(st, "load_threads")["n_allocations"] == 8_000_000
