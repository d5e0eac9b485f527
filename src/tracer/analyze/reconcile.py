"""Reconciliation: where RSS goes, in rows that add up (docs/reconciliation.md).

For a process at its heap peak and at exit, the collector's snapshot (every
mapping of /proc/PID/smaps with its resident bytes, and the traced live bytes
inside each), glibc's mallinfo2 and pymalloc's statistics taken nearest to it,
are split into disjoint rows:

  heap_resident          live traced blocks and program mmaps that are resident
  tracer                 memtrace's own ring, tables and code in the target
  allocator_free         glibc arena memory on its free lists
  allocator_overhead     glibc chunk headers and rounding, in use with the blocks
  pymalloc_free          pymalloc arena memory not holding live objects
  file_backed            libraries (code and data) and mapped files
  stacks_and_other_anon  thread stacks
  untracked              anonymous memory the shim never saw allocated
  residual               what nothing explains (RSS minus every row)

and, apart, `untouched`: traced bytes allocated but not resident. A row whose
number cannot be had is None ("unknown") with the reason; its bytes then stay in
the residual, so the table still adds up.
"""

import bisect
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from tracer import _format as fmt
from tracer.analyze.model import Model, Process
from tracer.errors import CaptureError

ROWS = (
    "heap_resident_bytes",
    "tracer_bytes",
    "allocator_free_bytes",
    "allocator_overhead_bytes",
    "pymalloc_free_bytes",
    "file_backed_bytes",
    "stacks_and_other_anon_bytes",
    "untracked_bytes",
)
ROW_TITLES = {
    "heap_resident_bytes": "live traced heap, resident",
    "tracer_bytes": "memtrace itself (ring, tables, code)",
    "allocator_free_bytes": "glibc: free memory it keeps",
    "allocator_overhead_bytes": "glibc: chunk headers and rounding",
    "pymalloc_free_bytes": "pymalloc: arena space without live objects",
    "file_backed_bytes": "libraries and mapped files",
    "stacks_and_other_anon_bytes": "thread stacks",
    "untracked_bytes": "untracked (never seen allocated)",
    "residual_bytes": "residual (unexplained)",
}
TRACER_FILES = ("/tracer/_preload", "/tracer/_pyframes", "memfd:memtrace")


VMA_COLUMNS = (
    "start",
    "end",
    "rss",
    "anon",
    "swap",
    "perms",
    "path",
    "blocks",
    "anon_map",
    "file_map",
    "top_site",
    "top_bytes",
)
# blocks: traced malloc-family bytes starting in the mapping; anon_map / file_map:
# traced anonymous / file-backed mmap bytes overlapping it; top_site and top_bytes:
# the site of its largest traced block and that block's bytes


def vma_columns(rows: list) -> Dict[str, Any]:
    """A snapshot's mapping rows as columns: int64 arrays, and lists of strings."""
    cols = list(zip(*rows)) if rows else [()] * len(VMA_COLUMNS)
    out: Dict[str, Any] = {}
    for name, values in zip(VMA_COLUMNS, cols):
        if name in ("perms", "path"):
            out[name] = list(values)
            continue
        try:  # addresses are unsigned (the [vsyscall] page is above 2^63)
            out[name] = np.array(values, np.uint64 if name in ("start", "end") else np.int64)
        except OverflowError:  # not a number /proc or the collector can give
            raise CaptureError(f"a snapshot of the capture holds an impossible {name}") from None
    return out


def _once(make):
    """A per-process reader, computed once per Process (reports ask many times)."""
    attr = "_reconcile_" + make.__name__

    def cached(proc: Process):
        value = proc.__dict__.get(attr)
        if value is None:
            value = proc.__dict__[attr] = make(proc)
        return value

    cached.__name__, cached.__doc__ = make.__name__, make.__doc__
    return cached


@_once
def heap_stats(proc: Process) -> List[dict]:
    """glibc mallinfo2 records of a process: position, reason and the fields."""
    records = proc.heapstats
    names = records.dtype.names
    assert names is not None  # (a structured dtype)
    columns = [records[name].tolist() for name in names]
    return [dict(zip(names, values)) for values in zip(*columns)]


