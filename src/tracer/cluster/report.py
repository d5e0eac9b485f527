"""`memtrace cluster CAPTURE`: one report over a cluster's workers (docs/cluster.md).

Per worker (each process of a merged capture, labelled with its host and worker
address): its exact heap peak, RSS, Dask's managed memory at the peak (the worker's
own number, noted by tracer.cluster.dask whenever it changed), the reconciliation of
RSS at the peak with Dask's "unmanaged" memory split into its parts, the tasks whose
blocks were live at the peak and the tasks with the highest peaks; then the lines
that held the most across the cluster.

The tasks live at a worker's peak come from reading that worker's events up to its
peak, one chunk at a time (only blocks of MIN_BLOCK bytes or more are followed):
memory follows the blocks live, not the length of the run.
"""

from typing import Dict, List, Optional

import numpy as np

from tracer import _format as fmt
from tracer.analyze import reconcile as rec
from tracer.analyze import regions
from tracer.analyze.model import Model, Process, display_path
from tracer.cluster.merge import cluster_notes, worker_label
from tracer.reports import tables
from tracer.reports.text import clean, human

MIN_BLOCK = 64 << 10  # blocks followed for "tasks live at the peak"
TOP = 5


def _offset(proc: Process) -> int:
    """Ring positions minus event indices (slots that held no event), from the first
    snapshot at or after the peak (0: no snapshot says)."""
    peak_event = int(proc.totals.get("peak_event", 0))
    for snap in proc.snapshots:
        if "events" in snap and int(snap["events"]) >= peak_event:
            return int(snap.get("position", 0)) - int(snap["events"])
    return 0


def managed_at(notes: List[dict], position: Optional[int]) -> Optional[dict]:
    """The last managed-memory note written at or before a ring position (None: at
    the end)."""
    found = None
    for n in notes:
        if n.get("what") != "managed":
            continue
        if position is not None and int(n.get("position", 0)) > position:
            break
        found = n
    return found


def tasks_at_peak(model: Model, proc: Process, min_block: int = MIN_BLOCK) -> Dict[str, int]:
    """Bytes of blocks (>= min_block) live at the process's heap peak, by the task
    region that allocated them ("" : outside every task)."""
    named = regions.names(proc)
    task_ids = {rid for rid, (_n, kind) in named.items() if kind == "task"}
    end = int(proc.totals.get("peak_event", 0))
    open_by_tid: Dict[int, List[int]] = {}
    live: Dict[int, tuple] = {}  # addr -> (bytes, region id or 0)
    seen = 0
    for _t, events in model.capture.events(proc.sid, "tasks at the peak"):
        if seen >= end:
            break
        events = events[: end - seen]
        seen += len(events)
        kind = events["kind"]
        addr = events["addr"]
        is_alloc = (kind >= 1) & (kind <= fmt.LAST_ALLOC)
        is_map = ((kind == fmt.MMAP) | (kind == fmt.MREMAP)) & ((events["flags"] & fmt.FLAG_ANON) != 0)
        big = (is_alloc | is_map) & (events["size"] >= min_block)
        is_free = (kind == fmt.FREE) | (kind == fmt.MUNMAP)
        known = np.fromiter(live.keys(), np.uint64, len(live))
        watched = np.union1d(known, addr[big])
        frees = is_free & np.isin(addr, watched)
        marks = (kind == fmt.REGION) & np.isin(addr, np.fromiter(task_ids, np.uint64, len(task_ids)))
        for i in np.flatnonzero(big | frees | marks).tolist():
            k, a, tid = int(kind[i]), int(addr[i]), int(events["tid"][i])
            if k == fmt.REGION:
                stack = open_by_tid.setdefault(tid, [])
                if int(events["size"][i]):
                    stack.append(a)
                elif a in stack:
                    del stack[len(stack) - 1 - stack[::-1].index(a) :]
            elif k in (fmt.FREE, fmt.MUNMAP):
                live.pop(a, None)
            else:
                open_regions = open_by_tid.get(tid)
                live[a] = (int(events["size"][i]), open_regions[-1] if open_regions else 0)
    out: Dict[str, int] = {}
    for size, rid in live.values():
        name = named[rid][0] if rid else ""
        out[name] = out.get(name, 0) + size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def worker_rows(model: Model) -> List[dict]:
    """One row per process: labels, peak, RSS, Dask's managed memory, the
    reconciliation at the peak and at exit, tasks."""
    results = rec.reconcile(model)
    task_table = [r for r in regions.table(model) if r["kind"] == "task"]
    out = []
    for proc in model.processes:
        notes = cluster_notes(proc.meta)
        worker = worker_label(notes) or {}
        labels = dict(proc.labels)
        for k, v in (
            ("host", worker.get("host")),
            ("worker", worker.get("address")),
            ("worker_name", worker.get("name")),
        ):
            labels.setdefault(k, v)
        result = results.get(rec.process_key(proc), {})
        peak_row = result.get("at_peak") or {}
        exit_row = result.get("at_exit") or {}
        peak_position = int(proc.totals.get("peak_event", 0)) + _offset(proc)
        managed_peak = managed_at(notes, peak_position)
        managed_exit = managed_at(notes, None)
        tasks = [r for r in task_table if r["pid"] == proc.pid]
        row = {
            "key": rec.process_key(proc),
            "pid": proc.pid,
            "labels": labels,
            "argv": proc.argv,
            "is_worker": bool(worker),
            "peak_heap_bytes": int(proc.totals.get("peak_heap", 0)),
            "peak_heap_time": float(proc.totals.get("peak_time", 0.0)),
            "peak_rss_bytes": proc.peak_rss,
            "total_allocated_bytes": int(proc.totals.get("total_allocated", 0)),
            "live_at_exit_bytes": int(proc.totals.get("heap", 0)),
            "dask_managed_at_peak_bytes": managed_peak.get("managed") if managed_peak else None,
            "dask_keys_at_peak": managed_peak.get("keys") if managed_peak else None,
            "dask_managed_at_exit_bytes": managed_exit.get("managed") if managed_exit else None,
            "at_peak": _split(peak_row, managed_peak),
            "at_exit": _split(exit_row, managed_exit),
            "n_tasks": sum(t["instances"] for t in tasks),
            "tasks_by_peak": sorted(tasks, key=lambda t: -t["peak_bytes"])[:TOP],
            "tasks_by_left_live": sorted(tasks, key=lambda t: -t["live_at_end_bytes"])[:TOP],
        }
        if tasks:
            row["tasks_live_at_peak"] = tasks_at_peak(model, proc)
        out.append(row)
    return out


