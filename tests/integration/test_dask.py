"""A real Dask cluster under memtrace: LocalCluster with two worker processes started
traced (tracer.cluster.dask.MemtraceWorker), tasks that make NumPy arrays of known
sizes and tasks that leak on purpose, the workers' captures merged chunk by chunk,
and exact bytes per task and per worker, Dask's managed memory beside memtrace's
numbers, and each worker's RSS explained."""

import json
import os
import socket
import sys

import pytest

from helpers import line_of, lines_of, memtrace
from tracer import _format as fmt

pytest.importorskip("numpy")
pytest.importorskip("distributed", reason="distributed (Dask) is not installed: pip install '.[test]'")

TASKS = """
import numpy as np

KEPT = []


def make_array(n):
    return np.ones(n)                                  # LINE-ARRAY


def leak(n):
    KEPT.append(np.ones(n))                            # LINE-LEAK
    return n


def total(a):
    return float(a.sum())
"""

WORKLOAD = """
import json
import os
import sys

from distributed import Client, LocalCluster

from tasks import leak, make_array, total
from tracer.cluster.dask import MemtraceWorker

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      worker_class=MemtraceWorker, capture_dir=sys.argv[1], memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        a, b = sorted(client.scheduler_info()["workers"])
        where = {"array-0": a, "array-1": a, "array-2": b, "leak-0": a, "leak-1": b, "leak-2": b}
        arrays = [client.submit(make_array, 1_000_000, key=f"array-{i}",
                                workers=[where[f"array-{i}"]]) for i in range(3)]
        leaks = [client.submit(leak, 500_000, key=f"leak-{i}", workers=[where[f"leak-{i}"]])
                 for i in range(3)]
        sums = client.gather([client.submit(total, x, key=f"total-{i}",
                                            workers=[where[f"array-{i}"]])
                              for i, x in enumerate(arrays)])
        assert sums == [1e6] * 3 and client.gather(leaks) == [500_000] * 3
        print(json.dumps({"workers": [a, b], "where": where,
                          "pids": client.run(os.getpid)}))
"""

