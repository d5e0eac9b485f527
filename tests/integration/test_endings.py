"""How runs end: exit codes, signals, SIGKILL mid-run, stdio passing through."""

import signal
import subprocess
import sys

from helpers import MEMTRACE, line_of, lines_of


def test_exit_code_and_stdio_pass_through(trace):
    run = trace(
        """
        import sys
        data = sys.stdin.read()
        sys.stdout.write("out:" + data.upper())
        sys.stderr.write("err-line\\n")
        sys.exit(7)
    """,
        stdin="hello\n",
    )
    assert run.returncode == 7
    assert run.stdout == "out:HELLO\n"
    assert run.stderr == "err-line\n"  # -q: memtrace itself prints nothing
    assert run.stats()["exit_code"] == 7


def test_signal_death_exits_128_plus_n(trace):
    run = trace("""
        import os, signal
        os.kill(os.getpid(), signal.SIGTERM)
    """)
    assert run.returncode == 128 + signal.SIGTERM
    stats = run.stats()
    assert stats["signal"] == signal.SIGTERM and stats["exit_code"] is None


def test_sigkill_after_50_mb_keeps_everything(trace, tmp_path):
    run = trace("""
        import ctypes, os, signal
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        blocks = [libc.malloc(1_000_000) for i in range(50)]   # FIFTY
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert run.returncode == 128 + 9
    stats = run.stats()
    assert stats["signal"] == 9
    row = lines_of(stats, "prog.py")[line_of(tmp_path / "prog.py", "FIFTY")]
    assert row["allocators"] == {"malloc": 50_000_000}
    assert row["n_allocations"] == 50
    assert row["live_at_exit_bytes"] == 50_000_000
    summary = subprocess.run(MEMTRACE + ["summary", str(run.capture)], capture_output=True, text=True)
    assert summary.returncode == 0
    assert "killed by signal 9" in summary.stdout


def test_default_capture_name_and_summary_on_stderr(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("x = bytearray(10**6)\nprint('done')\n")
    out = subprocess.run(
        MEMTRACE + [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "done\n"
    captures = list(tmp_path.glob("memtrace-script-*.mtrace"))
    assert len(captures) == 1
    assert "peak heap" in out.stderr and str(captures[0].name) in out.stderr
    assert captures[0].stat().st_mode & 0o777 == 0o600