def _split(row: dict, managed: Optional[dict]) -> dict:
    """The reconciliation's rows, with Dask's managed memory and 'unmanaged' (RSS
    minus managed) split into them."""
    if not row or "error" in row:
        return {"error": (row or {}).get("error", "no reconciliation")}
    out = rec.json_rows(row)
    rss = row["rss_bytes"] or 0
    out["explained_share"] = (rss - abs(row["residual_bytes"])) / rss if rss else None
    if managed is not None:
        m = int(managed.get("managed", 0))
        out["dask_managed_bytes"] = m
        out["dask_unmanaged_bytes"] = rss - m
        # the traced heap Dask does not count: task temporaries, leaks, Python objects
        out["heap_not_managed_bytes"] = row["heap_resident_bytes"] - m
    return out


PARTS = (
    ("heap_not_managed_bytes", "traced heap Dask does not count (temporaries, leaks, objects)"),
    ("allocator_free_bytes", "glibc-held: freed memory glibc keeps"),
    ("allocator_overhead_bytes", "glibc: chunk headers and rounding"),
    ("pymalloc_free_bytes", "pymalloc: arena space without live objects"),
    ("file_backed_bytes", "libraries and mapped files"),
    ("stacks_and_other_anon_bytes", "thread stacks"),
    ("tracer_bytes", "memtrace itself"),
    ("untracked_bytes", "untracked (never seen allocated)"),
    ("residual_bytes", "residual (unexplained)"),
)


def render(model: Model, out, top: int = 10) -> None:
    w = out.write
    rows = worker_rows(model)
    merged = model.capture.info.get("merged") or []
    workers = [r for r in rows if r["is_worker"]]
    w(
        f"memtrace cluster: {len(workers)} worker{'s' if len(workers) != 1 else ''}"
        f" in {max(len(merged), 1)} capture{'s' if len(merged) > 1 else ''}"
        f" ({len(rows)} processes)\n"
    )
    for s in merged:
        if not s.get("complete"):
            w(f"  warning: {clean(s['source'])} is incomplete (its run was cut short)\n")
    _write_worker_table(w, workers)
    for r in rows:
        _write_process(w, r, top)
    _write_top_lines(w, model, top)


def _write_worker_table(w, workers: List[dict]) -> None:
    """One line per worker: peak heap, peak RSS, Dask's managed memory, explained share."""
    w("  worker                       host          pid      peak heap   peak RSS  Dask managed  explained\n")
    for r in workers:
        a = r["at_peak"]
        managed = r["dask_managed_at_peak_bytes"]
        share = a.get("explained_share")
        w(
            f"  {clean(r['labels'].get('worker') or '?'):28} {clean(r['labels'].get('host') or '?')[:12]:12}"
            f" {r['pid']:>7} {human(r['peak_heap_bytes']):>12} {human(r['peak_rss_bytes'] or 0):>10}"
            f" {human(managed) if managed is not None else 'unknown':>13}"
            f"  {f'{100 * share:.1f}%' if share is not None else 'unknown':>9}\n"
        )


