"""cffi build script for tracer._native, the collector's C hot loops (csrc/collector/).

The C declarations come from the headers themselves — the wire format between the
CDEF markers of csrc/events.h (constants, the event, every metadata payload) and
the API between those of csrc/collector/native.h — so there is one definition of
the wire format, never a hand-kept copy: tracer._format reads it all from lib and
ffi.
"""

import os
import re
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parents[2] / "csrc"
COLLECTOR = CSRC / "collector"
SOURCES = (
    "stream.c",
    "aggregate.c",
    "regions.c",
    "query.c",
    "regions_rows.c",
    "smaps.c",
    "codec.c",
    "report.c",
)


def _cdef_block(header: Path) -> str:
    """What lies between a header's CDEF markers: the part cffi reads."""
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header.read_text(), re.S)
    if match is None:
        raise RuntimeError(f"{header.relative_to(CSRC.parent)}: CDEF markers not found")
    return match.group(1)


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(_strip_comments(_cdef_block(CSRC / "events.h") + "\n" + _cdef_block(COLLECTOR / "native.h")))
ffibuilder.set_source(
    "tracer._native",
    '#include "native.h"',
    # setuptools wants relative source paths
    sources=[os.path.relpath(COLLECTOR / name) for name in SOURCES],
    include_dirs=[str(CSRC), str(COLLECTOR)],
    depends=[
        os.path.relpath(path) for path in (CSRC / "events.h", CSRC / "hash.h", *sorted(COLLECTOR.glob("*.h")))
    ],
    extra_compile_args=["-O2", "-std=gnu11"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
