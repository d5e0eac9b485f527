"""Capture (and report) file safety.

- umask 000: the capture and the HTML report are still 0600;
- a symlink planted at the output path: refused in one line (with and without -f), the
  symlink's target untouched; a symlink planted at the report's path is replaced, not
  followed;
- an existing file: not clobbered without -f;
- --redact-argv: the arguments appear nowhere — capture bytes, summary, stats, HTML —
  for the main process and a child; argv[0] is kept;
- the environment is never stored.
"""

import os
import stat
import subprocess
import sys

from helpers import MEMTRACE, memtrace

SECRET_ARG = "--password=hunter2-arg-SECRET"
SECRET_ENV = "s3cr3t-ENV-value-7d1e"
PROGRAM = (
    "import subprocess, sys\n"
    "x = bytearray(2_000_000)\n"
    "subprocess.run([sys.executable, '-c', 'pass', sys.argv[1]])\n"
)


def one_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("memtrace: ")


def test_umask_000_still_private(tmp_path):
    cap = tmp_path / "u.mtrace"
    out = subprocess.run(
        MEMTRACE + ["run", "-q", "-o", str(cap), "--", sys.executable, "-c", "x = bytearray(10**6)"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0),
    )
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(cap).st_mode) == 0o600
    html = tmp_path / "u.mtrace.html"
    assert stat.S_IMODE(os.stat(html).st_mode) == 0o600
    # reports made later too
    for extra in (
        ["flamegraph", "-o", str(tmp_path / "f.html")],
        ["export", "--format", "csv", "-o", str(tmp_path / "e.csv")],
    ):
        r = subprocess.run(
            MEMTRACE + [extra[0], str(cap)] + extra[1:],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: os.umask(0),
        )
        assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "f.html").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "e.csv").st_mode) == 0o600


def test_symlink_at_output_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.mtrace"
    link.symlink_to(victim)
    for force in ([], ["-f"]):
        out = memtrace("run", "-q", *force, "-o", link, "--", sys.executable, "-c", "pass")
        assert out.returncode == 2 and one_line(out.stderr), out.stderr
        assert victim.read_text() == "precious"
        assert link.is_symlink()
    dangling = tmp_path / "dangling.mtrace"
    dangling.symlink_to(tmp_path / "would-be-created")
    out = memtrace("run", "-q", "-o", dangling, "--", sys.executable, "-c", "pass")
    assert out.returncode == 2 and one_line(out.stderr)
    assert not (tmp_path / "would-be-created").exists()


def test_symlink_at_report_path_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cap = tmp_path / "r.mtrace"
    (tmp_path / "r.mtrace.html").symlink_to(victim)
    out = memtrace("run", "-q", "-o", cap, "--", sys.executable, "-c", "x = bytearray(10**6)")
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "precious"
    assert not (tmp_path / "r.mtrace.html").is_symlink()
    # a symlink planted at the temporary name is refused, not followed
    for name in os.listdir(tmp_path):
        assert ".tmp" not in name
    # (the report process's pid is unknown in advance: plant a range of them)
    pids = range(os.getpid() + 1, os.getpid() + 400)
    for pid in pids:
        (tmp_path / f"g.html.tmp{pid}").symlink_to(victim)
    out = memtrace("flamegraph", cap, "-o", tmp_path / "g.html")
    assert victim.read_text() == "precious"
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr


def test_existing_file_not_clobbered(tmp_path):
    cap = tmp_path / "keep.mtrace"
    cap.write_text("precious")
    out = memtrace("run", "-q", "-o", cap, "--", sys.executable, "-c", "pass")
    assert out.returncode == 2 and one_line(out.stderr) and "already exists" in out.stderr
    assert cap.read_text() == "precious"
    out = memtrace("run", "-q", "-f", "-o", cap, "--", sys.executable, "-c", "pass")
    assert out.returncode == 0 and cap.read_bytes().startswith(b"MTRACE")


def test_redact_argv_and_no_environment(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    cap = tmp_path / "red.mtrace"
    env = dict(os.environ, MEMTRACE_TEST_SECRET=SECRET_ENV)
    out = subprocess.run(
        MEMTRACE + ["run", "--redact-argv", "-o", str(cap), "--", sys.executable, str(script), SECRET_ARG],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    texts = {
        "capture": cap.read_bytes().decode("latin-1"),
        "html": (tmp_path / "red.mtrace.html").read_text(),
        "run summary": out.stderr,
    }
    for command in (["summary"], ["stats", "--json"], ["tree"], ["log", "-n", "50"]):
        texts[command[0]] = memtrace(*command, cap).stdout
    for where, text in texts.items():
        assert "hunter2" not in text, where
        assert SECRET_ENV not in text, where
    import json

    st = json.loads(memtrace("stats", "--json", cap).stdout)
    assert st["command"] == [sys.executable, "<redacted>"]
    assert len(st["processes"]) == 2
    for p in st["processes"]:
        assert p["argv"][1:] == ["<redacted>"] and p["argv"][0]
    # without the option, the arguments are there (the test can see them) but never the env
    cap2 = tmp_path / "plain.mtrace"
    out = subprocess.run(
        MEMTRACE + ["run", "-q", "-o", str(cap2), "--", sys.executable, str(script), SECRET_ARG],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0
    raw = cap2.read_bytes()
    assert b"hunter2" in raw and SECRET_ENV.encode() not in raw
    assert SECRET_ENV not in (tmp_path / "plain.mtrace.html").read_text()
