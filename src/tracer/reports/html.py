"""The HTML report: one self-contained file (no network, no external assets).

Every string from the traced program reaches the page only inside the JSON data
block, with <, > and & escaped, and the page's script writes it with textContent;
a Content-Security-Policy forbids any fetch.
"""

import json
import os
import threading
from typing import Optional, Tuple

from tracer.analyze import reconcile
from tracer.analyze.model import Model, Process
from tracer.reports import flame, flame_layout, objects, peaks, tables
from tracer.reports import reconciliation as reconciliation_report
from tracer.reports.text import describe_end

TEMPLATE = "report.html"
VIEW_ORDER = ("peak", "leaks", "total", "temporary", "threads")


def _size_rows(model: Model) -> list:
    count = [0] * 65
    size = [0] * 65
    for proc in model.processes:
        hist = proc.totals.get("size_histogram") or {}
        for i, (c, b) in enumerate(zip(hist.get("count", []), hist.get("bytes", []))):
            count[i] += c
            size[i] += b
    rows = []
    for i in range(65):
        if count[i]:
            lo, hi = (0, 0) if i == 0 else (1 << (i - 1), (1 << i) - 1)
            rows.append({"range": f"{lo:,} – {hi:,} B" if i else "0 B", "count": count[i], "bytes": size[i]})
    return rows


def report_data(model: Model, default_view: str = "peak", temporary: bool = False) -> dict:
    # the temporary view replays the events (in C, mostly without the GIL): meanwhile,
    # the rest of the page is made from the capture's aggregates
    replay = _Replay(model) if temporary else None
    t = tables.totals(model)
    # (a temporary allocation is part of the total: the trees' nodes serve it too)
    shared = flame.Trees(model, ("peak", "leaks", "total"))
    trees = {metric: shared.tree(metric) for metric in ("peak", "leaks", "total")}
    trees["threads"] = flame.build_tree(model, "peak", by_thread=True)
    timeline = _timeline(model)
    results = reconcile.reconcile(model)
    cwd = model.capture.info.get("cwd")
    reconciliation, stats_processes = _process_tables(model, results, cwd)
    tree = peaks.tree_peak(model)
    head = peaks.headline(model, results)
    lines = tables.by_line(model, user_code=True)[:50]
    libraries = tables.by_library(model)[:30]
    if replay is not None:
        replay.join()
        trees["temporary"] = shared.tree("temporary")
    views = {
        view: {"title": flame.METRIC_TITLES[view], "trees": _trees(trees[view])}
        for view in VIEW_ORDER
        if view in trees
    }
    return {
        "command": model.command,
        "ending": describe_end(model),
        "warnings": model.warnings,
        "notes": [model.estimate_note] if model.estimate_note else [],
        "peak_heap": tree["bytes"] if tree else 0,
        "peak_text": " · ".join(line.strip() for line in head),
        "sum_of_process_peaks": peaks.sum_of_peaks(model),
        "total_allocated": t["total_allocated"],
        "n_allocations": t["n_allocations"],
        "numpy_bytes": t["numpy_bytes"],
        "peak_time": tree["t"] if tree else None,
        "default_view": default_view,
        "views": views,
        "timeline": timeline,
        "lines": lines,
        "libraries": libraries,
        "sizes": _size_rows(model),
        "processes": stats_processes,
        "reconciliation": reconciliation,
        "objects": objects.html_rows(model),
    }


def _timeline(model: Model) -> list:
    """Each process's heap, RSS and glibc-held memory over time, thinned."""
    timeline = []
    for proc in model.processes:
        label = f" (pid {proc.pid})" if len(model.processes) > 1 else ""
        if len(proc.heap):
            timeline.append(
                {
                    "name": "heap" + label,
                    "colour": "#e4803a",
                    "points": _thin(
                        [list(r) for r in zip(proc.heap["t"].tolist(), proc.heap["max"].tolist())]
                    ),
                }
            )
        if len(proc.rss):
            timeline.append(
                {
                    "name": "RSS" + label,
                    "colour": "#1565c0",
                    "points": _thin([list(r) for r in zip(proc.rss["t"].tolist(), proc.rss["rss"].tolist())]),
                }
            )
        held = [[t, h] for t, _rss, _heap, h in reconcile.timeline(model, proc) if h is not None]
        if held:
            timeline.append({"name": "glibc-held" + label, "colour": "#2e7d32", "points": _thin(held)})
    return timeline


