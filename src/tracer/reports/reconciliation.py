"""`memtrace reconcile`: RSS split into rows that add up, at the peak and at exit,
with advice tied to the measured numbers."""

from typing import Dict, List, Optional

from tracer.analyze import reconcile as rec
from tracer.analyze.model import Model, Process, display_path
from tracer.reports import peaks, tables
from tracer.reports.text import clean, human

ADVICE_SHARE = 0.10  # a row worth a word of advice holds at least 10% of RSS ...
ADVICE_MIN = 16 << 20  # ... and 16 MiB


MOMENTS = {"at_peak": "at the heap peak", "at_exit": "at exit"}


def advice(proc: Process, row: dict, moment: str = "at_peak", cwd: Optional[str] = None) -> Dict[str, tuple]:
    """Advice a row's numbers call for: topic -> (the bytes behind it, the text)."""
    rss = row.get("rss_bytes") or 0
    when = MOMENTS[moment]
    out: Dict[str, tuple] = {}

    def big(n):
        return n is not None and n >= ADVICE_MIN and rss and n >= ADVICE_SHARE * rss

    free = row.get("allocator_free_bytes")
    if free is not None and big(free):
        out["glibc"] = (
            free,
            f"{when}, glibc holds {human(free)} of freed memory in its arenas: call "
            "malloc_trim(0) after freeing (ctypes.CDLL(None).malloc_trim(0)), lower "
            "MALLOC_TRIM_THRESHOLD_, or cap arenas with MALLOC_ARENA_MAX=2 when many threads "
            "allocate",
        )
    pyfree = row.get("pymalloc_free_bytes")
    if pyfree is not None and big(pyfree):
        out["pymalloc"] = (
            pyfree,
            f"{when}, pymalloc arenas keep {human(pyfree)} after their objects "
            "died: an arena goes back to the OS only when all its objects are gone "
            "(fragmentation; its free lists never shrink). Keep long-lived and short-lived "
            "objects apart, or build them in a subprocess",
        )
    untouched = row.get("untouched_bytes")
    if untouched and untouched >= ADVICE_MIN:
        causes = peaks.untouched_causes(proc, row, cwd)
        named = "; ".join(
            f"{human(c['bytes'])} {c['cause'].split(' (')[0]} ({clean(c['library'])}, {clean(c['where'])})"
            for c in causes[:3]
        )
        out["untouched"] = (
            untouched,
            f"{when}, {human(untouched)} was allocated but never touched "
            "(address space, not RAM: it costs no RSS until written)" + (f": {named}" if named else ""),
        )
    files = row.get("file_backed_bytes")
    if files is not None and big(files) and files >= 0.5 * rss:
        out["files"] = (
            files,
            f"{when}, libraries and mapped files hold {human(files)} of RSS (code "
            "and file pages: shared with other processes and dropped by the kernel under "
            "pressure)",
        )
    untracked = row.get("untracked_bytes")
    if untracked is not None and big(untracked):
        out["untracked"] = (
            untracked,
            f"{when}, {human(untracked)} of anonymous memory was never seen "
            "allocated: memory mapped before memtrace started, by direct system calls, "
            "or by an allocator linked statically",
        )
    return out


def merged_advice(proc: Process, result: dict, cwd: Optional[str] = None) -> List[str]:
    """Each piece of advice once: from the moment (peak or exit) where it weighs most."""
    best: Dict[str, tuple] = {}
    for moment in ("at_peak", "at_exit"):
        row = result.get(moment) or {}
        if "error" in row:
            continue
        for topic, (amount, text) in advice(proc, row, moment, cwd).items():
            if topic not in best or amount > best[topic][0]:
                best[topic] = (amount, text)
    return [text for _amount, text in best.values()]


def describe_distance(d: Optional[dict]) -> str:
    """'21.3 ms and 35 events after the peak' (or before it)."""
    if d is None:
        return "no answer"
    seconds, events = d.get("seconds"), int(d.get("events", 0))
    side = "before" if (seconds or 0) < 0 or (not seconds and events < 0) else "after"
    count = f"{abs(events):,} events {side} the peak"
    if seconds is None:
        return count
    span = f"{abs(seconds) * 1000:.1f} ms" if abs(seconds) < 10 else f"{abs(seconds):.1f} s"
    return f"{span} and {count}"


