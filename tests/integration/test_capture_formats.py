"""Captures written by every capture format (tests/fixtures/captures/, README.md there)
stay readable: every report runs on each and gives the program's exact numbers."""

import csv
import gzip
import io
import json
import re

import pytest

from helpers import TESTS, line_of, lines_of, memtrace, stats

CAPTURES = TESTS / "fixtures" / "captures"
PROGRAM = CAPTURES / "program.py"

# format -> what each file holds besides the program's own lines: its processes
# (parent, forked child), how the child's end was recorded, and the file's totals
FILES = {
    1: dict(
        parent=31499,
        child=31521,
        child_end={"how": "killed_or_exit"},
        allocations=10_337,
        allocated=108_651_434,
    ),
    2: dict(
        parent=31655,
        child=31660,
        child_end={"how": "_exit", "exit_code": 0},
        allocations=10_336,
        allocated=108_618_618,
    ),
    3: dict(
        parent=31699,
        child=31702,
        child_end={"how": "_exit", "exit_code": 0},
        allocations=10_337,
        allocated=108_623_506,
    ),
    4: dict(
        parent=32313,
        child=32316,
        child_end={"how": "_exit", "exit_code": 0},
        allocations=10_338,
        allocated=108_625_853,
    ),
}
# marker -> (function, allocators) on the program's marked lines, in every format
LINES = {
    "THREAD": ("in_thread", {"malloc": 2_000_001}),
    "BYTEARRAY": ("main", {"malloc": 1_000_001}),
    "ZEROS": ("main", {"malloc": 32, "calloc": 8_000_000}),
    "CHILD": ("main", {"malloc": 3_000_001}),
}
PARENT_MARKERS = ("THREAD", "BYTEARRAY", "ZEROS")

formats = pytest.mark.parametrize("version", sorted(FILES))


def capture(version):
    return CAPTURES / f"format{version}.capture"


def report(version, *command) -> str:
    out = memtrace(*command, capture(version))
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    return out.stdout


def line(marker) -> int:
    return line_of(PROGRAM, marker)


def test_every_format_is_here_and_readable():
    from tracer import _format as fmt

    # GIVEN the formats this memtrace reads, THEN there is a capture of each
    assert set(fmt.READABLE_VERSIONS) == set(FILES)
    for version in FILES:
        assert capture(version).read_bytes()[8:12] == version.to_bytes(4, "little")


@formats
def test_stats(version):
    # WHEN stats reads the capture
    st = stats(capture(version))
    known = FILES[version]
    # THEN it is whole, and holds the program and its child
    assert st["complete"]
    assert (st["exit_code"], st["signal"], st["dropped_events"]) == (0, None, 0)
    assert [(p["pid"], p["ppid"]) for p in st["processes"]][1] == (known["child"], known["parent"])
    assert st["processes"][0]["pid"] == known["parent"]
    assert st["processes"][1]["end"] == known["child_end"]
    assert (st["n_allocations"], st["total_allocated_bytes"]) == (known["allocations"], known["allocated"])
    assert st["numpy_bytes"] == 8_000_024  # the array, and 24 bytes while importing NumPy
    # AND each marked line has exactly its allocations, in both line tables
    for key in ("by_line", "by_user_line"):
        rows = lines_of(st, "program.py", key)
        for marker, (function, allocators) in LINES.items():
            row = rows[line(marker)]
            assert (row["function"], row["allocators"]) == (function, allocators), (key, marker)
            assert row["live_at_exit_bytes"] == sum(allocators.values())
    assert lines_of(st, "program.py")[line("ZEROS")]["numpy_allocators"] == {"calloc": 8_000_000}


@formats
def test_stats_of_each_process(version):
    known = FILES[version]
    parent = lines_of(stats(capture(version), "--pid", known["parent"]), "program.py")
    child = lines_of(stats(capture(version), "--pid", known["child"]), "program.py")
    # THEN the child's line is the child's alone, and the parent's lines the parent's
    assert child[line("CHILD")]["allocators"] == LINES["CHILD"][1]
    assert line("CHILD") not in parent
    for marker in PARENT_MARKERS:
        assert parent[line(marker)]["allocators"] == LINES[marker][1]
        assert line(marker) not in child


@formats
def test_summary(version):
    out = report(version, "summary")
    assert out.startswith("memtrace: ") and "exited with code 0" in out
    assert "  processes: 2\n" in out
    for marker, (function, _allocators) in LINES.items():
        assert f"program.py:{line(marker)}  {function}" in out, marker


@formats
def test_reconcile(version):
    out = report(version, "reconcile")
    assert f"pid {FILES[version]['parent']}" in out
    assert "at the heap peak" in out and "at exit" in out


