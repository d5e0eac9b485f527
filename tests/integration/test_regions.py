"""tracer.region in real traced programs: exact numbers per region, the program's
questions answered by the collector, every report filtered by --region, and nothing
at all outside memtrace."""

import json
import subprocess
import sys

import pytest

from helpers import ARENA_SLACK, ba, line_of, lines_of, memtrace

STEPS = ba(1_000_000) + ba(2_000_000) + ba(3_000_000)  # the three steps' blocks


REGIONS_PROGRAM = """
import threading
import tracer

kept = []
with tracer.region("load") as load:
    tmp = bytearray(4_000_000)                      # LINE-TMP
    del tmp
    kept.append(bytearray(5_000_000))               # LINE-KEEP

@tracer.region("step")
def step(n):
    block = bytearray(n)                            # LINE-STEP
    return len(block)

for n in (1_000_000, 3_000_000, 2_000_000):
    step(n)

with tracer.region("outer"):
    early = bytearray(600_000)                      # LINE-EARLY
    with tracer.region("inner"):
        inner = bytearray(1_500_000)                # LINE-INNER
    del inner                                       # freed after inner ended, inside outer
    other = []
    worker = threading.Thread(target=lambda: other.append(bytearray(7_000_000)))  # LINE-THREAD
    worker.start()
    worker.join()
"""


@pytest.fixture(scope="module")
def regions_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regions")
    script = tmp / "prog.py"
    script.write_text(REGIONS_PROGRAM)
    cap = tmp / "prog.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", sys.executable, script, cwd=tmp)
    assert run.returncode == 0, run.stderr
    return script, cap


def stats(cap, *extra):
    out = memtrace("stats", "--json", *extra, cap)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_each_region_has_its_exact_numbers(regions_run):
    script, cap = regions_run
    table = {r["name"]: r for r in stats(cap)["regions"]}
    load = table["load"]
    # GIVEN 4 MB freed, then 5 MB kept: the peak is the larger, never both
    assert ba(5_000_000) <= load["peak_bytes"] < ba(5_000_000) + ARENA_SLACK
    assert load["live_at_end_bytes"] >= ba(5_000_000)
    assert load["allocated_bytes"] >= ba(4_000_000) + ba(5_000_000)
    assert (load["instances"], load["kind"], load["open_at_end"]) == (1, "region", 0)
    step = table["step"]
    assert step["instances"] == 3 and ba(3_000_000) <= step["peak_bytes"] < ba(3_000_000) + ARENA_SLACK
    assert step["allocated_bytes"] >= STEPS
    outer, inner = table["outer"], table["inner"]
    assert inner["parent"] == "outer"
    assert inner["live_at_end_bytes"] >= ba(1_500_000)  # still live as inner ended
    # inner's block was freed inside outer: outer left only `early` and small objects (and
    # maybe the new pymalloc arena that holds them: the thread start can need one)
    assert ba(600_000) <= outer["live_at_end_bytes"] < ba(600_000) + ARENA_SLACK
    # the other thread's 7 MB never counts in the region open on the main thread
    assert outer["peak_bytes"] < 7_000_000 and outer["allocated_bytes"] < 7_000_000


def test_breakdown_at_the_region_peak_is_exact_by_line(regions_run):
    script, cap = regions_run
    load = lines_of(stats(cap, "--region", "load"), "prog.py")
    tmp, keep = line_of(script, "LINE-TMP"), line_of(script, "LINE-KEEP")
    assert load[keep]["peak_bytes"] == ba(5_000_000) and load[keep]["live_at_exit_bytes"] == ba(5_000_000)
    assert load[tmp]["peak_bytes"] == 0 and load[tmp]["allocated_bytes"] == ba(4_000_000)
    assert load[tmp]["live_at_exit_bytes"] == 0
    step = lines_of(stats(cap, "--region", "step"), "prog.py")[line_of(script, "LINE-STEP")]
    assert step["peak_bytes"] == ba(3_000_000) and step["allocated_bytes"] == STEPS
    outer = lines_of(stats(cap, "--region", "outer"), "prog.py")
    assert outer[line_of(script, "LINE-INNER")]["peak_bytes"] == ba(1_500_000)
    assert outer[line_of(script, "LINE-INNER")]["live_at_exit_bytes"] == 0
    assert outer[line_of(script, "LINE-EARLY")]["live_at_exit_bytes"] == ba(600_000)
    assert (
        line_of(script, "LINE-THREAD") not in outer
        or outer[line_of(script, "LINE-THREAD")]["allocated_bytes"] < 7_000_000
    )


