"""Commands around captures and runs: merge, cluster, pytest, jupyter."""

import os
import sys
from typing import List

from tracer.cli import run as run_command
from tracer.cli.common import _incomplete_status, _keep_freed_memory, _load, _Parser


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
                sys.stderr.write(
                    f"memtrace: warning: {s['source']} is incomplete (its run was "
                    "cut short): merged up to its last complete chunk\n"
                )
        sys.stderr.write(
            f"memtrace: merged {len(done['sources'])} captures ({done['streams']} "
            f"processes, {done['bytes']:,} bytes) into {args.output} in "
            f"{time.monotonic() - t0:.2f} s\n"
        )
        return 0


class ClusterCommand:
    """Report a cluster's workers: peak, RSS, Dask's managed memory, RSS explained, tasks."""

    name = "cluster"

    def prepare_parser(self, p):
        p.add_argument("--raw", action="store_true", help="exact byte counts")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.add_argument(
            "captures",
            nargs="+",
            metavar="CAPTURE",
            help="a merged capture, or the workers' captures (merged first, into a temporary file)",
        )
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
                sys.stdout.write(
                    text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"
                )
            else:
                report.render(model, sys.stdout, args.top)
            return _incomplete_status(model)


class PytestCommand:
    """Run pytest under memtrace (every test a region), then list the tests with the highest peak and the most left live."""  # noqa: E501 (one line in `memtrace --help`)

    name = "pytest"
    raw_args = True  # everything after `pytest` is pytest's (and the plugin's --memtrace-* options)

    def run(self, args: List[str]) -> int:
        from tracer.cli import pytest_run

        status = pytest_run.run(args)
        run_command.run_complete = True
        return status


class JupyterCommand:
    """Jupyter: `install` registers the "Python 3 (memtrace)" kernel; `kernel` is what it runs."""

    name = "jupyter"

    def prepare_parser(self, p):
        sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
        install = sub.add_parser("install", help="register the kernel spec")
        where = install.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help="for this user (the default)")
        where.add_argument(
            "--sys-prefix", action="store_true", help="in this Python's prefix (a virtualenv's own Jupyter)"
        )
        where.add_argument("--prefix", help="under this prefix (PREFIX/share/jupyter/kernels)")
        install.add_argument("--name", default="memtrace", help="kernel name (default memtrace)")
        install.add_argument("--display-name", default="Python 3 (memtrace)")
        install.add_argument(
            "--capture-dir",
            metavar="DIR",
            help="where kernels write their captures (default: the notebook's folder)",
        )
        kernel = sub.add_parser("kernel", help="run a kernel under memtrace (the spec's command)")
        kernel.add_argument("-f", dest="connection_file", required=True)
        kernel.add_argument("--capture-dir", metavar="DIR")

    def run(self, args) -> int:
        from tracer.jupyter import kernelspec

        if args.action == "kernel":
            status = kernelspec.run_kernel(args.connection_file, args.capture_dir)
            run_command.run_complete = True
            return status
        prefix = sys.prefix if args.sys_prefix else args.prefix
        path = kernelspec.install(
            user=prefix is None,
            prefix=prefix,
            name=args.name,
            display_name=args.display_name,
            capture_dir=args.capture_dir,
        )
        sys.stderr.write(f"memtrace: installed the kernel {args.display_name!r} ({args.name}) in {path}\n")
        return 0
