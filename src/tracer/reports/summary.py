"""`memtrace summary`: the terminal report (also printed at the end of a run)."""

from typing import Optional

from tracer.analyze import reconcile as rec
from tracer.analyze import regions
from tracer.analyze.model import Model, Process, display_path
from tracer.errors import CaptureError
from tracer.reports import objects, peaks, tables
from tracer.reports.reconciliation import digest
from tracer.reports.text import clean, describe_end, human

TOP = 10


def native_only_note(model: Model):
    """One line when the main process was traced without Python frames."""
    main = next((p for p in model.processes if p.pid == model.end.get("main_pid")), None)
    if main is None and model.processes:
        main = model.processes[0]
    if main is None or main.python is not None:
        return None
    name = clean(main.argv[0] if main.argv else main.exe or "?")
    exe = (main.exe or "").rsplit("/", 1)[-1]
    if main.frames_off:
        return f"native-only trace of {name}: {clean(main.frames_off)}"
    if exe.startswith("python"):
        return (
            f"native-only trace of {name}: the memtrace bootstrap did not run in it "
            "(python -S, -I or -E ignore it)"
        )
    return f"native-only trace of {name}: not a Python program (allocations are attributed to libraries)"


def _reconciled(model: Model) -> tuple:
    """The reconciliation's tables and its lines for the summary; a capture found
    corrupt only now (a snapshot's mappings are read when needed) is an error before
    anything is written."""
    try:
        results = rec.reconcile(model)
        return results, digest(model, results)
    except CaptureError:
        raise
    except Exception as exc:  # the reconciliation must never cost the user the summary
        return {}, [f"reconciliation: not available ({exc})"]


def render(model: Model, out, top: int = TOP) -> None:
    results, reconciliation_digest = _reconciled(model)
    w = out.write
    t = tables.totals(model)
    cwd = model.capture.info.get("cwd")
    focused = _write_heading(w, model)
    # (RSS is the process's: no digest for one region)
    _write_totals(w, model, t, results, reconciliation_digest if not focused else [])
    lines = tables.by_line(model, user_code=True)
    _write_top_lines(w, lines[:top], cwd)
    _write_libraries(w, model)
    _write_leaks(w, lines, cwd)
    if focused is None:
        _write_regions(w, model)
    objects.render_summary(model, w)
    if len(model.processes) > 1:
        w(f"  processes: {len(model.processes)}\n")
        for proc in model.processes:
            w(f"    {_process_line(model, proc, results, cwd)}\n")


def _write_heading(w, model: Model) -> Optional[str]:
    """The command and how it ended, the region shown, warnings and notes; returns
    the region's description (None: the whole capture)."""
    command = " ".join(clean(a) for a in model.command)
    w(f"memtrace: {command} — {describe_end(model)}\n")
    focused = regions.describe(model)
    if focused:
        w(f"  {clean(focused)}\n")
    for warning in model.warnings:
        w(f"  warning: {clean(warning)}\n")
    for note in (model.estimate_note, native_only_note(model)):
        if note:
            w(f"  {note}\n")
    return focused


def _write_totals(w, model: Model, t: dict, results: dict, reconciliation_digest: list) -> None:
    """The peaks, totals, NumPy's share, RSS explained and what was not recorded."""
    head = peaks.headline(model, results)
    w(
        f"  {head[0]} · total allocated {human(t['total_allocated'])} in {t['n_allocations']:,} "
        f"allocations · live at exit {human(t['heap'])}\n"
    )
    for line in head[1:]:
        w(f"  {line}\n")
    if t["numpy_bytes"]:  # (nothing to say of NumPy to a program without its arrays)
        share = 100.0 * t["numpy_bytes"] / t["total_allocated"]
        w(f"  NumPy array data: {human(t['numpy_bytes'])} of the bytes allocated ({share:.0f}%)\n")
    for line in reconciliation_digest:
        w(f"  {line}\n")
    if t["dropped"]:
        w(f"  warning: {t['dropped']:,} events were dropped (the collector was gone)\n")
    unrecorded = sum(int(p.end.get("unrecorded_reentrant", 0)) for p in model.processes)
    if unrecorded:
        w(
            f"  note: {unrecorded:,} allocator calls made by signal handlers that interrupted "
            "memtrace's hooks were not recorded\n"
        )


def _write_top_lines(w, lines: list, cwd: Optional[str]) -> None:
    """The user's lines by memory held at the peak, with their allocators."""
    w("  top lines of your code by memory held at peak (innermost frames: `memtrace stats`):\n")
    for row in lines:
        where = f"{clean(display_path(row['file'], cwd))}:{row['line']}"
        detail = ", ".join(
            f"{k} {human(v)}" for k, v in sorted(row["allocators"].items(), key=lambda kv: -kv[1])
        )
        numpy = f", NumPy {human(row['numpy_bytes'])}" if row["numpy_bytes"] else ""
        w(f"    {human(row['peak_bytes']):>10}  {where}  {clean(row['function'])}  ({detail}{numpy})\n")


def _write_libraries(w, model: Model) -> None:
    """The native libraries that allocated the most."""
    w("  top native libraries by bytes allocated:\n")
    for row in tables.by_library(model)[:5]:
        w(
            f"    {human(row['allocated_bytes']):>10}  {clean(row['library'])}  "
            f"({row['n_allocations']:,} allocations)\n"
        )


def _write_leaks(w, lines: list, cwd: Optional[str]) -> None:
    """The user's lines that left the most live at exit."""
    leaks = sorted((r for r in lines if r["live_at_exit_bytes"] > 0), key=lambda r: -r["live_at_exit_bytes"])
    if leaks:
        w("  still live at exit:\n")
        for row in leaks[:5]:
            where = f"{clean(display_path(row['file'], cwd))}:{row['line']}"
            w(f"    {human(row['live_at_exit_bytes']):>10}  {where}  {clean(row['function'])}\n")


def _write_regions(w, model: Model) -> None:
    """The regions with the highest peaks, when the capture has any."""
    if regions.table(model):
        from tracer.reports import regions as region_report

        top_regions = region_report.rows(model)
        w(
            f"  regions by peak ({len(top_regions)}; `memtrace regions` lists them, "
            "--region NAME shows one):\n"
        )
        for line in region_report.lines(model, top_regions[:5]):
            w(f"    {line}\n")


def _process_line(model: Model, proc: Process, results: dict, cwd: Optional[str]) -> str:
    """A process of several: its labels, command, peak (resident part), RSS and ending."""
    peak = peaks.process_peak(proc, results.get(rec.process_key(proc), {}).get("at_peak"), cwd)
    resident = (
        peaks.describe_resident(peak).replace(", ", " (", 1) + ")"
        if peak["resident_bytes"] is not None
        else ""
    )
    label = ""
    if proc.labels:
        label = (
            " ["
            + clean(" ".join(str(proc.labels[k]) for k in ("host", "worker") if proc.labels.get(k)))
            + "]"
        )
    return (
        f"pid {proc.pid}{label} (parent {proc.ppid}) {clean(' '.join(proc.argv))[:60]}: "
        f"peak heap {human(peak['bytes'])} at {peak['t']:.2f} s{resident}, "
        f"{'peak RSS ' + human(proc.peak_rss) if proc.peak_rss else 'RSS not sampled'}, "
        f"{tables.describe_process_end(model, proc)}"
    )
