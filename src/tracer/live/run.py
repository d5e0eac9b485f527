"""`memtrace run --live`: the view runs in a process of its own, on the terminal.

The view is a separate process so that drawing it never takes the collector's
time (the GIL, the CPU it shares with the program). The program's stdout and
stderr go to a file next to the capture (the view shows its last lines), and it
reads no terminal input (the view's keys are the view's). When the program ends
the view stays, with the final numbers, until the user leaves it; the summary is
printed after that.
"""

import os
import subprocess
import sys
from typing import Optional

from tracer.errors import MemtraceError
from tracer.live.server import SOCKET_NAME, LiveServer


class LiveRun:
    def __init__(self, session_dir: str, output: Optional[str]):
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise MemtraceError("--live needs a terminal (its standard input and output)")
        self.socket = os.path.join(session_dir, SOCKET_NAME)
        self.renamed = output is None  # the capture's name comes with the program's pid
        self.log_path = (output + ".out") if output else f"memtrace-{os.getpid()}.out"
        try:
            self.log = os.open(
                self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise MemtraceError(
                f"cannot write the program's output to {self.log_path}: {exc.strerror}"
            ) from None
        self.proc: Optional[subprocess.Popen] = None
        self.server: Optional[LiveServer] = None

    def target_stdio(self) -> dict:
        return {"stdin": subprocess.DEVNULL, "stdout": self.log, "stderr": self.log}

    def start(self) -> None:
        os.close(self.log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracer", "live", "--output-log", self.log_path, self.socket]
        )

    def capture_written(self, capture: str) -> None:
        """Name the program's output after the capture (the view keeps the file open)."""
        if self.renamed:
            try:
                os.rename(self.log_path, capture + ".out")
                self.log_path = capture + ".out"
            except OSError:
                pass

    def open(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def keep_serving(self, server: LiveServer) -> None:
        self.server = server
        server.serve_until_closed()

    def wait(self) -> None:
        """Until the user leaves the view."""
        if self.proc is not None:
            self.proc.wait()
        if self.server is not None:
            self.server.close()