def test_focused_totals_are_the_regions(regions_run):
    _script, cap = regions_run
    whole, load = stats(cap), stats(cap, "--region", "load")
    row = next(r for r in whole["regions"] if r["name"] == "load")
    assert load["region"] == "load"
    assert load["peak_heap_bytes"] == row["peak_bytes"]
    assert load["total_allocated_bytes"] == row["allocated_bytes"]
    assert load["live_at_exit_bytes"] == row["live_at_end_bytes"]
    assert whole["peak_heap_bytes"] > load["peak_heap_bytes"]


@pytest.mark.parametrize(
    "command",
    [
        ["summary"],
        ["tree"],
        ["tree", "--leaks"],
        ["lines"],
        ["log", "--min-size", "100000"],
        ["export", "--format", "csv", "-o", "-"],
        ["export", "--format", "speedscope", "-o", "-"],
        ["reconcile"],
        ["flamegraph", "-o", "-"],
    ],
)
def test_every_report_takes_region(regions_run, command):
    script, cap = regions_run
    out = memtrace(command[0], cap, "--region", "step", *command[1:])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if command[0] == "log":
        sizes = [int(x.split("(")[1].split(")")[0]) for x in text.splitlines() if "->" in x]
        assert sizes.count(ba(1_000_000)) == sizes.count(ba(3_000_000)) == sizes.count(ba(2_000_000)) == 1
        assert ba(5_000_000) not in sizes and 7_000_000 not in sizes
        assert text.count("enter region 'step'") == 3
    if command[0] == "export" and "csv" in command:
        sizes = [int(r.split(",")[4]) for r in text.splitlines()[1:]]
        assert sorted(s for s in sizes if s > 100_000) == [ba(1_000_000), ba(2_000_000), ba(3_000_000)]
    if command == ["tree"]:
        assert "step" in text and "<module>" in text and "2.9 MiB" in text


def test_diff_and_glob_and_unknown_region(regions_run):
    _script, cap = regions_run
    assert memtrace("diff", "--region", "step", cap, cap).returncode == 0
    both = stats(cap, "--region", "*er")  # outer and inner: a glob
    assert both["peak_heap_bytes"] >= 2_100_002
    bad = memtrace("summary", "--region", "nope", cap)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "no region 'nope'" in bad.stderr and "'load'" in bad.stderr


def test_regions_command_lists_them(regions_run):
    _script, cap = regions_run
    out = memtrace("regions", "--raw", cap)
    assert out.returncode == 0, out.stderr
    lines = [x.split() for x in out.stdout.splitlines()[2:]]
    by_name = {x[-1]: x for x in lines}
    assert set(by_name) == {"load", "step", "outer", "inner"}
    assert by_name["step"][3] == "3"  # instances
    assert [x[-1] for x in lines][0] == "load"  # by peak


USAGE_PROGRAM = """
import json, sys, tracer

out = {}
with tracer.region("work") as work:
    a = bytearray(6_000_000)
    out["inside"] = vars_ = {k: getattr(tracer.usage(), k) for k in ("name", "open", "live", "peak")}
    del a
    b = bytearray(1_000_000)
    u = work.usage()
    out["after_free"] = {"live": u.live, "peak": u.peak}
    top = work.usage(tracer._regions.ASK_AT_PEAK).lines
    out["top"] = [top[0]["bytes"], top[0]["stack"][0]]
u = work.usage()
out["ended"] = {"open": u.open, "live": u.live, "peak": u.peak, "instances": u.instances}
out["none_open"] = tracer.usage() is None
json.dump(out, sys.stdout)
"""


def test_program_asks_the_collector(trace, tmp_path):
    traced = trace(USAGE_PROGRAM)
    assert traced.returncode == 0, traced.stderr
    out = json.loads(traced.stdout)
    inside = out["inside"]
    assert inside["name"] == "work" and inside["open"] is True
    assert ba(6_000_000) <= inside["live"] < ba(6_000_000) + ARENA_SLACK and inside["peak"] >= inside["live"]
    assert out["after_free"]["live"] < ba(1_000_000) + ARENA_SLACK
    assert out["after_free"]["peak"] >= ba(6_000_000)
    assert out["top"][0] == ba(6_000_000) and out["top"][1][2] == 6  # the line of `a = ...`
    ended = out["ended"]
    assert ended["open"] is False and ended["instances"] == 1 and ended["live"] >= ba(1_000_000)
    assert out["none_open"] is True


