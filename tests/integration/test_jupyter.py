"""Jupyter: a real notebook executed (nbclient) against the kernel `memtrace jupyter
install` registers; %%memtrace cells show their own numbers and an offline flame
graph, %memtrace_report the kernel's, and the kernel's capture has each cell."""

import html
import json
import re
import sys

import pytest

from helpers import ARENA_SLACK, ba, memtrace

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    "%load_ext tracer",
    "%%memtrace\n"
    "kept = bytearray(40_000_000)\n"
    "tmp = bytearray(30_000_000)\n"
    "del tmp\n"
    "later = bytearray(10_000_000)",
    "%%memtrace loading --no-flame\nmore = bytearray(5_000_000)",
    "%memtrace_report --no-flame",
]
# In [2]'s peak: the 40 MB and 30 MB blocks, live together
CELL_PEAK = ba(40_000_000) + ba(30_000_000)


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    out = memtrace("jupyter", "install", "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    spec = json.loads((prefix / "share/jupyter/kernels/memtrace/kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (memtrace)"
    assert spec["argv"][:5] == [sys.executable, "-m", "tracer", "jupyter", "kernel"]
    return prefix / "share" / "jupyter"


def execute(cells, folder, kernel_name):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbclient.NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=180,
        startup_timeout=120,
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    return nb


def outputs(cell, mime):
    return [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]


@pytest.fixture(scope="module")
def notebook(kernel_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook")
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(kernel_path))
    try:
        nb = execute(CELLS, folder, "memtrace")
    finally:
        mp.undo()
    return nb, folder


def test_cell_summary_counts_the_cell(notebook):
    nb, _folder = notebook
    (text,) = outputs(nb.cells[1], "text/plain")
    peak = int(re.search(r"peak [\d.]+ MiB \(([\d,]+) bytes\)", text).group(1).replace(",", ""))
    # the 40 MB and 30 MB blocks were live together; 10 MB came after the 30 MB went
    assert CELL_PEAK <= peak < CELL_PEAK + ARENA_SLACK
    lines = text.split("lines holding the most at the peak:")[1].splitlines()
    assert "38.1 MiB  In [2], line 1: kept = bytearray(40_000_000)" in lines[1]
    assert "28.6 MiB  In [2], line 2: tmp = bytearray(30_000_000)" in lines[2]
    (named,) = outputs(nb.cells[2], "text/plain")
    assert named.startswith("memtrace: cell 'loading' — peak 4.8 MiB (5,00")


def test_cell_flame_graph_is_embedded_and_offline(notebook):
    nb, _folder = notebook
    (page,) = outputs(nb.cells[1], "text/html")
    frame = re.search(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts"', page)
    assert frame is not None
    report = html.unescape(frame.group(1))
    assert report.startswith("<!DOCTYPE html>") and "default-src 'none'" in report
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", report)
    data = json.loads(
        re.search(r'<script id="memtrace-data" type="application/json">(.*?)</script>', report, re.S).group(1)
    )
    assert CELL_PEAK <= data["peak_heap"] < CELL_PEAK + ARENA_SLACK  # the cell's own peak
    assert not outputs(nb.cells[2], "text/html")[0].count("<iframe")  # --no-flame


def test_kernel_report_lists_the_cells(notebook):
    nb, _folder = notebook
    (text,) = outputs(nb.cells[3], "text/plain")
    assert text.startswith("memtrace: this kernel so far — peak")
    cells = text.split("cells run with %%memtrace:")[1].splitlines()[2:]
    assert [c.split()[-2:] for c in cells][:2] == [["In", "[2]"], ["1", "loading"]]


def test_kernel_capture_has_each_cell(notebook):
    _nb, folder = notebook
    (capture,) = folder.glob("memtrace-kernel-*.mtrace")
    out = memtrace("stats", "--json", capture)
    assert out.returncode == 0, out.stderr  # complete: the kernel shut down cleanly
    rows = {r["name"]: r for r in json.loads(out.stdout)["regions"]}
    assert rows["In [2]"]["kind"] == rows["loading"]["kind"] == "cell"
    assert rows["In [2]"]["live_at_end_bytes"] >= ba(40_000_000) + ba(10_000_000)
    by_line = json.loads(memtrace("stats", "--json", "--region", "In [2]", capture).stdout)
    held = sorted(r["peak_bytes"] for r in by_line["by_line"] if r["peak_bytes"] > 1_000_000)
    assert held == [ba(30_000_000), ba(40_000_000)]


def test_magics_outside_memtrace_say_so(tmp_path):
    nb = execute(["%load_ext tracer", "%%memtrace\nx = 1 + 1\nprint(x)"], tmp_path, "python3")
    streams = {o["name"]: o["text"] for o in nb.cells[1].outputs if o["output_type"] == "stream"}
    assert streams["stdout"] == "2\n"
    assert "does not run under memtrace" in streams["stderr"]
