"""The shim survives what programs do to their process (closed fds), and other Pythons are
traced as far as they can be. Programs the shim cannot load into are in
tests/reliability/test_not_loaded.py."""

import glob
import json
import os
import subprocess
import sys

import pytest

from helpers import line_of, lines_of, memtrace


def test_program_that_closes_every_fd_is_still_traced(trace, tmp_path):
    # GIVEN a daemon-like program that closes every descriptor it did not open,
    # reuses the low numbers for its own file, then allocates
    run = trace("""
        import ctypes, os
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        os.closerange(3, 65536)
        fd = os.open("out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for n in range(3, 40):
            try:
                os.dup2(fd, n)
            except OSError:
                pass
        kept = [libc.malloc(654_321) for i in range(3)]   # AFTER-CLOSE
        os.write(fd, b"exactly this")
        os.close(fd)
    """)
    assert run.returncode == 0, run.stderr
    # THEN the program's file holds exactly what it wrote (the shim wrote nothing there)
    assert (tmp_path / "out.txt").read_bytes() == b"exactly this"
    row = lines_of(run.stats(), "prog.py")[line_of(tmp_path / "prog.py", "AFTER-CLOSE")]
    assert row["allocators"] == {"malloc": 3 * 654_321}


def test_python_without_frames_says_why(tmp_path):
    # python -I ignores PYTHONPATH, so the bootstrap never runs: native-only, said once
    cap = tmp_path / "iso.mtrace"
    out = memtrace("run", "-o", cap, "--", sys.executable, "-I", "-c", "x = bytearray(10**6)")
    assert out.returncode == 0
    notes = [ln for ln in out.stderr.splitlines() if "native-only" in ln]
    assert len(notes) == 1 and "bootstrap did not run" in notes[0]


def test_venv_of_the_same_python_gets_frames(tmp_path):
    # a virtual environment without memtrace installed, of the same CPython: the
    # reader memtrace passes matches its ABI, so it still gets Python lines
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = tmp_path / "v.py"
    script.write_text("x = bytearray(1234567)\n")
    cap = tmp_path / "venv.mtrace"
    out = memtrace("run", "-q", "-o", cap, "--", venv / "bin" / "python", script)
    assert out.returncode == 0, out.stderr
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    assert stats["processes"][0]["python"]
    rows = lines_of(stats, "v.py")
    assert rows[1]["allocated_bytes"] >= 1234567


def test_other_python_without_memtrace_is_native_only(tmp_path):
    # CPython 3.8 (unsupported, so memtrace cannot be installed there), if pyenv has it
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8.*/bin/python")))
    if not candidates:
        pytest.skip("no CPython 3.8 here")
    cap = tmp_path / "py38.mtrace"
    out = memtrace("run", "-o", cap, "--", candidates[0], "-c", "x = bytearray(10**6)")
    assert out.returncode == 0, out.stderr
    notes = [ln for ln in out.stderr.splitlines() if "native-only" in ln]
    assert len(notes) == 1 and "not supported" in notes[0]
    proc = json.loads(memtrace("stats", "--json", cap).stdout)["processes"][0]
    assert proc["python"] is None and "not supported" in proc["frames_off_reason"]
