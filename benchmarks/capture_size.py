#!/usr/bin/env python3
"""Capture size per recorded event: memtrace against memray, on every workload.

Runs each workload once under `memtrace run` and once under `memray run`, and prints
both files' sizes, the events each recorded and the bytes per event. memtrace's
events are those in its capture (every malloc-family and mmap call, frees included);
memray's are the allocations `memray stats` counts, times two (each has its free).

    python benchmarks/capture_size.py [--json OUT]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIRS = [HERE / "workloads"]
NAMES = ["alloc_storm", "malloc_heavy", "numpy_churn", "py_objects", "threads", "call_heavy"]


def memtrace_counts(path: Path) -> tuple:
    """(events, bytes of the event chunks) of a memtrace capture."""
    from tracer import _format as fmt
    from tracer.analyze.capture import read_capture

    capture = read_capture(str(path))
    events = sum(chunk[2] for s in capture.streams.values() for chunk in s.event_chunks)
    data, pos, event_bytes = path.read_bytes(), fmt.FILE_HEADER.size, 0
    while pos + fmt.CHUNK_HEADER.size <= len(data):
        ctype, _sid, length = fmt.CHUNK_HEADER.unpack_from(data, pos)
        if ctype in (fmt.CHUNK_EVENTS, fmt.CHUNK_ZEVENTS):
            event_bytes += fmt.CHUNK_HEADER.size + length
        pos += fmt.CHUNK_HEADER.size + length
    return events, event_bytes


def memray_events(path: Path, tmp: Path) -> int:
    out = tmp / "stats.json"
    subprocess.run(
        [sys.executable, "-m", "memray", "stats", "--json", "-f", "-o", str(out), str(path)],
        check=True,
        capture_output=True,
    )
    return 2 * int(json.loads(out.read_text())["total_num_allocations"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in NAMES:
            script = next(d / f"{name}.py" for d in DIRS if (d / f"{name}.py").exists())
            ours, theirs = tmp / f"{name}.mtrace", tmp / f"{name}.memray"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tracer",
                    "run",
                    "--no-report",
                    "-o",
                    str(ours),
                    "--",
                    sys.executable,
                    str(script),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            subprocess.run(
                [sys.executable, "-m", "memray", "run", "-q", "-o", str(theirs), str(script)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            events, event_bytes = memtrace_counts(ours)
            theirs_events = memray_events(theirs, tmp)
            row = {
                "workload": name,
                "memtrace_bytes": ours.stat().st_size,
                "memtrace_events": events,
                "memtrace_event_bytes": event_bytes,
                "memray_bytes": theirs.stat().st_size,
                "memray_events": theirs_events,
            }
            rows.append(row)
            print(
                f"{name:13} memtrace {row['memtrace_bytes']:>10,} B / {events:>11,} events = "
                f"{row['memtrace_bytes'] / max(events, 1):6.3f} B/event (events alone "
                f"{event_bytes / max(events, 1):.3f})   memray {row['memray_bytes']:>10,} B / "
                f"{theirs_events:>11,} = {row['memray_bytes'] / max(theirs_events, 1):6.3f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
