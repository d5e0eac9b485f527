"""Helpers: trace real programs with the installed memtrace and read their numbers."""
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

MEMTRACE = [sys.executable, "-m", "tracer"]


@dataclass
class Traced:
    returncode: int
    stdout: str
    stderr: str
    capture: Path

    def stats(self, *extra) -> dict:
        out = subprocess.run(MEMTRACE + ["stats", "--json", *extra, str(self.capture)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode in (0, 3), out.stderr
        return json.loads(out.stdout)


def memtrace(*args, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(MEMTRACE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def lines_of(stats: dict, filename: str, key: str = "by_line") -> dict:
    """by_line (or by_user_line) rows of one file, keyed by line number."""
    rows = {}
    for row in stats[key]:
        if row["file"].endswith(filename):
            assert row["line"] not in rows, f"line {row['line']} listed twice"
            rows[row["line"]] = row
    return rows


def line_of(path: Path, marker: str) -> int:
    """Line number of the source line holding `marker` (tests mark lines with comments)."""
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


@pytest.fixture
def trace(tmp_path):
    """trace(source, *args) writes the Python program to a file and runs it under memtrace."""

    def run(source: str, *args, name="prog.py", options=(), stdin=None, timeout=180) -> Traced:
        script = tmp_path / name
        script.write_text(textwrap.dedent(source))
        capture = tmp_path / (name + ".mtrace")
        out = subprocess.run(
            MEMTRACE + ["run", "-q", "-f", "-o", str(capture), *options, "--", sys.executable,
                        str(script), *map(str, args)],
            capture_output=True, text=True, timeout=timeout, input=stdin, cwd=tmp_path)
        return Traced(out.returncode, out.stdout, out.stderr, capture)

    return run
