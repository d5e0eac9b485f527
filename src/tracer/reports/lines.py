"""`memtrace lines`: a source file listed line by line with the memory each line
allocated (memory_profiler style). A line owns every allocation made while it was
the innermost frame of that file on the stack, calls it made included."""
import os
from collections import defaultdict
from typing import Dict, List, Optional

from tracer.model import Model, heap_mask
from tracer.reports.summary import clean, human


def line_table(model: Model, source: str) -> Dict[int, dict]:
    """{line: {"allocated", "peak", "count", "numpy"}} for one source file."""
    target = os.path.realpath(source)
    rows: Dict[int, dict] = defaultdict(lambda: {"allocated": 0, "peak": 0, "count": 0, "numpy": 0})
    for proc in model.processes:
        owner: Dict[int, Optional[int]] = {}
        for site in proc.sites[heap_mask(proc.sites)]:
            stack = int(site["stack"])
            if stack not in owner:
                owner[stack] = next((f.line for f in proc.stack(stack)
                                     if f.file == source or os.path.realpath(f.file) == target), None)
            line = owner[stack]
            if line is None:
                continue
            row = rows[line]
            row["allocated"] += int(site["alloc_bytes"])
            row["peak"] += int(site["peak_bytes"])
            row["count"] += int(site["n_allocs"])
            if int(site["flags"]) & 1:
                row["numpy"] += int(site["alloc_bytes"])
    return dict(rows)


def sources(model: Model) -> List[str]:
    """Files of the user's own code that allocated, biggest first."""
    sizes: Dict[str, int] = defaultdict(int)
    for proc in model.processes:
        for site in proc.sites[heap_mask(proc.sites)]:
            frame = proc.user_frame(int(site["stack"])) if site["stack"] else None
            if frame and not proc.is_library(frame.file) and not frame.file.startswith("<"):
                sizes[frame.file] += int(site["alloc_bytes"])
    return sorted(sizes, key=lambda f: -sizes[f])


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
                out.write(f"{number:>6} {human(row['allocated']):>11} {human(row['peak']):>11} "
                          f"{row['count']:>9,} {human(row['numpy']) if row['numpy'] else '':>11}  {code}\n")
            else:
                out.write(f"{number:>6} {'':>11} {'':>11} {'':>9} {'':>11}  {code}\n")
