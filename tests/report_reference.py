"""Straightforward reports, one site and one frame at a time, to check the
vectorised ones against (tests/unit/test_report_parity.py and
tests/integration/test_report_parity_traced.py).

Each works on a RefProcess: a process's metadata decoded record by record into
dictionaries, and its stacks walked node by node. Sorting keeps Python's stable
order, so ties come out in the order the sites first show them.
"""

import gzip
import json
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tracer import _format as fmt
from tracer.analyze.model import heap_mask

METRICS = {
    "peak": ("peak_bytes", "peak_count"),
    "leaks": ("live_bytes", "live_count"),
    "total": ("alloc_bytes", "n_allocs"),
    "temporary": ("temp_bytes", "temp_count"),
}
LOST = ("<unknown>", 0, "<stack lost>")


class RefProcess:
    """The reference's view of a model Process: dictionaries from its metadata."""

    def __init__(self, proc):
        self.proc, self.sites, self.pid, self.sid = proc, proc.sites, proc.pid, proc.sid
        self.argv, self.library_paths = proc.argv, proc.library_paths
        self.codes, self.nodes, self.libs, self.threads = {}, {}, {}, {}
        for rtype, payload in fmt.iter_meta(bytes(proc.meta)):
            if rtype == fmt.META_CODE and len(payload) >= 12:
                cid, first, flen, nlen = struct.unpack_from("<IiHH", payload)
                self.codes[cid] = (
                    payload[12 : 12 + flen].decode("utf-8", "replace"),
                    payload[12 + flen : 12 + flen + nlen].decode("utf-8", "replace"),
                )
            elif rtype == fmt.META_NODE and len(payload) >= 16:
                nid, parent, code, line = struct.unpack_from("<IIIi", payload)
                self.nodes[nid] = (parent, code, line)
            elif rtype == fmt.META_LIB and len(payload) >= 16:
                self.libs[struct.unpack_from("<H", payload)[0]] = payload[16:].decode("utf-8", "replace")
            elif rtype == fmt.META_THREAD and len(payload) >= 4:
                self.threads[struct.unpack_from("<I", payload)[0]] = payload[4:].decode("utf-8", "replace")

    def frame(self, node: int) -> Optional[Tuple[str, int, str]]:
        """(file, line, function) of a stack node; None if never described."""
        if node not in self.nodes:
            return None
        _parent, code, line = self.nodes[node]
        file, name = self.codes.get(code, ("<unknown>", "<unknown>"))
        return file, line, name

    def stack(self, node: int) -> List[Tuple[str, int, str]]:
        """Frames from innermost to outermost (a never-described node: LOST, last)."""
        frames = []
        while node:
            if node not in self.nodes:
                frames.append(LOST)
                break
            frames.append(self.frame(node))
            node = self.nodes[node][0]
        return frames

    def is_library(self, file: str) -> bool:
        return file.startswith("<frozen") or any(
            file.startswith(p.rstrip("/") + "/") for p in self.library_paths
        )

    def user_frame(self, node: int):
        frames = self.stack(node)
        return next((f for f in frames if not self.is_library(f[0])), frames[0] if frames else None)

    def thread_name(self, tid: int) -> str:
        name = self.threads.get(tid, "?")
        return f"{name} (main)" if tid == self.pid else f"{name} (tid {tid})"

    def lib_name(self, lib: int) -> str:
        return self.libs.get(lib, "<unknown>") if lib else "<unknown>"

    def heap_sites(self):
        return self.sites[heap_mask(self.sites)]


def refs(model) -> List[RefProcess]:
    return [RefProcess(p) for p in model.processes]


def site_frame(proc: RefProcess, site, user_code: bool):
    stack = int(site["stack"])
    if stack == 0:
        return "<native>", 0, f"[no Python frame] thread {proc.thread_name(int(site['tid']))}"
    frame = proc.user_frame(stack) if user_code else proc.frame(stack)
    return frame or LOST


