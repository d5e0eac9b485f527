"""Helpers for the real-world tests: trace one of the programs in benchmarks/realworld/
as a user would (`memtrace run`, end-of-run summary on), then check the contracts the
headline numbers must keep on it. The general helpers are in tests/helpers.py."""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import ROOT, memtrace, stats

PROGRAMS = ROOT / "benchmarks" / "realworld"
PEAK_WINDOW = 0.05  # the at-peak snapshot is read within 50 ms of the peak ...
RSS_SHARE = 0.05  # ... and its RSS is within 5% of the highest RSS sampled around it
ADVICE_TOPICS = (
    "glibc holds",
    "pymalloc arenas keep",
    "never touched",
    "libraries and mapped files hold",
    "never seen allocated",
)


@dataclass
class Run:
    program: Path
    capture: Path
    stdout: str  # the program's own output
    end_of_run: str  # memtrace's summary printed at the end of the run (stderr)
    stats: dict
    summary: str  # `memtrace summary` on the same capture
    reconcile: str  # `memtrace reconcile`

    @property
    def main(self) -> dict:
        return self.stats["processes"][0]

    def printed(self, label: str) -> int:
        """A number the program printed as `label N`."""
        match = re.search(rf"^{label} (\d+)$", self.stdout, re.M)
        assert match, f"{label!r} not printed:\n{self.stdout}"
        return int(match.group(1))

    def line_row(self, marker: str) -> dict:
        """The by_user_line row of the program's line holding `marker`."""
        number = next(i for i, text in enumerate(self.program.read_text().splitlines(), 1) if marker in text)
        rows = [
            r
            for r in self.stats["by_user_line"]
            if r["file"].endswith(self.program.name) and r["line"] == number
        ]
        assert len(rows) == 1, (marker, number)
        return rows[0]


def trace(tmp_path: Path, program, *args, name=None) -> Run:
    program = Path(program) if Path(program).is_absolute() else PROGRAMS / program
    capture = tmp_path / f"{name or program.stem}.mtrace"
    run = memtrace(
        "run", "-f", "-o", capture, "--", sys.executable, program, *args, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    summary = memtrace("summary", capture)
    reconcile = memtrace("reconcile", capture)
    assert summary.returncode == 0 and reconcile.returncode == 0, summary.stderr + reconcile.stderr
    return Run(program, capture, run.stdout, run.stderr, stats(capture), summary.stdout, reconcile.stdout)


def check_read_at_peak(run: Run, pid=None) -> dict:
    """The at-peak snapshot was read within PEAK_WINDOW of the peak, with the heap near
    its peak, and its RSS is within RSS_SHARE of the highest RSS sampled around it."""
    proc = run.main if pid is None else next(p for p in run.stats["processes"] if p["pid"] == pid)
    key = str(proc["pid"])
    row = run.stats["reconciliation"][key]["at_peak"]
    assert "error" not in row, row
    distance = row["distance"]["snapshot"]
    assert abs(distance["seconds"]) <= PEAK_WINDOW, row["distance"]
    assert row["heap_at_snapshot_bytes"] >= 0.9 * row["peak_heap_bytes"], row
    peak_time = proc["peak_heap_time"]
    around = [s[1] for s in run.stats["timeline"][key] if abs(s[0] - peak_time) <= PEAK_WINDOW]
    assert around, "no RSS sample around the peak"
    assert abs(row["rss_bytes"] - max(around)) <= RSS_SHARE * max(around), (row["rss_bytes"], around)
    return row


def check_same_summary(run: Run) -> None:
    """The end-of-run summary is `memtrace summary`, line for line (plus where the
    files went)."""
    lines = run.end_of_run.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("memtrace: "))
    ours = [line for line in lines[start:] if not line.startswith(("  capture: ", "  report:  "))]
    assert ours == run.summary.splitlines()


def advice_lines(run: Run) -> list:
    return [line for line in run.reconcile.splitlines() if line.startswith("  advice: ")]


def check_advice_once(run: Run) -> None:
    """Each piece of advice appears once."""
    lines = advice_lines(run)
    for topic in ADVICE_TOPICS:
        assert sum(topic in line for line in lines) <= 1, (topic, lines)


def check_resident_peak(run: Run) -> None:
    """The resident peak and the untouched part add up to the peak, both printed."""
    proc = run.main
    resident, untouched = proc["peak_heap_resident_bytes"], proc["peak_heap_untouched_bytes"]
    assert resident is not None and 0 < resident <= proc["peak_heap_bytes"]
    assert resident + untouched == proc["peak_heap_bytes"]
    assert sum(c["bytes"] for c in proc["untouched_at_peak"]) <= untouched
    headline = next(line for line in run.summary.splitlines() if line.startswith("  peak heap"))
    assert ", resident " in headline, headline
