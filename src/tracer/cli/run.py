"""`memtrace run` and `memtrace live`, and the reports written at the end of a run."""

import argparse
import os
import sys

from tracer.cli.common import _keep_freed_memory, _write_output, parse_bytes
from tracer.errors import MemtraceError

# Set when `memtrace run` (or `memtrace pytest`) has written and closed everything it
# writes: the command may then leave without the interpreter's teardown.
run_complete = False


class RunCommand:
    """Run a program under memtrace and write a capture file."""

    name = "run"

    def prepare_parser(self, p):
        p.add_argument(
            "-o",
            "--output",
            help="capture file (default: memtrace-<program>-<pid>.mtrace); a folder (DIR/ or an "
            "existing one): that name, inside it",
        )
        p.add_argument("-f", "--force", action="store_true", help="overwrite an existing capture file")
        p.add_argument("-q", "--quiet", action="store_true", help="print no summary at exit")
        p.add_argument("--no-report", action="store_true", help="write the capture only (no reports)")
        p.add_argument(
            "--sample-interval",
            type=float,
            default=0.01,
            metavar="SECONDS",
            help="how often to sample RSS and glibc's statistics (default 0.01)",
        )
        p.add_argument(
            "--sample-rate",
            type=parse_bytes,
            default=0,
            metavar="BYTES",
            help="record a byte-weighted sample: each allocated byte is a sample point "
            "with probability 1/BYTES (e.g. 512K); numbers become unbiased "
            "estimates (default: record every event)",
        )
        p.add_argument(
            "--redact-argv",
            action="store_true",
            help="keep only argv[0] of each traced process (its arguments become "
            "<redacted>) in the capture and every report",
        )
        p.add_argument(
            "--objects",
            action="store_true",
            help="census of live Python objects by type (count, sys.getsizeof, NumPy "
            "nbytes owned or viewed, allocating lines) at the heap peak and at "
            "exit, taken on the main thread (docs/objects.md)",
        )
        p.add_argument(
            "--live",
            action="store_true",
            help="watch the run in a terminal view (heap, RSS, top lines, threads, "
            "processes); the program's output goes to CAPTURE.out (docs/live.md)",
        )
        p.add_argument(
            "--no-heap-stats",
            action="store_true",
            help="no RSS sampling, heap statistics or snapshots (no reconciliation)",
        )
        p.add_argument("program", nargs=argparse.REMAINDER, help="the program and its arguments")

    def run(self, args) -> int:
        from tracer.record import launcher

        argv = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not argv:
            raise MemtraceError("no program to run (usage: memtrace [run] [options] PROGRAM [ARGS...])")
        if args.sample_interval <= 0:
            raise MemtraceError("--sample-interval must be positive")
        if not args.no_report:
            _preload_reports()
        result = launcher.run(
            launcher.RunOptions(
                argv=argv,
                output=args.output,
                force=args.force,
                quiet=args.quiet,
                no_report=args.no_report,
                sample_interval=args.sample_interval,
                heap_stats=not args.no_heap_stats,
                sample_rate=args.sample_rate,
                redact_argv=args.redact_argv,
                objects=args.objects,
                live=args.live,
            )
        )
        if not args.no_report:
            write_reports(result.capture, args.quiet, result.view)
        elif result.view is not None:
            _close_view(result.view)
        global run_complete
        run_complete = True
        return result.status


class LiveCommand:
    """Watch a traced program's memory live: `memtrace live PID|SOCKET`."""

    name = "live"

    def prepare_parser(self, p):
        p.add_argument(
            "target",
            help="the PID of a program traced by memtrace (or of memtrace itself), or a run's live socket",
        )
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
    from tracer.analyze.model import load
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