@_once
def pymalloc_stats(proc: Process) -> List[dict]:
    """pymalloc records: position, reason, arena and block byte counts."""
    out = []
    for key, text in proc.texts:
        if key != fmt.TEXT_PYMALLOC:
            continue
        rec = {}
        for line in text.splitlines():
            if "=" not in line:
                continue
            left, _, right = line.partition("=")
            left, right = left.strip(), right.strip().replace(",", "")
            try:
                value = int(right)
            except ValueError:
                continue
            if left in ("position", "reason", "pymalloc", "cost_ns"):
                rec[left] = value
            elif left.endswith("bytes/arena"):
                rec["arena_bytes"] = value
            elif left.startswith("# bytes in allocated blocks"):
                rec["allocated"] = value
            elif left.startswith("# bytes in available blocks"):
                rec["available"] = value
            elif "unused pools" in left:
                rec["unused_pools"] = value
            elif left.startswith("# bytes lost to"):
                rec["lost"] = rec.get("lost", 0) + value
            elif left == "Total":
                rec["total"] = value
        if "position" in rec:
            out.append(rec)
    return out


@_once
def tracer_ranges(proc: Process) -> List[tuple]:
    ranges = []
    for key, text in proc.texts:
        if key == fmt.TEXT_TRACER_RANGES:
            for line in text.split():
                a, _, b = line.partition("-")
                try:
                    ranges.append((int(a, 16), int(b, 16)))
                except ValueError:
                    pass
    return ranges


def _nearest(records: List[dict], position: int, reason: Optional[int] = None) -> Optional[dict]:
    pool = [r for r in records if reason is None or r.get("reason") == reason]
    if not pool:
        return None
    return min(pool, key=lambda r: abs(r["position"] - position))


def _classify(v: dict, sps: List[int], tracer: List[tuple]) -> np.ndarray:
    """What each mapping is (the first rule that holds, in this order)."""
    start, end, paths, perms = v["start"], v["end"], v["path"], v["perms"]
    n = len(start)
    flag = lambda values: np.array(values, bool).reshape(n)
    before = lambda a: np.concatenate(([False], a[:-1])) if n else a
    after = lambda a: np.concatenate((a[1:], [False])) if n else a
    in_tracer = flag([any(t in p for t in TRACER_FILES) for p in paths])
    for a, b in tracer:
        in_tracer |= (a < end) & (start < b)
    sorted_sps = np.sort(np.array([sp for sp in sps if 0 <= sp < 1 << 64], np.uint64))
    has_sp = np.searchsorted(sorted_sps, start, "left") < np.searchsorted(sorted_sps, end, "left")
    slash, guard = flag([p.startswith("/") for p in paths]), flag([q.startswith("---") for q in perms])
    joins_prev = before(end) == start if n else has_sp
    joins_next = after(start) == end if n else has_sp
    if n:
        joins_prev[0] = joins_next[-1] = False
    rules = [
        ("tracer", in_tracer),
        ("stack", flag([p == "[stack]" for p in paths]) | has_sp),
        ("arena", flag([p == "[heap]" for p in paths])),
        ("file", flag([bool(p) and not p.startswith("[anon") for p in paths])),  # files, memfds, [vdso]
        ("mapped", v["anon_map"] != 0),
        # one big block filling it: a chunk glibc mmapped for it; else an arena heap
        ("bigblock", (v["blocks"] != 0) & (v["top_bytes"] * 2 >= (end - start).view(np.int64))),
        ("arena", v["blocks"] != 0),
        ("file", joins_prev & before(slash) & flag(["w" in q for q in perms])),  # a library's .bss
        # a thread stack above its guard page
        ("stack", joins_prev & before(guard) & flag([q.startswith("rw") for q in perms])),
        ("arena", joins_next & after(guard) & (start % (64 << 20) == 0)),  # glibc arena, reserve after it
    ]
    return np.select([r for _, r in rules], [k for k, _ in rules], "untracked").reshape(n)


