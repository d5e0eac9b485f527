"""What `memtrace run` imports before the program starts. The program blocks on a full
ring until the collector drains it, so the launcher's and collector's imports are the
traced program's start-up too: NumPy (~60 ms) and dataclasses (with inspect, ast and
dis, ~13 ms) are kept out of that path; reports import them later, after the run."""

import re
import subprocess
import sys

from helpers import MEMTRACE

KEPT_OUT = ("numpy", "dataclasses")


def test_run_imports_no_heavy_module(tmp_path):
    capture = tmp_path / "t.mtrace"
    run = subprocess.run(
        [sys.executable, "-X", "importtime"]
        + MEMTRACE[1:]
        + ["run", "-q", "--no-report", "-o", str(capture), "--", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert capture.stat().st_size > 0
    # -X importtime writes a line per module the memtrace process imported
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", run.stderr, re.M))
    assert {"tracer.record.launcher", "tracer.record.collector"} <= imported
    assert [m for m in KEPT_OUT if m in imported] == []
