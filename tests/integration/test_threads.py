"""Each thread's allocations land on its own line, counts exact, nothing dropped."""

from helpers import line_of, lines_of

FOUR_THREADS = """
import ctypes, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
N = 5000
start = threading.Barrier(4)

def one():
    start.wait()
    for i in range(N):
        libc.free(libc.malloc(1111))    # T1

def two():
    start.wait()
    for i in range(N):
        libc.free(libc.malloc(2222))    # T2

def three():
    start.wait()
    for i in range(N):
        libc.free(libc.malloc(3333))    # T3

def four():
    start.wait()
    for i in range(N):
        libc.free(libc.malloc(4444))    # T4

threads = [threading.Thread(target=f) for f in (one, two, three, four)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_four_threads(trace, tmp_path):
    run = trace(FOUR_THREADS)
    assert run.returncode == 0, run.stderr
    stats = run.stats()
    rows = lines_of(stats, "prog.py")
    for marker, size, function in (
        ("T1", 1111, "one"),
        ("T2", 2222, "two"),
        ("T3", 3333, "three"),
        ("T4", 4444, "four"),
    ):
        row = rows[line_of(tmp_path / "prog.py", marker)]
        assert row["function"] == function
        assert row["allocators"] == {"malloc": 5000 * size}
        assert row["n_allocations"] == 5000
        assert row["live_at_exit_bytes"] == 0
    assert stats["dropped_events"] == 0


def test_native_thread_gets_its_own_bucket(trace, tmp_path):
    # GIVEN a thread with no Python frames (OpenBLAS-style): a C thread made by ctypes
    run = trace("""
        import ctypes, ctypes.util
        libc = ctypes.CDLL(None)
        pthread = libc
        libc.malloc.restype = ctypes.c_void_p
        THREAD_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
        # a C function pointer for malloc itself: the thread calls malloc(987654)
        malloc_addr = ctypes.cast(libc.malloc, ctypes.c_void_p).value
        tid = ctypes.c_ulong()
        libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.c_void_p]
        libc.pthread_create(ctypes.byref(tid), None, malloc_addr, ctypes.c_void_p(987654))
        libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        libc.pthread_join(tid, None)
    """)
    assert run.returncode == 0, run.stderr
    native = [
        r
        for r in run.stats()["by_line"]
        if r["file"] == "<native>"
        and r["allocators"].get("malloc", 0) >= 987654
        and "(main)" not in r["function"]
    ]
    assert native, "the C thread's malloc must be in its own thread bucket"
    assert native[0]["function"].startswith("[no Python frame] thread ")
