"""memtrace: a native allocation tracer for Python (import package `tracer`).

In a program, `tracer.region(name)` marks a span of a thread's execution (a
context manager and a decorator) and `tracer.usage()` asks the collector about
the thread's open region; outside memtrace both do nothing. `%load_ext tracer`
loads the IPython magics. Importing this package is cheap: nothing heavy loads
until it is used.
"""

__version__ = "0.1.0"

from tracer._regions import region, usage  # noqa: E402,F401


def load_ipython_extension(ipython):
    """`%load_ext tracer`: the %%memtrace and %memtrace_report magics."""
    from tracer.jupyter import magics

    magics.load(ipython)
