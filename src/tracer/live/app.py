"""The live view (Textual): twice a second, the heap, RSS and allocator-held over time,
the top lines of the user's code, the threads, and the processes of the tree.

Keys: s sorts the lines by the next column, [ and ] switch process, q leaves.
Strings from the traced program are shown as plain text (never Rich markup) with
control characters replaced (tracer.reports.text.clean), like every other report.
"""

import time
from typing import BinaryIO, List, Optional

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, RichLog, Sparkline

from tracer.analyze.model import display_path
from tracer.live.client import SORT_TITLES, SORTS, LiveClient, StreamView
from tracer.reports.text import clean, human

REFRESH_SECONDS = 0.5
LINES_SHOWN = 30
LINE_COLUMNS = ["live", "blocks", "held at peak", "allocated", "allocations", "line (your code)", "function"]
THREAD_COLUMNS = ["tid", "CPU s", "live, no Python frame", "state", "thread"]
PROCESS_COLUMNS = ["", "pid", "parent", "heap", "peak heap", "RSS", "state", "command"]
CHART_POINTS = 120  # the last minute at the view's rate


def grid(headers: List[str], rows: List[List[str]], numeric: int) -> Text:
    """A table as text: the first `numeric` columns right-aligned. Drawing one text is
    far cheaper than a table widget's cells, twice a second. Cells from the traced
    program must come through clean() (plain text, never markup)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(
            c.rjust(w) if i < numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = Text(line(headers), style="bold", no_wrap=True, overflow="crop")
    for r in rows:
        out.append("\n" + line(r), style="")
    return out


def command(argv: List[str]) -> str:
    """argv with the program's folder left out (the table is narrow)."""
    return clean(" ".join([argv[0].rsplit("/", 1)[-1]] + argv[1:])) if argv else ""


def line_rows(client: LiveClient, stream: StreamView, sort: str, now: float) -> List[List[str]]:
    rows, cwd = [], client.head.get("cwd")
    for r in stream.lines(sort, now, inherited=client.inherited_paths(stream, now))[:LINES_SHOWN]:
        where = f"{display_path(r['file'], cwd)}:{r['line']}" if r["file"] != "<native>" else ""
        rows.append(
            [
                human(r["live_bytes"]),
                f"{r['live_count']:,}",
                human(r["peak_bytes"]),
                human(r["alloc_bytes"]),
                f"{r['n_allocs']:,}",
                clean(where),
                clean(r["function"]),
            ]
        )
    return rows


