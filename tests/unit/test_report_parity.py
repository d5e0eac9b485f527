"""The reports made from arrays give exactly what walking each site's stack gives.

GIVEN synthetic captures (written with the capture writer, read back by the
reader) whose stack tries have shared frames, lines merging under one caller,
nodes never described, codes never described, repeated node records, threads
without Python frames, libraries sharing a file name and several processes;
WHEN each report is made; THEN it equals the straightforward reference of
tests/report_reference.py: every number, every row and the order of ties.
"""

import io
import json
import random
import struct

import numpy as np
import pytest

import report_reference as ref
from tracer import _format as fmt
from tracer.analyze import stacks as st
from tracer.analyze.model import load
from tracer.record.capture_writer import CaptureWriter
from tracer.reports import export, flame, flame_layout, jsontext, lines, tables, tree
from tracer.reports.flame import METRIC_TITLES

LIBRARY_PATHS = ["/usr/lib/python3.11", "/site/"]
FILES = [
    "/usr/lib/python3.11/json/decoder.py",
    "<frozen importlib._bootstrap>",
    "/srv/app/main.py",
    "/srv/app/util.py",
    "<string>",
    "/site/pkg/mod.py",
    "/srv/app/données.py",
    "/sitepackages/not_a_library.py",
]
NAMES = ["<module>", "load", "decode", "run", "f", "_find_and_load", "g"]
LIBS = {1: "/a/libx.so.1", 2: "/usr/lib/libpython3.11.so", 3: "/b/libx.so.1"}  # 4: never named


def record(rtype: int, payload: bytes) -> bytes:
    data = struct.pack("<HH", rtype, len(payload)) + payload
    return data + b"\0" * (-len(data) % 4)


def make_meta(rnd: random.Random, pid: int, n_nodes: int) -> bytes:
    recs = []
    codes = list(range(1, 25))
    for cid in codes:  # several codes share a (file, function): their frames merge
        file, name = rnd.choice(FILES).encode(), rnd.choice(NAMES).encode()
        recs.append(record(fmt.META_CODE, struct.pack("<IiHH", cid, 1, len(file), len(name)) + file + name))
    nodes = []
    for nid in range(1, n_nodes + 1):
        r = rnd.random()
        parent = 0 if nid < 4 or r < 0.08 else (50_000 + nid if r < 0.11 else rnd.randrange(1, nid))
        code = 999 if rnd.random() < 0.03 else rnd.choice(codes)  # 999: never described
        nodes.append(record(fmt.META_NODE, struct.pack("<IIIi", nid, parent, code, rnd.randrange(1, 5))))
    # a few nodes described twice (the later record counts), records in any order
    for nid in rnd.sample(range(1, n_nodes + 1), 5):
        nodes.append(
            record(fmt.META_NODE, struct.pack("<IIIi", nid, rnd.randrange(0, nid), rnd.choice(codes), 7))
        )
    rnd.shuffle(nodes)
    recs += nodes
    for lid, path in LIBS.items():
        recs.append(record(fmt.META_LIB, struct.pack("<HHIQ", lid, 0, 0, 0) + path.encode()))
    for tid, name in ((pid, "python"), (pid + 1, "worker")):
        recs.append(record(fmt.META_THREAD, struct.pack("<I", tid) + name.encode()))
    recs.append(
        record(fmt.META_TEXT, struct.pack("<H", fmt.TEXT_LIBRARY_PATHS) + "\n".join(LIBRARY_PATHS).encode())
    )
    return b"".join(recs)


def make_sites(rnd: random.Random, pid: int, n_nodes: int, n: int) -> np.ndarray:
    sites = np.zeros(n, fmt.SITE_DTYPE)
    for s in sites:
        r = rnd.random()
        s["stack"] = 0 if r < 0.1 else (90_000 if r < 0.13 else rnd.randrange(1, n_nodes + 1))
        s["tid"] = pid + rnd.randrange(3)
        s["lib"] = rnd.randrange(5)
        s["kind"] = rnd.choice([1, 1, 2, 3, 5, 11, 13, 12, 10])
        s["flags"] = rnd.choice([0, fmt.FLAG_NUMPY, fmt.FLAG_ANON, fmt.FLAG_ANON | fmt.FLAG_NUMPY])
        # few distinct values: ties in every ordering
        s["alloc_bytes"] = rnd.choice([0, 100, 200, 300])
        s["n_allocs"] = rnd.randrange(4)
        s["live_bytes"] = rnd.choice([-100, 0, 0, 100, 200])
        s["live_count"] = rnd.randrange(3)
        s["peak_bytes"] = rnd.choice([0, 100, 200, 1 << 40])
        s["peak_count"] = rnd.randrange(3)
        s["temp_bytes"] = rnd.choice([0, 64])
        s["temp_count"] = rnd.randrange(2)
    return sites


