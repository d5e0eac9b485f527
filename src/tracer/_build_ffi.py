"""cffi build script for tracer._native, the collector's C hot loops (csrc/collector/).

The C declarations come from the headers themselves — the mt_event layout from
csrc/events.h and the API between the CDEF markers of csrc/collector/native.h —
so there is one definition of the wire format, never a hand-kept copy.
"""
import os
import re
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parents[2] / "csrc"
COLLECTOR = CSRC / "collector"
SOURCES = ("stream.c", "aggregate.c", "regions.c", "query.c", "regions_rows.c", "smaps.c",
           "codec.c", "report.c")


def _event_struct() -> str:
    text = (CSRC / "events.h").read_text()
    match = re.search(r"typedef struct mt_event \{.*?\} mt_event;", text, re.S)
    if match is None:
        raise RuntimeError("csrc/events.h: mt_event definition not found")
    return match.group(0)


def _native_api() -> str:
    text = (COLLECTOR / "native.h").read_text()
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if match is None:
        raise RuntimeError("csrc/collector/native.h: CDEF markers not found")
    return match.group(1)


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(_strip_comments(_event_struct() + "\n" + _native_api()))
ffibuilder.set_source(
    "tracer._native",
    '#include "native.h"',
    # setuptools wants relative source paths
    sources=[os.path.relpath(COLLECTOR / name) for name in SOURCES],
    include_dirs=[str(CSRC), str(COLLECTOR)],
    depends=[os.path.relpath(path) for path in (
        CSRC / "events.h", CSRC / "hash.h", *sorted(COLLECTOR.glob("*.h")))],
    extra_compile_args=["-O2", "-std=gnu11"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
