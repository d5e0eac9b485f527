"""tree, lines, log, diff and the exports against a program with known allocations."""

import csv
import gzip
import io
import json
import sys

import pytest

from helpers import line_of, memtrace

PROGRAM = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SCALE = {scale}

def grow():
    a = libc.malloc(1_000_000)               # LINE-A
    b = libc.malloc(2_000_000 * SCALE)       # LINE-B
    libc.free(a)
    return b

def churn():
    for i in range(100):
        libc.free(libc.malloc(5000))         # LINE-TEMP

kept = grow()
churn()
"""


def traced(tmp_path, scale=1, name="prog.py"):
    script = tmp_path / name
    script.write_text(PROGRAM.format(scale=scale))
    cap = tmp_path / f"{name}.{scale}.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", sys.executable, script, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return script, cap


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return traced(tmp_path_factory.mktemp("reports"))


def test_lines_lists_exact_bytes(capture):
    script, cap = capture
    out = memtrace("lines", cap, "--source", script, "--raw")
    assert out.returncode == 0, out.stderr
    rows = {}
    for text in out.stdout.splitlines()[2:]:
        parts = text.split()
        if len(parts) >= 4 and parts[0].isdigit() and parts[1][0].isdigit():
            rows[int(parts[0])] = [int(p.replace(",", "")) for p in parts[1:4]]
    a, b, temp = (line_of(script, m) for m in ("LINE-A", "LINE-B", "LINE-TEMP"))
    assert rows[a] == [1_000_000, 1_000_000, 1]  # allocated, held at peak, blocks
    assert rows[b] == [2_000_000, 2_000_000, 1]
    assert rows[temp][0] == 500_000 and rows[temp][2] == 100
    # a line owns what was allocated while it was this file's innermost line: the
    # call `kept = grow()` does not count grow's lines a second time
    assert line_of(script, "kept = grow()") not in rows


def test_tree_shows_the_stack_with_exact_bytes(capture):
    script, cap = capture
    out = memtrace("tree", cap, "--total", "--raw", "--min-share", "0")
    assert out.returncode == 0, out.stderr
    b = line_of(script, "LINE-B")
    line = next(ln for ln in out.stdout.splitlines() if "grow (" in ln and f":{b})" in ln)
    assert " 2,000,000 " in line
    temp = line_of(script, "LINE-TEMP")
    out = memtrace("tree", cap, "--temporary", "--raw", "--min-share", "0")
    line = next(ln for ln in out.stdout.splitlines() if "churn (" in ln and f":{temp})" in ln)
    assert " 500,000 " in line and "(100 blocks" in line


def test_log_filters_by_size_and_library(capture):
    script, cap = capture
    out = memtrace("log", cap, "--min-size", "1000000")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "->malloc(" in ln and "prog.py" in ln]
    assert len(lines) == 2
    assert "->malloc(1000000) = 0x" in lines[0] and f"prog.py:{line_of(script, 'LINE-A')}" in lines[0]
    assert "->malloc(2000000) = 0x" in lines[1] and f"prog.py:{line_of(script, 'LINE-B')}" in lines[1]
    library = lines[0].split()[3].split("->")[0]
    only = memtrace("log", cap, "--library", library, "--min-size", "4000")
    mine = [ln for ln in only.stdout.splitlines()]
    assert mine and all(ln.split()[3].startswith(library + "->") for ln in mine)
    assert sum("->malloc(5000)" in ln for ln in mine) == 100


def test_diff_shows_what_grew(capture):
    script, before = capture
    _, after = traced(script.parent, scale=3)  # the same script path, three times bigger
    out = memtrace("diff", before, after, "--raw")
    assert out.returncode == 0, out.stderr
    b = line_of(script, "LINE-B")
    row = next(ln for ln in out.stdout.splitlines() if f"prog.py:{b}" in ln)
    assert row.split()[:2] == ["+4,000,000", "+4,000,000"]  # held at peak, allocated


def test_speedscope_export(capture, tmp_path):
    script, cap = capture
    out_file = tmp_path / "s.json"
    run = memtrace("export", cap, "--format", "speedscope", "--total", "-o", out_file)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out_file.read_text())
    profile = doc["profiles"][0]
    frames = doc["shared"]["frames"]
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    assert sum(profile["weights"]) == stats["total_allocated_bytes"]
    b = line_of(script, "LINE-B")
    hits = [
        w
        for s, w in zip(profile["samples"], profile["weights"])
        if any(frames[i].get("line") == b and frames[i]["name"] == "grow" for i in s)
    ]
    assert sum(hits) == 2_000_000


def read_varint(data: bytes, pos: int):
    """One protobuf varint at pos: (value, position after it)."""
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_protobuf(data: bytes) -> list:
    """A generic protobuf wire decoder: [(field, wire type, value)]."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            out.append((field, 0, value))
        elif wire == 2:
            n, pos = read_varint(data, pos)
            out.append((field, 2, data[pos : pos + n]))
            pos += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def packed(data: bytes) -> list:
    values, pos = [], 0
    while pos < len(data):
        value, pos = read_varint(data, pos)
        values.append(value)
    return values


