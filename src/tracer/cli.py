"""The `memtrace` command line.

    memtrace [run] [options] [--] PROGRAM [ARGS...]
    memtrace summary CAPTURE
    memtrace stats --json CAPTURE

Anything that is not a subcommand is a program to run: `memtrace python x.py`
is `memtrace run -- python x.py`. Errors are one line on stderr and a
non-zero exit; the target's own exit code passes through.
"""
import argparse
import sys
from typing import List, Optional

from tracer import __version__
from tracer.errors import MemtraceError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not a usage dump."""

    def error(self, message):
        raise MemtraceError(f"{message} (see `memtrace {self.prog.split()[-1]} --help`)")


class RunCommand:
    """Run a program under memtrace and write a capture file."""

    name = "run"

    def prepare_parser(self, p):
        p.add_argument("-o", "--output", help="capture file (default: memtrace-<program>-<pid>.mtrace)")
        p.add_argument("-f", "--force", action="store_true", help="overwrite an existing capture file")
        p.add_argument("-q", "--quiet", action="store_true", help="print no summary at exit")
        p.add_argument("--no-report", action="store_true", help="write the capture only (no reports)")
        p.add_argument("--sample-interval", type=float, default=0.01, metavar="SECONDS",
                       help="how often to sample RSS (default 0.01)")
        p.add_argument("program", nargs=argparse.REMAINDER, help="the program and its arguments")

    def run(self, args) -> int:
        from tracer import launcher

        argv = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not argv:
            raise MemtraceError("no program to run (usage: memtrace [run] [options] PROGRAM [ARGS...])")
        if args.sample_interval <= 0:
            raise MemtraceError("--sample-interval must be positive")
        result = launcher.run(launcher.RunOptions(
            argv=argv, output=args.output, force=args.force, quiet=args.quiet,
            no_report=args.no_report, sample_interval=args.sample_interval))
        if not (args.quiet or args.no_report):
            from tracer.model import load
            from tracer.reports import summary

            summary.render(load(result.capture), sys.stderr)
            sys.stderr.write(f"  capture: {result.capture}\n")
        return result.status


class SummaryCommand:
    """Print the terminal summary of a capture."""

    name = "summary"

    def prepare_parser(self, p):
        p.add_argument("capture")
        p.add_argument("-n", "--top", type=int, default=10, help="rows per table (default 10)")

    def run(self, args) -> int:
        from tracer.reports import summary

        model = _load(args.capture)
        summary.render(model, sys.stdout, top=args.top)
        return _incomplete_status(model)


class StatsCommand:
    """Print a capture's numbers (JSON with --json)."""

    name = "stats"

    def prepare_parser(self, p):
        p.add_argument("--json", action="store_true", help="JSON output (the only format so far)")
        p.add_argument("--pid", type=int, help="only this process (and its streams)")
        p.add_argument("capture")

    def run(self, args) -> int:
        from tracer.reports import stats

        model = _load(args.capture)
        if args.pid is not None:
            model.processes = [p for p in model.processes if p.pid == args.pid]
            if not model.processes:
                raise MemtraceError(f"{args.capture} has no process {args.pid}")
        stats.render(model, sys.stdout)
        return _incomplete_status(model)


INCOMPLETE_CAPTURE_STATUS = 3


def _load(path):
    """Load a capture; a cut-short one still loads, with one warning line."""
    from tracer.model import load

    model = load(path)
    for warning in model.warnings:
        sys.stderr.write(f"memtrace: warning: {path}: {warning}\n")
    return model


def _incomplete_status(model) -> int:
    """Reports made from an incomplete capture exit non-zero, after printing."""
    return INCOMPLETE_CAPTURE_STATUS if model.warnings else 0


_COMMANDS = [RunCommand, SummaryCommand, StatsCommand]


def _parser(command) -> _Parser:
    p = _Parser(prog=f"memtrace {command.name}", description=command.__doc__)
    command.prepare_parser(p)
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
        args = _parser(command).parse_args(rest)
        return command.run(args)
    except MemtraceError as exc:
        sys.stderr.write(f"memtrace: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("memtrace: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