def reconcile_snapshot(proc: Process, snap: Mapping[str, Any], exit_: bool = False) -> dict:
    """The rows for one snapshot, with what each number came from."""
    out: Dict[str, Any] = {"t": snap.get("t"), "kind": snap.get("kind"), "unknown": {}, "notes": []}
    if "vmas" not in snap:
        out["error"] = str(snap.get("error", "no mappings were read"))
        return out
    v = vma_columns(snap["vmas"])  # rows checked when the snapshot was read
    kinds = _classify(v, snap.get("stack_pointers", []), tracer_ranges(proc))
    rss = int(v["rss"].sum())
    sums = {k: int(v["rss"][kinds == k].sum()) for k in np.unique(kinds).tolist()}
    arena = kinds == "arena"
    arena_rss = int(v["rss"][arena].sum())
    small_live = int(v["blocks"][arena].sum())
    small_resident = min(small_live, arena_rss)
    mapped = _traced_mappings(v, kinds)
    out["untouched_bytes"] = mapped["untouched"]
    allocator_free, allocator_overhead_arena = _glibc_rows(
        proc, snap, exit_, out, small_live, arena_rss - small_resident
    )
    pymalloc_free = _pymalloc_row(proc, snap, exit_, out, mapped["resident"])
    rows = {
        "rss_bytes": rss,
        "heap_resident_bytes": small_resident + mapped["resident"] - (pymalloc_free or 0),
        "tracer_bytes": sums.get("tracer", 0),
        "allocator_free_bytes": allocator_free,
        "allocator_overhead_bytes": None
        if allocator_overhead_arena is None
        else allocator_overhead_arena + mapped["bigblock_overhead"],
        "pymalloc_free_bytes": pymalloc_free,
        "file_backed_bytes": sums.get("file", 0),
        "stacks_and_other_anon_bytes": sums.get("stack", 0),
        "untracked_bytes": sums.get("untracked", 0) + mapped["unexplained"],
        "untouched_bytes": mapped["untouched"],
    }
    explained = sum(rows[r] or 0 for r in ROWS)
    rows["residual_bytes"] = rss - explained
    out.update(rows)
    out["untouched_sites"] = mapped["untouched_sites"]
    status = snap.get("status") or {}
    if status:
        out["status"] = status
    return out


def _traced_mappings(v: Dict[str, np.ndarray], kinds: np.ndarray) -> Dict[str, Any]:
    """Traced mappings and the blocks glibc mmapped: resident, untouched, leftover."""
    mapped, bigblock = kinds == "mapped", kinds == "bigblock"
    traced = v["blocks"] + v["anon_map"]
    resident = np.minimum(traced, v["rss"])
    gap, left = traced - resident, v["rss"] - resident
    either = mapped | bigblock
    untouched_sites: Dict[int, int] = {}
    named = either & (gap != 0) & (v["top_site"] >= 0)
    for site, bytes_ in zip(v["top_site"][named].tolist(), gap[named].tolist()):
        untouched_sites[site] = untouched_sites.get(site, 0) + bytes_
    return {
        "resident": int(resident[either].sum()),
        "untouched": int(gap[either].sum()),
        "bigblock_overhead": int(left[bigblock].sum()),  # the chunk header's page
        "unexplained": int(left[mapped].sum()),
        "untouched_sites": untouched_sites,
    }


def _nearest_books(books: list, snap: Mapping[str, Any], exit_: bool) -> Optional[dict]:
    """The statistics nearest the snapshot (at exit, those the exit sent, if any)."""
    position = snap.get("position", 0)
    return (_nearest(books, position, fmt.STATS_EXIT) if exit_ else None) or _nearest(books, position)


def _glibc_rows(
    proc: Process,
    snap: Mapping[str, Any],
    exit_: bool,
    out: Dict[str, Any],
    small_live: int,
    arena_unexplained: int,
) -> Tuple[Optional[int], Optional[int]]:
    """glibc's books at the nearest moment: (free bytes it holds, its overhead in arenas)."""
    mi = _nearest_books(heap_stats(proc), snap, exit_)
    if mi is None:
        out["unknown"]["allocator_free_bytes"] = out["unknown"]["allocator_overhead_bytes"] = (
            "no glibc statistics from this process (not glibc's malloc, or it never allocated "
            "after the request)"
        )
        return None, None
    out["mallinfo"] = mi
    overhead = max(0, mi["uordblks"] - small_live)
    return max(0, min(arena_unexplained - overhead, mi["fordblks"])), overhead


def _pymalloc_row(
    proc: Process, snap: Mapping[str, Any], exit_: bool, out: Dict[str, Any], mapped_resident: int
) -> Optional[int]:
    """Free bytes in pymalloc's arenas at the nearest moment (0 without pymalloc)."""
    py = _nearest_books(pymalloc_stats(proc), snap, exit_)
    if py is not None and not py.get("pymalloc", 1):
        out["notes"].append(
            "this Python does not use pymalloc (PYTHONMALLOC=malloc?): its objects are in glibc's rows"
        )
        return 0
    if py is None:
        if proc.python:
            out["unknown"]["pymalloc_free_bytes"] = "no pymalloc statistics from this process"
        return None if proc.python else 0
    out["pymalloc"] = py
    free = py.get("available", 0) + py.get("unused_pools", 0) + py.get("lost", 0)
    return max(0, min(free, mapped_resident))


