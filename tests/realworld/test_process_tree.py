"""A process tree: the headline gives the tree's heap at one moment and the sum of
each process's own peak, each called what it is, in every report."""

import re

import pytest
from rwtools import trace

pytestmark = pytest.mark.realworld
MiB = 1 << 20

PROGRAM = """
import multiprocessing as mp
import time

def work(n):
    block = b"c" * n          # CHILD-LINE
    time.sleep(0.3)
    return len(block)

if __name__ == "__main__":
    mp.set_start_method("fork")
    held = b"p" * (60 << 20)  # PARENT-LINE
    for n in (100 << 20, 80 << 20):       # one child after the other
        child = mp.Process(target=work, args=(n,))
        child.start()
        child.join()
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tree")
    program = tmp / "tree.py"
    program.write_text(PROGRAM)
    return trace(tmp, program)


def test_tree_peak_is_simultaneous_and_the_sum_is_labelled(run):
    stats = run.stats
    procs = {p["pid"]: p for p in stats["processes"]}
    assert len(procs) == 3
    parent = stats["processes"][0]
    children = sorted(
        (p for p in procs.values() if p["ppid"] == parent["pid"]), key=lambda p: p["peak_heap_time"]
    )
    # each child's own peak holds its block, exactly
    assert [c["peak_heap_bytes"] >= n for c, n in zip(children, (100 * MiB, 80 * MiB))] == [True, True]
    own = [p["peak_heap_bytes"] for p in stats["processes"]]
    assert stats["sum_of_process_peaks_bytes"] == sum(own)
    # the children ran one after the other: the tree never held both at once
    tree = stats["peak_heap_bytes"]
    assert tree >= parent["peak_heap_bytes"] + children[0]["peak_heap_bytes"] - MiB
    assert tree <= stats["peak_heap_upper_bytes"] < sum(own) - 70 * MiB
    assert abs(stats["peak_heap_time"] - children[0]["peak_heap_time"]) < 0.35
    headline = next(ln for ln in run.summary.splitlines() if "peak heap of the process tree" in ln)
    assert "sum of each process's own peak" in headline
    assert re.search(r"at \d+\.\d\d s \(3 processes at one moment", headline), headline


def test_html_report_says_the_same(run):
    html = (run.capture.parent / (run.capture.name + ".html")).read_text()
    assert "peak heap of the process tree" in html and "sum of each process" in html
