"""The `memtrace` command line.

    memtrace [run] [options] [--] PROGRAM [ARGS...]
    memtrace live PID|SOCKET
    memtrace summary CAPTURE
    memtrace stats --json CAPTURE
    memtrace flamegraph CAPTURE [--leaks|--temporary|--total] [-o OUT.html]
    memtrace tree | lines | log | diff | export | regions ...
    memtrace merge CAPTURE... -o MERGED    memtrace cluster CAPTURE...
    memtrace pytest [PYTEST ARGS...]
    memtrace jupyter install

Every report takes --region NAME: only what was allocated inside that region.

Anything that is not a subcommand is a program to run: `memtrace python x.py`
is `memtrace run -- python x.py`. Errors are one line on stderr and a
non-zero exit; the target's own exit code passes through.
"""
import argparse
import os
import sys
from typing import Any, List, Optional, Protocol, Type

from tracer import __version__
from tracer.errors import MemtraceError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not a usage dump."""

    def error(self, message):
        raise MemtraceError(f"{message} (see `memtrace {self.prog.split()[-1]} --help`)")


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
          "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_bytes(text: str) -> int:
    """'512K', '1MiB', '4096' -> bytes (powers of 1024, as allocators count)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS or int(m.group(1)) * _UNITS[m.group(2).upper()] < 2:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 512K, 1M, 65536)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class RunCommand:
    """Run a program under memtrace and write a capture file."""

    name = "run"

    def prepare_parser(self, p):
        p.add_argument("-o", "--output", help="capture file (default: memtrace-<program>-<pid>.mtrace); a folder (DIR/ or an "
                            "existing one): that name, inside it")
        p.add_argument("-f", "--force", action="store_true", help="overwrite an existing capture file")
        p.add_argument("-q", "--quiet", action="store_true", help="print no summary at exit")
        p.add_argument("--no-report", action="store_true", help="write the capture only (no reports)")
        p.add_argument("--sample-interval", type=float, default=0.01, metavar="SECONDS",
                       help="how often to sample RSS and glibc's statistics (default 0.01)")
        p.add_argument("--sample-rate", type=parse_bytes, default=0, metavar="BYTES",
                       help="record a byte-weighted sample: each allocated byte is a sample point "
                            "with probability 1/BYTES (e.g. 512K); numbers become unbiased "
                            "estimates (default: record every event)")
        p.add_argument("--redact-argv", action="store_true",
                       help="keep only argv[0] of each traced process (its arguments become "
                            "<redacted>) in the capture and every report")
        p.add_argument("--objects", action="store_true",
                       help="census of live Python objects by type (count, sys.getsizeof, NumPy "
                            "nbytes owned or viewed, allocating lines) at the heap peak and at "
                            "exit, taken on the main thread (docs/objects.md)")
        p.add_argument("--live", action="store_true",
                       help="watch the run in a terminal view (heap, RSS, top lines, threads, "
                            "processes); the program's output goes to CAPTURE.out (docs/live.md)")
        p.add_argument("--no-heap-stats", action="store_true",
                       help="no RSS sampling, heap statistics or snapshots (no reconciliation)")
        p.add_argument("program", nargs=argparse.REMAINDER, help="the program and its arguments")

    def run(self, args) -> int:
        from tracer import launcher

        argv = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not argv:
            raise MemtraceError("no program to run (usage: memtrace [run] [options] PROGRAM [ARGS...])")
        if args.sample_interval <= 0:
            raise MemtraceError("--sample-interval must be positive")
        if not args.no_report:
            _preload_reports()
        result = launcher.run(launcher.RunOptions(
            argv=argv, output=args.output, force=args.force, quiet=args.quiet,
            no_report=args.no_report, sample_interval=args.sample_interval,
            heap_stats=not args.no_heap_stats, sample_rate=args.sample_rate,
            redact_argv=args.redact_argv, objects=args.objects, live=args.live))
        if not args.no_report:
            write_reports(result.capture, args.quiet, result.view)
        elif result.view is not None:
            _close_view(result.view)
        global _run_complete
        _run_complete = True
        return result.status


