"""The live view (Textual): twice a second, the heap, RSS and allocator-held over time,
the top lines of the user's code, the threads, and the processes of the tree.

Keys: s sorts the lines by the next column, [ and ] switch process, q leaves.
Strings from the traced program are shown as plain text (never Rich markup) with
control characters replaced (summary.clean), like every other report.
"""
import time
from typing import List, Optional

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, RichLog, Sparkline, Static

from tracer.live.client import SORT_TITLES, SORTS, LiveClient, StreamView
from tracer.model import display_path
from tracer.reports.summary import clean, human

REFRESH_SECONDS = 0.5
LINES_SHOWN = 30
CHART_POINTS = 120  # the last minute at the view's rate


def plain(s) -> Text:
    """A program's string as inert text."""
    return Text(clean(s))


def right(s: str) -> Text:
    return Text(s, justify="right")


def line_rows(client: LiveClient, stream: StreamView, sort: str, now: float) -> List[list]:
    rows, cwd = [], client.head.get("cwd")
    for r in stream.lines(sort, now, inherited=client.inherited_paths(stream, now))[:LINES_SHOWN]:
        where = f"{display_path(r['file'], cwd)}:{r['line']}" if r["file"] != "<native>" else ""
        rows.append([right(human(r["live_bytes"])), right(f"{r['live_count']:,}"),
                     right(human(r["peak_bytes"])), right(human(r["alloc_bytes"])),
                     right(f"{r['n_allocs']:,}"), plain(where), plain(r["function"])])
    return rows


def chart(points: List[list], column: int) -> List[float]:
    return [float(p[column] or 0) for p in points[-CHART_POINTS:]]


class LiveApp(App):
    """memtrace live: a running program's memory."""

    TITLE = "memtrace live"
    CSS = """
    #status { height: 2; padding: 0 1; background: $boost; }
    #charts { height: 5; }
    .chart { width: 1fr; padding: 0 1; }
    .chart Sparkline { height: 3; }
    #lines { height: 1fr; }
    #bottom { height: 9; }
    #threads, #procs { width: 1fr; }
    #output { height: 5; border-top: solid $primary; }
    """
    BINDINGS = [Binding("s", "sort", "sort lines"), Binding("[", "process(-1)", "previous process"),
                Binding("]", "process(1)", "next process"), Binding("q", "quit", "quit"),
                Binding("ctrl+c", "quit", "quit", show=False)]

    def __init__(self, socket_path: str, output_log: Optional[str] = None):
        super().__init__()
        self.socket_path = socket_path
        self.output_log = output_log
        self.client: Optional[LiveClient] = None
        self.sort = SORTS[0]
        self.selected = 0  # index among the streams, in the order they connected
        self.gone: Optional[str] = None
        self.log_file = None

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="charts"):
            for name in ("heap", "rss", "held"):
                with Vertical(classes="chart"):
                    yield Static(id=f"{name}-label")
                    yield Sparkline([], id=f"{name}-chart", summary_function=max)
        yield DataTable(id="lines", cursor_type="none", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield DataTable(id="threads", cursor_type="none")
            yield DataTable(id="procs", cursor_type="none")
        if self.output_log:
            yield RichLog(id="output", max_lines=200, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#lines", DataTable).add_columns(
            "live", "blocks", "held at peak", "allocated", "allocations", "line (your code)",
            "function")
        self.query_one("#threads", DataTable).add_columns("tid", "thread", "state", "CPU s",
                                                          "live, no Python frame")
        self.query_one("#procs", DataTable).add_columns("", "pid", "parent", "command", "heap",
                                                        "peak heap", "RSS", "state")
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
            self.gone = f"the memtrace run is over ({exc.__class__.__name__})" \
                if self.client else f"cannot reach {self.socket_path}: {exc}"

    def refresh_view(self, fetch: bool = True) -> None:
        if not hasattr(self, "_patience"):
            self._patience = time.monotonic() + 5.0
        if fetch:
            self._fetch()
            self._tail_output()
        client = self.client
        streams = list(client.streams.values()) if client else []
        if not streams:
            self.query_one("#status", Static).update(Text(self.gone or "waiting for the program…"))
            return
        self.selected = min(self.selected, len(streams) - 1)
        stream = streams[self.selected]
        now = time.monotonic()
        self._status(client, stream, now)
        self._charts(stream)
        table = self.query_one("#lines", DataTable)
        table.clear()
        for row in line_rows(client, stream, self.sort, now):
            table.add_row(*row)
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
        argv = " ".join(stream.argv(now)) or f"pid {stream.pid}"
        t = stream.totals
        first = Text(f"pid {stream.pid}  ", style="bold")
        first.append(clean(argv)[:100])
        if not (end or self.gone):
            state = f"{head.get('t', 0):.1f} s, {state}"
        first.append(f"  ·  {state}")
        second = Text(f"heap {human(t.get('heap', 0))}  peak {human(t.get('peak_heap', 0))} at "
                      f"{t.get('peak_time', 0):.2f} s  ·  {t.get('n_allocations', 0):,} allocations, "
                      f"{human(t.get('total_allocated', 0))}  ·  lines sorted by "
                      f"{SORT_TITLES[self.sort]} (s)  ·  process {self.selected + 1} of "
                      f"{len(client.streams)} ([ ])")
        self.query_one("#status", Static).update(Text("\n").join([first, second]))

    def _charts(self, stream: StreamView) -> None:
        points = stream.history
        held = [[stream.held_at(p[4])] for p in points]
        series = {"heap": (chart(points, 2), stream.totals.get("heap", 0), "heap"),
                  "rss": (chart(points, 3), stream.rss, "RSS"),
                  "held": (chart(held, 0), stream.held_at(int(stream.totals.get("n_events", 0))),
                           "allocator-held")}
        for name, (data, now_value, title) in series.items():
            top = max(data) if data else 0
            label = f"{title} {human(now_value) if now_value is not None else 'unknown'}" \
                    f" · chart max {human(top)}"
            self.query_one(f"#{name}-label", Static).update(Text(label))
            self.query_one(f"#{name}-chart", Sparkline).data = data or [0.0]

    def _threads(self, stream: StreamView, now: float) -> None:
        table = self.query_one("#threads", DataTable)
        table.clear()
        for th in stream.threads(now)[:50]:
            table.add_row(right(str(th["tid"])), plain(th["name"] + (" (main)" if th["main"] else "")),
                          Text(th["state"]), right(f"{th['cpu_seconds']:.1f}"),
                          right(human(th["native_live_bytes"])))

    def _processes(self, streams: List[StreamView], now: float) -> None:
        table = self.query_one("#procs", DataTable)
        table.clear()
        for i, s in enumerate(streams):
            t = s.totals
            table.add_row(Text("▶" if i == self.selected else " "), right(str(s.pid)),
                          right(str(s.ppid)), plain(" ".join(s.argv(now))[:40]),
                          right(human(t.get("heap", 0))), right(human(t.get("peak_heap", 0))),
                          right(human(s.rss)), Text("running" if s.alive else "ended"))

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
                log.write(plain(line))


def run(socket_path: str, output_log: Optional[str] = None) -> None:
    LiveApp(socket_path, output_log).run()
