"""`memtrace diff BEFORE AFTER`: per line and per library, what grew."""

from tracer.analyze.model import Model
from tracer.reports import peaks, tables
from tracer.reports.text import clean, human


def diff_rows(before: Model, after: Model, key_fn, rows_fn) -> list:
    old = {key_fn(r): r for r in rows_fn(before)}
    new = {key_fn(r): r for r in rows_fn(after)}
    out = []
    for key in set(old) | set(new):
        a, b = old.get(key, {}), new.get(key, {})
        out.append(
            {
                "key": key,
                "allocated_before": a.get("allocated_bytes", 0),
                "allocated_after": b.get("allocated_bytes", 0),
                "peak_before": a.get("peak_bytes", 0),
                "peak_after": b.get("peak_bytes", 0),
            }
        )
    out.sort(
        key=lambda r: (
            -(r["peak_after"] - r["peak_before"]),
            -(r["allocated_after"] - r["allocated_before"]),
            r["key"],
        )
    )
    return out


def line_diff(before: Model, after: Model) -> list:
    return diff_rows(
        before,
        after,
        lambda r: (r["file"], r["line"], r["function"]),
        lambda m: tables.by_line(m, user_code=True),
    )


def library_diff(before: Model, after: Model) -> list:
    return diff_rows(before, after, lambda r: r["library"], tables.by_library)


def _peak(model: Model) -> int:
    """The run's peak heap: its process tree's, at one moment."""
    tree = peaks.tree_peak(model)
    return tree["bytes"] if tree else 0


def _signed(n: int) -> str:
    return ("+" if n > 0 else "-" if n < 0 else " ") + human(abs(n))


def render(before: Model, after: Model, out, top: int = 20) -> None:
    tb, ta = tables.totals(before), tables.totals(after)
    pb, pa = (_peak(m) for m in (before, after))
    out.write(
        f"peak heap {human(pb)} -> {human(pa)} ({_signed(pa - pb)}); allocated "
        f"{human(tb['total_allocated'])} -> {human(ta['total_allocated'])} "
        f"({_signed(ta['total_allocated'] - tb['total_allocated'])})\n"
    )
    out.write("lines (held at peak, allocated):\n")
    for r in line_diff(before, after)[:top]:
        dp, da = r["peak_after"] - r["peak_before"], r["allocated_after"] - r["allocated_before"]
        if dp == 0 and da == 0:
            continue
        file, line, function = r["key"]
        out.write(f"  {_signed(dp):>12} {_signed(da):>12}  {clean(file)}:{line}  {clean(function)}\n")
    out.write("libraries (allocated):\n")
    for r in library_diff(before, after)[:top]:
        da = r["allocated_after"] - r["allocated_before"]
        if da:
            out.write(f"  {_signed(da):>12}  {clean(r['key'])}\n")