class LiveCommand:
    """Watch a traced program's memory live: `memtrace live PID|SOCKET`."""

    name = "live"

    def prepare_parser(self, p):
        p.add_argument("target", help="the PID of a program traced by memtrace (or of memtrace "
                                      "itself), or a run's live socket")
        p.add_argument("--output-log", help=argparse.SUPPRESS)  # run --live: the program's output

    def run(self, args) -> int:
        # the view, from its first import on, takes only the CPU time the program and
        # the collector leave
        os.nice(10)
        from tracer.live.client import find_socket

        path = find_socket(args.target)
        from tracer.live import app

        app.run(path, args.output_log)
        return 0


REPORTS_PRELOAD_DELAY = 0.5  # seconds: after the collector and the target have started
TEMPORARY_AT_EXIT_EVENTS = 2_000_000  # the HTML at exit replays at most this many events


def write_reports(capture: str, quiet: bool = False, view=None) -> None:
    """The reports at the end of `memtrace run`: the HTML report next to the capture
    (with the temporary view when replaying the events is quick) and the summary
    (with --live, once the user has left the view)."""
    from tracer.model import load
    from tracer.reports import html, summary

    _keep_freed_memory()
    model = load(capture)
    html_path = capture + ".html"
    small = sum(p.totals.get("n_events", 0) for p in model.processes) <= TEMPORARY_AT_EXIT_EVENTS
    _write_output(html_path, lambda out: html.render(model, out, temporary=small), announce=False)
    if view is not None:
        _close_view(view)
    if not quiet:
        summary.render(model, sys.stderr)
        sys.stderr.write(f"  capture: {capture}\n  report:  {html_path}\n")


def _close_view(view) -> None:
    """--live: wait until the user leaves the view, then say where the output went."""
    view.wait()
    sys.stderr.write(f"memtrace: the program's output: {view.log_path}\n")


def _preload_reports() -> None:
    """Import what the reports at exit need (NumPy most of all: ~0.1 s) while the
    target runs, on a thread that waits until both have started: the collector
    thread's C calls run without the GIL, so the import costs it little, and a
    run's reports then start at once."""
    import threading

    def load():
        import time
        time.sleep(REPORTS_PRELOAD_DELAY)
        from tracer.reports import html, summary  # noqa: F401 (model, NumPy and the rest)

    threading.Thread(target=load, name="memtrace-preload", daemon=True).start()


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


class SummaryCommand(CaptureCommand):
    """Print the terminal summary of a capture."""

    name = "summary"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("capture")
        p.add_argument("-n", "--top", type=int, default=10, help="rows per table (default 10)")

    def report(self, model, args) -> None:
        from tracer.reports import summary

        summary.render(model, sys.stdout, top=args.top)


class StatsCommand(CaptureCommand):
    """Print a capture's numbers (JSON with --json)."""

    name = "stats"

    def prepare_parser(self, p):
        p.add_argument("--json", action="store_true", help="JSON output (the only format so far)")
        p.add_argument("--pid", type=int, help="only this process (and its streams)")
        p.add_argument("capture")

    def report(self, model, args) -> None:
        from tracer.reports import stats

        if args.pid is not None:
            model.processes = [p for p in model.processes if p.pid == args.pid]
            if not model.processes:
                raise MemtraceError(f"{args.capture} has no process {args.pid}")
        stats.render(model, sys.stdout)


