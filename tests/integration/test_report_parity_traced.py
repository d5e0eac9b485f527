"""On a real traced program, the reports made from arrays equal the reference
that walks each site's stack (tests/report_reference.py), and the numbers are
the program's own.

GIVEN a program with thousands of distinct stacks (a recursion whose branches
and depths vary), imports, a thread, NumPy buffers and a child process;
WHEN it is traced; THEN every table, tree and export matches the reference,
and the line that allocates most holds the bytes the program kept.
"""

import io
import json
import sys

import pytest

import report_reference as ref
from helpers import line_of, memtrace
from tracer.analyze.model import load
from tracer.reports import export, flame, flame_layout, lines, tables, tree
from tracer.reports.flame import METRIC_TITLES

PROGRAM = """
import decimal, json, subprocess, sys, threading
import numpy as np

KEEP = []

def branch(k, depth):
    if depth:
        return BRANCHES[(k * 7 + depth) % len(BRANCHES)](k, depth - 1)
    KEEP.append(bytearray(1000 + k))              # LEAF

def make(i):
    def f(k, depth):
        return branch(k, depth)
    f.__name__ = f.__qualname__ = f"step_{i}"
    return f

BRANCHES = [make(i) for i in range(12)]

def worker():
    KEEP.append(np.ones(250_000))                  # THREAD

for k in range(3000):
    branch(k, k % 9)
t = threading.Thread(target=worker, name="numpy-worker")
t.start(); t.join()
big = bytearray(8_000_000)                         # BIG
subprocess.run([sys.executable, "-c", "x = [bytearray(50_000) for _ in range(20)]"])
print(json.dumps(len(KEEP)), decimal.Decimal(1))
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    script = tmp / "many_stacks.py"
    script.write_text(PROGRAM)
    cap = tmp / "p.mtrace"
    run = memtrace("run", "-q", "--no-report", "-o", cap, "--", sys.executable, script, cwd=tmp)
    assert run.returncode == 0, run.stderr
    return script, load(str(cap))


def test_the_program_has_what_the_reports_must_handle(traced):
    _script, model = traced
    assert len(model.processes) == 2
    main = model.processes[0]
    assert len(set(main.sites["stack"].tolist())) > 1000
    files = set(main.stacks.files)
    assert "<frozen importlib._bootstrap>" in files and any(main.is_library(f) for f in files)
    assert (main.sites["stack"] == 0).any()  # allocations with no Python frame


def test_tables(traced):
    _script, model = traced
    procs = ref.refs(model)
    for user_code in (False, True):
        assert ref.as_json(tables.by_line(model, user_code)) == ref.as_json(ref.by_line(procs, user_code))
    assert tables.by_library(model) == ref.by_library(procs)


def test_numbers_are_the_programs(traced):
    script, model = traced
    rows = {(r["file"], r["line"]): r for r in tables.by_line(model, user_code=True)}
    big = rows[(str(script), line_of(script, "# BIG"))]
    assert (
        big["peak_bytes"] >= 8_000_000
        and big["allocators"].get("malloc", 0) + big["allocators"].get("mmap", 0) >= 8_000_000
    )
    leaf = rows[(str(script), line_of(script, "# LEAF"))]
    assert leaf["n_allocations"] >= 3000 and leaf["allocated_bytes"] >= sum(1000 + k for k in range(3000))
    thread = rows[(str(script), line_of(script, "# THREAD"))]
    assert thread["numpy_bytes"] >= 2_000_000


@pytest.mark.parametrize("metric", ["peak", "leaks", "total"])
@pytest.mark.parametrize("by_thread", [False, True])
def test_flame_graph_data(traced, metric, by_thread):
    _script, model = traced
    expected = ref.flatten(ref.build_tree(ref.refs(model), metric, by_thread), 0.001, 4000)
    got = flame_layout.flatten(flame.build_tree(model, metric, by_thread), 0.001, 4000)
    assert len(got["parent"]) > 50
    assert ref.as_json(got) == ref.as_json(expected)


@pytest.mark.parametrize("min_share", [0.0, 0.01])
def test_tree_text(traced, min_share):
    _script, model = traced
    out = io.StringIO()
    tree.render(model, out, "total", min_share=min_share)
    assert out.getvalue() == ref.tree_text(
        ref.build_tree(ref.refs(model), "total"), METRIC_TITLES["total"], min_share
    )


def test_exports(traced):
    _script, model = traced
    out = io.StringIO()
    export.speedscope(model, out, "total")
    doc = json.loads(out.getvalue())
    frames, samples, weights = ref.speedscope_samples(ref.refs(model), "total")
    assert len(samples) > 1000 and doc["profiles"][0]["samples"] == samples
    assert doc["profiles"][0]["weights"] == weights and len(doc["shared"]["frames"]) == len(frames)
    out = io.BytesIO()
    export.pprof(model, out, "peak")
    assert ref.gunzip(out.getvalue()).startswith(
        ref.pprof_body(ref.refs(model), "peak", "inuse_objects", "inuse_space")
    )


def test_lines(traced):
    script, model = traced
    assert lines.sources(model) == ref.sources(ref.refs(model))
    table = lines.line_table(model, str(script))
    assert table == ref.line_table(ref.refs(model), str(script))
    assert table[line_of(script, "# BIG")]["allocated"] >= 8_000_000


def test_report_commands_run(traced, tmp_path):
    """Every report command on the capture (the CLI around the functions above)."""
    _script, model = traced
    cap = model.capture.path
    for args in (
        ["summary"],
        ["stats", "--json"],
        ["reconcile"],
        ["tree"],
        ["lines"],
        ["flamegraph", "-o", tmp_path / "f.html"],
        ["export", "--format", "speedscope", "-o", tmp_path / "s.json"],
        ["export", "--format", "pprof", "-o", tmp_path / "p.pb.gz"],
    ):
        out = memtrace(*args, cap)
        assert out.returncode == 0, (args, out.stderr)
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    assert stats["by_line"] == json.loads(json.dumps(tables.by_line(model)))


def test_temporary_view_of_a_cut_short_capture(traced, tmp_path):
    """A capture cut short has no final aggregate: its sites come from replaying the
    events, and the temporary view (a second replay) fills in their columns."""
    _script, model = traced
    data = open(model.capture.path, "rb").read()
    cut = tmp_path / "cut.mtrace"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = memtrace("tree", "--temporary", "--raw", cut)
    assert out.returncode == 3, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("temporary allocations") and " 0 blocks" not in first, first
    html = memtrace("flamegraph", "--temporary", "-o", tmp_path / "cut.html", cut)
    assert html.returncode == 3 and (tmp_path / "cut.html").stat().st_size > 10_000, html.stderr
