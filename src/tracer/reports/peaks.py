"""The headline peaks: the process tree's heap at its highest, the resident part of a
process's peak, and who made the address space that was never touched."""

from typing import Any, Dict, List, Optional

import numpy as np

from tracer import _format as fmt
from tracer.analyze.model import Model, Process, display_path, site_frame
from tracer.analyze.reconcile import process_key
from tracer.reports.text import clean, human


def tree_peak(model: Model) -> Optional[dict]:
    """The heap of all processes together at its highest.

    `bytes`: the highest sum of every process's heap as recorded at one moment (each
    process's timeline holds its heap at each sampling interval, and the highest value
    in between); `upper_bytes`: the most it can have been (at each moment, each
    process's highest value between the collector's reads around it, summed); `t`: when
    `bytes` was seen; `resolution`: the timeline's sampling interval.
    With one process both are its exact peak."""
    procs = [p for p in model.processes if len(p.heap)]
    if not procs or model.capture.info.get("merged"):  # several machines: no shared moment
        return None
    if len(model.processes) == 1:
        p = model.processes[0]
        peak = int(p.totals.get("peak_heap", 0))
        return {
            "bytes": peak,
            "upper_bytes": peak,
            "t": float(p.totals.get("peak_time", 0.0)),
            "resolution": 0.0,
        }
    width = float(model.capture.info.get("sample_interval") or 0.01)
    times = np.unique(np.concatenate([p.heap["t"] for p in procs]))
    total = np.zeros(len(times))
    for p in procs:
        t = p.heap["t"]
        i = np.searchsorted(t, times, side="right") - 1
        alive = (i >= 0) & (times <= t[-1])  # a process counts from its first to its last record
        total += np.where(alive, p.heap["heap"][np.maximum(i, 0)], 0)
    k = int(np.argmax(total))
    seen, when = int(total[k]), float(times[k])
    # a single process's exact peak is a lower bound too (the others hold >= 0)
    alone = max(procs, key=lambda p: int(p.totals.get("peak_heap", 0)))
    if int(alone.totals.get("peak_heap", 0)) > seen:
        seen, when = int(alone.totals["peak_heap"]), float(alone.totals.get("peak_time", 0.0))
    upper = np.zeros(len(times))
    for p in procs:
        upper += _highest_around(p, times)
    return {"bytes": seen, "upper_bytes": max(seen, int(upper.max())), "t": when, "resolution": width}


def _highest_around(proc: Process, times: np.ndarray) -> np.ndarray:
    """A process's highest heap in the stretch of its timeline holding each of `times`:
    a record's max covers the time since the record before it (the first record, the
    time since the process started), and nothing outside its first to last record.
    Every stretch ends at a record time and `times` holds them all, so summing these
    at every one of `times` gives the highest the tree's heap can have reached."""
    t, mx = proc.heap["t"], proc.heap["max"].astype(float)
    i = np.searchsorted(t, times, side="left")  # t[i-1] < time <= t[i]
    inside = (times >= min(proc.t_start, float(t[0]))) & (i < len(t))
    return np.where(inside, mx[np.minimum(i, len(t) - 1)], 0.0)


def sum_of_peaks(model: Model) -> int:
    return sum(int(p.totals.get("peak_heap", 0)) for p in model.processes)


BLAS = ("libmkl", "libblis", "libflexiblas")
UNTOUCHED_WORTH_A_LINE = 1 << 20  # and 1% of the peak


def cause(proc: Process, site) -> str:
    """What kind of memory a site's untouched bytes are."""
    lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1].lower()
    kind = fmt.KIND_NAMES.get(int(site["kind"]), "?")
    if "openblas" in lib:
        return "OpenBLAS's per-thread buffers (one per OpenBLAS thread; OPENBLAS_NUM_THREADS sets how many)"
    if any(b in lib for b in BLAS):
        return "BLAS buffers"
    if int(site["flags"]) & fmt.FLAG_NUMPY:
        return "NumPy array data (np.zeros/np.empty reserve address space; RSS grows as it is written)"
    if kind == "calloc":
        return "calloc'd memory (zero pages until written)"
    if kind == "mmap" and "python" in lib:
        return "pymalloc arenas (pages of an arena no object has used yet)"
    return f"{kind} memory"


