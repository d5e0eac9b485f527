"""A job whose memory grows and falls for 15 seconds: watch it with `memtrace run --live`.

    memtrace run --live -- python examples/live_job.py

Two worker processes fill caches at their own pace; the main process keeps a
growing list of blocks. Press s to sort the lines, [ and ] to switch process, q to
leave once it is done (its output is in the capture's .out file).
"""

import multiprocessing
import time

import numpy as np


def worker(n):
    cache = []
    for _step in range(60):
        cache.append(np.ones(250_000 * n))  # n x 2 MB a step
        if len(cache) > 20:
            cache = cache[10:]  # the cache is trimmed now and then
        time.sleep(0.25)


if __name__ == "__main__":
    workers = [multiprocessing.Process(target=worker, args=(n,)) for n in (1, 2)]
    for w in workers:
        w.start()
    kept = []
    for step in range(60):
        kept.append(bytearray(1_000_000))  # 1 MB a step, kept
        print("step", step, flush=True)
        time.sleep(0.25)
    for w in workers:
        w.join()
