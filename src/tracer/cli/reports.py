"""The report commands: each reads one capture (two for `diff`) and writes one report."""

import sys

from tracer.cli.common import (
    CaptureCommand,
    _focus,
    _incomplete_status,
    _keep_freed_memory,
    _load,
    _metric_options,
    _write_output,
)
from tracer.errors import MemtraceError


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
            sys.stdout.write(
                f"RSS belongs to processes, not regions: the reconciliation of the "
                f"process{'es' if len(pids) > 1 else ''} where region "
                f"{model.region!r} ran\n"
            )
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
        p.add_argument(
            "--min-share",
            type=float,
            default=1.0,
            metavar="PERCENT",
            help="hide subtrees under this share of the total (default 1)",
        )

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
