"""`memtrace lines`: a source file listed line by line with the memory each line
allocated (memory_profiler style). A line owns every allocation made while it was
the innermost frame of that file on the stack, calls it made included."""

import os
from typing import Dict, List, Optional

import numpy as np

from tracer.analyze import stacks as st
from tracer.analyze.model import LOST_FRAME, Model, heap_mask
from tracer.reports.text import clean, human


def line_table(model: Model, source: str) -> Dict[int, dict]:
    """{line: {"allocated", "peak", "count", "numpy"}} for one source file."""
    target = os.path.realpath(source)
    real: Dict[str, bool] = {}

    def is_source(file: str) -> bool:
        if file not in real:
            real[file] = file == source or os.path.realpath(file) == target
        return real[file]

    line_parts, site_parts = [], []
    for proc in model.processes:
        table = proc.stacks
        mine = np.array([is_source(f) for f in table.files], bool)
        chosen = proc.sites[heap_mask(proc.sites)]
        owner = table.nearest(
            table.rows(chosen["stack"]), mine[table.code], lost_flag=is_source(LOST_FRAME[0])
        )
        found = owner != st.ROOT
        line_parts.append(st.take(table.line, owner, LOST_FRAME[1])[found])
        site_parts.append(chosen[found])
    lines = np.concatenate(line_parts) if line_parts else np.zeros(0, np.int64)
    if len(lines) == 0:
        return {}
    sites = np.concatenate(site_parts)
    numbers, row = np.unique(lines, return_inverse=True)
    numpy = (sites["flags"] & 1) != 0
    cols = {
        "allocated": st.group_sum(row, sites["alloc_bytes"], len(numbers)),
        "peak": st.group_sum(row, sites["peak_bytes"], len(numbers)),
        "count": st.group_sum(row, sites["n_allocs"], len(numbers)),
        "numpy": st.group_sum(row[numpy], sites["alloc_bytes"][numpy], len(numbers)),
    }
    cols = {k: v.tolist() for k, v in cols.items()}
    return {line: {k: cols[k][i] for k in cols} for i, line in enumerate(numbers.tolist())}


def sources(model: Model) -> List[str]:
    """Files of the user's own code that allocated, biggest first."""
    files = st.Interner()
    id_parts, sizes = [], []
    for proc in model.processes:
        table = proc.stacks
        if len(table) == 0:
            continue
        sites = proc.sites[heap_mask(proc.sites)]
        rows = proc.user_rows(table.rows(sites["stack"]))
        code = table.code[np.maximum(rows, 0)]
        own = ~proc.library_codes() & np.array([not f.startswith("<") for f in table.files], bool)
        keep = (rows >= 0) & own[code]
        id_parts.append(table.interned(files, "files")[code[keep]])
        sizes.append(sites["alloc_bytes"][keep])
    if not id_parts:
        return []
    ids = np.concatenate(id_parts)
    total = st.group_sum(ids, np.concatenate(sizes), len(files)).tolist()
    first = st.first_of_each(ids, len(files)).tolist()
    used = [i for i in range(len(files)) if first[i] < len(ids)]
    return [files.keys[i] for i in sorted(used, key=lambda i: (-total[i], first[i]))]


def render(model: Model, out, source: Optional[str] = None) -> None:
    files = [source] if source else sources(model)[:1]
    if not files:
        out.write("no allocations from a source file of the program\n")
        return
    for path in files:
        table = line_table(model, path)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read().splitlines()
        except OSError:
            text = []
        out.write(f"{clean(path)}\n")
        out.write(f"{'Line':>6} {'Allocated':>11} {'At peak':>11} {'Blocks':>9} {'NumPy':>11}  Source\n")
        last = max([len(text), *table.keys()]) if table or text else 0
        for number in range(1, last + 1):
            row = table.get(number)
            code = clean(text[number - 1]) if number <= len(text) else ""
            if row:
                out.write(
                    f"{number:>6} {human(row['allocated']):>11} {human(row['peak']):>11} "
                    f"{row['count']:>9,} {human(row['numpy']) if row['numpy'] else '':>11}  {code}\n"
                )
            else:
                out.write(f"{number:>6} {'':>11} {'':>11} {'':>9} {'':>11}  {code}\n")