def by_line(processes: List[RefProcess], user_code: bool = False) -> List[dict]:
    rows: Dict[tuple, dict] = {}
    for proc in processes:
        for site in proc.heap_sites():
            file, line, function = site_frame(proc, site, user_code)
            row = rows.setdefault(
                (file, line, function),
                {
                    "file": file,
                    "line": line,
                    "function": function,
                    "allocated_bytes": 0,
                    "n_allocations": 0,
                    "peak_bytes": 0,
                    "live_at_exit_bytes": 0,
                    "numpy_bytes": 0,
                    "allocators": defaultdict(int),
                    "numpy_allocators": defaultdict(int),
                    "libraries": defaultdict(int),
                },
            )
            size = int(site["alloc_bytes"])
            row["allocated_bytes"] += size
            row["n_allocations"] += int(site["n_allocs"])
            row["peak_bytes"] += int(site["peak_bytes"])
            row["live_at_exit_bytes"] += int(site["live_bytes"])
            name = fmt.KIND_NAMES[int(site["kind"])]
            if int(site["flags"]) & fmt.FLAG_NUMPY:
                row["numpy_bytes"] += size
                row["numpy_allocators"][name] += size
            row["allocators"][name] += size
            row["libraries"][proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]] += size
    out = [
        {
            **r,
            "allocators": dict(r["allocators"]),
            "numpy_allocators": dict(r["numpy_allocators"]),
            "libraries": dict(r["libraries"]),
        }
        for r in rows.values()
    ]
    return sorted(out, key=lambda r: (-r["peak_bytes"], -r["allocated_bytes"], r["file"], r["line"]))


def by_library(processes: List[RefProcess]) -> List[dict]:
    rows: Dict[str, dict] = {}
    for proc in processes:
        sites = proc.heap_sites()  # by library id: a name's row keeps its first path
        for site in sorted(sites, key=lambda s: int(s["lib"])):
            path = proc.lib_name(int(site["lib"]))
            name = path.rsplit("/", 1)[-1]
            row = rows.setdefault(
                name,
                {
                    "library": name,
                    "path": path,
                    "allocated_bytes": 0,
                    "n_allocations": 0,
                    "peak_bytes": 0,
                    "live_at_exit_bytes": 0,
                },
            )
            row["allocated_bytes"] += int(site["alloc_bytes"])
            row["n_allocations"] += int(site["n_allocs"])
            row["peak_bytes"] += int(site["peak_bytes"])
            row["live_at_exit_bytes"] += int(site["live_bytes"])
    return sorted(rows.values(), key=lambda r: (-r["allocated_bytes"], r["library"]))


# ---- call trees ------------------------------------------------------------------


@dataclass
class Node:
    name: str
    file: str = ""
    line: int = 0
    kind: int = 0  # 0 python, 1 native, 2 thread, 3 process, 4 other
    children: Dict[tuple, "Node"] = field(default_factory=dict)
    bytes: int = 0
    count: int = 0
    numpy: int = 0

    def child(self, key, **make) -> "Node":
        if key not in self.children:
            self.children[key] = Node(**make)
        return self.children[key]

    def total(self) -> None:
        for c in self.children.values():
            c.total()
            self.bytes += c.bytes
            self.count += c.count
            self.numpy += c.numpy

    def kids(self) -> List["Node"]:
        return sorted(self.children.values(), key=lambda c: -c.bytes)


