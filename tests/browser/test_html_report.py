"""The HTML report in a real headless Chromium: it renders, clicking zooms, searching
highlights, nothing logs an error, nothing is fetched, and nothing from the traced
program runs in the page."""

import json
import sys

import pytest

from helpers import launch_chromium, memtrace, playwright_or_skip

playwright = playwright_or_skip()

HOSTILE = "</script><img src=x onerror=alert(1)>\"'&\u2028<textarea>"

PROGRAM = """
import sys, types
import numpy as np

def build():
    keep = [np.zeros(1_000_000) for i in range(4)]   # 32 MB of NumPy data
    return keep

# a function and a file whose names try to break out of the page
source = "def f():\\n    return bytearray(3_000_000)\\n"
scope = {}
exec(compile(source, HOSTILE_FILE, "exec"), scope)
hostile = types.FunctionType(scope["f"].__code__.replace(co_name=HOSTILE_NAME, co_qualname=HOSTILE_NAME)
                             if sys.version_info >= (3, 11) else
                             scope["f"].__code__.replace(co_name=HOSTILE_NAME), scope)
kept = [build(), hostile()]
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    script = tmp / "hostile.py"
    script.write_text(f"HOSTILE_NAME = {HOSTILE!r}\nHOSTILE_FILE = {HOSTILE + '.py'!r}\n" + PROGRAM)
    cap = tmp / "h.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", sys.executable, script, HOSTILE, cwd=tmp)
    assert run.returncode == 0, run.stderr
    html = tmp / "h.mtrace.html"
    assert html.exists()
    return cap, html


@pytest.fixture(scope="module")
def page(report):
    _cap, html = report
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("dialog", lambda d: (page.problems.append("dialog: " + d.message), d.dismiss()))
        page.requests = []
        page.on("request", lambda r: page.requests.append(r.url))
        page.goto(html.as_uri())
        page.wait_for_function("window.memtrace && window.memtrace.ready")
        yield page
        browser.close()


def painted(page, colour=None) -> int:
    """How many canvas pixels are painted (or have exactly this #rrggbb colour)."""
    return page.evaluate(
        """(colour) => {
        const c = document.getElementById('flame');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        const want = colour && [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
        for (let i = 0; i < d.length; i += 4) {
            if (want ? (d[i] === want[0] && d[i+1] === want[1] && d[i+2] === want[2]) : d[i+3] > 0) n++;
        }
        return n;
    }""",
        colour,
    )


def test_renders_flame_graph(page):
    assert painted(page) > 10_000
    state = page.evaluate("window.memtrace.state()")
    assert state["nodes"] > 5 and state["boxes"] > 5
    assert page.locator("#lines tr").count() > 2
    assert page.problems == []


def test_click_zooms(page):
    box = page.evaluate("window.memtrace.boxOf('build')")
    assert box, "the frame of build() is drawn"
    # bring the frame into the viewport, then click its middle
    page.evaluate("(y) => window.scrollTo(0, document.getElementById('flame').offsetTop + y - 300)", box["y"])
    canvas = page.locator("#flame").bounding_box()
    page.mouse.click(canvas["x"] + box["x"] + box["w"] / 2, canvas["y"] + box["y"] + 5)
    state = page.evaluate("window.memtrace.state()")
    assert state["zoomName"] == "build"
    assert "showing" in page.locator("#flamenote").inner_text()
    page.click("#reset")
    assert page.evaluate("window.memtrace.state()")["zoom"] == 0


def test_search_highlights(page):
    page.fill("#search", "build")
    status = page.locator("#status").inner_text()
    assert "frames match" in status and not status.startswith("0 ")
    assert painted(page, "#d046c8") > 100
    page.fill("#search", "")
    assert painted(page, "#d046c8") == 0


def test_no_network_and_no_errors(page):
    assert [u for u in page.requests if not u.startswith("file:")] == []
    assert page.problems == []


def test_hostile_strings_stay_text(page, report):
    # no element was injected, no script ran, and the strings show up as text
    assert page.locator("img").count() == 0
    assert page.locator("textarea").count() == 0
    assert page.evaluate("document.scripts.length") == 2
    assert page.problems == []
    assert HOSTILE in page.title()
    names = page.evaluate("window.memtrace.names()")
    assert any(HOSTILE in n for n in names)
    raw = report[1].read_text()
    assert "<img" not in raw and "</textarea>" not in raw


def test_hostile_strings_in_other_reports(report):
    cap, _ = report
    stats = memtrace("stats", "--json", cap)
    assert "<img" not in stats.stdout and "\\u003cimg" in stats.stdout
    parsed = json.loads(stats.stdout)
    assert any(HOSTILE in r["function"] for r in parsed["by_line"])
    summary = memtrace("summary", cap)
    assert "\u2028" not in summary.stdout  # control/separator characters stripped
