"""tracer.region: mark spans of a thread's execution in memtrace's stream.

    with tracer.region("load"):
        frame = load()

    @tracer.region("step")
    def step(): ...

Under memtrace, entering and leaving are each one event in the thread's stream,
placed exactly among its allocations and frees; the collector counts each
region's peak, allocated and live bytes from them (docs/regions.md). Outside
memtrace (no shim in the process) region() returns an object that does
nothing, and as a decorator gives back the function itself: marked code costs
nothing.

`import tracer` must stay cheap in any program: this module imports nothing
heavy, and finds the shim only on first use.
"""

import os
import threading

# csrc/events.h (mt_region_kind, mt_ask), written out: this module runs in the traced
# program, which may not have cffi (tests/unit/test_wire_format.py checks them)
KIND_USER, KIND_TEST, KIND_CELL, KIND_TASK = 0, 1, 2, 3
ASK_USAGE, ASK_AT_PEAK, ASK_LIVE, ASK_CHECKPOINT = 1, 2, 3, 4
ASK_TIMEOUT_MS = 10_000
_CO_COROUTINE = 0x80

# The shim's region calls (mark, name, ask), or False once known absent.
_calls = None
# (name, kind) -> region id in this process's stream (ids restart after fork); typed in
# a comment, so that `import tracer` does not import typing
_ids = {}  # type: dict[tuple[str, int], int]
_lock = threading.Lock()
_generation = 0  # bumped in a forked child: Region objects look their id up again


def _after_fork():
    """A forked child has a stream of its own: its regions are named afresh."""
    global _lock, _generation
    _lock = threading.Lock()
    _ids.clear()
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


def _bind():
    global _calls
    if _calls is None:
        _calls = _find_calls() or False
        if _calls:
            import json  # noqa: F401  (answers are JSON: imported now, not inside a region)
    return _calls


def _find_calls():
    """The shim's region functions: through memtrace's frame reader (a C call each),
    else through ctypes; None when this process is not traced."""
    if not os.environ.get("MEMTRACE_SOCKET"):
        return None  # not started by memtrace: no shim, nothing to look up
    try:
        from tracer import _pyframes as ext
    except ImportError:  # a Python the frame reader is not built for
        ext = None
    if ext is not None:
        return (ext.region_mark, ext.region_name, ext.region_ask) if ext.region_bind() else None
    return _ctypes_calls()


def _ctypes_calls():
    import ctypes

    try:
        shim = ctypes.CDLL(None)
        mark, name, ask = shim.mt_region_mark, shim.mt_region_name, shim.mt_region_ask
    except (OSError, AttributeError):
        return None
    mark.argtypes, mark.restype = (ctypes.c_uint32, ctypes.c_int), None
    name.argtypes = (ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t)
    name.restype = None
    ask.argtypes = (ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32)
    ask.restype = ctypes.c_int

    def ask_bytes(what, rid, timeout_ms):
        buf = ctypes.create_string_buffer(1 << 16)
        n = ask(what, rid, buf, len(buf), timeout_ms)
        return buf.raw[:n] if n >= 0 else None

    return mark, lambda rid, kind, text: name(rid, kind, text, len(text)), ask_bytes


def traced() -> bool:
    """Whether this process runs under memtrace (its regions are recorded)."""
    return bool(_bind())


def _region_id(name: str, kind: int) -> int:
    """The region's id in this process's stream (0: not traced)."""
    rid = _ids.get((name, kind))
    if rid is None:
        if not _bind():
            return 0
        with _lock:
            rid = _ids.get((name, kind))
            if rid is None:
                rid = len(_ids) + 1
                # the name goes into the stream before the first mark that uses it
                _bind()[1](rid, kind, name.encode("utf-8", "backslashreplace"))
                _ids[(name, kind)] = rid
    return rid


class Usage:
    """What the collector counted for a region, in bytes, up to the moment asked.

    open: the region is open on this thread (else: its last instance, which ended);
    live: bytes allocated inside it and live now (ended: still live when it ended);
    peak: the most bytes allocated inside it that were live at one moment while it
    was open; allocated: bytes allocated inside it; instances: how many times it
    has been entered and left; lines: with details, the stacks holding the most."""

    __slots__ = ("name", "open", "live", "peak", "allocated", "instances", "lines")

    def __init__(self, answer: dict):
        for key in self.__slots__:
            setattr(self, key, answer.get(key))

    def __repr__(self):
        return (
            f"Usage(name={self.name!r}, open={self.open}, live={self.live}, "
            f"peak={self.peak}, allocated={self.allocated}, instances={self.instances})"
        )


def _ask(what: int, rid: int):
    calls = _bind()
    if not calls:
        return None
    raw = calls[2](what, rid, ASK_TIMEOUT_MS)
    if not raw:
        return None
    import json

    answer = json.loads(raw)
    return Usage(answer) if answer.get("found") else None


def checkpoint():
    """Have the collector write this process's numbers to its capture now; returns
    the capture's path (None: not traced, or no answer)."""
    calls = _bind()
    raw = calls[2](ASK_CHECKPOINT, 0, ASK_TIMEOUT_MS) if calls else None
    if not raw:
        return None
    import json

    return json.loads(raw).get("capture")


def usage():
    """The collector's numbers for this thread's innermost open region (a Usage), or
    None: not traced, or no region open on this thread."""
    return _ask(ASK_USAGE, 0)


class Region:
    """A named span of a thread's execution: a context manager, and a decorator
    (each call of the function is one instance of the region)."""

    __slots__ = ("name", "kind", "_id", "_generation")

    def __init__(self, name: str, kind: int = KIND_USER):
        self.name = name
        self.kind = kind
        self._generation = -1

    def _rid(self) -> int:
        if self._generation != _generation:  # first use, or this is a forked child
            self._id = _region_id(self.name, self.kind)
            self._generation = _generation
        return self._id

    def __enter__(self):
        rid = self._rid()  # (finds the shim on first use)
        if rid:
            _calls[0](rid, 1)
        return self

    def __exit__(self, *exc):
        rid = self._rid()
        if rid:
            _calls[0](rid, 0)
        return False

    def __call__(self, fn):
        import functools

        code = getattr(fn, "__code__", None)
        if code is not None and code.co_flags & _CO_COROUTINE:

            async def marked_coroutine(*args, **kwargs):
                with self:  # (spans the awaits: other tasks on the thread count too)
                    return await fn(*args, **kwargs)

            return functools.wraps(fn)(marked_coroutine)

        def marked(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)

        return functools.wraps(fn)(marked)

    def usage(self, details: int = 0):
        """The collector's numbers for this region on this thread (a Usage): the
        instance open now, else the last one that ended; None if not traced or never
        entered. details: ASK_AT_PEAK or ASK_LIVE also lists the stacks holding the
        most at the region's peak, or live now (the region must be open)."""
        if not _bind():
            return None
        return _ask(details or ASK_USAGE, self._rid())

    def __repr__(self):
        return f"tracer.region({self.name!r})"


class _Untraced:
    """region() outside memtrace: no marks, and decorated functions stay as they are."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, fn):
        return fn

    def usage(self, details: int = 0):
        return None


_UNTRACED = _Untraced()


def region(name, kind: int = KIND_USER):
    """A region named `name` (a str; or, used bare as @tracer.region, the function,
    named by its qualified name). Outside memtrace it does nothing."""
    if callable(name) and not isinstance(name, str):
        fn = name
        return region(f"{fn.__module__}.{fn.__qualname__}", kind)(fn)
    if not _bind():
        return _UNTRACED
    return Region(str(name), kind)
