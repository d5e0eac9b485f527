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

import os
import sys
from typing import List, Optional, Type

from tracer import __version__
from tracer.cli import run as run_command
from tracer.cli.common import CaptureCommand, Command, _Parser, parse_bytes
from tracer.cli.reports import (
    DiffCommand,
    ExportCommand,
    FlamegraphCommand,
    LinesCommand,
    LogCommand,
    ReconcileCommand,
    RegionsCommand,
    StatsCommand,
    SummaryCommand,
    TreeCommand,
)
from tracer.cli.run import LiveCommand, RunCommand, write_reports
from tracer.cli.tools import ClusterCommand, JupyterCommand, MergeCommand, PytestCommand
from tracer.errors import MemtraceError

__all__ = ["main", "entry", "parse_bytes", "write_reports"]


_COMMANDS: List[Type[Command]]
_COMMANDS = [
    RunCommand,
    LiveCommand,
    SummaryCommand,
    StatsCommand,
    ReconcileCommand,
    FlamegraphCommand,
    TreeCommand,
    LinesCommand,
    LogCommand,
    DiffCommand,
    ExportCommand,
    RegionsCommand,
    MergeCommand,
    ClusterCommand,
    PytestCommand,
    JupyterCommand,
]


def _parser(command) -> _Parser:
    p = _Parser(prog=f"memtrace {command.name}", description=command.__doc__)
    command.prepare_parser(p)
    if isinstance(command, (CaptureCommand, DiffCommand)) and not isinstance(command, RegionsCommand):
        p.add_argument(
            "--region",
            metavar="NAME",
            help="only what was allocated inside the region NAME (exact, else a glob; "
            "`memtrace regions` lists them)",
        )
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
            from tracer.reports import text

            text.RAW = True
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


def entry() -> None:
    """The `memtrace` command (and `python -m tracer`). After a run, leave at once:
    the interpreter's teardown (the compression thread, module cleanup; ~10 ms)
    would only add to the traced command's time."""
    status = main()
    if run_command.run_complete:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    raise SystemExit(status)


if __name__ == "__main__":
    entry()
