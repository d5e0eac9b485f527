"""The live view, used as a user would: `memtrace run --live` and `memtrace live PID` in a
terminal (tmux), keys sent, the screen read back."""

import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from helpers import line_of, memtrace

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

# Phases are driven by files, so that the screen is read in a known state.
PROGRAM = r"""
import os, sys, time
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))

def wait_for(name):
    while not os.path.exists(os.path.join(here, name)):
        time.sleep(0.02)

def mark(name):
    open(os.path.join(here, name), "w").close()

def hold():
    return np.ones(2_500_000)                   # PARENT: 20,000,000 bytes

kept = hold()
print("parent holds", kept.nbytes, flush=True)
mark("ready")
wait_for("go")
pid = os.fork()
if pid == 0:
    child = np.ones(3_750_000)                  # CHILD: 30,000,000 bytes
    mark("child-ready")
    wait_for("done")
    os._exit(0)
wait_for("done")
os.waitpid(pid, 0)
print("done", flush=True)
"""


class Terminal:
    """A terminal of 200 x 50 running one command: a tmux server of its own."""

    def __init__(self, command: str, cwd):
        self.name = "mt" + uuid.uuid4().hex[:8]
        self._tmux(
            "new-session",
            "-d",
            "-s",
            self.name,
            "-x",
            "200",
            "-y",
            "50",
            "-c",
            str(cwd),
            f"{command}; echo EXIT=$?; sleep 60",
        )

    def _tmux(self, *args) -> str:
        # (a COLUMNS or LINES inherited from the test runner would override the pane's size)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run(
            ["tmux", "-L", self.name, *args], capture_output=True, text=True, check=True, env=env
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def wait(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never showed; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True)


def _wait_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _row(screen: str, where: str) -> str:
    rows = [ln for ln in screen.splitlines() if where in ln]
    assert rows, f"no row for {where}:\n{screen}"
    return rows[0]


@pytest.fixture
def program(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    return tmp_path, script


def test_run_live_shows_lines_sorts_and_switches_processes(program):
    tmp, script = program
    parent_line, child_line = line_of(script, "# PARENT"), line_of(script, "# CHILD")
    term = Terminal(f"{sys.executable} -m tracer run -o prog.mtrace --live -- {sys.executable} prog.py", tmp)
    try:
        # GIVEN the program holds 20,000,000 bytes from one line
        _wait_file(tmp / "ready")
        screen = term.wait(rf"prog\.py:{parent_line}\s")
        # THEN that line leads the table with its live bytes, and the charts are drawn
        row = _row(screen, f"prog.py:{parent_line} ")
        assert row.split()[0:2] == ["19.1", "MiB"] and "hold" in row
        assert re.search(r"heap \d", screen) and re.search(r"RSS \d", screen)
        assert "allocator-held" in screen and "process 1 of 1" in screen
        term.wait("parent holds 20000000")  # the program's output, in its pane
        # WHEN s is pressed, the lines are sorted by the next column
        term.keys("s")
        term.wait("sorted by held at peak")
        # WHEN the program forks a child that holds 30,000,000 bytes, and ] is pressed
        (tmp / "go").touch()
        _wait_file(tmp / "child-ready")
        term.wait("process 1 of 2")
        term.keys("]")
        screen = term.wait(rf"process 2 of 2[\s\S]*prog\.py:{child_line}\s")
        # THEN the child's own line and bytes are shown
        assert _row(screen, f"prog.py:{child_line} ").split()[0:2] == ["28.6", "MiB"]
        # WHEN the program ends, the view says so and stays until q
        (tmp / "done").touch()
        term.wait(r"the program ended \(exit code 0\)")
        term.keys("q")
        screen = term.wait("EXIT=0")
        # THEN the summary follows, and the capture and the program's output are on disk
        assert "memtrace: the program's output: prog.mtrace.out" in screen
        assert "capture: prog.mtrace" in screen
        assert "parent holds 20000000" in (tmp / "prog.mtrace.out").read_text()
        assert (tmp / "prog.mtrace").exists()
    finally:
        term.close()


def test_live_attaches_to_a_running_program_by_pid(program):
    tmp, script = program
    parent_line = line_of(script, "# PARENT")
    run = subprocess.Popen(
        [sys.executable, "-m", "tracer", "run", "-q", "-o", "prog.mtrace", "--", sys.executable, "prog.py"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    term = None
    try:
        _wait_file(tmp / "ready")
        pid = int(
            subprocess.run(
                ["pgrep", "-P", str(run.pid), "-f", "prog.py$"], capture_output=True, text=True
            ).stdout.split()[0]
        )
        # WHEN `memtrace live PID` is given the traced program's pid
        term = Terminal(f"{sys.executable} -m tracer live {pid}", tmp)
        screen = term.wait(rf"prog\.py:{parent_line}\s")
        assert _row(screen, f"prog.py:{parent_line} ").split()[0:2] == ["19.1", "MiB"]
        assert f"pid {pid}" in screen
        term.keys("q")
        term.wait("EXIT=0")
    finally:
        (tmp / "go").touch()
        _wait_file(tmp / "child-ready")
        (tmp / "done").touch()
        assert run.wait(timeout=60) == 0, run.stderr.read()
        if term:
            term.close()


def test_live_refuses_what_it_cannot_watch(tmp_path):
    out = memtrace("live", str(os.getpid()))
    assert out.returncode == 2
    assert (
        out.stderr
        == f"memtrace: process {os.getpid()} is not traced by memtrace (run it with `memtrace run`)\n"
    )
    out = memtrace("live", tmp_path / "nothing.sock")
    assert out.returncode == 2 and "no such socket" in out.stderr
    out = memtrace("run", "--live", "--", sys.executable, "-c", "pass", stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr == "memtrace: --live needs a terminal (its standard input and output)\n"
