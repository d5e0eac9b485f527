"""Strings from the traced program cannot inject into reports.

Function names, file names (virtual and real), argv, a thread name and a library
file name carry `</script><img src=x onerror=alert(1)>`, `"'&<>`, U+2028/U+2029, a
bidi override and ANSI/OSC escapes (`ESC]8;;…BEL` hyperlinks, `ESC[2J`). Then:

- terminal reports (run summary, summary, tree, lines, log, reconcile, diff) contain
  no control, format or separator character but newline;
- `stats --json` has no raw `<`, `>` or `&` (all `\\u003c`-style) and still carries
  the exact strings;
- the HTML report parses with exactly the template's elements (2 scripts, no img),
  its JSON block has `\\u003c`, and in Chromium nothing runs, no element is added,
  whichever view is shown, and the strings appear as text.
"""

import html.parser
import json
import sys

import pytest

from helpers import TARGETS, build, launch_chromium, memtrace, playwright_or_skip, terminal_safe

ANSI = "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\x1b[2J\x1b[31m"
HOSTILE = "</script><img src=x onerror=alert(1)>\"'&<>\u2028\u2029\u202e" + ANSI
THREAD = "<img>\x1b]0;x\x07\u2028"[:11]  # 15 bytes at most (prctl)
LIBNAME = "lib<img src=x onerror=alert(2)>\x1b[31m\u2028.so"
REALFILE = "h<img src=x onerror=alert(3)>\"'&\u2028\x1b]8;;x\x07.py"

PROGRAM = r"""
import ctypes, runpy, sys, types
HOSTILE, LIB, REALFILE, THREAD = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
src = "def f():\n    return bytearray(3_000_000)\n"
scope = {}
exec(compile(src, HOSTILE + ".py", "exec"), scope)
code = scope["f"].__code__.replace(co_name=HOSTILE, co_qualname=HOSTILE)
hostile = types.FunctionType(code, scope)
kept = [hostile()]
kept.append(runpy.run_path(REALFILE)["data"])
ctypes.CDLL(LIB).spawn_named(THREAD.encode())
"""

REAL_SOURCE = 'data = [bytearray(1_000_000) for i in range(20)]   # "\x1b[31m" <img src=x>\n'


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inject")
    lib = build(TARGETS / "named_thread.c", tmp / LIBNAME, "-shared", "-fPIC", "-pthread")
    (tmp / REALFILE).write_text(REAL_SOURCE.replace("\\x1b", "\x1b"))
    script = tmp / "prog.py"
    script.write_text(PROGRAM)
    cap = tmp / "h.mtrace"
    run = memtrace(
        "run", "-o", cap, "--", sys.executable, script, HOSTILE, lib, tmp / REALFILE, THREAD, cwd=tmp
    )
    assert run.returncode == 0, run.stderr
    return tmp, cap, run


def test_terminal_reports_have_no_control_characters(hostile_run):
    _tmp, cap, run = hostile_run
    outputs = {"run summary": run.stderr}
    for command in (
        ["summary"],
        ["tree"],
        ["tree", "--total", "--min-share", "0"],
        ["lines"],
        ["log", "--min-size", "700000"],
        ["reconcile"],
        ["diff", cap],
    ):
        out = memtrace(command[0], cap, *command[1:])
        assert out.returncode == 0, (command, out.stderr)
        outputs[" ".join(map(str, command))] = out.stdout + out.stderr
    # the hostile strings did reach these reports (as '?'s), so the check means something
    assert "</script><img src=x onerror=alert(1)>" in outputs["tree"]
    assert "<img>" in outputs["tree --total --min-share 0"]  # the thread name
    assert "lib<img src=x onerror=alert(2)>" in outputs["log --min-size 700000"]  # the library name
    assert "h<img src=x onerror=alert(3)>" in outputs["lines"]  # the real file
    for name, text in outputs.items():
        bad = sorted({repr(c) for c in text if not terminal_safe(c)})
        assert terminal_safe(text), (name, bad)


def test_stats_json_escapes_and_keeps_the_strings(hostile_run):
    _tmp, cap, _run = hostile_run
    out = memtrace("stats", "--json", cap)
    assert out.returncode == 0
    text = out.stdout
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\\u003cimg" in text and "\\u001b" in text and "\x1b" not in text
    st = json.loads(text)
    assert any(r["function"] == HOSTILE for r in st["by_line"])
    assert any(r["file"] == HOSTILE + ".py" for r in st["by_line"])
    assert st["command"][2] == HOSTILE
    assert any(LIBNAME == r["library"] for r in st["by_library"])


class Elements(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1


def template_tags():
    from importlib import resources

    p = Elements()
    p.feed(resources.files("tracer.reports").joinpath("report.html").read_text())
    return p.tags


def test_html_parses_to_the_template_elements(hostile_run):
    _tmp, cap, _run = hostile_run
    page = (cap.parent / "h.mtrace.html").read_text()
    p = Elements()
    p.feed(page)
    assert p.tags == template_tags()
    assert p.tags.get("img", 0) == 0 and p.tags["script"] == 2
    start = page.index('id="memtrace-data"')
    block = page[start : page.index("</script>", start)]
    assert "\\u003c/script\\u003e\\u003cimg" in block and "<img" not in block
    assert "\u2028" not in page and "\x1b" not in page


def test_html_in_chromium(hostile_run):
    playwright = playwright_or_skip(module_level=False)
    _tmp, cap, _run = hostile_run
    page_path = cap.parent / "h.mtrace.html"
    problems = []
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("dialog", lambda d: (problems.append("dialog " + d.message), d.dismiss()))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_function("window.memtrace && window.memtrace.ready")
            views = page.evaluate("Array.from(document.querySelectorAll('#view option')).map(o => o.value)")
            assert "threads" in views
            for view in views:
                page.select_option("#view", view)
                # sweep the mouse over the flame graph: every tooltip is drawn
                box = page.locator("#flame").bounding_box()
                for i in range(12):
                    page.mouse.move(
                        box["x"] + 5 + i * (box["width"] - 10) / 11,
                        box["y"] + min(box["height"] - 5, 15 + 17 * i),
                    )
                assert page.evaluate("document.querySelectorAll('img').length") == 0
                assert page.evaluate("document.scripts.length") == 2
            page.fill("#search", "<img")
            names = page.evaluate("window.memtrace.names()")
            text = page.evaluate("document.body.textContent")
        finally:
            browser.close()
    assert problems == []
    assert any(HOSTILE in n for n in names)
    assert "</script><img src=x onerror=alert(1)>" in text
