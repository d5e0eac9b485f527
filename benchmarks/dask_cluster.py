"""What tracing a Dask cluster costs (docs/cluster.md): a LocalCluster of N worker
processes (tracer.cluster.dask.MemtraceWorker) runs the same task graph traced and
untraced, in alternating runs; then the captures of the last traced run are merged
and reported.

    python benchmarks/dask_cluster.py --runs 5 --workers 2 --tasks 400

Prints JSON: wall times of the computation (after the workers are up) per run, their
medians and ratio, the workers' start-up times, capture bytes per worker-second,
merge and `memtrace cluster` times, and each worker's explained share of RSS."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from distributed import Client, LocalCluster

from tracer.cluster.dask import MemtraceWorker


def chunk(i, n):
    rng = np.random.default_rng(i)
    a = rng.random(n)  # n float64
    b = np.sort(a) * 2.0  # temporaries
    return b[: n // 2].copy()


def reduce_(*parts):
    return float(sum(p.sum() for p in parts))


def run_once(trace, folder, workers, tasks, size):
    t0 = time.monotonic()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            worker_class=MemtraceWorker,
            capture_dir=folder,
            trace=trace,
            memory_limit=0,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        started = time.monotonic() - t0
        t1 = time.monotonic()
        parts = client.map(chunk, range(tasks), n=size)
        sums = [client.submit(reduce_, *parts[i : i + 20]) for i in range(0, tasks, 20)]
        total = sum(client.gather(sums))
        wall = time.monotonic() - t1
    return {
        "start_seconds": started,
        "compute_seconds": wall,
        "total": total,
        "teardown_seconds": time.monotonic() - t0 - started - wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--size", type=int, default=250_000)
    args = ap.parse_args()
    out = {"args": vars(args), "traced": [], "untraced": []}
    tmp = tempfile.mkdtemp(prefix="memtrace-dask-bench-")
    try:
        for r in range(args.runs):
            for trace in (True, False) if r % 2 == 0 else (False, True):
                folder = os.path.join(tmp, f"run{r}-{'traced' if trace else 'untraced'}")
                os.makedirs(folder)
                res = run_once(trace, folder, args.workers, args.tasks, args.size)
                if trace:
                    caps = sorted(os.path.join(folder, f) for f in os.listdir(folder))
                    res["captures"] = caps
                    res["capture_bytes"] = [os.path.getsize(c) for c in caps]
                out["traced" if trace else "untraced"].append(res)
        med = {k: statistics.median(x["compute_seconds"] for x in out[k]) for k in ("traced", "untraced")}
        start = {k: statistics.median(x["start_seconds"] for x in out[k]) for k in ("traced", "untraced")}
        out["median_compute_seconds"] = med
        out["ratio"] = med["traced"] / med["untraced"]
        out["median_start_seconds"] = start
        last = out["traced"][-1]
        merged = os.path.join(tmp, "cluster.mtrace")
        t = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tracer", "merge", *last["captures"], "-o", merged],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        out["merge_seconds"] = time.monotonic() - t
        t = time.monotonic()
        rep = subprocess.run(
            [sys.executable, "-m", "tracer", "cluster", "--json", merged], capture_output=True, text=True
        )
        assert rep.returncode == 0, rep.stderr
        out["cluster_report_seconds"] = time.monotonic() - t
        report = json.loads(rep.stdout)
        workers = [w for w in report["workers"] if w["is_worker"]]
        out["explained_at_peak"] = [w["at_peak"]["explained_share"] for w in workers]
        out["explained_at_exit"] = [w["at_exit"]["explained_share"] for w in workers]
        out["memtrace_share_of_rss_at_peak"] = [
            w["at_peak"]["tracer_bytes"] / w["at_peak"]["rss_bytes"] for w in workers
        ]
        out["dask_managed_at_peak"] = [w["dask_managed_at_peak_bytes"] for w in workers]
        out["rss_at_peak"] = [w["at_peak"]["rss_bytes"] for w in workers]
        lifetime = last["start_seconds"] + last["compute_seconds"] + last["teardown_seconds"]
        out["capture_bytes_per_worker_second"] = (
            sum(last["capture_bytes"]) / len(last["capture_bytes"]) / lifetime
        )
        out["merged_bytes"] = os.path.getsize(merged)
        out["merge_bytes_per_second"] = sum(last["capture_bytes"]) / out["merge_seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