class Board(Widget):
    """Text redrawn when it changes (Static.update would lay the whole screen out
    again)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.value = Text("")

    def show(self, value: Text) -> None:
        if value != self.value:
            self.value = value
            self.refresh()

    def render(self) -> Text:
        return self.value


def chart(points: List[list], column: int) -> List[float]:
    return [float(p[column] or 0) for p in points[-CHART_POINTS:]]


class LiveApp(App):
    """memtrace live: a running program's memory."""

    TITLE = "memtrace live"
    CSS = """
    Board { text-wrap: nowrap; text-overflow: clip; }
    #status { height: 2; padding: 0 1; background: $boost; }
    #charts { height: 5; }
    .chart { width: 1fr; padding: 0 1; }
    .chart Sparkline { height: 3; }
    .chart .label { height: 1; }
    #lines { height: 1fr; padding: 0 1; }
    #bottom { height: 9; }
    #threads, #procs { width: 1fr; padding: 0 1; }
    #output { height: 5; border-top: solid $primary; }
    """
    BINDINGS = [
        Binding("s", "sort", "sort lines"),
        Binding("[", "process(-1)", "previous process"),
        Binding("]", "process(1)", "next process"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False),
    ]

    def __init__(self, socket_path: str, output_log: Optional[str] = None):
        super().__init__()
        self.socket_path = socket_path
        self.output_log = output_log
        self.client: Optional[LiveClient] = None
        self.sort = SORTS[0]
        self.selected = 0  # index among the streams, in the order they connected
        self.gone: Optional[str] = None
        self.log_file: Optional[BinaryIO] = None

    def compose(self) -> ComposeResult:
        yield Board(id="status")
        with Horizontal(id="charts"):
            for name in ("heap", "rss", "held"):
                with Vertical(classes="chart"):
                    yield Board(id=f"{name}-label", classes="label")
                    yield Sparkline([], id=f"{name}-chart", summary_function=max)
        yield Board(id="lines")
        with Horizontal(id="bottom"):
            yield Board(id="threads")
            yield Board(id="procs")
        if self.output_log:
            yield RichLog(id="output", max_lines=200, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(REFRESH_SECONDS, self.refresh_view)

    # ---- keys --------------------------------------------------------------

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.refresh_view(fetch=False)

    def action_process(self, step: int) -> None:
        n = len(self.client.streams) if self.client else 0
        if n:
            self.selected = (self.selected + step) % n
            self.refresh_view(fetch=False)

    # ---- drawing ----------------------------------------------------------------

    def _fetch(self) -> None:
        if self.gone:
            return
        try:
            if self.client is None:
                self.client = LiveClient(self.socket_path)
            self.client.fetch()
        except (OSError, ConnectionError, ValueError) as exc:
            if self.client is None and time.monotonic() < getattr(self, "_patience", 0):
                return  # the collector is still starting
            self.gone = (
                f"the memtrace run is over ({exc.__class__.__name__})"
                if self.client
                else f"cannot reach {self.socket_path}: {exc}"
            )

    def refresh_view(self, fetch: bool = True) -> None:
        if not hasattr(self, "_patience"):
            self._patience = time.monotonic() + 5.0
        if fetch:
            self._fetch()
            self._tail_output()
        client = self.client
        streams = list(client.streams.values()) if client else []
        if client is None or not streams:
            self.query_one("#status", Board).show(Text(self.gone or "waiting for the program…"))
            return
        self.selected = min(self.selected, len(streams) - 1)
        stream = streams[self.selected]
        now = time.monotonic()
        self._status(client, stream, now)
        self._charts(stream)
        self.query_one("#lines", Board).show(grid(LINE_COLUMNS, line_rows(client, stream, self.sort, now), 5))
        self._threads(stream, now)
        self._processes(streams, now)

    def _status(self, client: LiveClient, stream: StreamView, now: float) -> None:
        head, end = client.head, client.head.get("end")
        if self.gone:
            state = self.gone
        elif end:
            how = f"signal {end['signal']}" if end.get("signal") else f"exit code {end.get('exit_code')}"
            state = f"the program ended ({how}) after {end.get('duration', 0):.1f} s; q leaves"
        else:
            state = "running"
        argv = command(stream.argv(now)) or f"pid {stream.pid}"
        t = stream.totals
        first = Text(f"pid {stream.pid}  ", style="bold")
        first.append(clean(argv)[:100])
        if not (end or self.gone):
            state = f"{head.get('t', 0):.1f} s, {state}"
        first.append(f"  ·  {state}")
        second = Text(
            f"heap {human(t.get('heap', 0))}  peak {human(t.get('peak_heap', 0))} at "
            f"{t.get('peak_time', 0):.2f} s  ·  {t.get('n_allocations', 0):,} allocations, "
            f"{human(t.get('total_allocated', 0))}  ·  lines sorted by "
            f"{SORT_TITLES[self.sort]} (s)  ·  process {self.selected + 1} of "
            f"{len(client.streams)} ([ ])"
        )
        self.query_one("#status", Board).show(Text("\n").join([first, second]))

    def _charts(self, stream: StreamView) -> None:
        points = stream.history
        series = {
            "heap": (chart(points, 2), stream.totals.get("heap", 0), "heap"),
            "rss": (chart(points, 3), stream.rss, "RSS"),
            "held": (chart(points, 5), stream.held, "allocator-held"),
        }
        for name, (data, now_value, title) in series.items():
            top = max(data) if data else 0
            label = (
                f"{title} {human(now_value) if now_value is not None else 'unknown'} · chart max {human(top)}"
            )
            self.query_one(f"#{name}-label", Board).show(Text(label))
            self.query_one(f"#{name}-chart", Sparkline).data = data or [0.0]

    def _threads(self, stream: StreamView, now: float) -> None:
        rows = [
            [
                str(th["tid"]),
                f"{th['cpu_seconds']:.1f}",
                human(th["native_live_bytes"]),
                th["state"],
                clean(th["name"] + (" (main)" if th["main"] else "")),
            ]
            for th in stream.threads(now)[:50]
        ]
        self.query_one("#threads", Board).show(grid(THREAD_COLUMNS, rows, 3))

    def _processes(self, streams: List[StreamView], now: float) -> None:
        rows = [
            [
                "▶" if i == self.selected else " ",
                str(s.pid),
                str(s.ppid),
                human(s.totals.get("heap", 0)),
                human(s.totals.get("peak_heap", 0)),
                human(s.rss),
                "running" if s.alive else "ended",
                command(s.argv(now))[:60],
            ]
            for i, s in enumerate(streams)
        ]
        self.query_one("#procs", Board).show(grid(PROCESS_COLUMNS, rows, 6))

    def _tail_output(self) -> None:
        """The program's newest output lines (run --live sends them to a file)."""
        if not self.output_log:
            return
        if self.log_file is None:
            try:
                self.log_file = open(self.output_log, "rb")
            except OSError:
                return
        data = self.log_file.read(1 << 16)
        if data:
            log = self.query_one("#output", RichLog)
            for line in data.decode("utf-8", "replace").splitlines():
                log.write(Text(clean(line)))


def run(socket_path: str, output_log: Optional[str] = None) -> None:
    LiveApp(socket_path, output_log).run()