def _process_tables(model: Model, results: dict, cwd: Optional[str]) -> Tuple[list, list]:
    """The reconciliation's tables (at the peak and at exit) and the processes' table,
    one process at a time."""
    reconciliation: list = []
    stats_processes = []
    for proc in model.processes:
        result = results[reconcile.process_key(proc)]
        _add_reconciliation(reconciliation, proc, result, cwd)
        peak = peaks.process_peak(proc, result.get("at_peak"), cwd)
        stats_processes.append(
            {
                "pid": proc.pid,
                "ppid": proc.ppid,
                "argv": proc.argv,
                "peak_heap_bytes": peak["bytes"],
                "peak_heap_resident_bytes": peak["resident_bytes"],
                "peak_rss_bytes": proc.peak_rss,
                "total_allocated_bytes": int(proc.totals.get("total_allocated", 0)),
                "ending": tables.describe_process_end(model, proc),
            }
        )
    return reconciliation, stats_processes


def _add_reconciliation(reconciliation: list, proc: Process, result: dict, cwd: Optional[str]) -> None:
    """A process's tables, those without an error; the advice goes with its last one."""
    for moment in ("at_peak", "at_exit"):
        row = result[moment]
        if "error" in row:
            continue
        reconciliation.append(
            {
                "pid": proc.pid,
                "moment": moment.replace("_", " "),
                "rows": [[reconcile.ROW_TITLES[k], row.get(k)] for k in reconcile.ROWS + ("residual_bytes",)],
                "rss": row["rss_bytes"],
                "untouched": row["untouched_bytes"],
                "notes": reconciliation_report.peak_notes(row) if moment == "at_peak" else [],
                "advice": [],
            }
        )
    if reconciliation and reconciliation[-1]["pid"] == proc.pid:  # each piece once
        reconciliation[-1]["advice"] = reconciliation_report.merged_advice(proc, result, cwd)


class _Replay(threading.Thread):
    """model.track_temporary() on a thread; join() re-raises what it raised."""

    def __init__(self, model: Model):
        super().__init__(name="memtrace-replay", daemon=True)
        self.model = model
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.model.track_temporary()
        except BaseException as exc:  # handed to the thread that waits for it
            self.error = exc

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _trees(tree: flame.Tree) -> dict:
    """A view's flame graph, with import machinery folded and as it is; each
    starting on the user's code. (A few thousand boxes per tree keep the page a
    few MB whatever the capture.)"""
    folded = tree.fold_imports()
    out = {"all": flame_layout.flatten(tree, min_share=0.001, max_nodes=4000, focus=tree.focus())}
    if len(folded) != len(tree):
        out["folded"] = flame_layout.flatten(folded, min_share=0.001, max_nodes=4000, focus=folded.focus())
    return out


def _thin(points: list, limit: int = 2000) -> list:
    """At most `limit` points, keeping each stretch's highest value."""
    if len(points) <= limit:
        return points
    step = -(-len(points) // limit)
    return [max(points[i : i + step], key=lambda p: p[1]) for i in range(0, len(points), step)]


def embed_json(obj) -> str:
    """JSON safe inside <script>: no way to close the element or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(model: Model, out, default_view: str = "peak", temporary: Optional[bool] = None) -> None:
    if temporary is None:
        temporary = default_view == "temporary"
    # (next to this module: importlib.resources would cost its import to every report)
    with open(os.path.join(os.path.dirname(__file__), TEMPLATE), encoding="utf-8") as f:
        template = f.read()
    before, after = template.split("__MEMTRACE_DATA__")
    out.write(before)
    out.write(embed_json(report_data(model, default_view, temporary)))
    out.write(after)
