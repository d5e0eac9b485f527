"""`memtrace pytest [PYTEST ARGS...]`: pytest under memtrace, then the tests table.

pytest runs as `python -m pytest ARGS` under the shim (pytest-xdist workers are
traced processes of their own); the plugin (tracer.pytest_plugin) makes each
test's call a region. Once pytest is done, the tests with the highest peak and
the most memory left live are read from the capture and printed after pytest's
own report; the exit status is pytest's.
"""

import os
import sys
from typing import List, Optional

from tracer.errors import MemtraceError


def _option(args: List[str], name: str) -> Optional[str]:
    """The value of the plugin option `name` among pytest's arguments, if given."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def run(args: List[str]) -> int:
    from tracer.record import launcher

    # a capture named with --memtrace-output is replaced (a suite is run again and
    # again); the default name is new each time
    chosen = _option(args, "--memtrace-output")
    output = chosen or f"memtrace-pytest-{os.getpid()}.mtrace"
    top_text = _option(args, "--memtrace-top")
    try:
        top = int(top_text) if top_text is not None else 10
    except ValueError:
        raise MemtraceError(f"--memtrace-top takes a number of tests, not {top_text!r}") from None
    result = launcher.run(
        launcher.RunOptions(
            argv=[sys.executable, "-m", "pytest", *args],
            output=output,
            force=chosen is not None,
            quiet=True,
            no_report=True,
        )
    )
    from tracer.analyze.model import load
    from tracer.reports import regions

    sys.stdout.flush()
    regions.render_tests(load(result.capture), sys.stdout, top)
    return result.status