def build_tree(processes: List[RefProcess], metric: str = "peak", by_thread: bool = False) -> Node:
    bytes_col, count_col = METRICS[metric]
    root = Node("all", kind=3)
    many = len({p.pid for p in processes}) > 1
    for proc in processes:
        sites = proc.heap_sites()
        sites = sites[sites[bytes_col] > 0]
        if len(sites) == 0:
            continue
        top = (
            root.child(("pid", proc.sid), name=f"pid {proc.pid}: {' '.join(proc.argv)[:80]}", kind=3)
            if many
            else root
        )
        for site in sites:
            stack, tid = int(site["stack"]), int(site["tid"])
            node = top
            if by_thread or stack == 0:
                node = top.child(("thread", tid), name=f"[thread {proc.thread_name(tid)}]", kind=2)
            for file, line, function in reversed(proc.stack(stack)):
                if (file, line, function) == LOST:
                    node = node.child(("?", "<stack lost>", 0), name="<stack lost>", kind=4)
                else:
                    node = node.child((function, file, line), name=function, file=file, line=line)
            lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]
            alloc = fmt.KIND_NAMES[int(site["kind"])]
            leaf = node.child(("lib", lib, alloc), name=f"{lib} → {alloc}", kind=1)
            leaf.bytes += int(site[bytes_col])
            leaf.count += int(site[count_col])
            leaf.numpy += int(site[bytes_col]) if int(site["flags"]) & fmt.FLAG_NUMPY else 0
    root.total()
    return root


def flatten(root: Node, min_share: float, max_nodes: int) -> dict:
    names, files = {}, {}
    out = {k: [] for k in ("parent", "name", "file", "line", "kind", "bytes", "count", "numpy")}
    threshold = max(1, int(root.bytes * min_share))

    def emit(parent, name, file, line, kind, b, c, n):
        for key, value in zip(
            out,
            (
                parent,
                names.setdefault(name, len(names)),
                files.setdefault(file, len(files)),
                line,
                kind,
                b,
                c,
                n,
            ),
        ):
            out[key].append(value)
        return len(out["parent"]) - 1

    stack = [(root, -1)]
    while stack:
        node, parent = stack.pop()
        index = emit(parent, node.name, node.file, node.line, node.kind, node.bytes, node.count, node.numpy)
        kids = node.kids()
        keep = [c for c in kids if c.bytes >= threshold]
        if len(out["parent"]) + len(keep) > max_nodes:
            keep = []
        rest = kids[len(keep) :]
        if rest:
            emit(
                index,
                f"[other: {len(rest)} small]",
                "",
                0,
                4,
                sum(c.bytes for c in rest),
                sum(c.count for c in rest),
                sum(c.numpy for c in rest),
            )
        stack.extend((c, index) for c in reversed(keep))
    return {**out, "names": list(names), "files": list(files)}


def tree_text(root: Node, title: str, min_share: float, max_depth: int = 40) -> str:
    """`memtrace tree`'s text, node by node."""
    from tracer.reports.text import clean, human

    lines, total = [], root.bytes or 1
    lines.append(f"{title}: {human(root.bytes)} in {root.count:,} blocks\n")
    stack = [(root, "", True, 0)]
    while stack:
        node, prefix, last, depth = stack.pop()
        if node is not root:
            label = f"{node.name} ({node.file}:{node.line})" if node.file else node.name
            numpy = f", NumPy {human(node.numpy)}" if node.numpy else ""
            lines.append(
                f"{prefix}{'└─ ' if last else '├─ '}{human(node.bytes):>10} "
                f"{100.0 * node.bytes / total:5.1f}%  {clean(label)}  ({node.count:,} blocks{numpy})\n"
            )
            prefix += "   " if last else "│  "
        if depth >= max_depth:
            continue
        kids = [c for c in node.kids() if c.bytes >= total * min_share]
        hidden = len(node.children) - len(kids)
        if hidden and node is not root:
            rest = sum(c.bytes for c in node.children.values()) - sum(c.bytes for c in kids)
            if rest > 0:
                lines.append(f"{prefix}   ({hidden} smaller: {human(rest)})\n")
        for i, child in reversed(list(enumerate(kids))):
            stack.append((child, prefix, i == len(kids) - 1, depth + 1))
    return "".join(lines)


# ---- exports ----------------------------------------------------------------------