ARRAY, LEAKED = 8_000_000, 4_000_000  # np.ones(1_000_000), np.ones(500_000): float64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    (tmp / "tasks.py").write_text(TASKS)
    (tmp / "workload.py").write_text(WORKLOAD)
    captures = tmp / "captures"
    env = dict(os.environ, PYTHONPATH=str(tmp) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import subprocess

    done = subprocess.run(
        [sys.executable, str(tmp / "workload.py"), str(captures) + os.sep],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    files = sorted(captures.glob("*.mtrace"))
    merged = tmp / "cluster.mtrace"
    out = memtrace("merge", *files, "-o", merged)
    assert out.returncode == 0, out.stderr
    report = memtrace("cluster", "--json", merged)
    assert report.returncode == 0, report.stderr
    return {"tmp": tmp, "run": run, "files": files, "merged": merged, "report": json.loads(report.stdout)}


def stats(capture, *extra):
    out = memtrace("stats", "--json", *extra, capture)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def workers(cluster):
    """Worker address -> its row of `memtrace cluster --json`."""
    return {w["labels"]["worker"]: w for w in cluster["report"]["workers"] if w["is_worker"]}


def test_one_capture_per_worker_in_the_folder_with_the_usual_name(cluster):
    pids = cluster["run"]["pids"]
    assert sorted(f.name for f in cluster["files"]) == sorted(
        f"memtrace-dask_worker-{pid}.mtrace" for pid in pids.values()
    )


def test_merged_processes_keep_their_pid_and_gain_host_and_worker(cluster):
    st = stats(cluster["merged"])
    assert [s["source"] for s in st["merged"]] == [f.name for f in cluster["files"]]
    labelled = {p["labels"].get("worker"): p for p in st["processes"] if p["labels"].get("worker")}
    assert set(labelled) == set(cluster["run"]["workers"])
    for address, proc in labelled.items():
        assert proc["pid"] == cluster["run"]["pids"][address]
        assert proc["labels"]["host"] == socket.gethostname()
        assert proc["labels"]["source"] == f"memtrace-dask_worker-{proc['pid']}.mtrace"
    # the reconciliation is keyed per process, unique across the merged captures
    assert len(st["reconciliation"]) == len(st["processes"])


def test_exact_bytes_per_task(cluster):
    merged, tasks_py = cluster["merged"], cluster["tmp"] / "tasks.py"
    table = {r["name"]: r for r in stats(merged)["regions"]}
    keys = [f"{p}-{i}" for p in ("array", "leak", "total") for i in range(3)]
    assert sorted(k for k, r in table.items() if r["kind"] == "task") == sorted(keys)
    pids = cluster["run"]["pids"]
    for key, address in cluster["run"]["where"].items():
        assert table[key]["pid"] == pids[address] and table[key]["instances"] == 1
        focused = stats(merged, "--region", key)
        row = lines_of(focused, "tasks.py", "by_user_line")
        if key.startswith("array"):
            line, size = row[line_of(tasks_py, "LINE-ARRAY")], ARRAY
        else:
            line, size = row[line_of(tasks_py, "LINE-LEAK")], LEAKED
        # the array's data, exactly: allocated inside the task, and left live by it (a
        # result Dask holds, or the leak); the line's other bytes are the array's shape
        # and strides (NumPy may reuse a cached block for those: at most 16 bytes)
        assert line["numpy_bytes"] == focused["numpy_bytes"] == size
        for column in ("allocated_bytes", "peak_bytes", "live_at_exit_bytes"):
            assert size <= line[column] <= size + 16, (key, column, line)
        assert size <= table[key]["allocated_bytes"] < size + 64 * 1024  # + Dask's own small objects
    for i in range(3):  # a sum allocates no array
        assert table[f"total-{i}"]["allocated_bytes"] < 64 * 1024


def test_exact_bytes_per_worker_and_tasks_at_its_peak(cluster):
    where, rows = cluster["run"]["where"], workers(cluster)
    tasks_py = cluster["tmp"] / "tasks.py"
    for address, row in rows.items():
        mine = sorted(k for k, w in where.items() if w == address)
        expected = {k: ARRAY if k.startswith("array") else LEAKED for k in mine}
        held = {k: v for k, v in row["tasks_live_at_peak"].items() if k}
        assert held == expected, (address, row["tasks_live_at_peak"])
        # what the leaking tasks left stays live at the worker's exit, exactly
        leaks = sum(1 for k in mine if k.startswith("leak"))
        per_pid = lines_of(stats(cluster["merged"], "--pid", row["pid"]), "tasks.py", "by_user_line")
        left = per_pid[line_of(tasks_py, "LINE-LEAK")]["live_at_exit_bytes"]
        assert leaks * LEAKED <= left <= leaks * (LEAKED + 16)  # (+ shape and strides)
        assert per_pid[line_of(tasks_py, "LINE-ARRAY")]["numpy_bytes"] == (len(mine) - leaks) * ARRAY
        assert per_pid[line_of(tasks_py, "LINE-LEAK")]["numpy_bytes"] == leaks * LEAKED
        assert row["n_tasks"] == len(mine) + (len(mine) - leaks)  # + one total per array


def test_dask_managed_memory_beside_the_heap(cluster):
    where = cluster["run"]["where"]
    for address, row in workers(cluster).items():
        arrays = sum(1 for k, w in where.items() if w == address and k.startswith("array"))
        managed = row["dask_managed_at_peak_bytes"]
        # Dask's sizeof of the arrays it holds, plus the small results (ints, floats)
        assert arrays * ARRAY <= managed < arrays * ARRAY + 1024, (address, managed)
        peak = row["at_peak"]
        assert peak["dask_managed_bytes"] == managed
        assert peak["dask_unmanaged_bytes"] == peak["rss_bytes"] - managed
        assert peak["heap_not_managed_bytes"] == peak["heap_resident_bytes"] - managed


def test_each_workers_rss_is_explained(cluster):
    for address, row in workers(cluster).items():
        for moment in ("at_peak", "at_exit"):
            share = row[moment]["explained_share"]
            assert share >= 0.95, (address, moment, row[moment])


@pytest.mark.parametrize(
    "command",
    [
        ["summary"],
        ["stats", "--json"],
        ["reconcile"],
        ["flamegraph", "-o", "-"],
        ["regions", "--kind", "task"],
        ["cluster"],
    ],
)
def test_every_report_opens_the_merged_capture(cluster, command):
    out = memtrace(command[0], *command[1:], cluster["merged"])
    assert out.returncode == 0, out.stderr
    if command[0] == "regions":
        assert all(f"array-{i}" in out.stdout for i in range(3))
    if command[0] == "cluster":
        for address in cluster["run"]["workers"]:
            assert address in out.stdout
        assert "Dask managed" in out.stdout and "explained" in out.stdout


def test_merging_a_corrupt_capture_is_one_line_and_fails(cluster, tmp_path):
    good = cluster["files"][0]
    data = bytearray(good.read_bytes())
    bad = tmp_path / "bad.mtrace"
    # damage the compressed events of the first events chunk: its frame fails its
    # checksum (the merge checks them; reports only read them later)
    pos = fmt.FILE_HEADER.size
    while True:
        ctype, _sid, length = fmt.CHUNK_HEADER.unpack_from(data, pos)
        if ctype == fmt.CHUNK_ZEVENTS:
            break
        pos += fmt.CHUNK_HEADER.size + length
    end = pos + fmt.CHUNK_HEADER.size + length
    for i in range(end - 40, end - 8):
        data[i] ^= 0x5A
    bad.write_bytes(bytes(data))
    out = memtrace("merge", good, bad, "-o", tmp_path / "m.mtrace")
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "corrupt" in out.stderr, out.stderr
    assert not (tmp_path / "m.mtrace").exists()
    text = tmp_path / "text.mtrace"
    text.write_text("hello")
    out = memtrace("merge", good, text, "-o", tmp_path / "m.mtrace")
    assert out.returncode != 0 and "not a memtrace capture" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_dir_output_writes_the_usual_name_inside(tmp_path):
    folder = tmp_path / "new" / "caps"
    out = memtrace(
        "run", "-q", "--no-report", "-o", str(folder) + os.sep, "--", sys.executable, "-c", "print('hi')"
    )
    assert out.returncode == 0, out.stderr
    [capture] = folder.glob("*.mtrace")
    # (the folder is made like mkdir -p, private)
    assert capture.name.startswith("memtrace-c-") and os.stat(folder).st_mode & 0o777 == 0o700
