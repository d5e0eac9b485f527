"""The HTML report: one self-contained file (no network, no external assets).

Every string from the traced program reaches the page only inside the JSON data
block, with <, > and & escaped, and the page's script writes it with textContent;
a Content-Security-Policy forbids any fetch.
"""
import json
from importlib import resources
from typing import Optional

from tracer import reconcile
from tracer.model import Model
from tracer.reports import flame, objects, peaks, tables
from tracer.reports import reconciliation as reconciliation_report
from tracer.reports.summary import describe_end

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
            rows.append({"range": f"{lo:,} – {hi:,} B" if i else "0 B", "count": count[i],
                         "bytes": size[i]})
    return rows


def report_data(model: Model, default_view: str = "peak", temporary: bool = False) -> dict:
    t = tables.totals(model)
    views = {}
    for view in VIEW_ORDER:
        if view == "temporary" and not temporary:
            continue
        metric = "peak" if view == "threads" else view
        root = flame.build_tree(model, metric, by_thread=(view == "threads"))
        # a few thousand boxes per view keep the page a few MB whatever the capture
        views[view] = {"title": flame.METRIC_TITLES[view],
                       **flame.flatten(root, min_share=0.001, max_nodes=4000)}
    timeline = []
    for proc in model.processes:
        label = f" (pid {proc.pid})" if len(model.processes) > 1 else ""
        if len(proc.heap):
            timeline.append({"name": "heap" + label, "colour": "#e4803a",
                             "points": _thin([[float(r["t"]), int(r["max"])] for r in proc.heap])})
        if len(proc.rss):
            timeline.append({"name": "RSS" + label, "colour": "#1565c0",
                             "points": _thin([[float(r["t"]), int(r["rss"])] for r in proc.rss])})
        held = [[t, h] for t, _rss, _heap, h in reconcile.timeline(model, proc) if h is not None]
        if held:
            timeline.append({"name": "glibc-held" + label, "colour": "#2e7d32", "points": _thin(held)})
    results = reconcile.reconcile(model)
    cwd = model.capture.info.get("cwd")
    reconciliation = []
    stats_processes = []
    for proc in model.processes:
        result = results[reconcile.process_key(proc)]
        for moment in ("at_peak", "at_exit"):
            row = result[moment]
            if "error" in row:
                continue
            reconciliation.append({
                "pid": proc.pid, "moment": moment.replace("_", " "),
                "rows": [[reconcile.ROW_TITLES[k], row.get(k)] for k in reconcile.ROWS + ("residual_bytes",)],
                "rss": row["rss_bytes"], "untouched": row["untouched_bytes"],
                "notes": reconciliation_report.peak_notes(row) if moment == "at_peak" else [],
                "advice": []})
        if reconciliation and reconciliation[-1]["pid"] == proc.pid:  # each piece once
            reconciliation[-1]["advice"] = reconciliation_report.merged_advice(proc, result, cwd)
        peak = peaks.process_peak(proc, result.get("at_peak"), cwd)
        stats_processes.append({
            "pid": proc.pid, "ppid": proc.ppid, "argv": proc.argv,
            "peak_heap_bytes": peak["bytes"], "peak_heap_resident_bytes": peak["resident_bytes"],
            "peak_rss_bytes": proc.peak_rss,
            "total_allocated_bytes": int(proc.totals.get("total_allocated", 0)),
            "ending": tables.describe_process_end(model, proc)})
    tree = peaks.tree_peak(model)
    head = peaks.headline(model, results)
    return {
        "command": model.command, "ending": describe_end(model), "warnings": model.warnings,
        "notes": [model.estimate_note] if model.estimate_note else [],
        "peak_heap": tree["bytes"] if tree else 0, "peak_text": " · ".join(
            line.strip() for line in head),
        "sum_of_process_peaks": peaks.sum_of_peaks(model),
        "total_allocated": t["total_allocated"],
        "n_allocations": t["n_allocations"], "numpy_bytes": t["numpy_bytes"],
        "peak_time": tree["t"] if tree else None,
        "default_view": default_view, "views": views, "timeline": timeline,
        "lines": tables.by_line(model, user_code=True)[:50],
        "libraries": tables.by_library(model)[:30],
        "sizes": _size_rows(model), "processes": stats_processes,
        "reconciliation": reconciliation,
        "objects": objects.html_rows(model),
    }


def _thin(points: list, limit: int = 2000) -> list:
    """At most `limit` points, keeping each stretch's highest value."""
    if len(points) <= limit:
        return points
    step = -(-len(points) // limit)
    return [max(points[i:i + step], key=lambda p: p[1]) for i in range(0, len(points), step)]


def embed_json(obj) -> str:
    """JSON safe inside <script>: no way to close the element or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(model: Model, out, default_view: str = "peak", temporary: Optional[bool] = None) -> None:
    if temporary is None:
        temporary = default_view == "temporary"
    if temporary:
        model.track_temporary()
    template = resources.files("tracer.reports").joinpath(TEMPLATE).read_text(encoding="utf-8")
    before, after = template.split("__MEMTRACE_DATA__")
    out.write(before)
    out.write(embed_json(report_data(model, default_view, temporary)))
    out.write(after)
