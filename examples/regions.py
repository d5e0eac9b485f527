"""Regions: a pipeline's steps, each with its own peak, allocated and left-live bytes.

    memtrace python examples/regions.py
    memtrace regions memtrace-regions-<pid>.mtrace
    memtrace summary --region transform memtrace-regions-<pid>.mtrace

expect "load" to leave its 40,000,000-byte table live, "transform" to peak at about
64 MB (its 16 MB scratch buffer and its 48 MB result live at once) and leave 48 MB,
and "report" (called three times) to peak at 8 MB and leave nothing.
Outside memtrace the regions do nothing at all.
"""

import tracer


@tracer.region("load")
def load():
    return bytearray(40_000_000)


@tracer.region("transform")
def transform(table):
    scratch = bytearray(16_000_000)
    result = bytearray(48_000_000)
    del scratch
    return result


@tracer.region("report")
def report(result, part):
    lines = bytearray(8_000_000)
    return len(lines) + part


if __name__ == "__main__":
    table = load()
    result = transform(table)
    for part in range(3):
        report(result, part)
    with tracer.region("check") as check:
        copy = bytes(result[:1_000_000])
        print("check so far:", check.usage())
