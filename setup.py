"""Build memtrace: the LD_PRELOAD shim, the frame reader and the collector's C helpers.

- tracer/_preload*.so  the shim (csrc/preload.c, recorder.c, transport.c). A plain
  shared library loaded with LD_PRELOAD into any program; it does not use Python.
  setuptools builds it as an extension only for its compiler and install plumbing.
- tracer/_pyframes*.so  the frame reader for the interpreter memtrace is installed
  into (csrc/pyframes.c), loaded inside traced Pythons by the bootstrap.
- tracer/_native*.so   the collector's drain and aggregation loops (cffi, API mode).
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SHIM_SOURCES = ["csrc/preload.c", "csrc/recorder.c", "csrc/transport.c", "csrc/sampler.c"]
STRICT = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


class BuildExt(build_ext):
    """Turn a compiler failure into one clear line."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # distutils raises several unrelated types
            raise SystemExit(f"memtrace: building {ext.name} failed ({exc}); "
                             "a C compiler and the Python headers are needed") from exc


setup(
    ext_modules=[
        Extension(
            "tracer._preload",
            sources=SHIM_SOURCES,
            depends=["csrc/events.h", "csrc/hooks.h", "csrc/recorder.h", "csrc/transport.h",
                     "csrc/shim_api.h", "csrc/hash.h", "csrc/sampler.h"],
            # -flto: the hot path crosses preload.c, recorder.c and transport.c;
            # link-time optimisation inlines it into each hook.
            extra_compile_args=STRICT + ["-fvisibility=hidden", "-fno-omit-frame-pointer", "-flto"],
            extra_link_args=["-pthread", "-flto", "-O2"],
            libraries=["dl", "m"],
        ),
        Extension(
            "tracer._pyframes",
            sources=["csrc/pyframes.c"],
            depends=["csrc/shim_api.h", "csrc/hash.h"],
            extra_compile_args=STRICT + ["-Wno-missing-field-initializers"],
            libraries=["dl"],
        ),
    ],
    cffi_modules=["src/tracer/_build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
)
