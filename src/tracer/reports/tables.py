"""Per-line and per-library tables: pure functions of the model, shared by reports.

Sites are grouped with NumPy (a row per distinct frame); only the rows
themselves are made in Python."""

from typing import Dict, List

import numpy as np

from tracer import _format as fmt
from tracer.analyze import stacks as st
from tracer.analyze.model import Model, heap_mask, site_frame_keys


def totals(model: Model) -> dict:
    """Run-wide numbers: sums over processes. Peaks are reached at different moments:
    their sum is `sum_of_process_peaks` (the process tree's peak: peaks.tree_peak)."""
    keys = ("total_allocated", "n_allocations", "heap")
    out = {k: sum(int(p.totals.get(k, 0)) for p in model.processes) for k in keys}
    out["sum_of_process_peaks"] = sum(int(p.totals.get("peak_heap", 0)) for p in model.processes)
    out["dropped"] = sum(int(p.totals.get("dropped", 0)) for p in model.processes)
    out["numpy_bytes"] = sum(
        int(p.sites["alloc_bytes"][(p.sites["flags"] & fmt.FLAG_NUMPY) != 0].sum()) for p in model.processes
    )
    return out


def lib_name_ids(proc, libs: np.ndarray, names: st.Interner) -> np.ndarray:
    """The file name of each site's calling library, as ids of `names`."""
    ids, inverse = np.unique(libs, return_inverse=True)
    return names.many(proc.lib_name(i).rsplit("/", 1)[-1] for i in ids.tolist())[inverse]


def heap_sites(model: Model):
    """The heap sites of every process, with their process (copies, made once: the
    temporary columns in them are those of the first call)."""
    return memo(
        model, "heap_sites", lambda: [(proc, proc.sites[heap_mask(proc.sites)]) for proc in model.processes]
    )


def memo(model: Model, key, make):
    """make(), once per model while its processes keep the same site arrays (the
    HTML report and the summary at the end of a run share the tables)."""
    sites = [p.sites for p in model.processes]
    cache = model.__dict__.setdefault("_tables", {})
    hit = cache.get(key)
    if hit is None or len(hit[0]) != len(sites) or any(a is not b for a, b in zip(hit[0], sites)):
        hit = cache[key] = (sites, make())
    return hit[1]


def by_line(model: Model, user_code: bool = False) -> List[dict]:
    """Heap allocations grouped by innermost Python line (native buckets apart);
    with user_code, by the innermost line of the user's own code instead.
    (The rows are shared between callers: read them, do not change them.)"""
    return memo(model, ("by_line", user_code), lambda: _by_line(model, user_code))