def write_capture(path, seed: int, processes) -> str:
    """processes: (sid, pid, nodes, sites) of each traced process."""
    rnd = random.Random(seed)
    writer = CaptureWriter(str(path))
    writer.json_chunk(
        fmt.CHUNK_INFO, 0, {"command": ["python", "app.py"], "cwd": "/srv/app", "start_time": 1700000000.5}
    )
    for sid, pid, n_nodes, n_sites in processes:
        writer.json_chunk(fmt.CHUNK_PROCESS, sid, {"pid": pid, "ppid": 1, "argv": ["python", f"p{sid}"]})
        writer.chunk(fmt.CHUNK_META, sid, make_meta(rnd, pid, n_nodes))
        head = json.dumps({k: 0 for k in fmt.TOTALS_FIELDS}).encode()
        writer.chunk(
            fmt.CHUNK_AGGREGATE,
            sid,
            len(head).to_bytes(4, "little"),
            head,
            make_sites(rnd, pid, n_nodes, n_sites).tobytes(),
        )
        writer.json_chunk(fmt.CHUNK_PROCESS_END, sid, {"how": "exit", "exit_code": 0})
    writer.json_chunk(fmt.CHUNK_END, 0, {"exit_code": 0, "main_pid": processes[0][1], "duration": 2.5})
    writer.close()
    return str(path)


CAPTURES = {
    "one process": [(1, 100, 300, 700)],
    "three processes, two of one pid (exec)": [(1, 100, 200, 400), (2, 101, 150, 300), (3, 101, 80, 200)],
    "one pid twice (the trees merge)": [(1, 100, 120, 300), (2, 100, 120, 300)],
}


@pytest.fixture(scope="module", params=sorted(CAPTURES))
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "synthetic.mtrace"
    return load(write_capture(path, len(request.param), CAPTURES[request.param]))


def test_the_synthetic_captures_exercise_the_hard_cases(model):
    procs = ref.refs(model)
    stacks = [int(s) for p in procs for s in p.heap_sites()["stack"]]
    frames = [f for p in procs for s in stacks for f in p.stack(s)]
    assert ref.LOST in frames and 0 in stacks
    assert any(f[0] == "<unknown>" and f[2] == "<unknown>" for f in frames)  # code never described
    assert any(p.is_library(f[0]) for p in procs for f in frames)
    assert sum(len(p.heap_sites()) for p in procs) < sum(len(p.sites) for p in procs)


@pytest.mark.parametrize("user_code", [False, True])
def test_by_line(model, user_code):
    expected = ref.by_line(ref.refs(model), user_code)
    got = tables.by_line(model, user_code)
    assert len(got) > 20 and any(r["peak_bytes"] >= 1 << 40 for r in got)
    assert ref.as_json(got) == ref.as_json(expected)


def test_by_library(model):
    expected = ref.by_library(ref.refs(model))
    assert tables.by_library(model) == expected
    assert any(r["library"] == "libx.so.1" for r in expected)


@pytest.mark.parametrize("metric", ["peak", "leaks", "total", "temporary"])
@pytest.mark.parametrize("by_thread", [False, True])
@pytest.mark.parametrize("min_share, max_nodes", [(0.0005, 20000), (0.05, 20000), (0.001, 15)])
def test_flame_graph_data(model, metric, by_thread, min_share, max_nodes):
    expected = ref.flatten(ref.build_tree(ref.refs(model), metric, by_thread), min_share, max_nodes)
    got = flame_layout.flatten(flame.build_tree(model, metric, by_thread), min_share, max_nodes)
    assert len(got["parent"]) > (20 if min_share < 0.01 and max_nodes > 100 else 1)
    assert ref.as_json(got) == ref.as_json(expected)


def test_trees_made_together_equal_trees_made_alone(model):
    together = flame.build_trees(model, ("peak", "leaks", "total"))
    for metric, made in together.items():
        alone = flame.build_tree(model, metric)
        assert flame_layout.flatten(made, 0.0, 10**6) == flame_layout.flatten(alone, 0.0, 10**6)


@pytest.mark.parametrize("metric", ["peak", "total"])
@pytest.mark.parametrize("min_share", [0.0, 0.01, 0.3])
def test_tree_text(model, metric, min_share):
    out = io.StringIO()
    tree.render(model, out, metric, min_share=min_share)
    expected = ref.tree_text(ref.build_tree(ref.refs(model), metric), METRIC_TITLES[metric], min_share)
    assert out.getvalue() == expected
    assert out.getvalue().count("\n") > (20 if min_share == 0 else 0)


