"""The pytest plugin on a real suite (pytester): every test a region, the limit
markers passing and failing with the stacks to blame, the tests table, under
`memtrace pytest`, `pytest --memtrace` and pytest-xdist workers."""

import json
import sys

import pytest

from helpers import ARENA_SLACK, ba, memtrace

pytest_plugins = ["pytester"]

SUITE = """
import pytest

KEPT = []

@pytest.mark.limit_memory("24 MB")
def test_peak_within_limit():
    data = bytearray(8 << 20)
    del data

@pytest.mark.limit_memory("24 MB")
def test_peak_over_limit():
    data = bytearray(32 << 20)          # LINE-BIG
    del data

@pytest.mark.limit_leaks("1 MB")
def test_leak_within_limit():
    KEPT.append(bytearray(100_000))

@pytest.mark.limit_leaks("1 MB")
def test_leak_over_limit():
    KEPT.append(bytearray(2 << 20))     # LINE-LEAK

def test_plain():
    kept = bytearray(3_000_000)
    KEPT.append(kept)
"""
BIG, LEAK = ba(32 << 20), ba(2 << 20)


def line(marker: str) -> int:
    return next(i for i, text in enumerate(SUITE.splitlines(), 0) if marker in text)


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_limits=SUITE)
    return pytester


def check_failures(result, suite):
    result.assert_outcomes(passed=3, failed=2)
    text = result.stdout.str()
    big = text.split("_ test_peak_over_limit _")[1].split("\n_")[0]
    assert "Test was limited to 24.0 MiB but its peak was 32.0 MiB" in big
    assert f"{BIG:,} bytes, 1 block" in big
    assert f"test_peak_over_limit:{suite.path / 'test_limits.py'}:{line('LINE-BIG')}" in big
    leak = text.split("_ test_leak_over_limit _")[1].split("\n_")[0]
    assert "allowed to leak 1.0 MiB per stack but 1 stack left more live" in leak
    assert f"{LEAK:,} bytes, 1 block" in leak
    assert f"test_leak_over_limit:{suite.path / 'test_limits.py'}:{line('LINE-LEAK')}" in leak
    return text


def table_of_tests(text: str) -> list:
    """The test names of the peak table, in order."""
    table = text.split("tests with the highest peak")[1].split("tests that left")[0]
    return [row.split()[-1] for row in table.splitlines()[2:] if "::" in row]


def capture_rows(path) -> dict:
    out = memtrace("stats", "--json", path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return {r["name"]: r for r in data["regions"] if r["kind"] == "test"}, data


def memtrace_pytest(pytester, *args):
    """`memtrace pytest ARGS...` in the pytester's folder, without pytest's cache."""
    return pytester.run(sys.executable, "-m", "tracer", "pytest", "-p", "no:cacheprovider", *args)


def test_memtrace_pytest(suite):
    result = memtrace_pytest(suite, "--memtrace-output", "suite.mtrace")
    text = check_failures(result, suite)
    assert result.ret == 1
    assert table_of_tests(text) == [
        "test_limits.py::test_peak_over_limit",
        "test_limits.py::test_peak_within_limit",
        "test_limits.py::test_plain",
        "test_limits.py::test_leak_over_limit",
        "test_limits.py::test_leak_within_limit",
    ]
    left = text.split("tests that left the most live")[1]
    assert (
        left.index("test_plain") < left.index("test_leak_over_limit") < left.index("test_leak_within_limit")
    )
    rows, data = capture_rows(suite.path / "suite.mtrace")
    assert len(rows) == 5
    big = rows["test_limits.py::test_peak_over_limit"]
    assert BIG <= big["peak_bytes"] < BIG + ARENA_SLACK and big["live_at_end_bytes"] < ARENA_SLACK
    assert rows["test_limits.py::test_plain"]["live_at_end_bytes"] >= ba(3_000_000)
    # one test seen through --region: its line holds exactly the block at its peak
    out = memtrace(
        "stats", "--json", "--region", "test_limits.py::test_peak_over_limit", suite.path / "suite.mtrace"
    )
    by_line = [r for r in json.loads(out.stdout)["by_line"] if r["file"].endswith("test_limits.py")]
    assert [(r["line"], r["peak_bytes"]) for r in by_line if r["peak_bytes"]] == [(line("LINE-BIG"), BIG)]


def test_pytest_dash_dash_memtrace_reruns_under_memtrace(suite):
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--memtrace", "--memtrace-output", "again.mtrace"
    )
    text = check_failures(result, suite)
    assert "memtrace: each test is a region" in text  # the report header of the traced run
    assert len(table_of_tests(text)) == 5
    assert (suite.path / "again.mtrace").exists()


def test_xdist_workers_are_traced(suite):
    pytest.importorskip("xdist")
    result = memtrace_pytest(suite, "-n", "2", "--memtrace-output", "workers.mtrace")
    check_failures(result, suite)
    rows, data = capture_rows(suite.path / "workers.mtrace")
    main_pid = data["processes"][0]["pid"]
    workers = {r["pid"] for r in rows.values()}
    assert len(rows) == 5 and main_pid not in workers and len(workers) == 2
    assert rows["test_limits.py::test_leak_over_limit"]["live_at_end_bytes"] >= LEAK


def test_without_memtrace_the_markers_do_nothing(suite):
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert "each test is a region" not in result.stdout.str()
    assert "tests with the highest peak" not in result.stdout.str()


def test_a_bad_size_is_an_error(pytester):
    pytester.makepyfile(
        test_bad="""
import pytest

@pytest.mark.limit_memory("lots")
def test_x():
    pass
"""
    )
    result = pytester.run(
        sys.executable, "-m", "tracer", "pytest", "-p", "no:cacheprovider", "--memtrace-output", "bad.mtrace"
    )
    result.assert_outcomes(failed=1)
    assert "Invalid memory size format: lots" in result.stdout.str()


def test_limit_leaks_filter_fn_sees_the_stack(pytester):
    pytester.makepyfile(
        test_filtered="""
import pytest

KEPT = []

def cache_it():
    KEPT.append(bytearray(3 << 20))

@pytest.mark.limit_leaks("1 MB", filter_fn=lambda stack: stack.frames[0].function != "cache_it")
def test_known_cache_is_ignored():
    cache_it()

@pytest.mark.limit_leaks("1 MB", filter_fn=lambda stack: stack.frames[0].function != "cache_it")
def test_other_leak_still_fails():
    KEPT.append(bytearray(3 << 20))
"""
    )
    result = memtrace_pytest(pytester, "--memtrace-output", "filtered.mtrace")
    result.assert_outcomes(passed=1, failed=1)
    assert "test_other_leak_still_fails:" in result.stdout.str()
    assert f"{ba(3 << 20):,} bytes, 1 block" in result.stdout.str()
