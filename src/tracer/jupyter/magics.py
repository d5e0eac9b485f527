"""IPython magics, loaded by `%load_ext tracer` in a kernel run under memtrace
(`memtrace jupyter install`, docs/jupyter.md):

    %%memtrace [NAME] [--no-flame]    the cell runs as a region (NAME, default "In [N]");
                                      its summary and flame graph show under it
    %memtrace_report [NAME] [--no-flame]
                                      the kernel so far (or one region of it)

Both ask the collector to write the kernel's numbers to its capture now, read that
capture, and render memtrace's own reports from it: the summary as text, the flame
graph as memtrace's HTML report embedded in an iframe's srcdoc (self-contained: no
network, no file beside the notebook).
"""

import html
import io
import linecache
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from tracer import _regions

FRAME_HEIGHT = 560
TOP_LINES = 8
NOT_TRACED = (
    "memtrace: this kernel does not run under memtrace; run `memtrace jupyter install` "
    'and choose the kernel "Python 3 (memtrace)"'
)


def load(ipython) -> None:
    ipython.register_magics(MemtraceMagics)


def _parse(line: str):
    """(name or None, whether to show the flame graph)."""
    words = shlex.split(line)
    flame = "--no-flame" not in words
    name = " ".join(w for w in words if w != "--no-flame")
    return name or None, flame


@magics_class
class MemtraceMagics(Magics):
    shell: Any  # the InteractiveShell, set by Magics.__init__ (which declares it None)

    @cell_magic
    def memtrace(self, line, cell):
        """Run the cell as a memtrace region, then show its summary and flame graph."""
        name, flame = _parse(line)
        if not _regions.traced():
            print(NOT_TRACED, file=sys.stderr)
            self.shell.run_cell(cell)
            return
        name = name or f"In [{self.shell.execution_count}]"
        with _regions.Region(name, _regions.KIND_CELL):
            self.shell.run_cell(cell)
        self._show(name, f"cell {name!r}", flame)

    @line_magic
    def memtrace_report(self, line):
        """Show the summary and flame graph of this kernel so far (or of region NAME)."""
        name, flame = _parse(line)
        if not _regions.traced():
            print(NOT_TRACED, file=sys.stderr)
            return
        self._show(name, f"region {name!r}" if name else "this kernel so far", flame)

    def _show(self, region, title: str, flame: bool) -> None:
        from IPython.display import display

        from tracer.analyze import regions
        from tracer.analyze.model import load

        path = _regions.checkpoint()
        if path is None:
            print("memtrace: the collector did not answer", file=sys.stderr)
            return
        # a region's view needs no snapshot (RSS is the kernel's, not a cell's), and
        # reading them is most of the time a long session's capture takes
        model = load(path, live=True, snapshots=region is None)
        if region is not None:
            model = regions.focus(model, region)
        text = summary(model, title, self._cell_names())
        page = f"<pre>{html.escape(text)}</pre>"
        if flame:
            page += frame(model)
        display({"text/plain": text, "text/html": page}, raw=True)

    def _cell_names(self) -> dict:
        """Cell file -> its execution count (IPython names cells' code after it)."""
        return dict(getattr(self.shell.compile, "_filename_map", {}) or {})


def _where(row: dict, cells: dict) -> str:
    """'In [3], line 2: x = f()' for a cell's line, else file:line."""
    from tracer.reports.text import clean

    source = linecache.getline(row["file"], row["line"]).strip()
    if source.startswith(
        ("get_ipython().run_cell_magic('memtrace'", "get_ipython().run_line_magic('memtrace_report'")
    ):
        source = "%%memtrace, IPython and memtrace's own work in the cell"
    source = f": {clean(source)[:80]}" if source else ""
    count = cells.get(row["file"])
    if count is not None:
        return f"In [{count}], line {row['line']}{source}"
    return f"{clean(row['file'])}:{row['line']} {clean(row['function'])}{source}"


def summary(model, title: str, cells: dict) -> str:
    """The text shown under a cell: its peak, what it allocated and left live, and the
    lines holding the most at its peak."""
    from tracer.reports import peaks, regions, tables
    from tracer.reports.text import clean, human

    t = tables.totals(model)
    tree = peaks.tree_peak(model)
    peak = tree["bytes"] if tree else 0
    left = "left live" if getattr(model, "region", None) else "live now"
    out = [
        f"memtrace: {clean(title)} — peak {human(peak)} ({peak:,} bytes) · allocated "
        f"{human(t['total_allocated'])} in {t['n_allocations']:,} allocations · {left} "
        f"{human(t['heap'])}"
    ]
    rows = [r for r in tables.by_line(model, user_code=True) if r["peak_bytes"] > 0]
    if rows:
        out.append("  lines holding the most at the peak:")
        out += [f"    {human(r['peak_bytes']):>10}  {_where(r, cells)}" for r in rows[:TOP_LINES]]
    if getattr(model, "region", None) is None:
        ran = regions.rows(model, "cell")
        if ran:
            out.append("  cells run with %%memtrace:")
            out += [f"    {line}" for line in regions.lines(model, ran[:TOP_LINES], "cell")]
    return "\n".join(out)


def frame(model) -> str:
    """memtrace's HTML report of the model, in an iframe's srcdoc (sandboxed: its
    script runs, but cannot reach the notebook)."""
    from tracer.reports import html as html_report

    buf = io.StringIO()
    html_report.render(model, buf)
    return (
        f'<iframe srcdoc="{html.escape(buf.getvalue(), quote=True)}" sandbox="allow-scripts" '
        f'style="width:100%;height:{FRAME_HEIGHT}px;border:1px solid #ccc"></iframe>'
    )
