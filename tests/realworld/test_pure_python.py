"""Pure Python: records through JSON and pickle (benchmarks/realworld), no NumPy."""

import pytest
from rwtools import (
    advice_lines,
    check_advice_once,
    check_read_at_peak,
    check_resident_peak,
    check_same_summary,
    trace,
)

pytestmark = pytest.mark.realworld


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trace(tmp_path_factory.mktemp("pure"), "pure_python.py", 200_000)


def test_snapshot_is_read_at_the_peak(run):
    check_read_at_peak(run)
    # a bytes object alive through the peak: its line holds exactly its size
    assert run.line_row("MARKER-LINE")["peak_bytes"] == run.printed("marker")


def test_end_of_run_summary_is_memtrace_summary(run):
    check_same_summary(run)


def test_no_numpy_advice_for_a_program_without_numpy(run):
    check_advice_once(run)
    check_resident_peak(run)
    assert run.stats["numpy_bytes"] == 0
    for line in advice_lines(run) + run.summary.splitlines():
        assert "NumPy" not in line and "np.zeros" not in line, line
