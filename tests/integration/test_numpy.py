"""NumPy array data is labelled and attributed to its line, exactly."""

import pytest

from helpers import line_of, lines_of

np = pytest.importorskip("numpy")

THREE_ARRAYS = """
import numpy as np

def build():
    a = np.zeros((100, 100))       # LINE-A
    b = np.zeros((1000, 1000))     # LINE-B
    c = np.zeros((10000, 1000))    # LINE-C
    return a, b, c

arrays = build()
"""


def test_three_arrays_exact_bytes_per_line(trace, tmp_path):
    # GIVEN three np.zeros calls on three lines of one function
    run = trace(THREE_ARRAYS)
    assert run.returncode == 0, run.stderr
    stats = run.stats()
    rows = lines_of(stats, "prog.py")
    script = tmp_path / "prog.py"
    expected = {"LINE-A": 80_000, "LINE-B": 8_000_000, "LINE-C": 80_000_000}
    for marker, size in expected.items():
        row = rows[line_of(script, marker)]
        assert row["function"] == "build"
        # THEN the array data is exactly the array's size, labelled NumPy, via calloc
        assert row["numpy_bytes"] == size
        assert row["numpy_allocators"] == {"calloc": size}
        assert row["allocators"]["calloc"] == size
        # and numpy's own small blocks (shape/strides) are kept apart, not as array data
        small = {k: v for k, v in row["allocators"].items() if k != "calloc"}
        assert sum(small.values()) == row["allocated_bytes"] - size
        assert all(v < 1024 for v in small.values())
        assert row["peak_bytes"] >= size
    assert stats["peak_heap_bytes"] >= sum(expected.values())
    assert stats["processes"][0]["python"]
    assert stats["dropped_events"] == 0


def test_uint8_ones_attributed_to_multiarray(trace, tmp_path):
    run = trace("""
        import numpy as np
        x = np.ones((123_000,), dtype=np.uint8)   # ONES
        print(int(x.sum()))
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "123000"
    stats = run.stats()
    # np.ones is Python code inside NumPy: by_line files it under NumPy's innermost
    # line, by_user_line under the user's line that called it
    row = lines_of(stats, "prog.py", key="by_user_line")[line_of(tmp_path / "prog.py", "ONES")]
    # the 123,000-byte buffer, plus the 0-d array np.ones makes of its fill value (1 byte)
    assert 123_000 <= row["numpy_bytes"] <= 123_000 + 64
    assert set(row["numpy_allocators"]) == {"malloc"}
    multiarray = [lib for lib in row["libraries"] if lib.startswith("_multiarray_umath")]
    assert multiarray and row["libraries"][multiarray[0]] >= 123_000
    inner = [r for r in stats["by_line"] if r["numpy_allocators"].get("malloc") == 123_000]
    assert len(inner) == 1 and inner[0]["file"].endswith("numeric.py")
    assert inner[0]["numpy_bytes"] == 123_000
    # nothing that is not NumPy array data is labelled as such, in any library but NumPy
    for r in stats["by_line"]:
        for _lib in r["libraries"]:
            if r["numpy_bytes"]:
                assert any(ln.startswith("_multiarray_umath") for ln in r["libraries"]), r