@pytest.mark.parametrize("metric", ["peak", "leaks", "total"])
def test_speedscope(model, metric):
    out = io.StringIO()
    export.speedscope(model, out, metric)
    doc = json.loads(out.getvalue())
    frames, samples, weights = ref.speedscope_samples(ref.refs(model), metric)
    assert [
        tuple(f.get(k, d) for k, d in (("name", ""), ("file", ""), ("line", 0)))
        for f in doc["shared"]["frames"]
    ] == frames
    assert doc["profiles"][0]["samples"] == samples and doc["profiles"][0]["weights"] == weights
    assert out.getvalue() == json.dumps(doc)  # the standard library's text, exactly


@pytest.mark.parametrize("metric", ["peak", "total"])
def test_pprof(model, metric):
    out = io.BytesIO()
    export.pprof(model, out, metric)
    names = {"peak": ("inuse_objects", "inuse_space"), "total": ("alloc_objects", "alloc_space")}[metric]
    body = ref.pprof_body(ref.refs(model), metric, *names)
    times = ref._field_varint(9, int(1700000000.5 * 1e9)) + ref._field_varint(10, int(2.5 * 1e9))
    assert ref.gunzip(out.getvalue()) == body + times


@pytest.mark.parametrize("source", ["/srv/app/main.py", "<string>", "/srv/app/données.py"])
def test_lines(model, source):
    expected = ref.line_table(ref.refs(model), source)
    assert expected and lines.line_table(model, source) == expected


def test_source_files(model):
    expected = ref.sources(ref.refs(model))
    assert len(expected) >= 2 and lines.sources(model) == expected


def test_stack_walks(model):
    """Process.stack and user_frame, per node, as the walk gives them."""
    for proc, rproc in zip(model.processes, ref.refs(model)):
        for node in list(rproc.nodes)[:80] + [0, 90_000]:
            assert [(f.file, f.line, f.function) for f in proc.stack(node)] == rproc.stack(node)
            user = proc.user_frame(node)
            assert (user and (user.file, user.line, user.function)) == rproc.user_frame(node)


def test_cyclic_parents_end_in_a_lost_frame():
    """A corrupt capture whose parent links go round: no hang, every stack ends."""
    nodes = np.zeros(4, st.NODE_RECORD)
    nodes["id"], nodes["parent"], nodes["code"] = [1, 2, 3, 4], [2, 3, 1, 1], 1
    table = st.StackTable(nodes, {1: ("a.py", "f", 1)})
    starts, frames = table.paths(table.rows([4, 1]))
    assert frames[-1] == 0 and frames[0] == st.LOST  # 4's frames: lost, then 1 ... 4
    assert (table.depth <= st.MAX_STACK_DEPTH).all() and (table.parent != 0).all()


def test_indented_json_text_is_the_standard_librarys():
    doc = {
        "a": [],
        "b": {},
        "c": [1.5, float("nan"), float("inf"), -float("inf"), True, False, None, '\u2028</script>"\\é'],
        5: {"x": [[], [{}]]},
        1.5: 1,
        None: 2,
        True: [{"k": (1, 2)}],
        "rows": [{"file": "x", "line": 3, "alloc": {"malloc": 12}}] * 3,
    }
    for indent in (1, 2):
        assert jsontext.dumps(doc, indent) == json.dumps(doc, indent=indent)
    with pytest.raises(TypeError):
        jsontext.dumps({"x": object()})


def test_group_sums_are_exact_beyond_float_precision():
    """Byte sums stay exact integers where float64 (np.bincount) would round."""
    ids = np.array([0, 1, 0, 1, 2])
    values = np.array([2**62, 1, 2**62 - 1, 2**53, -5], np.int64)
    assert st.group_sum(ids, values, 4).tolist() == [2**63 - 1, 2**53 + 1, -5, 0]
    small = np.array([3, 4, 5], np.uint64)
    assert st.group_sum(np.array([1, 1, 0]), small, 2).tolist() == [5, 7]


def test_node_ids_with_gaps_and_parents_numbered_after():
    """Node ids need not be 1..n, nor parents numbered before their children."""
    nodes = np.zeros(4, st.NODE_RECORD)
    nodes["id"], nodes["parent"] = [9, 3, 7, 12], [7, 12, 3, 0]
    nodes["code"], nodes["line"] = [5, 5, 6, 6], [1, 2, 3, 4]
    table = st.StackTable(nodes, {5: ("a.py", "f", 1), 6: ("b.py", "g", 1)})
    starts, frames = table.paths(table.rows([9, 4, 0]))
    assert [table.ids[f] if f >= 0 else f for f in frames.tolist()] == [12, 3, 7, 9, st.LOST]
    assert starts.tolist() == [0, 4, 5, 5]
    assert [table.files[table.code[r]] for r in table.rows([9, 7])] == ["a.py", "b.py"]
    # the innermost frame in b.py, from each node
    in_b = np.array([f == "b.py" for f in table.files])[table.code]
    found = table.nearest(table.rows([9, 3, 12, 4]), in_b, lost_flag=False)
    assert [table.ids[r] if r >= 0 else r for r in found.tolist()] == [7, 12, 12, st.ROOT]