@formats
def test_flamegraph(version):
    out = report(version, "flamegraph", "-o", "-")
    assert out.lstrip().lower().startswith("<!doctype html")
    assert "in_thread" in out and "program.py" in out


@formats
def test_tree(version):
    out = report(version, "tree", "--raw")
    # the held bytes of each marked line's frame, under its process
    for marker, (function, allocators) in LINES.items():
        rows = [r for r in out.splitlines() if f" {function} (" in r and f"/program.py:{line(marker)})" in r]
        assert len(rows) == 1, (marker, rows)
        assert f" {sum(allocators.values()):,} " in rows[0], rows[0]
    assert f"pid {FILES[version]['child']}: " in out


@formats
def test_lines(version):
    out = report(version, "lines", "--raw")
    rows = {
        int(m.group(1)): m.group(2).split()
        for m in re.finditer(r"^ +(\d+) +([\d,]+ +[\d,]+ +[\d,]+.*)$", out, re.M)
    }
    # allocated, at peak, blocks (and NumPy bytes) of each marked line
    assert rows[line("BYTEARRAY")][:3] == ["1,000,001", "1,000,001", "1"]
    assert rows[line("ZEROS")][:4] == ["8,000,032", "8,000,032", "2", "8,000,000"]
    assert rows[line("THREAD")][:3] == ["2,000,001", "2,000,001", "1"]
    assert rows[line("CHILD")][:3] == ["3,000,001", "3,000,001", "1"]


@formats
def test_export_csv(version):
    known = FILES[version]
    out = report(version, "export", "--format", "csv", "-o", "-")
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["file"].endswith("program.py")]
    marked = {}
    for marker in LINES:
        marked[marker] = [r for r in rows if int(r["line"]) == line(marker)]
    assert sum(1 for _ in csv.DictReader(io.StringIO(out))) == known["allocations"]
    for marker, (_function, allocators) in LINES.items():
        got = {}
        for r in marked[marker]:
            got[r["allocator"]] = got.get(r["allocator"], 0) + int(r["size"])
        assert got == allocators, marker
    # the thread's block was made on another thread of the parent, the child's in the child
    (thread,) = marked["THREAD"]
    assert int(thread["pid"]) == known["parent"] and int(thread["tid"]) != known["parent"]
    (bytearray_,) = marked["BYTEARRAY"]
    assert int(bytearray_["tid"]) == int(bytearray_["pid"]) == known["parent"]
    (child,) = marked["CHILD"]
    assert int(child["pid"]) == int(child["tid"]) == known["child"]
    assert [int(r["numpy"]) for r in marked["ZEROS"] if r["allocator"] == "calloc"] == [1]


@formats
def test_export_speedscope(version):
    doc = json.loads(report(version, "export", "--format", "speedscope", "-o", "-"))
    names = {frame["name"] for frame in doc["shared"]["frames"]}
    assert "in_thread" in names and "main" in names
    (profile,) = doc["profiles"]
    assert profile["unit"] == "bytes" and len(profile["samples"]) == len(profile["weights"])
    # each marked line's frame carries at least that line's bytes
    frames = doc["shared"]["frames"]
    for marker, (function, allocators) in LINES.items():
        ids = {i for i, f in enumerate(frames) if f["name"] == function and f.get("line") == line(marker)}
        weight = sum(w for s, w in zip(profile["samples"], profile["weights"]) if ids & set(s))
        assert weight >= sum(allocators.values()), marker


@formats
def test_export_pprof(version):
    out = memtrace("export", "--format", "pprof", "-o", "-", capture(version), text=False)
    assert out.returncode == 0, out.stderr
    profile = gzip.decompress(out.stdout)
    assert b"in_thread" in profile and b"program.py" in profile


@formats
def test_cluster(version):
    # a capture that is not a cluster's still gets the per-process table, with what an
    # older format could not hold (a child's RSS at its peak) said to be unknown
    out = report(version, "cluster", "--raw")
    known = FILES[version]
    for pid in (known["parent"], known["child"]):
        assert f"· pid {pid} ·" in out
    parent, child = out.split(f"· pid {known['child']} ·")
    assert re.search(r"RSS at the heap peak [\d,]+ \(explained 100\.0%\)", parent), out
    # the child: a share, or why there is none (formats differ in what they kept of it)
    assert re.search(
        r"RSS at the heap peak [\d,]+ \(explained (\d+\.\d%|unknown: no RSS was "
        r"read)\)|at the peak: no snapshot of this process was taken",
        child,
    ), out