class ReconcileCommand(CaptureCommand):
    """Explain RSS: where each byte of `top`'s number is, at the heap peak and at exit."""

    name = "reconcile"

    def prepare_parser(self, p):
        p.add_argument("capture")
        p.add_argument("--raw", action="store_true", help="exact byte counts")

    def report(self, model, args) -> None:
        from tracer.reports import reconciliation

        if getattr(model, "region", None) is not None:  # RSS is a process's, never a region's
            pids = {p.pid for p in model.processes}
            sys.stdout.write(f"RSS belongs to processes, not regions: the reconciliation of the "
                             f"process{'es' if len(pids) > 1 else ''} where region "
                             f"{model.region!r} ran\n")
            model = _load(args.capture)
            model.processes = [p for p in model.processes if p.pid in pids]
        reconciliation.render(model, sys.stdout)


class FlamegraphCommand(CaptureCommand):
    """Write the HTML report (flame graph, timeline, tables) of a capture."""

    name = "flamegraph"

    def prepare_parser(self, p):
        p.add_argument("capture")
        _metric_options(p)
        p.add_argument("-o", "--output", help="HTML file (default: CAPTURE.html; - for stdout)")

    def report(self, model, args) -> None:
        from tracer.reports import html

        output = args.output or args.capture + ".html"
        _write_output(output, lambda out: html.render(model, out, default_view=args.metric))


class TreeCommand(CaptureCommand):
    """Print the call tree of the biggest stacks."""

    name = "tree"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("capture")
        _metric_options(p)
        p.add_argument("--min-share", type=float, default=1.0, metavar="PERCENT",
                       help="hide subtrees under this share of the total (default 1)")

    def report(self, model, args) -> None:
        from tracer.reports import tree

        tree.render(model, sys.stdout, args.metric, min_share=args.min_share / 100)


class LinesCommand(CaptureCommand):
    """List a source file line by line with the memory each line allocated."""

    name = "lines"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("capture")
        p.add_argument("--source", help="the source file (default: the one that allocated most)")

    def report(self, model, args) -> None:
        from tracer.reports import lines

        lines.render(model, sys.stdout, args.source)


class LogCommand(CaptureCommand):
    """Print the allocation events, ltrace style."""

    name = "log"

    def prepare_parser(self, p):
        p.add_argument("capture")
        p.add_argument("--min-size", type=int, default=0, metavar="BYTES")
        p.add_argument("--library", metavar="PATTERN", help="only calls made by matching libraries")
        p.add_argument("--frees", action="store_true", help="include frees and unmaps")
        p.add_argument("-n", "--limit", type=int, default=0, help="stop after N lines")

    def report(self, model, args) -> None:
        from tracer.reports import log

        log.render(model, sys.stdout, args.min_size, args.library, args.limit, args.frees)


class DiffCommand:
    """Compare two captures: per line and per library, what grew."""

    name = "diff"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("before")
        p.add_argument("after")
        p.add_argument("-n", "--top", type=int, default=20)

    def run(self, args) -> int:
        from tracer.reports import diff

        _keep_freed_memory()
        before, after = _focus(_load(args.before), args.region), _focus(_load(args.after), args.region)
        diff.render(before, after, sys.stdout, args.top)
        return max(_incomplete_status(before), _incomplete_status(after))


class ExportCommand(CaptureCommand):
    """Export a capture: speedscope JSON, pprof (gzipped protobuf) or CSV of allocations."""

    name = "export"

    def prepare_parser(self, p):
        p.add_argument("capture")
        p.add_argument("--format", required=True, choices=("speedscope", "pprof", "csv"))
        _metric_options(p)
        p.add_argument("-o", "--output", help="output file (default: CAPTURE.<format>; - for stdout)")

    def report(self, model, args) -> None:
        from tracer.reports import export

        suffix = {"speedscope": ".speedscope.json", "pprof": ".pb.gz", "csv": ".csv"}[args.format]
        output = args.output or args.capture + suffix
        if args.format == "speedscope":
            _write_output(output, lambda out: export.speedscope(model, out, args.metric))
        elif args.format == "pprof":
            _write_output(output, lambda out: export.pprof(model, out, args.metric), binary=True)
        else:
            _write_output(output, lambda out: export.csv_events(model, out))


