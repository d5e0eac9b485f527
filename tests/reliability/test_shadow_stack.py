"""Python stacks stay right whatever the program does to its frames.

memtrace has no profile hook (it reads the thread's own frame chain at each
allocation), so sys.setprofile(None), a coverage-like sys.settrace, generators,
coroutines, exceptions unwinding frames, deep recursion, threads and greenlet
switches cannot leave it with a stale stack. Each allocation below has a unique
size; the test checks the exact innermost lines (and callers) of its stack.
"""

import sys

import pytest

from helpers import memtrace

PROGRAM = r"""
import asyncio, ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
keep = []

def m(n):
    keep.append(libc.malloc(n))                      # M

def gen():
    for i in range(3):
        m(100_001)                                   # GEN
        yield i

def consume():
    for _ in gen():                                  # CONSUME
        pass

async def coro():
    await asyncio.sleep(0)
    m(100_002)                                       # ASYNC
    await asyncio.sleep(0)
    m(100_003)                                       # ASYNC2

def thrower():
    m(100_004)                                       # THROWER
    raise ValueError("x")

def handler():
    try:
        thrower()                                    # CALL-THROWER
    except ValueError:
        m(100_005)                                   # EXCEPT
    finally:
        m(100_006)                                   # FINALLY
    m(100_007)                                       # AFTER-EXC

def deep(n):
    if n == 0:
        m(100_008)                                   # LEAF
        return
    deep(n - 1)                                      # RECURSE

def threaded():
    m(100_009)                                       # THREAD

def profiled():
    m(100_010)                                       # PROFILED

def traced():
    m(100_011)                                       # TRACED

def tracer(frame, event, arg):                       # a coverage-like line tracer
    keep.append(libc.malloc(100_012))                # TRACER
    return tracer

consume()                                            # CALL-CONSUME
asyncio.run(coro())
handler()
sys.setrecursionlimit(10_000)
deep(600)
t = threading.Thread(target=threaded, name="worker")
t.start(); t.join()
sys.setprofile(lambda *a: None)
sys.setprofile(None)
profiled()                                           # CALL-PROFILED
sys.settrace(tracer)
traced()                                             # CALL-TRACED
sys.settrace(None)
m(100_013)                                           # AFTER-TRACE
try:
    import greenlet
except ImportError:
    greenlet = None
if greenlet is not None:
    def green():
        m(100_014)                                   # GREEN
        main.switch()
        m(100_015)                                   # GREEN-AGAIN
    main = greenlet.getcurrent()
    g = greenlet.greenlet(green)
    g.switch()                                       # SWITCH-IN
    m(100_016)                                       # BACK-IN-MAIN
    g.switch()                                       # SWITCH-AGAIN
print("done", greenlet is not None)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tracer.analyze.model import load

    tmp = tmp_path_factory.mktemp("stacks")
    script = tmp / "frames.py"
    script.write_text(PROGRAM)
    cap = tmp / "f.mtrace"
    run = memtrace("run", "-q", "--no-report", "-o", cap, "--", sys.executable, script, cwd=tmp)
    assert run.returncode == 0, run.stderr
    lines = {}
    for n, text in enumerate(PROGRAM.splitlines(), 1):
        if "# " in text:
            lines[text.rsplit("# ", 1)[1].strip()] = n
    mod = load(str(cap))
    proc = [p for p in mod.processes if p.python][0]
    return proc, lines, "True" in run.stdout


def stacks_of(proc, size):
    """Every distinct stack (innermost first, as (function, line) of frames.py) that
    made an allocation of exactly `size` bytes. (Two sites may render the same: a
    frame stopped at two instructions of one line, e.g. a FOR_ITER before and after
    the interpreter specialised it.)"""
    out = []
    for site in proc.sites:
        if (
            int(site["alloc_bytes"]) % size == 0
            and int(site["alloc_bytes"]) // size == int(site["n_allocs"])
            and int(site["n_allocs"]) > 0
        ):
            frames = proc.stack(int(site["stack"]))
            stack = [(f.function.rsplit(".", 1)[-1], f.line) for f in frames if f.file.endswith("frames.py")]
            if stack not in out:
                out.append(stack)
    return out


def test_generator(model):
    proc, L, _ = model
    # three yields, one site: the generator's frame sits under its consumer each time
    assert stacks_of(proc, 100_001) == [
        [("m", L["M"]), ("gen", L["GEN"]), ("consume", L["CONSUME"]), ("<module>", L["CALL-CONSUME"])]
    ]


def test_coroutine(model):
    proc, L, _ = model
    for size, mark in ((100_002, "ASYNC"), (100_003, "ASYNC2")):
        (stack,) = stacks_of(proc, size)
        assert stack[:2] == [("m", L["M"]), ("coro", L[mark])], stack


def test_exceptions(model):
    proc, L, _ = model
    (s,) = stacks_of(proc, 100_004)
    assert s[:3] == [("m", L["M"]), ("thrower", L["THROWER"]), ("handler", L["CALL-THROWER"])]
    # once the exception unwound thrower(), its frame is gone from the stack
    for size, mark in ((100_005, "EXCEPT"), (100_006, "FINALLY"), (100_007, "AFTER-EXC")):
        (s,) = stacks_of(proc, size)
        assert s[:2] == [("m", L["M"]), ("handler", L[mark])], (mark, s)
        assert ("thrower", L["THROWER"]) not in s


def test_deep_recursion_keeps_innermost_frames(model):
    proc, L, _ = model
    (s,) = stacks_of(proc, 100_008)
    assert s[:2] == [("m", L["M"]), ("deep", L["LEAF"])]
    assert set(s[2:]) == {("deep", L["RECURSE"])}
    assert len(s) == 128  # the documented cap: the innermost 128 frames


def test_thread(model):
    proc, L, _ = model
    (s,) = stacks_of(proc, 100_009)
    assert s == [("m", L["M"]), ("threaded", L["THREAD"])]


def test_profile_and_trace_functions(model):
    proc, L, _ = model
    (s,) = stacks_of(proc, 100_010)
    assert s == [("m", L["M"]), ("profiled", L["PROFILED"]), ("<module>", L["CALL-PROFILED"])]
    (s,) = stacks_of(proc, 100_011)
    assert s == [("m", L["M"]), ("traced", L["TRACED"]), ("<module>", L["CALL-TRACED"])]
    tracer_stacks = stacks_of(proc, 100_012)
    assert tracer_stacks and all(s[0] == ("tracer", L["TRACER"]) for s in tracer_stacks)
    (s,) = stacks_of(proc, 100_013)
    assert s == [("m", L["M"]), ("<module>", L["AFTER-TRACE"])]


def test_greenlet_switches(model):
    proc, L, have_greenlet = model
    if not have_greenlet:
        pytest.skip("greenlet is not installed")
    (s,) = stacks_of(proc, 100_014)
    assert s[:2] == [("m", L["M"]), ("green", L["GREEN"])]
    (s,) = stacks_of(proc, 100_016)
    assert s == [("m", L["M"]), ("<module>", L["BACK-IN-MAIN"])]  # no greenlet frame left
    (s,) = stacks_of(proc, 100_015)
    assert s[:2] == [("m", L["M"]), ("green", L["GREEN-AGAIN"])]
