"""Regions in a capture (docs/regions.md): each region's numbers, and the model as
seen through one region, which is what every report shows with `--region NAME`.

The collector's regions chunk holds, per process, a row for each region's closed
instances and one for each instance still open when it was written, with each
site's numbers inside them (csrc/collector/regions.c). A region's numbers merge its rows:
instances add up, its peak is its highest instance's (with that instance's
breakdown by site), allocated bytes and what each instance left live add up.
"""

import dataclasses
import fnmatch
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np

from tracer import _format as fmt
from tracer.analyze.model import Model, Process
from tracer.errors import MemtraceError
from tracer.record.aggregate import Aggregator

SITE_COLUMNS = ("alloc_bytes", "n_allocs", "live_bytes", "live_count", "temp_bytes", "temp_count")


_names: Dict[int, tuple] = {}  # id(metadata bytes) -> (those bytes, their regions)


def names(proc: Process) -> Dict[int, Tuple[str, str]]:
    """Region id -> (name, kind) of a process's regions, from its metadata (read once
    per metadata: a process seen through a region shares its original's)."""
    known = _names.get(id(proc.meta))
    if known is not None and known[0] is proc.meta:
        return known[1]
    out = {}
    for rtype, payload in fmt.iter_meta(bytes(proc.meta)):
        if rtype == fmt.META_REGION and len(payload) >= 8:
            rid, kind = struct.unpack_from("<II", payload)
            out[rid] = (payload[8:].decode("utf-8", "replace"), fmt.REGION_KINDS.get(kind, "region"))
    _names[id(proc.meta)] = (proc.meta, out)
    return out


# (capture path, stream, threshold) -> region records
_replayed: Dict[tuple, Optional[Tuple[np.ndarray, np.ndarray]]] = {}


def records(model: Model, proc: Process) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(rows, site records) of a process's regions, or None if it had none. A stream
    the model rebuilt by replaying its events (it never got its final aggregate), and
    any stream once temporaries are counted, is replayed for them too."""
    threshold = model.temporary_threshold
    if not proc.replayed and not threshold:
        return model.capture.streams[proc.sid].regions
    key = (model.capture.path, proc.sid, threshold)
    if key not in _replayed:
        agg = Aggregator(proc.sample_rate)
        if threshold:
            agg.track_temporary(threshold)
        for t, events in model.capture.events(proc.sid, "reading regions"):
            agg.feed(np.ascontiguousarray(events), t)
        rows, sites = agg.region_records()
        _replayed[key] = (
            (np.frombuffer(rows, fmt.REGION_ROW_DTYPE), np.frombuffer(sites, fmt.REGION_SITE_DTYPE))
            if rows
            else None
        )
    return _replayed[key]


@dataclasses.dataclass
class Merged:
    """One region (or several merged) of one process."""

    instances: int
    open: int  # instances still open when the stream ended
    peak_bytes: int
    peak_time: float
    alloc_bytes: int
    n_allocs: int
    live_at_end_bytes: int  # left live by each instance as it ended, summed
    t_enter: float
    t_leave: Optional[float]  # None: still open
    sites: Optional[np.ndarray]  # per site index: SITE_COLUMNS, peak_bytes, peak_count


def merge(rows: np.ndarray, sites: Optional[np.ndarray], wanted) -> Optional[Merged]:
    """Merge the rows of the region ids in `wanted` (and their site records, unless
    sites is None)."""
    return _merge(rows, sites, np.flatnonzero(np.isin(rows["region"], list(wanted))))


def _merge(rows: np.ndarray, sites: Optional[np.ndarray], picked: np.ndarray) -> Optional[Merged]:
    if len(picked) == 0:
        return None
    sel = rows[picked]
    best = picked[int(np.argmax(sel["peak_bytes"]))]
    open_rows = sel["instances"] == 0
    return Merged(
        instances=int(sel["instances"].sum()) + int(open_rows.sum()),
        open=int(open_rows.sum()),
        peak_bytes=int(rows["peak_bytes"][best]),
        peak_time=float(rows["peak_time"][best]),
        alloc_bytes=int(sel["alloc_bytes"].sum()),
        n_allocs=int(sel["n_allocs"].sum()),
        live_at_end_bytes=int(sel["live_bytes"].sum()),
        t_enter=float(sel["t_enter"].min()),
        t_leave=None if open_rows.any() else float(sel["t_leave"].max()),
        sites=None if sites is None else _merge_sites(sites, picked, best),
    )


def _merge_sites(sites: np.ndarray, picked: np.ndarray, best: int) -> np.ndarray:
    """Per site: the rows' columns added up, the peak ones from the best row only."""
    recs = sites[np.isin(sites["row"], picked)]
    index, inverse = np.unique(recs["site"], return_inverse=True)
    per_site = np.zeros(
        len(index),
        dtype=[("site", "<u4")] + [(c, "<i8") for c in SITE_COLUMNS + ("peak_bytes", "peak_count")],
    )
    per_site["site"] = index
    for column in SITE_COLUMNS:
        np.add.at(per_site[column], inverse, recs[column].astype(np.int64))
    at_best = recs["row"] == best
    per_site["peak_bytes"][inverse[at_best]] = recs["peak_bytes"][at_best]
    per_site["peak_count"][inverse[at_best]] = recs["peak_count"][at_best]
    return per_site


