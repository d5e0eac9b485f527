"""memtrace bootstrap: runs first in every traced Python (its folder leads PYTHONPATH).

It switches on the frame reader built for this interpreter (tracer._pyframes),
labels NumPy array data once NumPy's core module loads, tells the collector
which Python this is — or why it gets no frames — and then steps aside: it
takes its folder off sys.path and imports the sitecustomize that would have
run without it.
"""

import os
import sys

# csrc/events.h's mt_text_key, written out: the traced Python may not have cffi to read
# tracer._native (tests/unit/test_wire_format.py checks them against the header).
_TEXT_PYTHON_VERSION, _TEXT_FRAMES_OFF, _TEXT_NUMPY, _TEXT_WARNING, _TEXT_LIBRARY_PATHS = 1, 2, 3, 4, 5
_TEXT_STACKS = 11
_NUMPY_CORE = ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath")


def _note_without_reader(key, text):
    """Send a note through the shim directly (when the reader cannot load)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).mt_meta_text
    except (ImportError, OSError, AttributeError):
        return
    data = text.encode("utf-8", "replace")
    fn.argtypes = (ctypes.c_uint16, ctypes.c_char_p, ctypes.c_size_t)
    fn(key, data, len(data))


def _reader_path():
    """The frame reader built for this very interpreter: the one memtrace
    passed if its ABI tag matches, else one from memtrace installed here."""
    import importlib.machinery
    import importlib.util

    tag = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
    path = os.environ.get("MEMTRACE_PYFRAMES", "")
    if path.endswith(tag):
        return path
    try:
        spec = importlib.util.find_spec("tracer._pyframes")
    except Exception:  # no memtrace here, or a broken one: no frames, never a crash
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith(tag):
        return spec.origin
    return None


def _installed_here():
    import importlib.util

    try:
        return importlib.util.find_spec("tracer._preload") is not None
    except Exception:
        return False


SUPPORTED = ((3, 9), (3, 15))  # CPython versions whose frame layout memtrace reads


def frames_unavailable(version_info, abiflags):
    """Why this interpreter is traced without Python frames, before loading anything
    (None: the frame reader may be tried)."""
    if "t" in abiflags:
        # mimalloc inside libpython serves objects (not interposable), and code runs
        # from per-thread bytecode copies: docs/how-it-works.md says what support takes
        return (
            "free-threaded CPython %d.%d%s is traced native-only (Python frames and "
            "object allocations need a GIL build)" % (version_info[0], version_info[1], abiflags)
        )
    if not SUPPORTED[0] <= tuple(version_info[:2]) <= SUPPORTED[1]:
        return "CPython %d.%d is not supported (%d.%d to %d.%d are): traced native-only" % (
            version_info[0],
            version_info[1],
            *SUPPORTED[0],
            *SUPPORTED[1],
        )
    return None


def _load_reader():
    """The frame reader module, or the reason it cannot be used here."""
    import importlib.machinery
    import importlib.util

    why = frames_unavailable(sys.version_info, getattr(sys, "abiflags", ""))
    if why:
        return why
    path = _reader_path()
    if path is None:
        if _installed_here():
            return (
                "memtrace's frame reader was not built for this Python (%d.%d): the "
                "install printed why" % sys.version_info[:2]
            )
        return "memtrace is not installed in this Python (%d.%d, %s): install it here for Python frames" % (
            sys.version_info[0],
            sys.version_info[1],
            sys.executable,
        )
    try:
        loader = importlib.machinery.ExtensionFileLoader("_pyframes", path)
        spec = importlib.util.spec_from_file_location("_pyframes", path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except Exception as exc:  # any failure means native-only, never a broken program
        return "the frame reader did not load: %s" % (exc,)
    return module


class _NumpyWatch:
    """Meta-path finder that labels NumPy data as soon as NumPy's core loads."""

    def __init__(self, reader):
        self.reader = reader

    def find_spec(self, name, path=None, target=None):
        if name not in _NUMPY_CORE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        original = spec.loader.exec_module
        reader = self.reader

        def exec_module(module):
            original(module)
            _label_numpy(reader, module)

        spec.loader.exec_module = exec_module
        return spec


def _label_numpy(reader, core):
    capsule = getattr(core, "_ARRAY_API", None)
    why = reader.label_numpy(capsule) if capsule is not None else "NumPy has no C-API capsule"
    if why:
        reader.meta_text(_TEXT_WARNING, "NumPy array data is not labelled: " + why)
    else:
        reader.meta_text(_TEXT_NUMPY, "labelled")
    if os.environ.get("MEMTRACE_OBJECTS") == "1":
        reader.census_numpy(getattr(core, "ndarray", None))
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _NumpyWatch)]


def _library_paths():
    """Folders whose code is not the user's: the stdlib and installed packages."""
    paths = {
        os.path.join(p, "lib") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    paths.add(os.path.dirname(os.path.abspath(__file__)))  # this bootstrap
    return sorted(paths)


def _start():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    reader = _load_reader()
    if isinstance(reader, str):
        _note_without_reader(_TEXT_FRAMES_OFF, reader)
        return
    installed = reader.install()
    if not installed:
        return  # no shim in this process (e.g. an untraced child kept PYTHONPATH)
    import atexit

    # Frames stop being read before the interpreter tears thread states down.
    atexit.register(reader.uninstall)
    # The program's exit point, after its own atexit handlers and before the
    # interpreter frees everything: "at exit" numbers are taken here.
    atexit.register(reader.exit_point)
    if os.environ.get("MEMTRACE_OBJECTS") == "1":
        # --objects: the census calls these as they are now, before the program
        # could rebind them (docs/objects.md)
        import gc

        reader.census_setup(sys.getsizeof, gc.get_objects, gc.isenabled, gc.disable, gc.enable)
    if installed is True:
        reader.meta_text(_TEXT_PYTHON_VERSION, "%d.%d.%d" % sys.version_info[:3])
        reader.meta_text(_TEXT_STACKS, reader.pins())
    else:  # a reason: this interpreter's frames cannot be read (statistics still come)
        reader.meta_text(_TEXT_FRAMES_OFF, "CPython %d.%d.%d: %s" % (*sys.version_info[:3], installed))
    reader.meta_text(_TEXT_LIBRARY_PATHS, "\n".join(_library_paths()))
    core = next((sys.modules[m] for m in _NUMPY_CORE if m in sys.modules), None)
    if core is not None:
        _label_numpy(reader, core)
    else:
        sys.meta_path.insert(0, _NumpyWatch(reader))


def _chain():
    """Run the sitecustomize this one shadows, if there is one."""
    me = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the next one on sys.path)
    except ImportError as exc:
        # importlib expects a module under this name once this file has run.
        sys.modules["sitecustomize"] = me
        if exc.name != "sitecustomize":
            raise


if __name__ == "sitecustomize":  # not when a test imports it under another name
    try:
        _start()
    finally:
        _chain()