class RegionsCommand(CaptureCommand):
    """List the regions of a capture (tracer.region, tests, notebook cells) with their numbers."""

    name = "regions"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("capture")
        p.add_argument("--kind", choices=("region", "test", "cell", "task"), help="only regions of this kind")
        p.add_argument("-n", "--top", type=int, default=0, help="rows (default: all)")

    def report(self, model, args) -> None:
        from tracer.reports import regions

        regions.render(model, sys.stdout, kind=args.kind, top=args.top)


class MergeCommand:
    """Merge captures (a cluster's workers, several runs) into one, chunk by chunk."""

    name = "merge"

    def prepare_parser(self, p):
        p.add_argument("captures", nargs="+", metavar="CAPTURE")
        p.add_argument("-o", "--output", required=True, help="the merged capture")
        p.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")

    def run(self, args) -> int:
        import time

        from tracer.cluster import merge

        t0 = time.monotonic()
        done = merge.merge(args.captures, args.output, args.force)
        for s in done["sources"]:
            if not s["complete"]:
                sys.stderr.write(f"memtrace: warning: {s['source']} is incomplete (its run was "
                                 "cut short): merged up to its last complete chunk\n")
        sys.stderr.write(f"memtrace: merged {len(done['sources'])} captures ({done['streams']} "
                         f"processes, {done['bytes']:,} bytes) into {args.output} in "
                         f"{time.monotonic() - t0:.2f} s\n")
        return 0


class ClusterCommand:
    """Report a cluster's workers: peak, RSS, Dask's managed memory, RSS explained, tasks."""

    name = "cluster"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.add_argument("captures", nargs="+", metavar="CAPTURE",
                       help="a merged capture, or the workers' captures (merged first, "
                            "into a temporary file)")
        p.add_argument("-n", "--top", type=int, default=10, help="rows per table (default 10)")

    def run(self, args) -> int:
        import tempfile

        from tracer.cluster import report

        _keep_freed_memory()
        with tempfile.TemporaryDirectory(prefix="memtrace-cluster-") as tmp:
            path = args.captures[0]
            if len(args.captures) > 1:
                from tracer.cluster import merge

                path = os.path.join(tmp, "cluster.mtrace")
                merge.merge(args.captures, path)
            model = _load(path)
            if args.json:
                from tracer.reports import jsontext

                text = jsontext.dumps(report.stats(model, args.top), indent=1)
                sys.stdout.write(text.replace("<", "\\u003c").replace(">", "\\u003e")
                                 .replace("&", "\\u0026") + "\n")
            else:
                report.render(model, sys.stdout, args.top)
            return _incomplete_status(model)


class PytestCommand:
    """Run pytest under memtrace (every test a region), then list the tests with the highest peak and the most left live."""

    name = "pytest"
    raw_args = True  # everything after `pytest` is pytest's (and the plugin's --memtrace-* options)

    def run(self, args: List[str]) -> int:
        from tracer import pytest_run

        status = pytest_run.run(args)
        global _run_complete
        _run_complete = True
        return status


