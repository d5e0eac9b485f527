"""A %%memtrace cell's flame graph as a notebook shows it — the report in an iframe's
srcdoc — in a real headless Chromium: it renders the region's frames, fetches nothing,
logs no error, and its script cannot reach the page around it."""

import json
import sys

import pytest

from helpers import launch_chromium, memtrace, playwright_or_skip

playwright = playwright_or_skip()
pytest.importorskip("IPython")

PROGRAM = """
import tracer

def outside():
    return bytearray(9_000_000)

def grow_inside():
    return [bytearray(1_000_000) for _ in range(6)]

with tracer.region("cell"):
    kept = grow_inside()
other = outside()
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from tracer.analyze.model import load
    from tracer.analyze.regions import focus
    from tracer.jupyter.magics import frame, summary

    tmp = tmp_path_factory.mktemp("frame")
    (tmp / "prog.py").write_text(PROGRAM)
    run = memtrace(
        "run", "-q", "--no-report", "-o", tmp / "p.mtrace", "--", sys.executable, tmp / "prog.py", cwd=tmp
    )
    assert run.returncode == 0, run.stderr
    model = focus(load(str(tmp / "p.mtrace")), "cell")
    notebook = tmp / "notebook.html"
    notebook.write_text(
        f"<!DOCTYPE html><html><body><div id='outside'>notebook</div>"
        f"<pre>{summary(model, 'cell', {})}</pre>{frame(model)}</body></html>"
    )
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.problems, page.requests = [], []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("request", lambda r: page.requests.append(r.url))
        page.goto(notebook.as_uri())
        inner = next(f for f in page.frames if f != page.main_frame)
        inner.wait_for_function("window.memtrace && window.memtrace.ready")
        # the iframe gets its width after its script ran: the graph is drawn again then
        inner.wait_for_function("window.memtrace.state().boxes > 2", timeout=10_000)
        yield page, inner
        browser.close()


def test_the_cells_frames_are_drawn(page):
    _page, inner = page
    state = inner.evaluate("window.memtrace.state()")
    assert state["boxes"] > 2
    names = inner.evaluate("window.memtrace.names()")
    assert any("grow_inside" in n for n in names)
    assert not any("outside" == n.split(" ")[0] for n in names)  # not the region's
    data = json.loads(inner.evaluate("document.getElementById('memtrace-data').textContent"))
    assert data["peak_heap"] >= 6_000_006


def test_offline_and_sandboxed(page):
    outer, inner = page
    assert [u for u in outer.requests if not u.startswith(("file:", "about:"))] == []
    assert outer.problems == []
    reach = inner.evaluate(
        "() => { try { return window.parent.document.body.innerHTML } catch (e) { return 'blocked' } }"
    )
    assert reach == "blocked"