def table(model: Model) -> List[dict]:
    """Every region of every process with its numbers (`stats --json`'s "regions")."""
    out = []
    for proc in model.processes:
        recs = records(model, proc)
        if recs is None:
            continue
        rows = recs[0]
        named = names(proc)
        ids, inverse = np.unique(rows["region"], return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # the rows of each region, together
        starts = np.searchsorted(inverse[order], np.arange(len(ids)))
        for k, rid in enumerate(ids.tolist()):
            picked = order[starts[k] : starts[k + 1] if k + 1 < len(ids) else len(order)]
            m = _merge(rows, None, picked)
            assert m is not None  # (picked is never empty)
            name, kind = named.get(rid, (f"<region {rid}>", "region"))
            parent = rows["parent"][picked[0]]
            out.append(
                {
                    "pid": proc.pid,
                    "name": name,
                    "kind": kind,
                    "instances": m.instances,
                    "open_at_end": m.open,
                    "parent": named.get(int(parent), (None,))[0] if parent else None,
                    "peak_bytes": m.peak_bytes,
                    "peak_time": m.peak_time,
                    "allocated_bytes": m.alloc_bytes,
                    "n_allocations": m.n_allocs,
                    "live_at_end_bytes": m.live_at_end_bytes,
                    "t_enter": m.t_enter,
                    "t_leave": m.t_leave,
                }
            )
    return out


def _matching(model: Model, pattern: str) -> Dict[int, list]:
    """Region ids per process named `pattern` exactly, else matching it as a glob."""
    named = {proc.sid: names(proc) for proc in model.processes}
    for match in (lambda n: n == pattern, lambda n: fnmatch.fnmatchcase(n, pattern)):
        found = {
            sid: [rid for rid, (name, _kind) in ids.items() if match(name)] for sid, ids in named.items()
        }
        found = {sid: ids for sid, ids in found.items() if ids}
        if found:
            return found
    every = sorted({name for ids in named.values() for name, _kind in ids.values()})
    listed = ", ".join(repr(n) for n in every[:8]) + (", …" if len(every) > 8 else "")
    raise MemtraceError(
        f"{model.capture.path} has no region {pattern!r}"
        + (f" (its regions: {listed})" if every else " (it has no regions)")
    )


def focus(model: Model, pattern: str) -> Model:
    """The model seen through the regions named `pattern`: per process, only what
    was allocated inside them, with their own peak (the breakdown of their highest
    instance), what their instances left live as they ended (the reports' "live at
    exit" / leaks), their allocated bytes, and the timeline of their span."""
    wanted = _matching(model, pattern)
    processes = []
    for proc in model.processes:
        recs = records(model, proc) if proc.sid in wanted else None
        m = merge(*recs, wanted[proc.sid]) if recs is not None else None
        if m is not None:
            processes.append(_focused(proc, m))
    if not processes:
        raise MemtraceError(f"{model.capture.path}: region {pattern!r} recorded no events")
    out = dataclasses.replace(model, processes=processes)
    out.region = pattern
    out.region_ids = wanted  # for the reports that read events (log, CSV)
    out.live = getattr(model, "live", False)
    return out


def _focused(proc: Process, m: Merged) -> Process:
    assert m.sites is not None  # (focus merges the site records too)
    keep = m.sites[m.sites["site"] < len(proc.sites)]
    sites = proc.sites[keep["site"]].copy()
    for column in SITE_COLUMNS + ("peak_bytes", "peak_count"):
        sites[column] = keep[column]
    totals = dict(proc.totals)
    totals.update(
        peak_heap=m.peak_bytes,
        peak_time=m.peak_time,
        heap=m.live_at_end_bytes,
        total_allocated=m.alloc_bytes,
        n_allocations=m.n_allocs,
        live_blocks=int(keep["live_count"].sum()),
        rss_peak=0,
    )
    end = m.t_leave if m.t_leave is not None else float("inf")
    # the region's own heap at the moments it is known exactly: nothing at its
    # start, its peak, and what it left live at its end
    last = m.t_leave if m.t_leave is not None else max(m.peak_time, float(proc.end.get("t_end", 0)))
    points = sorted({(m.t_enter, 0), (m.peak_time, m.peak_bytes), (last, m.live_at_end_bytes)})
    heap = np.array([(t, v, v) for t, v in points], dtype=fmt.HEAP_DTYPE)
    return dataclasses.replace(
        proc,
        sites=sites,
        totals=totals,
        snapshots=[],
        heap=heap,
        rss=proc.rss[(proc.rss["t"] >= m.t_enter) & (proc.rss["t"] <= end)],
    )


def describe(model: Model) -> Optional[str]:
    """One line naming the region a focused model shows (None: not focused)."""
    pattern = getattr(model, "region", None)
    if pattern is None:
        return None
    return (
        f"region {pattern!r}: only what was allocated inside it; peak = its highest "
        "instance's, live at exit = what its instances left live as they ended"
    )


class EventFilter:
    """Which events of a stream happened inside the wanted regions: on a thread
    with one of them open (the marks are read as the events go by, in order, like
    the aggregator does). Feed every batch of the stream in order."""

    def __init__(self, wanted) -> None:
        self.wanted = set(int(w) for w in wanted)
        self.open: Dict[int, Dict[int, int]] = {}  # tid -> region id -> depth

    def mask(self, events: np.ndarray) -> np.ndarray:
        out = np.zeros(len(events), bool)
        marks = np.flatnonzero(events["kind"] == fmt.REGION)
        start = 0
        for end in list(marks) + [len(events)]:
            inside = [tid for tid, ids in self.open.items() if self.wanted & ids.keys()]
            if inside and end > start:
                out[start:end] = np.isin(events["tid"][start:end], inside)
            if end < len(events):
                self._mark(events[end])
            start = end + 1
        return out

    def _mark(self, e) -> None:
        ids = self.open.setdefault(int(e["tid"]), {})
        rid = int(e["addr"])
        if int(e["size"]):
            ids[rid] = ids.get(rid, 0) + 1
        elif rid in ids:
            ids[rid] -= 1
            if ids[rid] == 0:
                del ids[rid]


def event_filter(model: Model, proc: Process) -> Optional[EventFilter]:
    """The filter of a focused model's process (None: the model is not focused)."""
    ids = getattr(model, "region_ids", None)
    return EventFilter(ids.get(proc.sid, ())) if ids is not None else None