class JupyterCommand:
    """Jupyter: `install` registers the "Python 3 (memtrace)" kernel; `kernel` is what it runs."""

    name = "jupyter"

    def prepare_parser(self, p):
        sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
        install = sub.add_parser("install", help="register the kernel spec")
        where = install.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help="for this user (the default)")
        where.add_argument("--sys-prefix", action="store_true",
                           help="in this Python's prefix (a virtualenv's own Jupyter)")
        where.add_argument("--prefix", help="under this prefix (PREFIX/share/jupyter/kernels)")
        install.add_argument("--name", default="memtrace", help="kernel name (default memtrace)")
        install.add_argument("--display-name", default="Python 3 (memtrace)")
        install.add_argument("--capture-dir", metavar="DIR",
                             help="where kernels write their captures (default: the notebook's folder)")
        kernel = sub.add_parser("kernel", help="run a kernel under memtrace (the spec's command)")
        kernel.add_argument("-f", dest="connection_file", required=True)
        kernel.add_argument("--capture-dir", metavar="DIR")

    def run(self, args) -> int:
        from tracer.jupyter import kernelspec

        if args.action == "kernel":
            status = kernelspec.run_kernel(args.connection_file, args.capture_dir)
            global _run_complete
            _run_complete = True
            return status
        prefix = sys.prefix if args.sys_prefix else args.prefix
        path = kernelspec.install(user=prefix is None, prefix=prefix, name=args.name,
                                  display_name=args.display_name, capture_dir=args.capture_dir)
        sys.stderr.write(f"memtrace: installed the kernel {args.display_name!r} ({args.name}) in "
                         f"{path}\n")
        return 0


def _focus(model, region):
    """The model seen through --region (unchanged without it)."""
    if region is None:
        return model
    from tracer import regions

    return regions.focus(model, region)


def _metric_options(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--leaks", dest="metric", action="store_const", const="leaks",
                       help="memory still live at exit")
    group.add_argument("--temporary", dest="metric", action="store_const", const="temporary",
                       help="allocations freed before the next allocation on their thread")
    group.add_argument("--total", dest="metric", action="store_const", const="total",
                       help="every byte allocated")
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
    from tracer.model import load

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


class Command(Protocol):
    """What main() needs of a command: its name and run() (prepare_parser() too, unless
    the command takes its arguments raw, as `pytest` does)."""

    name: str

    def run(self, args: Any) -> int: ...


_COMMANDS: List[Type[Command]]
_COMMANDS = [RunCommand, LiveCommand, SummaryCommand, StatsCommand, ReconcileCommand, FlamegraphCommand,
             TreeCommand, LinesCommand, LogCommand, DiffCommand, ExportCommand, RegionsCommand,
             MergeCommand, ClusterCommand, PytestCommand, JupyterCommand]


def _parser(command) -> _Parser:
    p = _Parser(prog=f"memtrace {command.name}", description=command.__doc__)
    command.prepare_parser(p)
    if isinstance(command, (CaptureCommand, DiffCommand)) and not isinstance(command, RegionsCommand):
        p.add_argument("--region", metavar="NAME",
                       help="only what was allocated inside the region NAME (exact, else a glob; "
                            "`memtrace regions` lists them)")
    elif isinstance(command, RegionsCommand):
        p.set_defaults(region=None)
    return p


def _usage() -> str:
    lines = [__doc__.strip().split("\n\n")[1], "", "commands:"]
    lines += [f"  {c.name:9} {c.__doc__}" for c in _COMMANDS]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            (sys.stdout if argv else sys.stderr).write(_usage())
            return 0 if argv else 2
        if argv[0] == "--version":
            print(f"memtrace {__version__}")
            return 0
        commands = {c.name: c for c in _COMMANDS}
        if argv[0] in commands:
            command, rest = commands[argv[0]](), argv[1:]
        else:
            command, rest = RunCommand(), argv
        if getattr(command, "raw_args", False):
            return command.run(rest)
        args = _parser(command).parse_args(rest)
        if getattr(args, "raw", False):
            from tracer.reports import summary

            summary.RAW = True
        return command.run(args)
    except MemtraceError as exc:
        sys.stderr.write(f"memtrace: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("memtrace: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1


# Set when `memtrace run` has written and closed everything it writes.
_run_complete = False


def entry() -> None:
    """The `memtrace` command (and `python -m tracer`). After a run, leave at once:
    the interpreter's teardown (the compression thread, module cleanup; ~10 ms)
    would only add to the traced command's time."""
    status = main()
    if _run_complete:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    raise SystemExit(status)


if __name__ == "__main__":
    entry()
