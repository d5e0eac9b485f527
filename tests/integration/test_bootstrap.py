"""The bootstrap stays out of the program's way: its own sitecustomize still runs,
sys.path is the program's, and exec'd Python children are traced as new streams."""

import json
import os
import sys
from pathlib import Path

from helpers import line_of, lines_of, memtrace


def test_existing_sitecustomize_still_runs(tmp_path):
    site_dir = tmp_path / "mysite"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text("import builtins\nbuiltins.MY_SITE_RAN = 42\n")
    script = tmp_path / "p.py"
    script.write_text(
        "import sys, builtins\n"
        "print(builtins.MY_SITE_RAN)\n"
        "print(any('bootstrap' in p for p in sys.path))\n"
        "x = bytearray(2345678)   # ALLOC\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site_dir))
    cap = tmp_path / "s.mtrace"
    out = memtrace("run", "-q", "-o", cap, "--", sys.executable, script, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "False"]
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    row = lines_of(stats, "p.py")[line_of(script, "ALLOC")]
    assert row["allocated_bytes"] >= 2345678


def test_exec_starts_a_new_stream_for_the_same_pid(trace, tmp_path):
    run = trace("""
        import os, sys
        before = bytearray(1_111_111)        # BEFORE-EXEC
        print(os.getpid(), flush=True)
        os.execv(sys.executable, [sys.executable, "-c", "x = bytearray(2_222_222)"])
    """)
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split()[0])
    stats = run.stats()
    same = [p for p in stats["processes"] if p["pid"] == pid]
    assert len(same) == 2
    assert same[0]["end"] == {"how": "exec"}
    assert "-c" in same[1]["argv"] and same[1]["python"]
    rows = {(r["file"], r["line"]): r for r in stats["by_line"]}
    assert rows[("<string>", 1)]["allocated_bytes"] >= 2_222_222
    before = lines_of(stats, "prog.py")[line_of(tmp_path / "prog.py", "BEFORE-EXEC")]
    assert before["allocated_bytes"] >= 1_111_111


def test_free_threaded_python_is_traced_native_only_with_its_reason(tmp_path):
    # GIVEN a Python that says it is a free-threaded build (sys.abiflags with "t",
    # set by a .pth file, which runs before the bootstrap, in a venv that sees memtrace)
    import subprocess

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "fake_free_threaded.pth").write_text("import sys; sys.abiflags += 't'\n")
    script = tmp_path / "p.py"
    script.write_text("import sys\nprint(sys.abiflags)\nx = bytearray(3_456_789)\n")
    cap = tmp_path / "ft.mtrace"
    # WHEN it runs under memtrace
    run = memtrace("run", "-q", "-o", cap, "--", python, script)
    # THEN the program runs as it would, traced native-only, and the reason is given
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("t")
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    proc = stats["processes"][0]
    assert proc["python"] is None and proc["frames"] is False
    assert proc["frames_off_reason"].startswith("free-threaded CPython")
    assert not any(r["file"].endswith("p.py") for r in stats["by_line"])
    native = [r for r in stats["by_line"] if r["file"] == "<native>"]
    assert sum(r["allocated_bytes"] for r in native) >= 3_456_789
    summary = memtrace("summary", cap)
    assert "native-only trace" in summary.stdout and "free-threaded" in summary.stdout


def test_unsupported_python_reason_names_the_supported_range():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "src" / "tracer" / "bootstrap" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("memtrace_bootstrap", path)
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)  # under its own name it only defines
    assert boot.frames_unavailable((3, 16, 0), "") == (
        "CPython 3.16 is not supported (3.9 to 3.15 are): traced native-only"
    )
    assert boot.frames_unavailable((3, 8, 18), "").startswith("CPython 3.8 is not supported")
    assert boot.frames_unavailable((3, 14, 1), "t").startswith("free-threaded CPython 3.14t")
    assert boot.frames_unavailable((3, 14, 1), "") is None
    assert boot.frames_unavailable((3, 9, 0), "d") is None
