"""Known malloc/realloc/free/mmap calls from known lines, counted exactly."""

from helpers import line_of, lines_of

CTYPES_PROGRAM = """
import ctypes, mmap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.realloc.restype = ctypes.c_void_p
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def main():
    p = libc.malloc(123457)                    # MALLOC
    q = libc.realloc(p, 234567)                # REALLOC
    libc.free(q)
    m = mmap.mmap(-1, 10 * 2**20)              # MMAP
    b = bytearray()
    for i in range(100):
        b += b"x" * 10000                      # GROW
    kept = [libc.malloc(7777) for i in range(1000)]   # LOOP
    for r in kept[:400]:
        libc.free(r)
    m.close()

main()
"""


def test_ctypes_malloc_realloc_mmap_exact(trace, tmp_path):
    run = trace(CTYPES_PROGRAM)
    assert run.returncode == 0, run.stderr
    stats = run.stats()
    rows = lines_of(stats, "prog.py")
    at = lambda marker: rows[line_of(tmp_path / "prog.py", marker)]

    assert at("MALLOC")["allocators"] == {"malloc": 123457}
    assert at("MALLOC")["live_at_exit_bytes"] == 0  # moved by the realloc
    assert at("REALLOC")["allocators"] == {"realloc": 234567}
    assert at("REALLOC")["live_at_exit_bytes"] == 0  # freed
    assert at("MMAP")["allocators"] == {"mmap": 10 * 2**20}
    assert at("MMAP")["live_at_exit_bytes"] == 0  # unmapped
    assert at("MMAP")["peak_bytes"] == 10 * 2**20
    loop = at("LOOP")
    assert loop["allocators"]["malloc"] >= 7_777_000
    assert loop["live_at_exit_bytes"] == 600 * 7777
    # bytearray growth goes through realloc, many times
    grow = at("GROW")
    assert grow["allocators"].get("realloc", 0) > 1_000_000
    assert grow["n_allocations"] >= 10
    assert stats["dropped_events"] == 0


def test_peak_is_the_moment_of_maximum(trace, tmp_path):
    # GIVEN 30 MB held, released, then 20 MB held: the peak holds the first block only
    run = trace("""
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        a = libc.malloc(30_000_000)   # FIRST
        libc.free(a)
        b = libc.malloc(20_000_000)   # SECOND
    """)
    assert run.returncode == 0, run.stderr
    stats = run.stats()
    rows = lines_of(stats, "prog.py")
    first = rows[line_of(tmp_path / "prog.py", "FIRST")]
    second = rows[line_of(tmp_path / "prog.py", "SECOND")]
    assert first["peak_bytes"] == 30_000_000
    assert second["peak_bytes"] == 0
    assert second["live_at_exit_bytes"] == 20_000_000
    assert 30_000_000 <= stats["peak_heap_bytes"] < 30_000_000 + 20_000_000
