"""A suite with a passing and a failing test per memtrace marker (docs/pytest.md).

    memtrace pytest examples/pytest_limits           # or: pytest --memtrace examples/pytest_limits

expect test_peak_over_limit to fail (its peak, 32 MiB, is over 24 MB) and
test_leak_over_limit to fail (it leaves 2 MiB live on one line, over 1 MB), each
naming the line to blame; then the tests with the highest peak and the most left live.
Without memtrace the markers do nothing and all five pass.
"""

import pytest

CACHE = []


@pytest.mark.limit_memory("24 MB")
def test_peak_within_limit():
    data = bytearray(8 << 20)
    del data


@pytest.mark.limit_memory("24 MB")
def test_peak_over_limit():
    data = bytearray(32 << 20)
    del data


@pytest.mark.limit_leaks("1 MB")
def test_leak_within_limit():
    CACHE.append(bytearray(100_000))


@pytest.mark.limit_leaks("1 MB")
def test_leak_over_limit():
    CACHE.append(bytearray(2 << 20))


def test_unmarked():
    CACHE.append(bytearray(3_000_000))
