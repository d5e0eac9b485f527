"""The flame graph fits the window and opens on the user's code, in a real headless
Chromium at 1400x900.

GIVEN a program run as `python -m unittest` (its test method sits under ~20 frames
of unittest and runpy) that imports a chain of modules 15 deep (each import ~7
frames of importlib) and holds most of its memory in one line of the test;
WHEN its HTML report opens; THEN the box of that line — the top line of the
page's own table — is on screen without scrolling, import machinery is one box
per run until the page is asked to show it, and the graph is no taller than the
window.
"""

import sys

import pytest

from helpers import launch_chromium, line_of, memtrace, playwright_or_skip

playwright = playwright_or_skip()

WIDTH, HEIGHT = 1400, 900
DEPTH = 15
PROGRAM = """
import unittest
import deep.m0

KEEP = []


class Big(unittest.TestCase):
    def test_big(self):
        KEEP.append([bytearray(1_000_000) for _ in range(40)])   # TOP
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "deep").mkdir()
    (tmp / "deep" / "__init__.py").write_text("")
    for i in range(DEPTH):
        follow = f"import deep.m{i + 1}\n" if i + 1 < DEPTH else ""
        (tmp / "deep" / f"m{i}.py").write_text(follow + "KEEP = bytearray(200_000)\n")
    (tmp / "prog.py").write_text(PROGRAM)
    cap = tmp / "u.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", sys.executable, "-m", "unittest", "prog", cwd=tmp)
    assert run.returncode == 0, run.stderr
    return tmp / "prog.py", tmp / "u.mtrace.html"


@pytest.fixture(scope="module")
def page(report):
    _prog, html = report
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.problems = []
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_function("window.memtrace && window.memtrace.ready")
        yield page
        browser.close()


def on_screen(page, function, file, line):
    """The frame's box in viewport pixels (None if it is not drawn)."""
    box = page.evaluate("([n, f, l]) => window.memtrace.boxOf(n, f, l)", [function, file, line])
    if box is None:
        return None
    canvas = page.locator("#flame").bounding_box()
    return {
        "left": canvas["x"] + box["x"],
        "top": canvas["y"] + box["y"],
        "width": box["w"],
        "bottom": canvas["y"] + box["y"] + box["h"],
    }


def test_top_line_is_visible_without_scrolling(page, report):
    prog, _html = report
    top = page.evaluate("JSON.parse(document.getElementById('memtrace-data').textContent).lines[0]")
    assert (top["file"], top["line"]) == (str(prog), line_of(prog, "# TOP"))
    box = on_screen(page, top["function"], top["file"], top["line"])
    assert box is not None, page.evaluate("window.memtrace.state()")
    assert page.evaluate("window.scrollY") == 0
    assert 0 <= box["top"] and box["bottom"] <= HEIGHT, box
    assert box["left"] >= 0 and box["width"] > WIDTH / 3, box  # most of the graph's width
    assert page.problems == []


def test_graph_fits_the_window(page):
    canvas = page.locator("#flame").bounding_box()
    assert canvas["y"] + canvas["height"] <= HEIGHT
    state = page.evaluate("window.memtrace.state()")
    assert state["zoomName"] != "all" and state["zoom"] == state["focus"]  # opened on the user's code


def test_import_machinery_is_folded_until_asked(page, report):
    prog, _html = report
    names = page.evaluate("window.memtrace.names()")
    assert "[import machinery]" in names and "_find_and_load" not in names
    page.check("#imports")
    try:
        names = page.evaluate("window.memtrace.names()")
        assert "_find_and_load" in names and "[import machinery]" not in names
        # the same top line is still shown on its own caller's node
        top = page.evaluate("JSON.parse(document.getElementById('memtrace-data').textContent).lines[0]")
        box = on_screen(page, top["function"], top["file"], top["line"])
        assert box is not None and box["bottom"] <= HEIGHT
    finally:
        page.uncheck("#imports")


def test_reset_shows_everything_and_focus_returns(page):
    page.click("#reset")
    assert page.evaluate("window.memtrace.state()")["zoomName"] == "all"
    canvas = page.locator("#flame").bounding_box()
    assert canvas["y"] + canvas["height"] <= HEIGHT
    page.click("#focus")
    state = page.evaluate("window.memtrace.state()")
    assert state["zoom"] == state["focus"] != 0
    assert page.problems == []
