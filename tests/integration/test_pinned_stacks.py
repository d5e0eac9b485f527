"""Stacks stay exact when walks stop at a pinned frame (CPython 3.12 and later).

From 3.12 memtrace pins a frame near the top of each thread's stack and, while the
interpreter proves that frame has not left the stack, reads only the frames above
it (docs/how-it-works.md, "Python stacks"). A pin that outlived its frame would
splice the old callers under a new frame pushed at the same address. Each case
below makes exactly that possible — the same functions, the same frame sizes, the
same depth, first under f, then under g — and checks that every allocation has
the callers it really had. Sizes are unique per phase.
"""

import sys

import pytest

from helpers import memtrace

PROGRAM = r"""
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
N = 3000          # allocations per phase: enough for a pin to be placed and proven
DEPTH = 10        # frames between f/g and the allocating frame: deeper than any pin

def X(size, boom=False):
    for _ in range(N):
        libc.free(libc.malloc(size))
    if boom:
        raise ValueError(size)

def chain(k, size, boom=False):
    if k == 0:
        return X(size, boom)
    return chain(k - 1, size, boom)

def f(size, boom=False):
    return chain(DEPTH, size, boom)

def g(size, boom=False):
    return chain(DEPTH, size, boom)

# returns: f's frames leave, g's are pushed at the same addresses
f(200_001); g(200_002); f(200_003)

# exceptions unwinding out of every frame of the chain (one call line per phase:
# an allocation site is a stack, so phases must differ in it somewhere)
def unwound(fn, size):
    try:
        fn(size, boom=True)
    except ValueError:
        pass

unwound(f, 200_011)
unwound(g, 200_012)
unwound(f, 200_013)

# a generator frame (its address never changes) resumed under another caller
box = [0]
def gen():
    while True:
        for _ in range(N):
            libc.free(libc.malloc(box[0]))
        yield

def f_gen(it, k=DEPTH):
    if k == 0:
        return next(it)
    return f_gen(it, k - 1)

def g_gen(it, k=DEPTH):
    if k == 0:
        return next(it)
    return g_gen(it, k - 1)

it = gen()
box[0] = 200_021; f_gen(it)
box[0] = 200_022; g_gen(it)
box[0] = 200_023; f_gen(it)
box[0] = 200_024; g_gen(it)

# threads: the same code on two threads at once, each with its own pin
t1 = threading.Thread(target=lambda: [f(200_031) for _ in range(3)])
t2 = threading.Thread(target=lambda: [g(200_032) for _ in range(3)])
t1.start(); t2.start(); t1.join(); t2.join()

# greenlets: two frame chains on one thread, switched back and forth
try:
    import greenlet
except ImportError:
    greenlet = None
if greenlet is not None:
    main = greenlet.getcurrent()
    def in_f():
        f(200_041)
        main.switch()
        f(200_043)
        main.switch()
    def in_g():
        g(200_042)
        main.switch()
        g(200_044)
        main.switch()
    gf, gg = greenlet.greenlet(in_f), greenlet.greenlet(in_g)
    for _ in range(2):
        gf.switch()
        gg.switch()
print("greenlet" if greenlet is not None else "no greenlet")
"""

CALLERS = {  # size -> the function every stack of that size must pass through
    200_001: "f",
    200_002: "g",
    200_003: "f",
    200_011: "f",
    200_012: "g",
    200_013: "f",
    200_021: "f_gen",
    200_022: "g_gen",
    200_023: "f_gen",
    200_024: "g_gen",
    200_031: "f",
    200_032: "g",
    200_041: "f",
    200_042: "g",
    200_043: "f",
    200_044: "g",
}
OTHER = {"f": "g", "g": "f", "f_gen": "g_gen", "g_gen": "f_gen"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    from tracer.analyze.model import load

    tmp = tmp_path_factory.mktemp("pins")
    script = tmp / "pins.py"
    script.write_text(PROGRAM)
    cap = tmp / "pins.mtrace"
    run = memtrace("run", "-q", "--no-report", "-o", cap, "--", sys.executable, script, cwd=tmp)
    assert run.returncode == 0, run.stderr
    proc = [p for p in load(str(cap)).processes if p.python][0]
    return proc, run.stdout.strip()


def functions_by_size(proc):
    """size -> list of (function names of the stack, outermost last) per site."""
    out = {}
    for site in proc.sites:
        n = int(site["n_allocs"])
        if n == 0 or int(site["alloc_bytes"]) % n:
            continue
        size = int(site["alloc_bytes"]) // n
        if size in CALLERS:
            names = [f.function.rsplit(".", 1)[-1] for f in proc.stack(int(site["stack"]))]
            out.setdefault(size, []).append((names, n))
    return out


@pytest.mark.parametrize("size", sorted(CALLERS))
def test_every_allocation_has_its_real_callers(traced, size):
    proc, printed = traced
    if size >= 200_041 and printed != "greenlet":
        pytest.skip("greenlet is not installed")
    stacks = functions_by_size(proc).get(size)
    assert stacks, f"no allocation of {size} bytes was recorded"
    caller, other = CALLERS[size], OTHER[CALLERS[size]]
    expected = 3000 * (3 if size in (200_031, 200_032) else 1)
    assert sum(n for _names, n in stacks) == expected
    for names, _n in stacks:
        assert caller in names and other not in names, (size, names)
        # outermost: the module, a thread's bootstrap, or a greenlet's function
        assert names[-1] in ("<module>", "_bootstrap", "in_f", "in_g"), names
        if caller in ("f", "g"):
            # the whole chain is there, every frame of it
            assert names.count("chain") == 11 and names[0] == "X", names
        else:
            assert names.count(caller) == 11 and names[0] == "gen", names


def test_stacks_are_read_with_pins_where_the_interpreter_proves_them(traced):
    proc, _ = traced
    how = proc.stacks_read or ""
    if sys.version_info >= (3, 12):
        assert how.startswith("pinned frames"), how
    else:
        assert how.startswith("whole walks"), how
