"""The collector is never the bottleneck: its events/s, and its memory over a long run.

    python benchmarks/collector_throughput.py              # both parts
    python benchmarks/collector_throughput.py --pipeline   # A only (seconds)
    python benchmarks/collector_throughput.py --pairs 50000000   # B with 100 M events

A. Pipeline: synthetic batches of a malloc/free churn (4 threads, 2,000 stacks, sizes
   16 B-4 KiB, a bounded live set) through exactly what the collector does with each
   drained batch: encode (mt_encode_more), gather and zstd-compress (EventPacker, to a
   real capture file), aggregate (mt_agg_feed). Events per second of one CPU.
B. End to end: benchmarks/targets/churn.c (PAIRS malloc/free pairs, 10,000 blocks live)
   under `memtrace run`; the collector's CPU time comes from the capture's end chunk
   (getrusage of the memtrace process), its RSS is sampled every 0.2 s. Events per
   collector CPU-second is its capacity; RSS must not grow with the run's length.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent


def synthetic_batches(n_batches, batch=1 << 16, threads=4, stacks=2000, live=10_000, seed=0):
    """Batches of a churn: each event pair frees the block allocated `live` pairs ago."""
    from tracer import _format as fmt

    rng = np.random.default_rng(seed)
    pairs = batch // 2
    addr_pool = 0x5555_0000_0000 + np.arange(live * 4, dtype=np.uint64) * 4096
    out = []
    for b in range(n_batches):
        ev = np.zeros(batch, dtype=fmt.EVENT_DTYPE)
        idx = (np.arange(pairs) + b * pairs) % len(addr_pool)
        addrs = addr_pool[idx]
        ev["kind"][0::2] = 1
        ev["addr"][0::2] = addrs
        ev["size"][0::2] = 16 + rng.integers(0, 4096, pairs)
        ev["stack"][0::2] = rng.integers(1, stacks + 1, pairs)
        ev["lib"][0::2] = ev["stack"][0::2] % 7 + 1  # a stack's calls come from one library
        ev["tid"] = np.repeat(1000 + rng.integers(0, threads, pairs // 64 + 1), 128)[:batch]
        ev["kind"][1::2] = 10
        old = (idx - live) % len(addr_pool)
        ev["addr"][1::2] = addr_pool[old]
        out.append(ev)
    return out


def pipeline(seconds: float) -> dict:
    from tracer._native import ffi, lib
    from tracer.analyze.capture import CaptureWriter, EventPacker
    from tracer.record.aggregate import Aggregator

    batches = synthetic_batches(64)
    encoded = bytearray(len(batches[0]) * lib.MT_ENCODED_MAX)
    enc_ptr = ffi.cast("uint8_t *", ffi.from_buffer(encoded))
    with tempfile.TemporaryDirectory() as tmp:
        writer = CaptureWriter(os.path.join(tmp, "bench.mtrace"))
        packer = EventPacker(writer, 1)
        agg = Aggregator()
        n = 0
        start = time.perf_counter()
        cpu0 = time.process_time()  # both threads: the collector's and zstd's
        while time.perf_counter() - start < seconds:
            for ev in batches:
                ptr = ffi.cast("mt_event *", ffi.from_buffer(ev))
                size = lib.mt_encode_more(packer.codec, ptr, len(ev), enc_ptr)
                packer.add(time.perf_counter() - start, n, len(ev), memoryview(encoded)[:size])
                agg.feed(ev, 0.0)
                n += len(ev)
        packer.flush(wait=True)
        writer.close()
        cpu = time.process_time() - cpu0
        size = os.path.getsize(os.path.join(tmp, "bench.mtrace"))
    wall = time.perf_counter() - start
    return {
        "events": n,
        "wall_seconds": round(wall, 3),
        "events_per_second": round(n / wall),
        "cpu_seconds": round(cpu, 3),
        "events_per_cpu_second": round(n / cpu),
        "capture_bytes_per_event": round(size / n, 4),
    }


def end_to_end(pairs: int, live: int = 10_000) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "churn")
        subprocess.run([cc, "-O2", "-pthread", "-o", exe, str(HERE / "targets" / "churn.c")], check=True)
        capture = os.path.join(tmp, "churn.mtrace")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tracer",
                "run",
                "-q",
                "--no-report",
                "-o",
                capture,
                "--",
                exe,
                str(pairs),
                str(live),
                "1",
            ]
        )
        me = psutil.Process(proc.pid)
        rss = []
        while proc.poll() is None:
            try:
                rss.append((round(time.perf_counter() - t0, 1), me.memory_info().rss))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        assert proc.returncode == 0, proc.returncode
        stats = json.loads(
            subprocess.run(
                [sys.executable, "-m", "tracer", "stats", "--json", capture],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        from tracer.analyze.capture import read_capture

        end = read_capture(capture).end
        size = os.path.getsize(capture)
    p = stats["processes"][0]
    events = p["n_allocations"] + p["n_frees"]
    third = max(1, len(rss) // 3)
    return {
        "pairs": pairs,
        "events": events,
        "wall_seconds": round(wall, 2),
        "dropped": stats["dropped_events"],
        "collector_cpu_seconds": round(end["collector_cpu_seconds"], 2),
        "events_per_collector_cpu_second": round(events / end["collector_cpu_seconds"]),
        "collector_max_rss_mb": round(end["collector_max_rss"] / 1e6, 1),
        "rss_mb_first_third_max": round(max(r for _, r in rss[:third]) / 1e6, 1),
        "rss_mb_last_third_max": round(max(r for _, r in rss[-third:]) / 1e6, 1),
        "capture_bytes": size,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=float, metavar="SECONDS", help="run part A only")
    ap.add_argument(
        "--pairs",
        type=int,
        nargs="*",
        default=[5_000_000, 50_000_000],
        help="part B run lengths (malloc/free pairs; default 5 M and 50 M)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = {"pipeline": pipeline(args.pipeline or 10.0)}
    print("A. pipeline:", json.dumps(results["pipeline"]), flush=True)
    if args.pipeline is None:
        results["end_to_end"] = []
        for pairs in args.pairs:
            r = end_to_end(pairs)
            results["end_to_end"].append(r)
            print("B. end to end:", json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
