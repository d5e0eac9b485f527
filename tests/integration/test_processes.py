"""fork, multiprocessing and subprocess children: each traced, under its own pid."""

from helpers import line_of, lines_of

PROLOGUE = """
import ctypes, os, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
"""


def _rows_for_pid(run, pid, tmp_path, name="prog.py"):
    return lines_of(run.stats("--pid", str(pid)), name)


def test_fork_child_has_its_own_stream(trace, tmp_path):
    run = trace(
        PROLOGUE
        + """
libc.malloc(1_111_111)                      # PARENT-BEFORE
pid = os.fork()
if pid == 0:
    libc.malloc(3_333_333)                  # CHILD
    os._exit(0)
os.waitpid(pid, 0)
libc.malloc(2_222_222)                      # PARENT-AFTER
print(pid)
"""
    )
    assert run.returncode == 0, run.stderr
    child = int(run.stdout.strip())
    stats = run.stats()
    pids = {p["pid"]: p for p in stats["processes"]}
    assert child in pids and pids[child]["ppid"] in pids, stats["processes"]
    parent = pids[child]["ppid"]
    script = tmp_path / "prog.py"
    child_rows = _rows_for_pid(run, child, tmp_path)
    parent_rows = _rows_for_pid(run, parent, tmp_path)
    context = (stats["processes"], child_rows, parent_rows)
    assert child_rows[line_of(script, "CHILD")]["allocators"] == {"malloc": 3_333_333}, context
    assert line_of(script, "CHILD") not in parent_rows, context
    assert parent_rows[line_of(script, "PARENT-AFTER")]["allocators"] == {"malloc": 2_222_222}, context
    assert parent_rows[line_of(script, "PARENT-BEFORE")]["allocators"] == {"malloc": 1_111_111}, context
    # the child's stream holds none of the parent's allocations made before the fork
    assert line_of(script, "PARENT-BEFORE") not in child_rows, context
    # os._exit skips exit handlers; the status it was given is still known
    assert pids[child]["end"] == {"how": "_exit", "exit_code": 0}, context


def test_multiprocessing_and_subprocess_children(trace, tmp_path):
    run = trace(
        PROLOGUE
        + """
import multiprocessing, subprocess

def work():
    libc.malloc(4_444_444)                  # MP-CHILD

if __name__ == "__main__":
    p = multiprocessing.get_context("fork").Process(target=work)
    p.start(); p.join()
    code = "import ctypes; l = ctypes.CDLL(None); l.malloc.argtypes = [ctypes.c_size_t]; l.malloc(5555555)"
    subprocess.run([sys.executable, "-c", code], check=True)
    print(p.pid)
"""
    )
    assert run.returncode == 0, run.stderr
    stats = run.stats()
    mp_pid = int(run.stdout.strip())
    pids = {p["pid"]: p for p in stats["processes"]}
    assert mp_pid in pids
    rows = _rows_for_pid(run, mp_pid, tmp_path)
    assert rows[line_of(tmp_path / "prog.py", "MP-CHILD")]["allocators"] == {"malloc": 4_444_444}
    # the subprocess child: a separate Python with frames, its -c line holds 5,555,555
    subs = [p for p in stats["processes"] if "-c" in p["argv"]]
    assert len(subs) == 1 and subs[0]["python"]
    sub_stats = run.stats("--pid", str(subs[0]["pid"]))
    sub_rows = [r for r in sub_stats["by_line"] if r["file"] == "<string>"]
    assert any(r["allocators"].get("malloc") == 5_555_555 for r in sub_rows)