def test_pprof_export_parses_back(capture, tmp_path):
    script, cap = capture
    out_file = tmp_path / "p.pb.gz"
    run = memtrace("export", cap, "--format", "pprof", "--total", "-o", out_file)
    assert run.returncode == 0, run.stderr
    profile = decode_protobuf(gzip.decompress(out_file.read_bytes()))
    strings = [v.decode() for f, w, v in profile if f == 6]
    assert strings[0] == ""
    sample_types = [dict((f, v) for f, _, v in decode_protobuf(v)) for f, w, v in profile if f == 1]
    assert [strings[t[1]] for t in sample_types] == ["alloc_objects", "alloc_space"]
    samples = [decode_protobuf(v) for f, w, v in profile if f == 2]
    totals = [0, 0]
    for sample in samples:
        values = packed(next(v for f, w, v in sample if f == 2))
        totals[0] += values[0]
        totals[1] += values[1]
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    assert totals == [stats["n_allocations"], stats["total_allocated_bytes"]]
    assert "grow" in strings and "churn" in strings


def test_csv_export_lists_allocations(capture, tmp_path):
    script, cap = capture
    out_file = tmp_path / "a.csv"
    assert memtrace("export", cap, "--format", "csv", "-o", out_file).returncode == 0
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    # every allocation event is a row; those counted in the heap are exactly n_allocations
    assert sum(r["heap"] == "1" for r in rows) == stats["n_allocations"]
    assert all(r["allocator"] == "mmap" for r in rows if r["heap"] == "0")
    mine = [r for r in rows if r["file"].endswith("prog.py")]
    sizes = sorted(int(r["size"]) for r in mine if r["allocator"] == "malloc")
    assert sizes.count(5000) == 100 and 1_000_000 in sizes and 2_000_000 in sizes


def test_every_report_reads_a_truncated_capture(capture, tmp_path):
    script, cap = capture
    data = cap.read_bytes()
    cut = tmp_path / "cut.mtrace"
    cut.write_bytes(data[: len(data) * 3 // 4])
    for args in (
        ["summary"],
        ["stats", "--json"],
        ["tree"],
        ["lines"],
        ["log", "-n", "5"],
        ["flamegraph", "-o", tmp_path / "cut.html"],
        ["export", "--format", "speedscope", "-o", tmp_path / "cut.json"],
    ):
        out = memtrace(args[0], cut, *args[1:])
        assert out.returncode == 3, (args, out.stderr)
        assert "cut short" in out.stderr and "Traceback" not in out.stderr
    out = memtrace("diff", cut, cap)
    assert out.returncode == 3


def test_summary_at_exit_is_the_summary_of_the_capture(tmp_path):
    """GIVEN a program that frees memory while it exits; WHEN `memtrace run` prints its
    summary (after the HTML report replayed the events for the temporary view) and
    `memtrace summary` reads the capture later; THEN both say the same, "still live
    at exit" included: the program's exit point, in every report."""
    script = tmp_path / "late_free.py"
    script.write_text(
        "import atexit\nKEEP = [bytearray(100_000) for _ in range(30)]\natexit.register(KEEP.clear)\n"
    )
    cap = tmp_path / "late.mtrace"
    run = memtrace("run", "-o", cap, "--", sys.executable, script, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    at_exit = [
        line for line in run.stderr.splitlines() if not line.lstrip().startswith(("capture:", "report:"))
    ]
    later = memtrace("summary", cap)
    assert later.returncode == 0, later.stderr
    assert at_exit == later.stdout.splitlines()
    assert "still live at exit:" in later.stdout
