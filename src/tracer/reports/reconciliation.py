"""`memtrace reconcile`: RSS split into rows that add up, at the peak and at exit,
with advice tied to the measured numbers."""
from typing import List

from tracer import reconcile as rec
from tracer.model import Model, Process, site_frame
from tracer.reports import tables
from tracer.reports.summary import clean, human

ADVICE_SHARE = 0.10  # a row worth a word of advice holds at least 10% of RSS ...
ADVICE_MIN = 16 << 20  # ... and 16 MiB


def advice(proc: Process, row: dict) -> List[str]:
    rss = row.get("rss_bytes") or 0
    out = []

    def big(n):
        return n is not None and n >= ADVICE_MIN and rss and n >= ADVICE_SHARE * rss

    free = row.get("allocator_free_bytes")
    if big(free):
        out.append(f"glibc holds {human(free)} of freed memory in its arenas: call malloc_trim(0) "
                   "after freeing (ctypes.CDLL(None).malloc_trim(0)), lower MALLOC_TRIM_THRESHOLD_, "
                   "or cap arenas with MALLOC_ARENA_MAX=2 when many threads allocate")
    pyfree = row.get("pymalloc_free_bytes")
    if big(pyfree):
        out.append(f"pymalloc arenas keep {human(pyfree)} after their objects died: an arena goes back "
                   "to the OS only when all its objects are gone (fragmentation; its free lists never "
                   "shrink). Keep long-lived and short-lived objects apart, or build them in a subprocess")
    untouched = row.get("untouched_bytes")
    if untouched and untouched >= ADVICE_MIN:
        out.append(f"{human(untouched)} was allocated but never touched (virtual, not in RSS): "
                   "np.zeros/np.empty reserve address space; RSS grows only as it is written")
    files = row.get("file_backed_bytes")
    if big(files) and files >= 0.5 * rss:
        out.append(f"libraries and mapped files hold {human(files)} of RSS (code and file pages: "
                   "shared with other processes and dropped by the kernel under pressure)")
    untracked = row.get("untracked_bytes")
    if big(untracked):
        out.append(f"{human(untracked)} of anonymous memory was never seen allocated: memory mapped "
                   "before memtrace started, by direct system calls, or by an allocator linked statically")
    return out


def digest(model: Model) -> List[str]:
    """Two lines for the end of a run: the main process at its peak."""
    results = rec.reconcile(model)
    main = next((p for p in model.processes if p.pid == model.end.get("main_pid")), None)
    if main is None or str(main.pid) not in results:
        return []
    row = results[str(main.pid)]["at_peak"]
    if "error" in row:
        return [f"reconciliation: {row['error']}"]
    rss = row["rss_bytes"] or 1
    parts = [("heap", row["heap_resident_bytes"]), ("glibc-held", row["allocator_free_bytes"]),
             ("glibc-overhead", row["allocator_overhead_bytes"]), ("pymalloc", row["pymalloc_free_bytes"]),
             ("libraries", row["file_backed_bytes"]), ("stacks", row["stacks_and_other_anon_bytes"]),
             ("memtrace", row["tracer_bytes"]), ("untracked", row["untracked_bytes"])]
    shown = " + ".join(f"{name} {human(v)}" if v is not None else f"{name} unknown" for name, v in parts)
    explained = 100.0 * (rss - abs(row["residual_bytes"])) / rss
    return [f"RSS near the heap peak {human(rss)} = {shown} (explained {explained:.0f}%)",
            f"  untouched (allocated, not resident): {human(row['untouched_bytes'])}; "
            "`memtrace reconcile` for the table and advice"]


def _table(out, proc: Process, title: str, row: dict) -> None:
    out.write(f"  {title}\n")
    if "error" in row:
        out.write(f"    unknown: {row['error']}\n")
        return
    rss = row["rss_bytes"] or 1
    for key in rec.ROWS + ("residual_bytes",):
        value = row.get(key)
        label = rec.ROW_TITLES[key]
        if value is None:
            out.write(f"    {'unknown':>12}         {label}: {row['unknown'].get(key, '')}\n")
            continue
        out.write(f"    {human(value):>12} {100.0 * value / rss:6.1f}%  {label}\n")
    out.write(f"    {human(rss):>12} 100.0%  RSS (from /proc/{proc.pid}/smaps)\n")
    out.write(f"    {human(row['untouched_bytes']):>12}          allocated but never touched (not in RSS)\n")
    for note in row.get("notes", []):
        out.write(f"    note: {note}\n")


def render(model: Model, out) -> None:
    results = rec.reconcile(model)
    lines = {tuple((r["file"], r["line"])): r for r in tables.by_line(model, user_code=True)}
    for proc in model.processes:
        key = str(proc.pid) if proc.end.get("how") != "exec" else f"{proc.pid}.{proc.sid}"
        result = results[key]
        out.write(f"pid {proc.pid}: {clean(' '.join(proc.argv))}\n")
        cost = rec.statistics_cost(proc)
        out.write(f"  (producing these statistics took the program {cost * 1000:.1f} ms)\n")
        peak = result["at_peak"]
        when = ""
        if "error" not in peak:
            when = (f" (snapshot {peak['distance_seconds'] * 1000:.1f} ms after the peak; heap then "
                    f"{human(peak['heap_at_snapshot'])}, at the peak {human(peak['peak_heap'])})")
        _table(out, proc, "at the heap peak" + when, peak)
        _table(out, proc, "at exit", result["at_exit"])
        tops = sorted(lines.values(), key=lambda r: -r["peak_bytes"])[:3]
        if tops and "error" not in peak:
            out.write("  the heap at the peak is mostly: " + "; ".join(
                f"{clean(r['file'])}:{r['line']} {human(r['peak_bytes'])}" for r in tops) + "\n")
        for site, gap in sorted(peak.get("untouched_sites", {}).items(), key=lambda kv: -kv[1])[:3]:
            if site < len(proc.sites):
                f = site_frame(proc, proc.sites[site], user_code=True)
                out.write(f"  untouched {human(gap)} allocated at {clean(f.file)}:{f.line} "
                          f"({clean(f.function)})\n")
        seen = set()
        for row in (peak, result["at_exit"]):
            if "error" in row:
                continue
            for line in advice(proc, row):
                if line not in seen:
                    seen.add(line)
                    out.write(f"  advice: {line}\n")
