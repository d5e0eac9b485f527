"""Child processes the Python way: multiprocessing with fork, spawn and forkserver
pools, subprocess (vfork/posix_spawn) and os.posix_spawn. Every process has its own
stream with exact counts, the tree is rebuilt from pid/ppid, the parent's connection
survives thousands of spawns."""

import sys
from collections import Counter

import pytest

from helpers import Raw, live_model_check, stats, traced

POOL = """
import ctypes, multiprocessing, os, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def task(i):
    blocks = [libc.malloc(31337 + i) for _ in range(1000)]
    for b in blocks:
        libc.free(b)
    return os.getpid(), os.getppid(), i

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(4) as pool:
        results = pool.map(task, range(8), chunksize=1)
    pool.join()
    for pid, ppid, i in results:
        print(pid, ppid, i)
    print("main", os.getpid())
"""


def _pool_run(tmp_path, method):
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    cap = tmp_path / f"pool-{method}.mtrace"
    run = traced([sys.executable, script, method], cap, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = [
        tuple(map(int, line.split())) for line in run.stdout.splitlines() if not line.startswith("main")
    ]
    main = int(run.stdout.split("main")[1])
    assert sorted(i for _, _, i in results) == list(range(8))
    raw = Raw(cap)
    # leaving `with Pool()` terminates the workers (SIGTERM): one killed between
    # claiming ring slots and filling them leaves those slots lost, counted and
    # reported: at most one claim, 2 slots for a realloc (a free and an allocation)
    raw.assert_valid(allow_lost=2)
    assert raw.capture.end["main_pid"] == main
    return raw, main, results


def _check_exact_per_worker(raw, main, results):
    """Each worker's stream holds exactly 1000 mallocs of 31337 + i for each task i it
    ran, all freed; no other process holds any of them."""
    expected = {}
    for pid, _ppid, i in results:
        expected.setdefault(pid, Counter())[31337 + i] += 1000
    sizes = [31337 + i for i in range(8)]
    for pid in set(raw.pids()):
        live_streams = [(sd, ev) for sd, ev in raw.of_pid(pid) if sd.end.get("how") != "exec"]
        assert len(live_streams) == 1, f"pid {pid}: {len(live_streams)} non-exec streams"
        ev = raw.events_of(pid)
        got = Counter({s: raw.count(ev, "malloc", s) for s in sizes})
        got = +got  # drop zeros
        assert got == expected.get(pid, Counter()), (pid, got, expected.get(pid))
        live, problems = live_model_check(ev, forked=pid != main)
        assert problems == [], (pid, problems)
        assert not set(live.values()) & set(sizes), (pid, "a task block left live")
    return expected


def test_multiprocessing_fork_pool_exact_per_worker(tmp_path):
    """Pool(4), fork context, 8 tasks x 1000 allocations: one stream per worker, the
    parent's stream has none of the workers' blocks, every worker's counts exact (no
    lost trailing free: workers end by os._exit and nothing is buffered)."""
    raw, main, results = _pool_run(tmp_path, "fork")
    expected = _check_exact_per_worker(raw, main, results)
    assert len(expected) >= 1 and main not in expected
    workers = [sd for sd, _ in raw.streams.values() if sd.info["pid"] != main]
    assert len(workers) == 4 and {sd.info["ppid"] for sd in workers} == {main}
    assert set(expected) <= {sd.info["pid"] for sd in workers}


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_spawn_and_forkserver_tree(tmp_path, method):
    """spawn and forkserver (3.14's default on Linux) pools: every worker's stream
    carries its pid and ppid, the tree is rebuilt back to the main process (through the
    fork server for forkserver), no stream is duplicated or orphaned, and each worker's
    counts are exact."""
    raw, main, results = _pool_run(tmp_path, method)
    _check_exact_per_worker(raw, main, results)
    procs = {}
    for sd, _ in raw.streams.values():
        if sd.end.get("how") != "exec":
            procs[sd.info["pid"]] = sd.info["ppid"]
    # every recorded parent is itself traced (or is memtrace, for the main process)
    for pid, ppid in procs.items():
        assert pid == main or ppid in procs, f"orphan stream {pid} (ppid {ppid})"

    def depth(pid):
        d = 0
        while pid != main:
            pid = procs[pid]
            d += 1
        return d

    for pid, ppid, _i in results:
        assert procs[pid] == ppid  # the stream's ppid is what the worker saw
        assert depth(pid) == (1 if method == "spawn" else 2), (method, pid, procs)
    if method == "forkserver":
        servers = {procs[pid] for pid, _, _ in results}
        assert len(servers) == 1 and procs[servers.pop()] == main


SPAWNER = """
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
N = int(sys.argv[1])
true = "/bin/true"
kept = []
for i in range(N):
    subprocess.run([true], close_fds=True, check=True)
    kept.append(libc.malloc(4242))
for i in range(N):
    pid = os.posix_spawn(true, [true], os.environ)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    kept.append(libc.malloc(4243))
print(os.getpid())
"""


@pytest.mark.slow
def test_thousand_subprocess_runs_and_posix_spawns(tmp_path):
    """1000 x subprocess.run(["true"], close_fds=True) (vfork/posix_spawn inside CPython)
    and 1000 x os.posix_spawn: the parent's stream is never lost (its 2000 marker
    allocations are all there, in order with no foreign events), each exec'd `true` has
    its own stream whose parent is the main process, and nothing was dropped."""
    n = 1000
    script = tmp_path / "spawner.py"
    script.write_text(SPAWNER)
    cap = tmp_path / "spawn.mtrace"
    run = traced([sys.executable, script, n], cap, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    main = int(run.stdout)
    raw = Raw(cap)
    raw.assert_valid()
    ev = raw.events_of(main)
    assert raw.count(ev, "malloc", 4242) == n and raw.count(ev, "malloc", 4243) == n
    _live, problems = live_model_check(ev)
    assert problems == []
    trues = [sd for sd, _ in raw.streams.values() if sd.info["pid"] != main and sd.end.get("how") != "exec"]
    # every child that exec'd true was traced (the loader preloaded the shim) ...
    assert len(trues) == 2 * n
    assert {sd.info["ppid"] for sd in trues} == {main}
    # ... and any stream a fork child opened before exec'ing is marked as exec'd, and
    # continued by the stream of the program it exec'd
    pre_exec = [sd for sd, _ in raw.streams.values() if sd.end.get("how") == "exec"]
    assert {sd.info["pid"] for sd in pre_exec} <= {sd.info["pid"] for sd in trues}
    st = stats(cap)
    argv0 = Counter(
        p["argv"][0] if p["argv"] else None
        for p in st["processes"]
        if p["pid"] != main and p["end"].get("how") != "exec"
    )
    assert argv0 == {"/bin/true": 2 * n}, argv0
    assert st["dropped_events"] == 0
