"""The object census (`memtrace run --objects`, docs/objects.md), as the reports show it.

Each Python process of an --objects run sends censuses of its live objects by type
(metadata text TEXT_CENSUS) and the collector adds which traced blocks they live in
(TEXT_CENSUS_LINES, joined by the census's stream position). The reports show two:
the one nearest the heap peak and the one at the exit point.
"""

import json
from typing import Dict, List, Optional, Tuple

from tracer import _format as fmt
from tracer.analyze.model import Model, Process, display_path, site_frame
from tracer.reports.text import clean, human

TOP_TYPES = 20  # types per census in the HTML report (stats --json: all the census lists)
TOP_LINES = 3  # allocating lines per type


def censuses(proc: Process) -> List[dict]:
    """Every census of a process, in order, each with its joined blocks (or none)."""
    found, lines = [], {}
    for key, text in proc.texts:
        if key not in (fmt.TEXT_CENSUS, fmt.TEXT_CENSUS_LINES):
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a census cut short with its process
        if not isinstance(record, dict):
            continue
        if key == fmt.TEXT_CENSUS:
            found.append(record)
        else:
            lines[record.get("position")] = record
    for record in found:
        record["joined"] = lines.get(record.get("position"))
    return found


def _heap(census: dict) -> int:
    return int((census.get("joined") or {}).get("heap") or 0)


def pick(proc: Process) -> dict:
    """{"at_peak": the census that stands for the heap peak, "at_exit": the exit point's}
    (None: none). At the peak: the census taken when the traced heap was highest (the
    collector asks for one at each at-peak snapshot); of equals, the nearest in time."""
    all_ = censuses(proc)
    at_exit = next((c for c in reversed(all_) if c.get("reason") == "exit"), None)
    peak_time = float(proc.totals.get("peak_time", 0.0))
    at_peak = max(
        (c for c in all_ if c.get("reason") == "peak"),
        default=None,
        key=lambda c: (_heap(c), -abs(float((c.get("joined") or {}).get("t") or 0.0) - peak_time)),
    )
    return {"at_peak": at_peak, "at_exit": at_exit}


def _lines(proc: Process, joined_type: Optional[dict], cwd: Optional[str]) -> List[dict]:
    """The allocating lines (user code) of a type's joined blocks, largest first."""
    rows: Dict[Tuple[str, int, str], dict] = {}  # (file, line, function) -> row
    for site_index, count, nbytes in (joined_type or {}).get("sites", []):
        if not 0 <= site_index < len(proc.sites):
            continue
        frame = site_frame(proc, proc.sites[site_index], user_code=True)
        key = (frame.file, frame.line, frame.function)
        row = rows.setdefault(
            key,
            {
                "file": display_path(frame.file, cwd),
                "line": frame.line,
                "function": frame.function,
                "count": 0,
                "bytes": 0,
            },
        )
        row["count"] += count
        row["bytes"] += nbytes
    return sorted(rows.values(), key=lambda r: -r["bytes"])[:TOP_LINES]


def view(proc: Process, census: Optional[dict], cwd: Optional[str]) -> Optional[dict]:
    """A census as stats --json gives it: types with their allocating lines."""
    if census is None:
        return None
    joined = census.get("joined") or {}
    by_type = {t.get("type"): t for t in joined.get("types", [])}
    types = []
    for index, row in enumerate(census.get("types", [])):
        j = by_type.get(index)
        lines = _lines(proc, j, cwd)
        out = {
            "type": row.get("type"),
            "count": row.get("count", 0),
            "bytes": row.get("bytes", 0),
            "sizes_estimated": bool(row.get("sizes_estimated")),
            "numpy": row.get("numpy"),
            "lines": lines,
            # of the type's largest objects in a traced block of their own, how
            # many were looked up and found live in the trace
            "traced_blocks": {
                "looked_up": j["blocks"] if j else 0,
                "looked_up_bytes": j["block_bytes"] if j else 0,
                "found": sum(s[1] for s in j["sites"]) if j else 0,
                "found_bytes": sum(s[2] for s in j["sites"]) if j else 0,
            },
        }
        types.append(out)
    peak_event = int(proc.totals.get("peak_event", 0))
    t = joined.get("t")
    return {
        "reason": census.get("reason"),
        "position": census.get("position"),
        "distance_events": int(census.get("position", 0)) - peak_event
        if census.get("reason") == "peak"
        else None,
        "distance_seconds": round(t - float(proc.totals.get("peak_time", 0.0)), 4)
        if census.get("reason") == "peak" and t is not None
        else None,
        "cost_seconds": census.get("cost_ns", 0) / 1e9,
        # the traced heap when it was taken (the program waited for the collector)
        "heap_bytes": joined.get("heap"),
        "peak_heap_bytes": int(proc.totals.get("peak_heap", 0)),
        "objects": census.get("objects", 0),
        "bytes": census.get("bytes", 0),
        "untracked_objects": census.get("untracked", 0),
        "n_types": census.get("n_types", 0),
        "types": types,
        "other": census.get("other"),
        "joined": bool(joined),
    }


