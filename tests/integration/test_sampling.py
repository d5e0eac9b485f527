"""--sample-rate: byte-weighted Poisson sampling gives unbiased estimates.

Tolerances are set from the estimator's own spread: a block of size s is kept
with probability p = 1 - exp(-s/rate) and counted as s/p, so for N equal blocks
the relative standard deviation of the total is sqrt((1-p) / (N p)). Each
tolerance below is more than 5 of those standard deviations.
"""

import math

import pytest

from helpers import line_of, lines_of, memtrace

np = pytest.importorskip("numpy")

SMALL_AND_LARGE = """
import numpy as np

small = []
for i in range(200_000):
    small.append(bytearray(1000))      # SMALL: 200,000 x 1000 B live
arrays = [np.zeros(1_000_000) for _ in range(10)]   # LARGE: 10 x 8,000,000 B
for i in range(100_000):
    t = bytearray(3000)                # TEMP: freed at once
    del t
print("done")
"""


def rel_sd(size, n, rate):
    p = -math.expm1(-size / rate)
    return math.sqrt((1 - p) / (n * p))


def test_sampled_estimates_are_unbiased_and_large_blocks_exact(trace, tmp_path):
    rate = 64 * 1024
    run = trace(SMALL_AND_LARGE, options=["--sample-rate", "64K"])
    assert run.returncode == 0, run.stderr
    assert run.stdout == "done\n"
    stats = run.stats()
    assert stats["sample_rate"] == rate and stats["estimates"] is True
    rows = lines_of(stats, "prog.py")
    script = tmp_path / "prog.py"

    # bytearray(1000)'s buffer is one malloc(1001) (its object comes from pymalloc
    # arenas, mmaps, which are always recorded whole; the list grows by realloc)
    small = rows[line_of(script, "SMALL")]
    true_small = 200_000 * 1001
    tolerance = 6 * rel_sd(1001, 200_000, rate)
    estimate = small["allocators"]["malloc"]
    assert abs(estimate / true_small - 1) < tolerance, (small, tolerance)
    assert small["n_allocations"] < 200_000 / 10  # only a sample was recorded

    # an 8 MB block is kept with probability 1 - e^-122: always, at its exact size
    large = rows[line_of(script, "LARGE")]
    assert large["numpy_bytes"] == 10 * 8_000_000

    # every kept temporary block's free was recorded: nothing of them is live
    temp = rows[line_of(script, "TEMP")]
    assert temp["live_at_exit_bytes"] == 0
    assert temp["allocated_bytes"] > 0


def test_sampling_with_threads_and_fork(trace):
    run = trace(
        """
        import os, threading
        def work():
            keep = [bytearray(5000) for _ in range(20_000)]   # 100 MB per thread
            del keep
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads: t.start()
        pid = os.fork()
        if pid == 0:
            work()
            os._exit(0)
        for t in threads: t.join()
        os.waitpid(pid, 0)
        print("ok")
    """,
        options=["--sample-rate", "256K"],
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"
    stats = run.stats()
    assert len(stats["processes"]) == 2
    for proc in stats["processes"]:
        assert proc["dropped_events"] == 0
        # live bytes estimate never goes negative, even with kept frees racing
        assert proc["live_at_exit_bytes"] >= 0
    parent = [p for p in stats["processes"] if p["ppid"] != stats["processes"][0]["pid"]][0]
    tolerance = 6 * rel_sd(5001, 80_000, 256 * 1024)
    assert abs(parent["total_allocated_bytes"] / (4 * 20_000 * 5001) - 1) < tolerance + 0.02


def test_bad_sample_rate_is_one_line(tmp_path):
    out = memtrace("run", "--sample-rate", "lots", "--", "true", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--sample-rate" in out.stderr
