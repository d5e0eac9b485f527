"""The bootstrap stays out of the program's way: its own sitecustomize still runs,
sys.path is the program's, and exec'd Python children are traced as new streams."""
import json
import os
import sys

from conftest import line_of, lines_of, memtrace


def test_existing_sitecustomize_still_runs(tmp_path):
    site_dir = tmp_path / "mysite"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text("import builtins\nbuiltins.MY_SITE_RAN = 42\n")
    script = tmp_path / "p.py"
    script.write_text(
        "import sys, builtins\n"
        "print(builtins.MY_SITE_RAN)\n"
        "print(any('bootstrap' in p for p in sys.path))\n"
        "x = bytearray(2345678)   # ALLOC\n")
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