def process_views(model: Model, proc: Process) -> Optional[dict]:
    """{"at_peak": view, "at_exit": view} of a process that took censuses, else None."""
    chosen = pick(proc)
    if chosen["at_peak"] is None and chosen["at_exit"] is None:
        return None
    cwd = model.capture.info.get("cwd")
    return {moment: view(proc, census, cwd) for moment, census in chosen.items()}


def numpy_text(numpy: Optional[dict]) -> str:
    if not numpy:
        return ""
    return (
        f"owning {human(numpy['owning_nbytes'])} in {numpy['owning_count']:,}, "
        f"views {human(numpy['view_nbytes'])} in {numpy['view_count']:,}"
    )


def heading(moment: str, v: dict) -> str:
    where = "at the heap peak" if moment == "at_peak" else "at exit"
    cost = f"took {v['cost_seconds'] * 1e3:.1f} ms of the main thread"
    if moment == "at_peak" and v["distance_seconds"] is not None:
        after = v["distance_seconds"]
        cost += (
            f", {abs(after) * 1e3:.0f} ms {'after' if after >= 0 else 'before'} the peak, "
            f"heap then {human(v['heap_bytes'] or 0)} of {human(v['peak_heap_bytes'])}"
        )
    return (
        f"Python objects {where}: {v['objects']:,} objects, {human(v['bytes'])} "
        f"(sys.getsizeof) in {v['n_types']:,} types; census {cost}"
    )


def render_summary(model: Model, w, top: int = 8) -> None:
    """The census tables of the end-of-run summary (nothing without --objects)."""
    for proc in model.processes:
        views = process_views(model, proc)
        if views is None:
            continue
        label = f" (pid {proc.pid})" if len(model.processes) > 1 else ""
        for moment in ("at_peak", "at_exit"):
            v = views[moment]
            if v is None:
                continue
            w(f"  {heading(moment, v)}{label}:\n")
            for row in v["types"][:top]:
                extra = numpy_text(row["numpy"])
                line = row["lines"][0] if row["lines"] else None
                where = (
                    ""
                    if not line
                    else "  ← no Python frame"
                    if line["file"] == "<native>"
                    else f"  ← {clean(line['file'])}:{line['line']}"
                )
                est = " (estimated)" if row["sizes_estimated"] else ""
                w(
                    f"    {row['count']:>10,}  {human(row['bytes']):>10}{est}  {clean(row['type'])}"
                    f"{'  [' + extra + ']' if extra else ''}{where}\n"
                )


def html_rows(model: Model) -> List[dict]:
    """The census tables of the HTML report."""
    out = []
    for proc in model.processes:
        views = process_views(model, proc)
        for moment, v in (views or {}).items():
            if v is None:
                continue
            out.append(
                {
                    "pid": proc.pid,
                    "title": heading(moment, v),
                    "rows": [
                        [
                            row["count"],
                            row["bytes"],
                            row["type"],
                            numpy_text(row["numpy"]),
                            "; ".join(
                                f"{ln['file']}:{ln['line']} ({human(ln['bytes'])})" for ln in row["lines"]
                            ),
                        ]
                        for row in v["types"][:TOP_TYPES]
                    ],
                }
            )
    return out