UNTRACED_PROGRAM = """
import sys, tracer

def f(x):
    return x * 2

g = tracer.region("r")(f)
assert g is f                                   # the decorator gives the function back
with tracer.region("r") as r:
    pass
assert r.usage() is None and tracer.usage() is None
assert tracer.region(f) is f
heavy = ("tracer._pyframes", "tracer._native", "ctypes", "cffi", "numpy", "json")
print("untraced ok", [m for m in heavy if m in sys.modules])
"""


def test_outside_memtrace_regions_do_nothing(tmp_path):
    script = tmp_path / "untraced.py"
    script.write_text(UNTRACED_PROGRAM)
    out = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "untraced ok []"  # nothing heavy loaded, nothing looked up


CTYPES_PROGRAM = """
import json, sys, tracer
from tracer import _regions

_regions._calls = _regions._ctypes_calls()       # the path for Pythons without the reader
with tracer.region("via ctypes") as r:
    kept = bytearray(2_000_000)
    u = r.usage()
json.dump({"live": u.live, "name": u.name}, sys.stdout)
"""


def test_ctypes_binding_records_the_same(trace):
    traced = trace(CTYPES_PROGRAM)
    assert traced.returncode == 0, traced.stderr
    out = json.loads(traced.stdout)
    assert out["name"] == "via ctypes" and out["live"] >= ba(2_000_000)
    row = next(r for r in traced.stats()["regions"] if r["name"] == "via ctypes")
    assert row["live_at_end_bytes"] >= ba(2_000_000)


FORK_PROGRAM = """
import os, tracer

with tracer.region("parent"):
    keep = bytearray(1_000_000)
    pid = os.fork()
    if pid == 0:
        with tracer.region("child"):
            mine = bytearray(2_000_000)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_forked_child_names_its_own_regions(trace):
    traced = trace(FORK_PROGRAM)
    assert traced.returncode == 0, traced.stderr
    rows = {
        (r["pid"] != traced.stats()["processes"][0]["pid"], r["name"]): r for r in traced.stats()["regions"]
    }
    assert rows[(False, "parent")]["live_at_end_bytes"] >= ba(1_000_000)
    assert rows[(True, "child")]["live_at_end_bytes"] >= ba(2_000_000)
    assert (True, "parent") not in rows  # entered before the fork: not in the child's stream


def test_hostile_region_names_are_escaped(trace):
    name = "</script><img src=x onerror=alert(1)>\u2028\x1b]8;;x\x07\x1b[2J"
    traced = trace(f"""
import tracer
with tracer.region({name!r}):
    kept = bytearray(1_000_000)
""")
    assert traced.returncode == 0, traced.stderr
    raw = memtrace("stats", "--json", traced.capture).stdout
    assert "<" not in raw and ">" not in raw and "\x1b" not in raw
    assert json.loads(raw)["regions"][0]["name"] == name
    for command in (["regions"], ["summary"], ["summary", "--region", name]):
        out = memtrace(command[0], traced.capture, *command[1:])
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "\u2028" not in out.stdout
        assert "</script><img src=x onerror=alert(1)>" in out.stdout
    page = memtrace("flamegraph", traced.capture, "--region", name, "-o", "-").stdout
    assert "<img" not in page


def test_captures_of_format_3_still_read_and_newer_ones_are_refused(trace, tmp_path):
    traced = trace("kept = bytearray(1_000_000)\n")
    assert traced.returncode == 0, traced.stderr
    data = bytearray(traced.capture.read_bytes())
    assert int.from_bytes(data[8:12], "little") == 4
    # format 3 is format 4 without region marks and regions chunks: the same bytes read
    older = tmp_path / "older.mtrace"
    data[8:12] = (3).to_bytes(4, "little")
    older.write_bytes(bytes(data))
    now, before = stats(traced.capture), stats(older)
    assert before["regions"] == [] and before["peak_heap_bytes"] == now["peak_heap_bytes"]
    assert before["by_line"] == now["by_line"]
    newer = tmp_path / "newer.mtrace"
    data[8:12] = (5).to_bytes(4, "little")
    newer.write_bytes(bytes(data))
    out = memtrace("summary", newer)
    assert out.returncode == 2
    assert (
        out.stderr == f"memtrace: {newer} was written in capture format 5; this memtrace reads "
        "formats 1 to 4\n"
    )
