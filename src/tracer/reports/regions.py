"""`memtrace regions`: a capture's regions (tracer.region, tests, notebook cells)
with their own numbers, as a terminal table (also under the run summary)."""

from typing import List, Optional

from tracer.analyze import regions as rg
from tracer.analyze.model import Model
from tracer.reports.text import clean, human

HEADER = f"{'peak':>10}  {'allocated':>10}  {'left live':>10}  {'instances':>9}  "
EXPLAIN = (
    "peak: the most bytes allocated inside it that were live at one moment; left live: "
    "still live as each instance ended"
)


def rows(model: Model, kind: Optional[str] = None, key: str = "peak_bytes") -> List[dict]:
    out = [r for r in rg.table(model) if kind is None or r["kind"] == kind]
    out.sort(key=lambda r: (-r[key], r["name"]))
    return out


def lines(model: Model, selected: List[dict], label: str = "region") -> List[str]:
    """The table's lines for the given rows (pid shown when several processes)."""
    many = len({r["pid"] for r in selected}) > 1
    out = [HEADER + ("  pid    " if many else "") + label]
    for r in selected:
        still = " (open at the end)" if r["open_at_end"] else ""
        pid = f"  {r['pid']:<7}" if many else ""
        out.append(
            f"{human(r['peak_bytes']):>10}  {human(r['allocated_bytes']):>10}  "
            f"{human(r['live_at_end_bytes']):>10}  {r['instances']:>9}{pid}  "
            f"{clean(r['name'])}{still}"
        )
    return out


def render(model: Model, out, kind: Optional[str] = None, top: int = 0) -> None:
    selected = rows(model, kind)
    if not selected:
        out.write("no regions in this capture (tracer.region marks them: docs/regions.md)\n")
        return
    out.write(f"regions by peak ({EXPLAIN}):\n")
    for line in lines(model, selected[:top] if top else selected):
        out.write(f"  {line}\n")


def render_tests(model: Model, out, top: int = 10) -> None:
    """The end of `memtrace pytest`: the tests with the highest peak, and those that
    left the most live (each test's call is a region of kind "test")."""
    tests = rows(model, "test")
    path = model.capture.path
    if not tests:
        out.write(f"memtrace: no test ran under memtrace (capture: {path})\n")
        return
    out.write(f"{' memtrace: ' + str(len(tests)) + ' tests, each its own region ':=^80}\n")
    out.write("tests with the highest peak (the most bytes allocated inside the test, live at one moment):\n")
    for line in lines(model, tests[:top], label="test"):
        out.write(f"  {line}\n")
    leaving = [r for r in rows(model, "test", key="live_at_end_bytes") if r["live_at_end_bytes"] > 0]
    if leaving:
        out.write("tests that left the most live when they ended (allocated inside the test):\n")
        for line in lines(model, leaving[:top], label="test"):
            out.write(f"  {line}\n")
    out.write(
        f"capture: {path}\n"
        f"one test: memtrace summary --region TEST {path}  (or flamegraph, tree, lines ...)\n"
    )
