"""Build memtrace: the LD_PRELOAD shim, the frame reader and the collector's C helpers.

- tracer/_preload*.so  the shim (csrc/shim/). A plain shared library loaded with
  LD_PRELOAD into any program; it does not use Python. setuptools builds it as an
  extension only for its compiler and install plumbing.
- tracer/_pyframes*.so  the frame reader for the interpreter memtrace is installed
  into (csrc/reader/), loaded inside traced Pythons by the bootstrap.
- tracer/_native*.so   the collector's drain and aggregation loops (csrc/collector/,
  cffi, API mode; see src/tracer/_build_ffi.py).
csrc/events.h (the wire format), csrc/shim_api.h and csrc/hash.h are shared.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SHIM_SOURCES = [
    "csrc/shim/" + name
    for name in ("preload.c", "recorder.c", "intern.c", "heapstats.c", "transport.c", "sampler.c")
]
SHIM_HEADERS = ["csrc/events.h", "csrc/shim_api.h", "csrc/hash.h"] + [
    "csrc/shim/" + name for name in ("hooks.h", "recorder.h", "intern.h", "transport.h", "sampler.h")
]
STRICT = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def _failure_reason(ext, compiler) -> str:
    """What went wrong building ext, in one line: a missing compiler or missing
    Python headers are named as such; anything else is the compiler's own report."""
    import shutil
    import sysconfig

    cc = (getattr(compiler, "compiler_so", None) or ["cc"])[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) was found: install gcc"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"the Python headers are missing ({include}/Python.h): install python3-dev"
    return "the C compiler reported errors (printed above)"


class BuildExt(build_ext):
    """Turn a compiler failure into one clear line. The frame reader is optional:
    a CPython whose frame layout memtrace cannot compile against still gets the
    shim (native-only tracing, and the bootstrap says why)."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # distutils raises several unrelated types
            reason = _failure_reason(ext, self.compiler)
            if ext.name in OPTIONAL:
                sys.stderr.write(
                    f"memtrace: warning: {ext.name} was not built ({reason}); "
                    "programs will be traced without Python frames\n"
                )
                return
            raise SystemExit(f"memtrace: building {ext.name} failed: {reason}") from exc


OPTIONAL = {"tracer._pyframes"}


setup(
    ext_modules=[
        Extension(
            "tracer._preload",
            sources=SHIM_SOURCES,
            depends=SHIM_HEADERS,
            # -flto: the hot path crosses preload.c, recorder.c and transport.c;
            # link-time optimisation inlines it into each hook.
            extra_compile_args=STRICT + ["-fvisibility=hidden", "-fno-omit-frame-pointer", "-flto"],
            extra_link_args=["-pthread", "-flto", "-O2"],
            libraries=["dl", "m"],
        ),
        Extension(
            "tracer._pyframes",
            sources=[
                "csrc/reader/module.c",
                "csrc/reader/walk.c",
                "csrc/reader/pins.c",
                "csrc/reader/pins_monitoring.c",
                "csrc/reader/pins_profiled.c",
                "csrc/reader/stats.c",
                "csrc/reader/numpy.c",
                "csrc/reader/census.c",
                "csrc/reader/census_tables.c",
            ],
            depends=[
                "csrc/shim_api.h",
                "csrc/reader/reader.h",
                "csrc/reader/layout.h",
                "csrc/reader/pins.h",
                "csrc/reader/census.h",
            ],
            extra_compile_args=STRICT + ["-Wno-missing-field-initializers"],
            libraries=["dl"],
        ),
    ],
    cffi_modules=["src/tracer/_build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
)
