"""memtrace's pytest plugin (the `pytest11` entry point "memtrace"; docs/pytest.md).

Under `memtrace pytest ...` (or `pytest --memtrace ...`, which runs the same
command again under memtrace), the call of every test is a region named by its
node id, so the capture has each test's own peak, allocated and left-live bytes;
memtrace prints the tests with the highest peak and the most left live once
pytest is done. Two markers, with pytest-memray's names and size syntax, fail a
test that exceeds them:

    @pytest.mark.limit_memory("24 MB")   # the test's peak
    @pytest.mark.limit_leaks("1 MB")     # what any one stack left live at its end

Each is checked at the end of the test's call: the test asks the collector (the
shim never aggregates), and a failure lists the stacks holding the most. Not
traced, the plugin does nothing (the markers are only registered). Importing it
is cheap: pytest loads it in every run.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from tracer import _regions

FRAMES_SHOWN = 5

# pytest-memray's size syntax ("24 MB", "1.5GB", "512 KB": powers of 1024), and IEC
# units too ("24 MiB")
_SIZE = re.compile(r"(?P<quantity>\+?\d*\.\d+|\+?\d+)\s*(?P<unit>[KMGTP]i?B|B)", re.IGNORECASE)
_UNITS = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_size(text: str) -> float:
    """'24 MB' -> 25165824.0; ValueError on anything else."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"Invalid memory size format: {text}")
    return float(match["quantity"]) * 1024 ** _UNITS[match["unit"][0].upper()]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class StackFrame:
    """A frame of a stack given to a limit_leaks filter_fn (as pytest-memray's)."""

    function: str
    filename: str
    lineno: int


@dataclass
class Stack:
    frames: Tuple[StackFrame, ...]  # innermost first


def pytest_addoption(parser):
    group = parser.getgroup("memtrace", "memtrace (native allocation tracer)")
    group.addoption(
        "--memtrace",
        action="store_true",
        default=False,
        help="run these tests under memtrace: every test is a region; the tests "
        "with the highest peak and the most left live are listed at the end",
    )
    group.addoption(
        "--memtrace-output",
        metavar="FILE",
        default=None,
        help="the capture file, replaced if it exists (default: a new memtrace-pytest-PID.mtrace)",
    )
    group.addoption(
        "--memtrace-top", metavar="N", type=int, default=10, help="tests listed at the end (default 10)"
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "limit_memory(limit, *, current_thread_only=False): under memtrace, fail "
        "the test if its peak (bytes allocated inside it, live at one moment) "
        "exceeds limit, e.g. '24 MB'",
    )
    config.addinivalue_line(
        "markers",
        "limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False): "
        "under memtrace, fail the test if one stack left more than location_limit "
        "live when it ended",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """pytest --memtrace, not yet traced: run the same command under `memtrace pytest`."""
    if not config.getoption("memtrace") or _regions.traced() or hasattr(config, "workerinput"):
        return None
    args = [sys.executable, "-m", "tracer", "pytest", *config.invocation_params.args]
    return subprocess.call(args, cwd=str(config.invocation_params.dir))


def pytest_report_header(config):
    if _regions.traced():
        capture = os.environ.get("MEMTRACE_CAPTURE")
        return "memtrace: each test is a region" + (f" (capture: {capture})" if capture else "")
    return None


def _limits(item):
    """The memtrace markers of a test: [(name, limit in bytes, marker)]."""
    out = []
    for marker in item.iter_markers():
        if marker.name in ("limit_memory", "limit_leaks"):
            if not marker.args:
                raise TypeError(f"{marker.name} needs a size, e.g. {marker.name}('24 MB')")
            out.append((marker.name, parse_size(marker.args[0]), marker))
    return out


_FINDINGS = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _regions.traced():
        yield
        return
    limits = _limits(item)
    region = _regions.Region(item.nodeid, _regions.KIND_TEST)
    region.__enter__()
    try:
        yield
        # still inside the test's region: the collector answers for its open instance
        findings = [_check(region, name, limit, marker) for name, limit, marker in limits]
    finally:
        region.__exit__()
    item.stash[_FINDINGS] = [f for f in findings if f]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed:
        return
    findings = item.stash.get(_FINDINGS, [])
    if findings:
        report.outcome = "failed"
        report.longrepr = "\n\n".join(findings)


def _check(region, name: str, limit: float, marker) -> Optional[str]:
    """The failure message of one marker (None: within its limit)."""
    what = _regions.ASK_AT_PEAK if name == "limit_memory" else _regions.ASK_LIVE
    usage = region.usage(what)
    if usage is None:
        return f"{name}: memtrace's collector did not answer; the limit could not be checked"
    lines = usage.lines or []
    if name == "limit_memory":
        if usage.peak <= limit:
            return None
        head = (
            f"Test was limited to {human(limit)} but its peak was {human(usage.peak)} "
            f"({usage.peak:,} bytes allocated inside the test, live at one moment)"
        )
        return head + "\n" + _stacks("Stacks holding the most at the peak:", lines)
    filter_fn = marker.kwargs.get("filter_fn")
    over = [
        line for line in lines if line["bytes"] > limit and (filter_fn is None or filter_fn(_stack(line)))
    ]
    if not over:
        return None
    head = (
        f"Test was allowed to leak {human(limit)} per stack but {len(over)} "
        f"stack{'s' if len(over) > 1 else ''} left more live at its end"
    )
    return head + "\n" + _stacks("Stacks left live (allocated inside the test):", over)


def _stack(line: dict) -> Stack:
    return Stack(tuple(StackFrame(f, file, n) for f, file, n in line["stack"]))


def _own_frames(stack: list) -> list:
    """A stack's frames down to the test's own (pytest's and pluggy's are not the test's)."""
    out = []
    for frame in stack:
        if "/_pytest/" in frame[1] or "/pluggy/" in frame[1]:
            break
        out.append(frame)
    return out or stack[:1]


def _stacks(title: str, lines: list) -> str:
    """The stacks that matter (at most 5; none under 1% of the first)."""
    out = [title]
    for line in [x for x in lines[:5] if x["bytes"] * 100 >= lines[0]["bytes"]]:
        blocks = f"{line['count']:,} block{'s' if line['count'] != 1 else ''}"
        out.append(
            f"    - {human(line['bytes'])} ({line['bytes']:,} bytes, {blocks}, "
            f"{line['library']}) allocated here:"
        )
        frames = _own_frames(line["stack"])
        for function, file, number in frames[:FRAMES_SHOWN]:
            out.append(f"        {function}:{file}:{number}")
        if len(frames) > FRAMES_SHOWN:
            out.append("        ...")
    return "\n".join(out)