def _by_line(model: Model, user_code: bool) -> List[dict]:
    functions, libraries = st.Interner(), st.Interner()
    parts = heap_sites(model)
    key_parts = [site_frame_keys(proc, sites, functions, user_code) for proc, sites in parts]
    lib_parts = [lib_name_ids(proc, sites["lib"], libraries) for proc, sites in parts]
    sites = np.concatenate([s for _, s in parts]) if parts else np.zeros(0, fmt.SITE_DTYPE)
    if len(sites) == 0:
        return []
    keys, libs = np.concatenate(key_parts), np.concatenate(lib_parts)
    uniq, row = np.unique(keys, return_inverse=True)
    n = len(uniq)
    first = st.first_of_each(row, n)
    fn, lines = st.frame_key_parts(uniq)
    sums = {
        col: st.group_sum(row, sites[col], n).tolist()
        for col in ("alloc_bytes", "n_allocs", "peak_bytes", "live_bytes")
    }
    numpy_site = (sites["flags"] & fmt.FLAG_NUMPY) != 0
    numpy_bytes = st.group_sum(row[numpy_site], sites["alloc_bytes"][numpy_site], n).tolist()
    kinds = [fmt.KIND_NAMES.get(k, str(k)) for k in range(256)]
    allocators = _breakdown(row, sites["kind"].astype(np.int64), sites["alloc_bytes"], n, kinds)
    numpy_allocators = _breakdown(
        row[numpy_site],
        sites["kind"][numpy_site].astype(np.int64),
        sites["alloc_bytes"][numpy_site],
        n,
        kinds,
    )
    library_rows = _breakdown(row, libs, sites["alloc_bytes"], n, libraries.keys)
    files = [functions.keys[f][0] for f in fn.tolist()]
    names = [functions.keys[f][1] for f in fn.tolist()]
    rank = {f: i for i, f in enumerate(sorted(set(files)))}
    peak, allocated, lines, first = sums["peak_bytes"], sums["alloc_bytes"], lines.tolist(), first.tolist()
    # ties keep the order in which the sites first show each row
    order = sorted(range(n), key=lambda i: (-peak[i], -allocated[i], rank[files[i]], lines[i], first[i]))
    return [
        {
            "file": files[i],
            "line": lines[i],
            "function": names[i],
            "allocated_bytes": sums["alloc_bytes"][i],
            "n_allocations": sums["n_allocs"][i],
            "peak_bytes": sums["peak_bytes"][i],
            "live_at_exit_bytes": sums["live_bytes"][i],
            "numpy_bytes": numpy_bytes[i],
            "allocators": allocators[i],
            "numpy_allocators": numpy_allocators[i],
            "libraries": library_rows[i],
        }
        for i in order
    ]


def _breakdown(row: np.ndarray, what: np.ndarray, size: np.ndarray, n: int, labels) -> List[dict]:
    """Per row, {label of what: bytes}, labels in the order the sites first show them."""
    out: List[dict] = [{} for _ in range(n)]
    if len(row) == 0:
        return out
    span = int(what.max()) + 1
    pair, inverse = np.unique(row * span + what, return_inverse=True)
    sums = st.group_sum(inverse, size, len(pair)).tolist()
    first = st.first_of_each(inverse, len(pair))
    order = np.lexsort((first, pair // span))
    for p, r, w in zip(order.tolist(), (pair[order] // span).tolist(), (pair[order] % span).tolist()):
        out[r][labels[w]] = sums[p]
    return out


def by_library(model: Model) -> List[dict]:
    """Heap allocations grouped by the shared object that called the allocator."""
    rows: Dict[str, dict] = {}
    for proc, sites in heap_sites(model):
        if len(sites) == 0:
            continue
        ids, inverse = np.unique(sites["lib"], return_inverse=True)
        sums = {
            col: st.group_sum(inverse, sites[col], len(ids)).tolist()
            for col in ("alloc_bytes", "n_allocs", "peak_bytes", "live_bytes")
        }
        for i, lib in enumerate(ids.tolist()):
            path = proc.lib_name(lib)
            name = path.rsplit("/", 1)[-1]
            row = rows.setdefault(
                name,
                {
                    "library": name,
                    "path": path,
                    "allocated_bytes": 0,
                    "n_allocations": 0,
                    "peak_bytes": 0,
                    "live_at_exit_bytes": 0,
                },
            )
            row["allocated_bytes"] += sums["alloc_bytes"][i]
            row["n_allocations"] += sums["n_allocs"][i]
            row["peak_bytes"] += sums["peak_bytes"][i]
            row["live_at_exit_bytes"] += sums["live_bytes"][i]
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


HOW = {
    "exit": "called exit()",
    "_exit": "called _exit()",
    "signal": "killed by a signal",
    "killed_or_exit": "ended by _exit or a signal",
    "exec": "exec'd",
    "running": "still running when the trace ended",
}


def describe_process_end(model: Model, proc) -> str:
    end = process_end(model, proc)
    if end.get("signal"):
        return f"killed by signal {end['signal']}"
    if "exit_code" in end:
        return f"exit code {end['exit_code']}"
    how = end.get("how", "unknown")
    return HOW.get(how, how)
