"""`memtrace run --objects`: a census of live Python objects by type, exact, at the heap
peak and at exit, that never changes what the program computes."""

import json
import subprocess
import sys

import pytest

from helpers import line_of

np = pytest.importorskip("numpy")

PROGRAM = r'''
import array, json, sys, time
import numpy as np

class Kept:
    def __init__(self, i):
        self.i = i

class Weighed:
    """Its __sizeof__ is Python code with a side effect: the census must not call it."""
    calls = 0
    def __sizeof__(self):
        Weighed.calls += 1
        return 10**9

class Owned(np.ndarray):
    """Arrays of a class of their own: NumPy's internal arrays (some versions keep a
    few alive) cannot mix with them."""

HOSTILE = type("Evil<img src=x>\x1b[31m\u202e", (), {})

kept = [Kept(i) for i in range(1000)]
weighed = [Weighed() for _ in range(300)]
hostile = [HOSTILE() for _ in range(20_000)]
sized = [array.array("d", range(i * 7)) for i in range(500)]   # each of its own size
arr = Owned(shape=(250_000,), dtype=np.float64)  # ARRAY
arr[:] = 1.0
view = arr[::4]                                  # VIEW

def at_peak():
    big = Owned(shape=(5_000_000,))              # BIG
    big[:] = 3.0
    t = time.time()
    while time.time() - t < 0.5:                 # hold the peak; keep calling malloc so
        bytearray(4096)                          # the census request is seen
    return float(big[::1000].sum())

total = at_peak()
facts = {"sizeof_kept": sys.getsizeof(kept[0]), "nbytes": arr.nbytes, "view_nbytes": view.nbytes,
         "sizeof_sized": sum(map(sys.getsizeof, sized)),
         "result": total + float(arr.sum()), "weighed_calls": Weighed.calls}
print(json.dumps(facts))
'''


@pytest.fixture(scope="module")
def census_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objects")
    script = tmp / "prog.py"
    script.write_text(PROGRAM)
    cap = tmp / "prog.mtrace"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracer",
            "run",
            "-f",
            "-o",
            str(cap),
            "--objects",
            "--",
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp,
    )
    assert run.returncode == 0, run.stderr
    stats = json.loads(
        subprocess.run(
            [sys.executable, "-m", "tracer", "stats", "--json", str(cap)],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    return tmp, script, cap, run, stats


def _type(census, name):
    rows = [t for t in census["types"] if t["type"] == name]
    assert len(rows) == 1, [t["type"] for t in census["types"]]
    return rows[0]


def test_exit_census_counts_exactly(census_run):
    # GIVEN a program that keeps 1000 instances of a class, an array and a view of it
    tmp, script, _cap, run, stats = census_run
    facts = json.loads(run.stdout)
    census = stats["processes"][0]["objects"]["at_exit"]
    # THEN the exit census counts exactly those instances, at sys.getsizeof each
    kept = _type(census, "__main__.Kept")
    assert kept["count"] == 1000
    assert kept["bytes"] == 1000 * facts["sizeof_kept"]
    assert not kept["sizes_estimated"]
    # objects of a type whose sizes differ: each at its own sys.getsizeof
    sized = _type(census, "array.array")
    assert sized["count"] == 500 and sized["bytes"] == facts["sizeof_sized"]
    # and splits the array's nbytes: owning for the array, a view for the view
    arrays = _type(census, "__main__.Owned")
    assert arrays["numpy"] == {
        "owning_count": 1,
        "owning_nbytes": facts["nbytes"],
        "view_count": 1,
        "view_nbytes": facts["view_nbytes"],
    }
    # and names the line that allocated the array's data, from the trace
    line = line_of(script, "# ARRAY")
    assert {
        "file": "prog.py",
        "line": line,
        "function": "<module>",
        "count": 1,
        "bytes": facts["nbytes"],
    } in arrays["lines"]
    assert census["cost_seconds"] > 0 and census["objects"] >= 1000


def test_peak_census_holds_what_the_peak_held(census_run):
    _tmp, script, _cap, run, stats = census_run
    facts = json.loads(run.stdout)
    views = stats["processes"][0]["objects"]
    peak, end = views["at_peak"], views["at_exit"]
    arrays = _type(peak, "__main__.Owned")
    # the 40 MB array alive only inside at_peak() (a local of a running frame) is there,
    # owning its data, named by its line; at exit it is gone
    assert arrays["numpy"]["owning_nbytes"] == 40_000_000 + facts["nbytes"]
    big = [ln for ln in arrays["lines"] if ln["line"] == line_of(script, "# BIG")]
    assert big == [
        {
            "file": "prog.py",
            "line": line_of(script, "# BIG"),
            "function": "at_peak",
            "count": 1,
            "bytes": 40_000_000,
        }
    ]
    assert _type(end, "__main__.Owned")["numpy"]["owning_nbytes"] == facts["nbytes"]
    # how far from the peak it was taken is said, in events and seconds
    assert peak["distance_events"] is not None and peak["distance_seconds"] is not None
    assert _type(peak, "__main__.Kept")["count"] == 1000


def test_census_changes_nothing_the_program_computes(census_run):
    tmp, script, _cap, run, stats = census_run
    facts = json.loads(run.stdout)
    # a __sizeof__ written in Python is never called: its type's sizes are estimated
    assert facts["weighed_calls"] == 0
    weighed = _type(stats["processes"][0]["objects"]["at_peak"], "__main__.Weighed")
    assert weighed["count"] == 300 and weighed["sizes_estimated"] and weighed["bytes"] < 10**6
    # and the program prints what it prints without memtrace
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp)
    assert json.loads(plain.stdout) == facts


def test_census_in_the_summary_and_html(census_run):
    _tmp, _script, cap, run, _stats = census_run
    assert "Python objects at the heap peak:" in run.stderr
    assert "Python objects at exit:" in run.stderr
    # a class named with markup and escape codes: counted, and inert on the terminal
    hostile = [ln for ln in run.stderr.splitlines() if "Evil<img src=x>" in ln]
    assert len(hostile) == 2 and all(ln.split()[0] == "20,000" for ln in hostile)
    assert "\x1b" not in run.stderr and "\u202e" not in run.stderr
    html = (cap.parent / (cap.name + ".html")).read_text()
    assert '"objects":[{"pid":' in html
    assert "Evil\\u003cimg" in html and "Evil<img" not in html


def test_no_census_without_the_option(trace):
    run = trace("import numpy as np\nx = np.ones(1000)\n")
    assert run.returncode == 0, run.stderr
    assert run.stats()["processes"][0]["objects"] is None
