"""pandas: a DataFrame with two string columns to CSV and back (benchmarks/realworld).
A 256 MiB array is held across to_csv, one long C call: the heap's peak."""

import pytest
from rwtools import check_advice_once, check_read_at_peak, check_resident_peak, check_same_summary, trace

pytestmark = pytest.mark.realworld
pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trace(tmp_path_factory.mktemp("pandas"), "pandas_roundtrip.py", 200_000)


def test_snapshot_is_read_at_the_peak_held_in_to_csv(run):
    check_read_at_peak(run)
    # the array held across to_csv is in the heap at the peak (with NumPy's few bytes
    # of scalars and shape on that line)
    marker = run.printed("marker")
    row = run.line_row("MARKER-LINE")
    assert marker <= row["numpy_bytes"] < marker + 1024
    assert marker <= row["peak_bytes"] < marker + 1024


def test_end_of_run_summary_is_memtrace_summary(run):
    check_same_summary(run)
    still_live = run.summary.split("still live at exit:")[1]
    assert "MARKER" not in still_live  # the array was deleted before exit


def test_resident_peak_and_advice(run):
    check_resident_peak(run)
    check_advice_once(run)
    marker = run.printed("marker")
    # the array is written when made: resident at the peak
    assert run.main["peak_heap_resident_bytes"] >= marker