def untouched_causes(proc: Process, row: dict, cwd: Optional[str]) -> List[dict]:
    """The untouched bytes of a reconciliation row by cause, library and line (the
    snapshot names the largest site of each mapping), biggest first."""
    groups: Dict[tuple, int] = {}
    for site_index, gap in (row.get("untouched_sites") or {}).items():
        if not 0 <= int(site_index) < len(proc.sites):
            continue
        site = proc.sites[int(site_index)]
        frame = site_frame(proc, site, user_code=True)
        where = f"{display_path(frame.file, cwd)}:{frame.line}" if frame.line else frame.function
        lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]
        key = (cause(proc, site), lib, where)
        groups[key] = groups.get(key, 0) + int(gap)
    return [
        {"bytes": b, "cause": c, "library": lib, "where": w}
        for (c, lib, w), b in sorted(groups.items(), key=lambda kv: -kv[1])
    ]


def process_peak(proc: Process, at_peak: Optional[dict], cwd: Optional[str]) -> dict:
    """A process's peak with its resident part and what was never touched at it (from
    the at-peak snapshot; None where none was taken). `resident_bytes` is at most
    what was in RAM: `resident_unknown_bytes` of it were freed before the snapshot
    was read (or allocated after it), so their residency is not known."""
    out: Dict[str, Any]
    out = {
        "bytes": int(proc.totals.get("peak_heap", 0)),
        "t": float(proc.totals.get("peak_time", 0.0)),
        "resident_bytes": None,
        "resident_unknown_bytes": None,
        "untouched_bytes": None,
        "untouched": [],
    }
    if at_peak and "error" not in at_peak and "resident_peak_bytes" in at_peak:
        out["resident_bytes"] = int(at_peak["resident_peak_bytes"])
        out["resident_unknown_bytes"] = int(at_peak["resident_peak_unknown_bytes"])
        out["untouched_bytes"] = out["bytes"] - out["resident_bytes"]
        out["untouched"] = untouched_causes(proc, at_peak, cwd)
    return out


def describe_resident(peak: dict) -> str:
    """', resident 95.3 MiB' (a range when part of it was freed before it was read)."""
    if peak["resident_bytes"] is None:
        return ""
    high, unknown = peak["resident_bytes"], peak["resident_unknown_bytes"] or 0
    if unknown <= max(1 << 20, peak["bytes"] // 100):
        return f", resident {human(high)}"
    return (
        f", resident {human(max(0, high - unknown))} to {human(high)} ({human(unknown)} "
        "of it was freed before memtrace could read the peak)"
    )


def headline(model: Model, results: dict) -> List[str]:
    """The summary's peak lines: one process's peak with its resident part and who made
    what was never touched; for a process tree, its simultaneous peak and the sum of
    the processes' own peaks, each said for what it is."""
    cwd = model.capture.info.get("cwd")
    merged = model.capture.info.get("merged")
    if merged:
        hosts = sorted({str(s.get("host")) for s in merged})
        return [
            f"merged capture of {len(merged)} captures ({len(hosts)} host"
            f"{'s' if len(hosts) > 1 else ''}): no moment is shared across them, so each "
            f"process's own peak below (`memtrace cluster` for the table per worker) · sum "
            f"of each process's own peak {human(sum_of_peaks(model))}"
        ]
    if len(model.processes) > 1:
        tree = tree_peak(model)
        if tree is None:
            return [f"sum of each process's own peak heap {human(sum_of_peaks(model))}"]
        exact = (
            ""
            if tree["upper_bytes"] == tree["bytes"]
            else f"; at most {human(tree['upper_bytes'])}, from each process's highest heap "
            f"between the collector's reads"
        )
        return [
            f"peak heap of the process tree {human(tree['bytes'])} at {tree['t']:.2f} s "
            f"({len({p.pid for p in model.processes})} processes at one moment{exact}) · sum of each "
            f"process's own peak {human(sum_of_peaks(model))} (at different moments)"
        ]
    proc = model.processes[0] if model.processes else None
    if proc is None:
        return ["peak heap 0 B"]
    peak = process_peak(proc, results.get(process_key(proc), {}).get("at_peak"), cwd)
    lines = [
        f"peak heap {human(peak['bytes'])} at {peak['t']:.2f} s in pid {proc.pid}{describe_resident(peak)}"
    ]
    untouched = peak["untouched_bytes"] or 0
    if untouched >= max(UNTOUCHED_WORTH_A_LINE, peak["bytes"] // 100):
        who = "; ".join(
            f"{human(c['bytes'])} {c['cause'].split(' (')[0]} ({clean(c['library'])}, {clean(c['where'])})"
            for c in peak["untouched"][:3]
        )
        lines.append(
            f"  never touched at the peak: {human(untouched)} of it (address space, not "
            f"RAM){': ' + who if who else ''}"
        )
    return lines
