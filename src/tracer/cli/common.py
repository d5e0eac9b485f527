"""What every command shares: the one-line argparse, sizes in bytes, loading a
capture (with its warning line and exit status), --region, and writing outputs."""

import argparse
import sys
from typing import Any, Protocol

from tracer.errors import MemtraceError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not a usage dump."""

    def error(self, message):
        raise MemtraceError(f"{message} (see `memtrace {self.prog.split()[-1]} --help`)")


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "GIB": 1 << 30,
}


def parse_bytes(text: str) -> int:
    """'512K', '1MiB', '4096' -> bytes (powers of 1024, as allocators count)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS or int(m.group(1)) * _UNITS[m.group(2).upper()] < 2:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 512K, 1M, 65536)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class Command(Protocol):
    """What main() needs of a command: its name and run() (prepare_parser() too, unless
    the command takes its arguments raw, as `pytest` does)."""

    name: str

    def run(self, args: Any) -> int: ...


class CaptureCommand:
    """A report made from one capture: load it (a cut-short one with a warning line),
    replay it for temporary allocations when asked, report, and exit 3 if it was
    incomplete."""

    def run(self, args) -> int:
        _keep_freed_memory()
        model = _load(args.capture)
        if getattr(args, "metric", None) == "temporary":
            model.track_temporary()
        model = _focus(model, args.region)
        self.report(model, args)
        return _incomplete_status(model)

    def report(self, model, args) -> None:
        raise NotImplementedError


def _focus(model, region):
    """The model seen through --region (unchanged without it)."""
    if region is None:
        return model
    from tracer.analyze import regions

    return regions.focus(model, region)


def _metric_options(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--leaks", dest="metric", action="store_const", const="leaks", help="memory still live at exit"
    )
    group.add_argument(
        "--temporary",
        dest="metric",
        action="store_const",
        const="temporary",
        help="allocations freed before the next allocation on their thread",
    )
    group.add_argument(
        "--total", dest="metric", action="store_const", const="total", help="every byte allocated"
    )
    p.set_defaults(metric="peak")


def _write_output(path: str, write, binary: bool = False, announce: bool = True) -> None:
    """Write a report to path (- for stdout); never leave a half-written file."""
    import os

    if path == "-":
        write(sys.stdout.buffer if binary else sys.stdout)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    created = False
    try:
        # like the capture: private (0600), and never through a planted file or symlink
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        created = True
        with open(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as out:
            write(out)
        os.replace(tmp, path)
        created = False
        if announce:
            sys.stderr.write(f"memtrace: wrote {path}\n")
    except OSError as exc:
        raise MemtraceError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if created:
            os.unlink(tmp)


INCOMPLETE_CAPTURE_STATUS = 3


def _keep_freed_memory() -> None:
    """Reports free and make arrays of megabytes by the hundred: glibc keeps the
    freed memory for the next ones instead of unmapping it (~0.1 s of page faults
    on a 2 MB capture). A report's process is short-lived."""
    from tracer._native import lib

    lib.mt_keep_freed_memory()


def _load(path):
    """Load a capture (a cut-short one still loads; _incomplete_status warns)."""
    from tracer.analyze.model import load

    return load(path)


def _incomplete_status(model) -> int:
    """After the report: one warning line for a cut-short capture (printed only now,
    so a capture found corrupt while reporting gives its one error line alone), the
    sampling note; exit non-zero for an incomplete capture."""
    path = model.capture.path
    for warning in model.warnings:
        sys.stderr.write(f"memtrace: warning: {path}: {warning}\n")
    if model.estimate_note:
        sys.stderr.write(f"memtrace: note: {path}: {model.estimate_note}\n")
    return INCOMPLETE_CAPTURE_STATUS if model.warnings else 0
