"""Bad input: one clear line, a non-zero exit, no traceback."""

import sys

from helpers import memtrace


def one_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("memtrace: ") and "Traceback" not in err


def test_missing_program(tmp_path):
    out = memtrace("no-such-program-xyz", cwd=tmp_path)
    assert out.returncode == 127
    assert one_line(out.stderr) and "no-such-program-xyz" in out.stderr
    assert not list(tmp_path.glob("*.mtrace"))


def test_unknown_option(tmp_path):
    out = memtrace("run", "--frobnicate", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert out.returncode == 2
    assert one_line(out.stderr) and "--frobnicate" in out.stderr


def test_no_program():
    out = memtrace("run")
    assert out.returncode == 2 and one_line(out.stderr)


def test_garbage_capture(tmp_path):
    bad = tmp_path / "bad.mtrace"
    bad.write_bytes(b"this is not a capture at all" * 10)
    for command in (["summary"], ["stats", "--json"]):
        out = memtrace(*command, bad)
        assert out.returncode == 2
        assert one_line(out.stderr) and "not a memtrace capture" in out.stderr


def test_missing_capture(tmp_path):
    out = memtrace("summary", tmp_path / "nope.mtrace")
    assert out.returncode == 2 and one_line(out.stderr)


def test_truncated_capture_reports_what_it_has(trace, tmp_path):
    run = trace("""
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        blocks = [libc.malloc(50_000) for i in range(200)]
    """)
    assert run.returncode == 0
    data = run.capture.read_bytes()
    cut = tmp_path / "cut.mtrace"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = memtrace("summary", cut)
    # a warning line on stderr, the report on stdout, and a distinct non-zero status
    assert out.returncode == 3
    assert one_line(out.stderr) and "cut short" in out.stderr
    assert "peak heap" in out.stdout and "Traceback" not in out.stderr
    tiny = tmp_path / "tiny.mtrace"
    tiny.write_bytes(data[:10])
    out = memtrace("summary", tiny)
    assert out.returncode == 2 and one_line(out.stderr)


def test_existing_output_is_not_clobbered(tmp_path):
    cap = tmp_path / "keep.mtrace"
    cap.write_text("precious")
    out = memtrace("run", "-o", cap, "--", sys.executable, "-c", "pass")
    assert out.returncode == 2 and one_line(out.stderr) and "already exists" in out.stderr
    assert cap.read_text() == "precious"
