"""scikit-learn: a RandomForest fit (benchmarks/realworld), and the import alone,
where OpenBLAS maps buffers it never touches."""

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
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trace(tmp_path_factory.mktemp("sklearn"), "sklearn_forest.py", 3000)


def test_snapshot_is_read_at_the_peak(run):
    check_read_at_peak(run)
    # the training data is held through the fit
    data = run.printed("data")
    assert run.line_row("DATA-LINE")["peak_bytes"] >= data


def test_end_of_run_summary_is_memtrace_summary(run):
    check_same_summary(run)


def test_untouched_memory_is_named_by_library_and_line(run):
    check_resident_peak(run)
    check_advice_once(run)
    _check_openblas_named(run)
    # no NumPy array was left untouched: advice must not blame np.zeros
    assert not any("np.zeros" in line for line in advice_lines(run))


def _check_openblas_named(run):
    """Where OpenBLAS is what was never touched, the report names it and the import
    line that loaded it."""
    causes = [c for c in run.main["untouched_at_peak"] if "openblas" in c["library"].lower()]
    if not causes:
        pytest.skip("this NumPy does not use OpenBLAS")
    for c in causes:
        assert c["cause"].startswith("OpenBLAS"), c
        assert c["where"].rpartition(":")[0].endswith(run.program.name), c
    untouched_line = next(ln for ln in run.summary.splitlines() if "never touched at the peak" in ln)
    assert "OpenBLAS" in untouched_line
    return causes


def test_import_alone_shows_resident_peak_next_to_allocated(tmp_path):
    program = tmp_path / "import_only.py"
    program.write_text("from sklearn.datasets import make_classification\n")
    run = trace(tmp_path, program)
    check_resident_peak(run)
    # its buffers were mapped by the import, the program's one line
    assert all(c["where"].endswith(f"{program.name}:1") for c in _check_openblas_named(run))
    openblas = sum(
        r["allocated_bytes"] for r in run.stats["by_library"] if "openblas" in r["library"].lower()
    )
    named = sum(c["bytes"] for c in run.main["untouched_at_peak"] if "openblas" in c["library"].lower())
    # OpenBLAS's buffers are counted in the peak but never touched by an import
    assert named >= 0.9 * openblas > 0
    assert run.main["peak_heap_resident_bytes"] <= run.main["peak_heap_bytes"] - named