def peak_notes(row: dict) -> List[str]:
    """When each part of the at-peak table was read, and a peak gone before it was seen."""
    d = row.get("distance")
    if not d:  # a capture from before the distances were recorded
        return [f"snapshot {row.get('distance_seconds', 0) * 1000:.1f} ms from the peak"]
    out = [
        f"smaps and the traced heap: read {describe_distance(d['snapshot'])} "
        "(by memtrace, never waiting for the program)",
        f"glibc statistics: {describe_distance(d.get('glibc'))}",
        f"pymalloc statistics: {describe_distance(d.get('pymalloc'))} "
        "(the program takes both: at its next allocator call, and in a pending call)",
    ]
    peak = row.get("peak_heap") or 0
    drop = peak - (row.get("heap_at_snapshot") or 0)
    if drop > max(1 << 20, peak // 100):
        quick = abs(d["snapshot"].get("seconds") or 0) < 0.01
        out.append(
            f"the heap was {human(drop)} below its peak when read"
            + (
                ": it fell before memtrace next read the program's events (every 1-8 ms), so "
                "this is the process just after its peak"
                if quick
                else ""
            )
        )
    return out


def digest(model: Model, results: Optional[dict] = None) -> List[str]:
    """Two lines for the end of a run: the main process at its peak."""
    results = rec.reconcile(model) if results is None else results
    main = next((p for p in model.processes if p.pid == model.end.get("main_pid")), None)
    if main is None or rec.process_key(main) not in results:
        return []
    row = results[rec.process_key(main)]["at_peak"]
    if "error" in row:
        return [f"reconciliation: {row['error']}"]
    rss = row["rss_bytes"] or 1
    parts = [
        ("heap", row["heap_resident_bytes"]),
        ("glibc-held", row["allocator_free_bytes"]),
        ("glibc-overhead", row["allocator_overhead_bytes"]),
        ("pymalloc", row["pymalloc_free_bytes"]),
        ("libraries", row["file_backed_bytes"]),
        ("stacks", row["stacks_and_other_anon_bytes"]),
        ("memtrace", row["tracer_bytes"]),
        ("untracked", row["untracked_bytes"]),
    ]
    shown = " + ".join(f"{name} {human(v)}" if v is not None else f"{name} unknown" for name, v in parts)
    explained = 100.0 * (rss - abs(row["residual_bytes"])) / rss
    d = (row.get("distance") or {}).get("snapshot")
    when = f" (read {describe_distance(d)})" if d else ""
    return [
        f"RSS at the heap peak {human(rss)}{when} = {shown} (explained {explained:.0f}%)",
        "  `memtrace reconcile` for the table, when each part was read, and advice",
    ]


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
    cwd = model.capture.info.get("cwd")
    lines = {tuple((r["file"], r["line"])): r for r in tables.by_line(model, user_code=True)}
    for proc in model.processes:
        result = results[rec.process_key(proc)]
        where = (
            ""
            if not proc.labels
            else " ["
            + clean(" ".join(str(proc.labels[k]) for k in ("host", "worker") if proc.labels.get(k)))
            + "]"
        )
        out.write(f"pid {proc.pid}{where}: {clean(' '.join(proc.argv))}\n")
        cost = rec.statistics_cost(proc)
        out.write(f"  (producing these statistics took the program {cost * 1000:.1f} ms)\n")
        peak = result["at_peak"]
        when = ""
        if "error" not in peak:
            when = (
                f" ({human(peak['peak_heap'])} at {peak['peak_time']:.2f} s; heap when read "
                f"{human(peak['heap_at_snapshot'])})"
            )
            peak["notes"] = peak_notes(peak) + peak["notes"]
        _table(out, proc, "at the heap peak" + when, peak)
        _table(out, proc, "at exit", result["at_exit"])
        tops = sorted(lines.values(), key=lambda r: -r["peak_bytes"])[:3]
        if tops and "error" not in peak:
            out.write(
                "  the heap at the peak is mostly: "
                + "; ".join(
                    f"{clean(display_path(r['file'], cwd))}:{r['line']} {human(r['peak_bytes'])}"
                    for r in tops
                )
                + "\n"
            )
        for c in peaks.untouched_causes(proc, peak, cwd)[:3] if "error" not in peak else ():
            out.write(
                f"  untouched at the peak: {human(c['bytes'])} {c['cause']}, mapped by "
                f"{clean(c['library'])} at {clean(c['where'])}\n"
            )
        for line in merged_advice(proc, result, cwd):
            out.write(f"  advice: {line}\n")
