#!/usr/bin/env python3
"""What the Jupyter kernel and magics cost (docs/jupyter.md): one notebook executed
(nbclient) four ways, interleaved, medians of --runs:

  python3          ipykernel's own kernel
  memtrace         the "Python 3 (memtrace)" kernel, cells as they are
  %%memtrace       every cell run with `%%memtrace --no-flame` (a region, its summary)
  + flame graph    every cell run with `%%memtrace` (the HTML report inline too)

Per mode: the kernel's start (until the first cell runs) and the cells' own time
(from nbclient's timings: busy to reply, summed).

    python benchmarks/jupyter_overhead.py [--runs 3] [--cells 10] [--json OUT]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbclient
import nbformat

CELL = "data = [bytearray(1000) for _ in range(20_000)]\nkept_{i} = bytearray(2_000_000)\ndel data"


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def execute(cells, kernel: str, folder: Path) -> tuple:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    t = time.time()
    nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=600,
        startup_timeout=120,
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    first = when(nb.cells[0].metadata.execution["iopub.status.busy"])
    busy = sum(
        when(c.metadata.execution["shell.execute_reply"]) - when(c.metadata.execution["iopub.status.busy"])
        for c in nb.cells[1:]
    )
    return first - t, busy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cells", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "tracer", "jupyter", "install", "--prefix", str(tmp)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    os.environ["JUPYTER_PATH"] = str(tmp / "share" / "jupyter")
    body = [CELL.format(i=i) for i in range(args.cells)]
    modes = {
        "python3": ("python3", ["pass"] + body),
        "memtrace": ("memtrace", ["pass"] + body),
        "%%memtrace": ("memtrace", ["%load_ext tracer"] + [f"%%memtrace --no-flame\n{c}" for c in body]),
        "+ flame graph": ("memtrace", ["%load_ext tracer"] + [f"%%memtrace\n{c}" for c in body]),
    }
    runs = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode, (kernel, cells) in modes.items():
            runs[mode].append(execute(cells, kernel, tmp))
    med = {
        m: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for m, v in runs.items()
    }
    base = med["python3"][1]
    for mode, (start, cells) in med.items():
        print(
            f"{mode:14} kernel start {start:5.2f} s   {args.cells} cells {cells:6.2f} s  "
            f"x{cells / base:.2f}  ({(cells - base) / args.cells * 1e3:+.0f} ms per cell)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": args.cells, "runs": runs, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