def peak_tolerance(peak: int) -> int:
    """How far below its peak the heap may be in a snapshot that stands for the peak
    (as far as the collector lets it fall before it calls a peak over: 1%)."""
    return max(64 << 10, peak // 100)


def _peak_snapshot(proc: Process) -> Optional[Mapping[str, Any]]:
    """The snapshot that stands for the heap peak: the first taken once the heap had
    reached its peak while it was still there; else the one nearest in time whose heap
    was as high (taken before a last small growth); else the first taken after the
    peak (a peak gone before it could be read); else the one with the largest heap."""
    peak = int(proc.totals.get("peak_heap", 0))
    peak_time = float(proc.totals.get("peak_time", 0.0))
    usable = [s for s in proc.snapshots if "vmas" in s]
    high = [s for s in usable if s.get("heap", 0) >= peak - peak_tolerance(peak)]
    after = [s for s in usable if s.get("peak_heap", 0) >= peak]
    still = [s for s in high if s in after]
    if still:
        return min(still, key=lambda s: s["t"])
    if high:
        return min(high, key=lambda s: abs(s["t"] - peak_time))
    if after:
        return min(after, key=lambda s: s["t"])
    return max(usable, key=lambda s: s.get("heap", 0)) if usable else None


def _event_time(marks: List[tuple], index: int) -> Optional[float]:
    """Collector time of the drained batch that held event `index`."""
    if not marks:
        return None
    i = bisect.bisect_right([m[0] for m in marks], index) - 1
    return marks[max(i, 0)][1]


def peak_distances(proc: Process, snap: Mapping[str, Any], row: dict, marks: List[tuple]) -> dict:
    """How far from the heap peak each part of the at-peak table was taken, in events
    and in seconds of collector time (negative: before it): the snapshot (smaps and
    the traced heap, read by the collector) and the program's own answers (glibc,
    pymalloc), which come at its next allocator call or pending call."""
    peak_event = int(proc.totals.get("peak_event", 0))
    peak_time = float(proc.totals.get("peak_time", 0.0))
    # heap statistics carry the ring's position; the peak, the aggregator's event index
    # (they differ by the ring slots that held no event, counted at the snapshot)
    offset = snap.get("position", 0) - snap.get("events", snap.get("position", 0))
    out: Dict[str, Optional[dict]]
    out = {
        "snapshot": {
            "events": int(snap.get("events", snap.get("position", 0))) - peak_event,
            "seconds": float(snap["t"]) - peak_time,
        }
    }
    for part, key in (("glibc", "mallinfo"), ("pymalloc", "pymalloc")):
        answer = row.get(key)
        if answer is None:
            out[part] = None
            continue
        event = int(answer["position"]) - offset
        t = _event_time(marks, event)
        out[part] = {"events": event - peak_event, "seconds": None if t is None else t - peak_time}
    return out


def reconcile_process(proc: Process, marks: Optional[List[tuple]] = None) -> dict:
    """At the peak and at exit; `marks` (the capture's (first event, time) of each
    drained batch) time the program's answers for the at-peak distances."""
    result: Dict[str, Any] = {}
    snap = _peak_snapshot(proc)
    if snap is None:
        result["at_peak"] = {"error": "no snapshot of this process was taken"}
    else:
        row = reconcile_snapshot(proc, snap)
        if "error" not in row:
            row["distance"] = peak_distances(proc, snap, row, marks or [])
        row["distance_seconds"] = float(snap["t"]) - float(proc.totals.get("peak_time", 0))
        row["heap_at_snapshot"] = snap.get("heap")
        row["peak_heap"] = int(proc.totals.get("peak_heap", 0))
        row["peak_time"] = float(proc.totals.get("peak_time", 0))
        if "error" not in row:
            # the peak counts address space never touched (OpenBLAS's buffers, calloc'd
            # or np.zeros memory not written yet): this is the part that was in RAM, at
            # most; of blocks freed before the snapshot (the heap below its peak) it
            # cannot say whether they were resident
            row["resident_peak_bytes"] = max(0, row["peak_heap"] - row["untouched_bytes"])
            row["resident_peak_unknown_bytes"] = max(0, row["peak_heap"] - (snap.get("heap") or 0))
        result["at_peak"] = row
    exits = [s for s in proc.snapshots if s.get("kind") == "exit"]
    usable = [s for s in proc.snapshots if "vmas" in s]
    if exits:
        last = exits[-1]
        result["at_exit"] = reconcile_snapshot(proc, last, exit_=True)
    elif usable:
        last = usable[-1]
        result["at_exit"] = reconcile_snapshot(proc, last)
        result["at_exit"]["notes"].append("the process ended without exit(): this is its last snapshot")
    else:
        result["at_exit"] = {"error": "the process ended before any snapshot"}
    mi = result["at_exit"].get("mallinfo")
    if mi is not None:
        result["at_exit"]["notes"].append(
            f"glibc statistics taken {abs(mi['position'] - last.get('position', 0)):,} "
            "events from the snapshot"
        )
    return result


def statistics_cost(proc: Process) -> float:
    """Seconds the target spent producing heap statistics (glibc's and pymalloc's)."""
    return (
        sum(r["cost_ns"] for r in heap_stats(proc)) + sum(r.get("cost_ns", 0) for r in pymalloc_stats(proc))
    ) / 1e9


def process_key(proc: Process) -> str:
    """A process's key in per-process results: its pid (pid.stream for an image it exec'd away;
    pid@host in a merged capture)."""
    if proc.labels.get("key"):
        return str(proc.labels["key"]) + (f".{proc.sid}" if proc.end.get("how") == "exec" else "")
    return str(proc.pid) if proc.end.get("how") != "exec" else f"{proc.pid}.{proc.sid}"


def reconcile(model: Model) -> Dict[str, dict]:
    """Every process's tables (computed once per model: reports ask several times)."""
    cached = model.__dict__.get("_reconciled")
    if cached is None:
        cached = model.__dict__["_reconciled"] = {
            process_key(p): reconcile_process(p, model.capture.marks(p.sid)) for p in model.processes
        }
    return cached


def timeline(model: Model, proc: Process) -> List[list]:
    """[t, rss, heap, allocator_held] at each RSS sample: the heap as last recorded
    before t, and glibc's arena + mmapped bytes from its latest statistics before t
    (None until the first)."""
    marks = model.capture.marks(proc.sid)
    firsts = np.array([first for first, _t in marks], np.uint64)
    times = [float(t) for _first, t in marks] + [0.0]  # [-1]: before the first mark
    # time of a position: that of the last mark before the first mark past it
    # (np.maximum.accumulate keeps this exact however the marks are ordered)
    past = (
        np.searchsorted(np.maximum.accumulate(firsts), proc.heapstats["position"], side="right")
        if len(firsts)
        else np.zeros(len(proc.heapstats), np.int64)
    )
    held = sorted(
        zip(
            [times[i - 1] for i in past.tolist()],
            (proc.heapstats["arena"] + proc.heapstats["hblkhd"]).tolist(),
        )
    )
    out, h, m = [], 0, 0
    heap_t, heap = proc.heap["t"].tolist(), proc.heap["heap"].tolist()
    for t, rss in zip(proc.rss["t"].tolist(), proc.rss["rss"].tolist()):
        while h < len(heap) and heap_t[h] <= t:
            h += 1
        while m < len(held) and held[m][0] <= t:
            m += 1
        out.append([round(t, 4), rss, heap[h - 1] if h else 0, held[m - 1][1] if m else None])
    return out


def json_rows(rec: dict) -> dict:
    """The fields of `stats --json` for one moment (None stays null); at the peak also
    when each part was taken (see peak_distances)."""
    if "error" in rec:
        return {"error": rec["error"]}
    keys = ("rss_bytes",) + ROWS + ("untouched_bytes", "residual_bytes")
    out = {k: rec.get(k) for k in keys}
    out["t"] = rec.get("t")
    for key, name in (
        ("peak_heap", "peak_heap_bytes"),
        ("heap_at_snapshot", "heap_at_snapshot_bytes"),
        ("resident_peak_bytes", "resident_peak_bytes"),
        ("resident_peak_unknown_bytes", "resident_peak_unknown_bytes"),
        ("distance", "distance"),
    ):
        if key in rec:
            out[name] = rec[key]
    return out
