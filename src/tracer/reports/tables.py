"""Per-line and per-library tables: pure functions of the model, shared by reports."""
from collections import defaultdict
from typing import Dict, List

import numpy as np

from tracer import _format as fmt
from tracer.model import Model, heap_mask, site_frame


def totals(model: Model) -> dict:
    """Run-wide numbers: sums over processes. Peaks are reached at different moments:
    their sum is `sum_of_process_peaks` (the process tree's peak: peaks.tree_peak)."""
    keys = ("total_allocated", "n_allocations", "heap")
    out = {k: sum(int(p.totals.get(k, 0)) for p in model.processes) for k in keys}
    out["sum_of_process_peaks"] = sum(int(p.totals.get("peak_heap", 0)) for p in model.processes)
    out["dropped"] = sum(int(p.totals.get("dropped", 0)) for p in model.processes)
    out["numpy_bytes"] = sum(int(p.sites["alloc_bytes"][(p.sites["flags"] & fmt.FLAG_NUMPY) != 0].sum())
                             for p in model.processes)
    return out


def by_line(model: Model, user_code: bool = False) -> List[dict]:
    """Heap allocations grouped by innermost Python line (native buckets apart);
    with user_code, by the innermost line of the user's own code instead."""
    rows: Dict[tuple, dict] = {}
    for proc in model.processes:
        sites = proc.sites[heap_mask(proc.sites)]
        frames = {}
        for site in sites:
            key = (int(site["stack"]), int(site["tid"]) if not site["stack"] else 0)
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = site_frame(proc, site, user_code)
            key = (frame.file, frame.line, frame.function)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {
                    "file": frame.file, "line": frame.line, "function": frame.function,
                    "allocated_bytes": 0, "n_allocations": 0, "peak_bytes": 0,
                    "live_at_exit_bytes": 0, "numpy_bytes": 0, "allocators": defaultdict(int),
                    "numpy_allocators": defaultdict(int), "libraries": defaultdict(int)}
            size = int(site["alloc_bytes"])
            row["allocated_bytes"] += size
            row["n_allocations"] += int(site["n_allocs"])
            row["peak_bytes"] += int(site["peak_bytes"])
            row["live_at_exit_bytes"] += int(site["live_bytes"])
            name = fmt.KIND_NAMES[int(site["kind"])]
            if int(site["flags"]) & fmt.FLAG_NUMPY:
                row["numpy_bytes"] += size
                row["numpy_allocators"][name] += size
            row["allocators"][name] += size
            row["libraries"][proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]] += size
    out = []
    for row in rows.values():
        row["allocators"] = dict(row["allocators"])
        row["numpy_allocators"] = dict(row["numpy_allocators"])
        row["libraries"] = dict(row["libraries"])
        out.append(row)
    out.sort(key=lambda r: (-r["peak_bytes"], -r["allocated_bytes"], r["file"], r["line"]))
    return out


def by_library(model: Model) -> List[dict]:
    """Heap allocations grouped by the shared object that called the allocator."""
    rows: Dict[str, dict] = {}
    for proc in model.processes:
        sites = proc.sites[heap_mask(proc.sites)]
        if len(sites) == 0:
            continue
        for lib in sorted(set(sites["lib"].tolist())):  # (np.unique would import numpy.ma)
            sel = sites[sites["lib"] == lib]
            path = proc.lib_name(int(lib))
            name = path.rsplit("/", 1)[-1]
            row = rows.setdefault(name, {"library": name, "path": path, "allocated_bytes": 0,
                                         "n_allocations": 0, "peak_bytes": 0,
                                         "live_at_exit_bytes": 0})
            row["allocated_bytes"] += int(sel["alloc_bytes"].sum())
            row["n_allocations"] += int(sel["n_allocs"].sum())
            row["peak_bytes"] += int(sel["peak_bytes"].sum())
            row["live_at_exit_bytes"] += int(sel["live_bytes"].sum())
    return sorted(rows.values(), key=lambda r: (-r["allocated_bytes"], r["library"]))


def process_end(model: Model, proc) -> dict:
    """How a process ended: exit code / signal for the main one, else what was seen."""
    end = model.end
    if proc.pid == end.get("main_pid") and proc.end.get("how") != "exec":
        return {"exit_code": end.get("exit_code"), "signal": end.get("signal")}
    out = {"how": proc.end.get("how", "unknown")}
    for key in ("exit_code", "signal"):  # what the shim or the kernel told the collector
        if proc.end.get(key) is not None:
            out[key] = proc.end[key]
    return out


HOW = {"exit": "called exit()", "_exit": "called _exit()", "signal": "killed by a signal",
       "killed_or_exit": "ended by _exit or a signal", "exec": "exec'd",
       "running": "still running when the trace ended"}


def describe_process_end(model: Model, proc) -> str:
    end = process_end(model, proc)
    if end.get("signal"):
        return f"killed by signal {end['signal']}"
    if "exit_code" in end:
        return f"exit code {end['exit_code']}"
    return HOW.get(end.get("how"), end.get("how", "unknown"))
