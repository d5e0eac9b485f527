"""memtrace on clusters (docs/cluster.md): workers started under memtrace through the
engine's own mechanisms (tracer.cluster.dask), one capture per worker, merged into one
(tracer.cluster.merge) and reported per worker (tracer.cluster.report).

Nothing here is imported by the tracer itself: `import tracer` stays cheap.
"""

import json
import os
import threading
from typing import Optional

_note_fn = None
_note_lock = threading.Lock()


def _shim_note():
    """The shim's mt_meta_text (ctypes), or False when this process is not traced."""
    global _note_fn
    if _note_fn is None:
        _note_fn = False
        if os.environ.get("MEMTRACE_SOCKET"):
            import ctypes

            try:
                shim = ctypes.CDLL(None)
                fn, position = shim.mt_meta_text, shim.mt_position
            except (OSError, AttributeError):
                return False
            fn.argtypes, fn.restype = (ctypes.c_uint16, ctypes.c_char_p, ctypes.c_size_t), None
            position.argtypes, position.restype = (), ctypes.c_uint64
            _note_fn = (fn, position)
    return _note_fn


def traced() -> bool:
    """Whether this process writes to a memtrace capture."""
    return bool(_shim_note())


def note(record: dict) -> Optional[int]:
    """Write a cluster note (a JSON text record, key TEXT_CLUSTER) into this process's
    capture, with the ring position it was written at (so reports place it among the
    events). Returns the position, or None when not traced."""
    calls = _shim_note()
    if not calls:
        return None
    from tracer import _format as fmt

    fn, position = calls
    with _note_lock:
        pos = int(position())
        data = json.dumps({**record, "position": pos}, separators=(",", ":"), default=str).encode("utf-8")
        if len(data) > 60000:  # a metadata record holds at most 64 KiB
            return None
        fn(fmt.TEXT_CLUSTER, data, len(data))
    return pos