def _write_process(w, r: dict, top: int) -> None:
    """A process's section: who it is, its numbers, RSS at its peak, its tasks."""
    labels = r["labels"]
    what = (
        f"worker {clean(labels.get('worker') or '?')} (name {clean(labels.get('worker_name'))})"
        if r["is_worker"]
        else clean(" ".join(r["argv"]))[:60]
    )
    w(
        f"\n{what} · host {clean(labels.get('host') or '?')} · pid {r['pid']}"
        f" · {clean(labels.get('source') or '')}\n"
    )
    w(
        f"  peak heap {human(r['peak_heap_bytes'])} at {r['peak_heap_time']:.2f} s · peak RSS "
        f"{human(r['peak_rss_bytes'] or 0)} · live at exit {human(r['live_at_exit_bytes'])}\n"
    )
    a = r["at_peak"]
    if "error" in a:
        w(f"  at the peak: {clean(a['error'])}\n")
    else:
        _write_rss_at_peak(w, r, a)
    _write_tasks(w, r, top)


def _write_rss_at_peak(w, r: dict, a: dict) -> None:
    """The reconciliation at the peak, its parts under Dask's unmanaged memory when
    the worker noted its managed memory."""
    rss = a["rss_bytes"] or 1
    share = a["explained_share"]  # None: no RSS was read at the peak (older captures)
    explained = f"{100 * share:.1f}%" if share is not None else "unknown: no RSS was read"
    w(f"  RSS at the heap peak {human(a['rss_bytes'] or 0)} (explained {explained})\n")
    if "dask_managed_bytes" in a:
        w(
            f"    {human(a['dask_managed_bytes']):>12} {100 * a['dask_managed_bytes'] / rss:5.1f}%"
            f"  Dask managed ({r['dask_keys_at_peak']} keys in memory, Dask's sizeof)\n"
        )
        w(
            f"    {human(a['dask_unmanaged_bytes']):>12} {100 * a['dask_unmanaged_bytes'] / rss:5.1f}%"
            "  Dask unmanaged (RSS - managed) =\n"
        )
        parts = PARTS
    else:
        w(
            f"    {'':>12}        (no Dask managed memory noted: not a Dask worker, or "
            "its plugin did not run)\n"
        )
        parts = (("heap_resident_bytes", "live traced heap, resident"),) + PARTS[1:]
    for key, title in parts:
        v = a.get(key)
        shown = human(v) if v is not None else "unknown"
        pct = f"{100 * v / rss:5.1f}%" if v is not None else "     "
        w(f"    {'  ' if 'dask_managed_bytes' in a else ''}{shown:>12} {pct}  {title}\n")
    w(f"    {human(a['untouched_bytes'] or 0):>12}         allocated but never touched (not in RSS)\n")


def _write_tasks(w, r: dict, top: int) -> None:
    """The tasks holding big blocks at the peak, then those with the highest peaks."""
    if r.get("tasks_live_at_peak"):
        held = r["tasks_live_at_peak"]
        w(f"  tasks holding blocks of {human(MIN_BLOCK)} or more at the peak:\n")
        for name, size in list(held.items())[:top]:
            w(f"    {human(size):>12}  {clean(name) if name else '(outside every task)'}\n")
    if r["tasks_by_peak"]:
        w(f"  tasks: {r['n_tasks']} run; highest peaks (peak / allocated / left live):\n")
        for t in r["tasks_by_peak"]:
            w(
                f"    {human(t['peak_bytes']):>12} {human(t['allocated_bytes']):>12} "
                f"{human(t['live_at_end_bytes']):>12}  {clean(t['name'])}\n"
            )


def _write_top_lines(w, model: Model, top: int) -> None:
    """The user's lines that held the most, summed over the processes' peaks."""
    cwd = model.capture.info.get("cwd")
    lines = tables.by_line(model, user_code=True)
    w("\ntop lines of your code across the cluster (bytes each held at its process's peak, summed):\n")
    for row in lines[:top]:
        where = f"{clean(display_path(row['file'], cwd))}:{row['line']}"
        w(f"    {human(row['peak_bytes']):>12}  {where}  {clean(row['function'])}\n")


def stats(model: Model, top: int = 10) -> dict:
    """The same as JSON (`memtrace cluster --json`)."""
    cwd = model.capture.info.get("cwd")
    return {
        "merged": model.capture.info.get("merged"),
        "workers": worker_rows(model),
        "top_lines": [
            {
                "file": display_path(r["file"], cwd),
                "line": r["line"],
                "function": r["function"],
                "peak_bytes": r["peak_bytes"],
                "allocated_bytes": r["allocated_bytes"],
            }
            for r in tables.by_line(model, user_code=True)[:top]
        ],
    }