def site_samples(processes: List[RefProcess], metric: str = "peak"):
    bytes_col, count_col = METRICS[metric]
    for proc in processes:
        sites = proc.heap_sites()
        for site in sites[sites[bytes_col] > 0]:
            stack = int(site["stack"])
            frames = [(f, file, line) for file, line, f in reversed(proc.stack(stack))]
            if stack == 0:
                frames = [(f"[thread {proc.thread_name(int(site['tid']))}]", "", 0)]
            lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]
            frames.append((f"{lib} → {fmt.KIND_NAMES[int(site['kind'])]}", lib, 0))
            yield frames, int(site[bytes_col]), int(site[count_col])


def speedscope_samples(processes, metric="peak"):
    """(frames, samples, weights) as the speedscope export lists them."""
    frames, samples, weights = {}, [], []
    for stack, size, _count in site_samples(processes, metric):
        samples.append([frames.setdefault(f, len(frames)) for f in stack])
        weights.append(size)
    return list(frames), samples, weights


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_varint(number, value):
    return _varint(number << 3) + _varint(value) if value else b""


def _field_bytes(number, data):
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def pprof_body(processes, metric, count_name, bytes_name) -> bytes:
    """The pprof export's protobuf up to (not including) its time fields."""
    strings = {"": 0}
    s = lambda text: strings.setdefault(text, len(strings))
    functions, locations, body = {}, {}, bytearray()
    for name, unit in ((count_name, "count"), (bytes_name, "bytes")):
        body += _field_bytes(1, _field_varint(1, s(name)) + _field_varint(2, s(unit)))
    function_msgs, location_msgs = bytearray(), bytearray()
    for stack, size, count in site_samples(processes, metric):
        ids = []
        for frame in reversed(stack):
            if frame not in locations:
                name, file, line = frame
                if (name, file) not in functions:
                    fid = functions[(name, file)] = len(functions) + 1
                    function_msgs += _field_bytes(
                        5,
                        _field_varint(1, fid)
                        + _field_varint(2, s(name))
                        + _field_varint(3, s(name))
                        + _field_varint(4, s(file)),
                    )
                loc = locations[frame] = len(locations) + 1
                line_msg = _field_varint(1, functions[(name, file)]) + _field_varint(2, line)
                location_msgs += _field_bytes(4, _field_varint(1, loc) + _field_bytes(4, line_msg))
            ids.append(locations[frame])
        packed = lambda n, values: _field_bytes(n, b"".join(_varint(v) for v in values))
        body += _field_bytes(2, packed(1, ids) + packed(2, [count, size]))
    body += location_msgs + function_msgs
    for text in strings:
        body += _field_bytes(6, text.encode("utf-8"))
    return bytes(body)


# ---- memtrace lines -----------------------------------------------------------------


def line_table(processes: List[RefProcess], source: str) -> Dict[int, dict]:
    target = os.path.realpath(source)
    rows = defaultdict(lambda: {"allocated": 0, "peak": 0, "count": 0, "numpy": 0})
    for proc in processes:
        for site in proc.heap_sites():
            line = next(
                (
                    f[1]
                    for f in proc.stack(int(site["stack"]))
                    if f[0] == source or os.path.realpath(f[0]) == target
                ),
                None,
            )
            if line is None:
                continue
            row = rows[line]
            row["allocated"] += int(site["alloc_bytes"])
            row["peak"] += int(site["peak_bytes"])
            row["count"] += int(site["n_allocs"])
            row["numpy"] += int(site["alloc_bytes"]) if int(site["flags"]) & 1 else 0
    return dict(rows)


def sources(processes: List[RefProcess]) -> List[str]:
    sizes = defaultdict(int)
    for proc in processes:
        for site in proc.heap_sites():
            frame = proc.user_frame(int(site["stack"])) if site["stack"] else None
            if frame and not proc.is_library(frame[0]) and not frame[0].startswith("<"):
                sizes[frame[0]] += int(site["alloc_bytes"])
    return sorted(sizes, key=lambda f: -sizes[f])


def as_json(value) -> str:
    """Text that differs when values or the order of keys differ."""
    return json.dumps(value)


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)
