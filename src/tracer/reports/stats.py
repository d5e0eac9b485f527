"""`memtrace stats --json`: the capture's numbers as one JSON document."""

from typing import Optional

from tracer.analyze import reconcile, regions
from tracer.analyze.model import Model, Process
from tracer.reports import jsontext, objects, peaks, tables

FORMAT_VERSION = 1


def stats(model: Model) -> dict:
    t = tables.totals(model)
    end = model.end
    results = reconcile.reconcile(model)
    cwd = model.capture.info.get("cwd")
    processes = [_process_stats(model, proc, results, cwd, end) for proc in model.processes]
    tree = peaks.tree_peak(model)
    return {
        "format_version": FORMAT_VERSION,
        "command": model.command,
        "merged": model.capture.info.get("merged"),  # memtrace merge: the captures merged
        # --region: every number below is of what was allocated inside that region
        "region": getattr(model, "region", None),
        # each region's own numbers (docs/regions.md)
        "regions": regions.table(model),
        "exit_code": end.get("exit_code"),
        "signal": end.get("signal"),
        "complete": not model.warnings,
        "warnings": model.warnings,
        "sample_rate": model.sample_rate,
        "estimates": bool(model.sample_rate),
        "dropped_events": t["dropped"],
        # the process tree's heap at one moment (exact for one process; for several,
        # the highest sum seen, at most peak_heap_upper_bytes between samples)
        "peak_heap_bytes": tree["bytes"] if tree else 0,
        "peak_heap_time": tree["t"] if tree else None,
        "peak_heap_upper_bytes": tree["upper_bytes"] if tree else 0,
        "peak_heap_resolution_seconds": tree["resolution"] if tree else None,
        "sum_of_process_peaks_bytes": peaks.sum_of_peaks(model),
        "total_allocated_bytes": t["total_allocated"],
        "n_allocations": t["n_allocations"],
        "live_at_exit_bytes": t["heap"],
        "numpy_bytes": t["numpy_bytes"],
        "processes": processes,
        "by_line": tables.by_line(model),
        "by_user_line": tables.by_line(model, user_code=True),
        "by_library": tables.by_library(model),
        "reconciliation": _reconciliation(results),
        "timeline": _timelines(model),
    }


def _process_stats(model: Model, proc: Process, results: dict, cwd: Optional[str], end: dict) -> dict:
    """One process's numbers (`end`: the run's end, model.end)."""
    tot = proc.totals
    peak = peaks.process_peak(proc, results[reconcile.process_key(proc)].get("at_peak"), cwd)
    return {
        "pid": proc.pid,
        "ppid": proc.ppid,
        "argv": proc.argv,
        "exe": proc.exe,
        "labels": proc.labels or None,  # merged captures: source, host, worker, key
        "python": proc.python,
        "frames": proc.python is not None,
        "frames_off_reason": proc.frames_off,
        "stacks_read": proc.stacks_read,
        "peak_heap_bytes": int(tot.get("peak_heap", 0)),
        "peak_heap_time": float(tot.get("peak_time", 0.0)),
        # the part of the peak in RAM; the rest was address space never touched
        "peak_heap_resident_bytes": peak["resident_bytes"],
        "peak_heap_resident_unknown_bytes": peak["resident_unknown_bytes"],
        "peak_heap_untouched_bytes": peak["untouched_bytes"],
        "untouched_at_peak": peak["untouched"],
        "peak_rss_bytes": (
            max(proc.peak_rss or 0, int(end.get("main_max_rss", 0)))
            if proc.pid == end.get("main_pid")
            else proc.peak_rss
        ),
        "total_allocated_bytes": int(tot.get("total_allocated", 0)),
        "n_allocations": int(tot.get("n_allocations", 0)),
        "n_frees": int(tot.get("n_frees", 0)),
        "live_at_exit_bytes": int(tot.get("heap", 0)),
        "unknown_frees": int(tot.get("unknown_frees", 0)),
        "dropped_events": int(tot.get("dropped", 0)),
        # calls made by signal handlers that interrupted memtrace: not recorded
        "unrecorded_calls": int(proc.end.get("unrecorded_reentrant", 0)),
        "end": tables.process_end(model, proc),
        "warnings": proc.warnings,
        # --objects: live Python objects by type at the heap peak and at exit
        "objects": objects.process_views(model, proc),
    }


def _reconciliation(results: dict) -> dict:
    """Each process's reconciliation at its heap peak and at exit, by its key."""
    return {
        pid: {"at_peak": reconcile.json_rows(r["at_peak"]), "at_exit": reconcile.json_rows(r["at_exit"])}
        for pid, r in results.items()
    }


def _timelines(model: Model) -> dict:
    """Each process's timeline, by pid (by its key when it has labels: a merged capture's)."""
    return {
        str(p.pid) if not p.labels else reconcile.process_key(p): reconcile.timeline(model, p)
        for p in model.processes
    }


def render(model: Model, out) -> None:
    # ensure_ascii keeps every string from the target as a JSON escape, never raw
    # control bytes; "<" and ">" are escaped too so the JSON can sit inside HTML.
    text = jsontext.dumps(stats(model), indent=1)
    out.write(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    out.write("\n")
