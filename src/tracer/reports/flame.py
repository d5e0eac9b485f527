"""Call trees of memory: the data behind the flame graph, `memtrace tree` and the exports.

A tree node is a frame (function, file, line) under its caller; leaves below the
innermost Python frame name the native library that called the allocator, so a
NumPy buffer shows as `… → build (x.py:14) → _multiarray_umath…so`. Allocations made
with no Python frame hang under a `[thread NAME]` node. Each node carries, per
metric, the bytes and count of its whole subtree.

The tree is made from all sites at once (NumPy, and C for merging frames into
nodes), never by walking each site's stack in Python.
"""
from typing import Dict, List, Optional

import numpy as np

from tracer import _format as fmt
from tracer import stacks as st
from tracer._native import ffi, lib
from tracer.model import Model, Process, heap_mask
from tracer.reports.tables import lib_name_ids

# metric -> (bytes column, count column) of the site records
METRICS = {
    "peak": ("peak_bytes", "peak_count"),
    "leaks": ("live_bytes", "live_count"),
    "total": ("alloc_bytes", "n_allocs"),
    "temporary": ("temp_bytes", "temp_count"),
}
METRIC_TITLES = {
    "peak": "memory held at the heap peak",
    "leaks": "memory still live at exit",
    "total": "all bytes allocated",
    "temporary": "temporary allocations (freed before the next allocation on their thread)",
    "threads": "memory held at the heap peak, by thread",
}
KINDS = ("python", "native", "thread", "process", "other")
PYTHON, NATIVE, THREAD, PROCESS, OTHER = range(5)
# Children keys below a node: frames are stacks.frame_key values (>= 0); a thread
# is THREAD_KEY - tid, a library and allocator LEAF_KEY - (library * 256 + kind).
THREAD_KEY, LEAF_KEY = -1, -(1 << 40)


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.int64)


def _ptr(a: np.ndarray):
    return ffi.cast("int64_t *", ffi.from_buffer(a))


class Tree:
    """A call tree as arrays, node 0 its root, every node numbered after its
    parent. Per node: parent, name and file (indexes into `names` and `files`),
    line, kind (KINDS), the subtree's bytes, count and NumPy bytes, and `first`,
    the position of the first site under it: children are listed biggest first,
    ties in the order the sites first reach them."""

    def __init__(self, parent, name, file, line, kind, names, files):
        self.parent, self.name, self.file, self.line, self.kind = parent, name, file, line, kind
        self.names, self.files = names, files
        self.bytes = self.count = self.numpy = self.first = None
        self._threshold = None

    def __len__(self) -> int:
        return len(self.parent)

    def with_values(self, leaf, first, size, count, numpy) -> "Tree":
        """This tree's nodes with site values on their leaf nodes, summed up.
        Nodes no site with a value reaches keep 0 bytes: they are not listed."""
        n = len(self)
        tree = Tree(self.parent, self.name, self.file, self.line, self.kind, self.names, self.files)
        tree.bytes, tree.count = st.group_sum(leaf, size, n), st.group_sum(leaf, count, n)
        tree.numpy = st.group_sum(leaf, numpy, n)
        tree.first = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(tree.first, leaf, first)
        lib.mt_tree_sum_up(_ptr(self.parent), n, _ptr(tree.bytes), _ptr(tree.count), _ptr(tree.numpy),
                           _ptr(tree.first))
        return tree

    def children(self, i: int, threshold: float = 0) -> List[int]:
        """Children of node i of at least `threshold` bytes, biggest first."""
        if self._threshold != threshold:
            big = np.flatnonzero((self.bytes[1:] >= threshold) & (self.bytes[1:] > 0)) + 1
            kids = big[np.lexsort((self.first[big], -self.bytes[big], self.parent[big]))]
            self._start = np.searchsorted(self.parent[kids], np.arange(len(self) + 1)).tolist()
            self._kids, self._threshold = kids.tolist(), threshold
        return self._kids[self._start[i]:self._start[i + 1]]

    def children_totals(self):
        """Per node: number of children, and their bytes, count and NumPy bytes."""
        kids = np.flatnonzero(self.bytes[1:] > 0) + 1
        up = self.parent[kids]
        return (np.bincount(up, minlength=len(self)),
                *(st.group_sum(up, col[kids], len(self)) for col in (self.bytes, self.count, self.numpy)))

    def label(self, i: int) -> str:
        name, file = self.names[self.name[i]], self.files[self.file[i]]
        return f"{name} ({file}:{int(self.line[i])})" if file else name


class _Nodes:
    """A tree's nodes, added in batches (each under nodes added before)."""

    def __init__(self):
        self.parent: List[np.ndarray] = []
        self.name: List[np.ndarray] = []
        self.file: List[np.ndarray] = []
        self.line: List[np.ndarray] = []
        self.kind: List[np.ndarray] = []
        self.names, self.files = st.Interner(), st.Interner()
        self.n = 0
        self.index = ffi.gc(lib.mt_tree_new(), lib.mt_tree_free)  # (parent, key) -> node
        if self.index == ffi.NULL:
            raise MemoryError("memtrace: cannot allocate a call tree")
        self.add([-1], ["all"], [""], [0], PROCESS)

    def add(self, parent, names, files, lines, kind) -> np.ndarray:
        """New nodes, names and files as strings."""
        return self.add_ids(parent, self.names.many(names), self.files.many(files), lines, kind)

    def add_ids(self, parent, name_ids, file_ids, lines, kind) -> np.ndarray:
        """New nodes, names and files as ids of `names` and `files`."""
        parent = np.asarray(parent, np.int64)
        ids = np.arange(self.n, self.n + len(parent))
        self.n += len(parent)
        for column, values in ((self.parent, parent), (self.name, name_ids), (self.file, file_ids),
                               (self.line, lines), (self.kind, kind)):
            column.append(np.broadcast_to(np.asarray(values, np.int64), (len(parent),)))
        return ids

    def add_frames(self, parent, frame, base, rows):
        """The node of each (base node, stack row) — see mt_tree_frames — and the
        (parent node, row) of each node this made; the caller adds those next."""
        parent, frame, base, rows = (_i64(a) for a in (parent, frame, base, rows))
        node = np.empty(len(rows), np.int64)
        made = lib.mt_tree_frames(self.index, _ptr(parent), _ptr(frame), len(parent), _ptr(base),
                                  _ptr(rows), len(rows), self.n, _ptr(node))
        return node, *self._made(made)

    def add_children(self, parent, key, names, files, lines, kind) -> np.ndarray:
        """The child `key` (an int below 0: frames have the others) of each parent
        node, made on first sight and named from the arrays at its position."""
        parent, key = _i64(parent), _i64(key)
        node = np.empty(len(key), np.int64)
        made = lib.mt_tree_children(self.index, _ptr(parent), _ptr(key), len(key), self.n, _ptr(node))
        made_parent, first = self._made(made)
        every = lambda values: np.broadcast_to(np.asarray(values, np.int64), (len(key),))[first]
        self.add_ids(made_parent, every(names), every(files), every(lines), kind)
        return node

    def _made(self, made: int):
        if made < 0:
            raise MemoryError("memtrace: out of memory making a call tree")
        parent, row = np.empty(made, np.int64), np.empty(made, np.int64)
        lib.mt_tree_made(self.index, _ptr(parent), _ptr(row))
        return parent, row

    def tree(self) -> Tree:
        cat = lambda cols: np.ascontiguousarray(np.concatenate(cols))
        return Tree(cat(self.parent), cat(self.name), cat(self.file), cat(self.line),
                    cat(self.kind), self.names.keys, self.files.keys)


def build_tree(model: Model, metric: str = "peak", by_thread: bool = False,
               pid: Optional[int] = None) -> Tree:
    """The call tree of one metric over all processes (or one pid). A node is a
    frame (function, file, line) under its caller's node; below the innermost
    frame, a leaf per calling library and allocator."""
    return build_trees(model, (metric,), by_thread, pid)[metric]


def build_trees(model: Model, metrics, by_thread: bool = False,
                pid: Optional[int] = None) -> Dict[str, Tree]:
    """build_tree of several metrics, made once: each metric's tree is the nodes
    its sites reach (the others, there with no bytes, are never listed)."""
    columns = [METRICS[m] for m in metrics]
    nodes, libraries, functions = _Nodes(), st.Interner(), st.Interner()
    leaves, picked = [], []
    processes = [p for p in model.processes if pid is None or p.pid == pid]
    many = len({p.pid for p in processes}) > 1
    for proc in processes:
        sites = proc.sites[heap_mask(proc.sites)]
        sites = sites[np.logical_or.reduce([sites[b] > 0 for b, _ in columns])]
        if len(sites) == 0:
            continue
        top = 0
        if many:
            label = f"pid {proc.pid}: {' '.join(proc.argv)[:80]}"
            top = int(nodes.add([0], [label], [""], [0], PROCESS)[0])
        leaves.append(_process_leaves(nodes, proc, sites, top, by_thread, libraries, functions))
        picked.append(sites)
    shape = nodes.tree()
    sites = np.concatenate(picked) if picked else np.zeros(0, fmt.SITE_DTYPE)
    leaf = np.concatenate(leaves) if leaves else np.zeros(0, np.int64)
    numpy_site = (sites["flags"] & fmt.FLAG_NUMPY) != 0
    trees = {}
    for metric, (bytes_col, count_col) in zip(metrics, columns):
        mine = sites[bytes_col] > 0
        size = np.where(mine, sites[bytes_col], 0).astype(np.int64)
        count = np.where(mine, sites[count_col], 0).astype(np.int64)
        first = np.where(mine, np.arange(len(sites)), np.iinfo(np.int64).max)
        trees[metric] = shape.with_values(leaf, first, size, count, np.where(numpy_site, size, 0))
    return trees


def _process_leaves(nodes: _Nodes, proc: Process, sites, top: int, by_thread: bool,
                    libraries: st.Interner, functions: st.Interner) -> np.ndarray:
    """Add one process's nodes under top; the leaf node of each site."""
    rows = proc.stacks.rows(sites["stack"])
    base = np.full(len(sites), top, np.int64)
    threaded = np.ones(len(sites), bool) if by_thread else rows == st.ROOT
    if threaded.any():
        tids, inverse = np.unique(sites["tid"][threaded], return_inverse=True)
        names = nodes.names.many(f"[thread {proc.thread_name(t)}]" for t in tids.tolist())
        base[threaded] = nodes.add_children(np.full(len(tids), top), THREAD_KEY - tids.astype(np.int64),
                                            names, nodes.files(""), 0, THREAD)[inverse]
    node = base.copy()
    framed = rows != st.ROOT
    if framed.any():
        node[framed] = _frame_nodes(nodes, proc, base[framed], rows[framed], functions)
    # leaves: one per (node, library, allocator)
    pair = lib_name_ids(proc, sites["lib"], libraries) * 256 + sites["kind"]
    pairs, pair_of = np.unique(pair, return_inverse=True)
    labels = nodes.names.many(f"{libraries.keys[p // 256]} → {fmt.KIND_NAMES[p % 256]}"
                              for p in pairs.tolist())
    leaves, inverse = np.unique(node * len(pairs) + pair_of, return_inverse=True)
    node, pair_of = leaves // len(pairs), leaves % len(pairs)
    made = nodes.add_children(node, LEAF_KEY - pairs[pair_of], labels[pair_of], nodes.files(""), 0,
                              NATIVE)
    return made[inverse]


def _frame_nodes(nodes: _Nodes, proc: Process, base: np.ndarray, rows: np.ndarray,
                 functions: st.Interner) -> np.ndarray:
    """The frame node of each (base node, stack row): frames equal in function,
    file and line under one node are one node (in every process)."""
    table = proc.stacks
    lost = len(table)  # the lost frame, as one more row
    parent = np.append(np.where(table.parent == st.LOST, lost, table.parent), st.ROOT)
    fn = np.append(functions.many(zip(table.functions, table.files))[table.code],
                   functions(("<stack lost>", None)))
    line = np.append(table.line, 0)
    rows = np.where(rows == st.LOST, lost, rows)
    node, made_parent, made = nodes.add_frames(parent, st.frame_key(fn, line), base, rows)
    name = np.append(nodes.names.many(table.functions)[table.code], nodes.names("<stack lost>"))
    file = np.append(nodes.files.many(table.files)[table.code], nodes.files(""))
    kind = np.append(np.full(len(table), PYTHON), OTHER)
    nodes.add_ids(made_parent, name[made], file[made], line[made], kind[made])
    return node


def flatten(tree: Tree, min_share: float = 0.0005, max_nodes: int = 20000) -> dict:
    """Preorder arrays for the HTML page; subtrees under min_share of the root
    (or beyond max_nodes) fold into one "[other]" node per parent."""
    threshold = max(1, int(int(tree.bytes[0]) * min_share))
    kids, rest_kept, rest_all = _child_sums(tree, threshold)
    order, parents, others = [], [], []  # others: (name, bytes, count, numpy) of "[other]" nodes
    stack = [(0, -1)]
    while stack:
        node, parent = stack.pop()
        index = len(order)
        order.append(node)
        parents.append(parent)
        keep = tree.children(node, threshold)
        if index + 1 + len(keep) > max_nodes:
            keep = []
        if len(keep) < kids[node]:  # the others, as one node
            order.append(-1 - len(others))
            parents.append(index)
            others.append((f"[other: {kids[node] - len(keep)} small]",
                           *(rest_kept[node] if keep else rest_all[node])))
        for c in reversed(keep):
            stack.append((c, index))
    return _columns(tree, order, parents, others)


def _child_sums(tree: Tree, threshold: int):
    """For each node that can be shown (at least threshold bytes): its number of
    children, and (bytes, count, numpy) of its children under threshold and of
    all its children."""
    shown = np.union1d([0], np.flatnonzero(tree.bytes >= threshold))
    kids = np.flatnonzero(tree.bytes[1:] > 0) + 1
    up = tree.parent[kids]
    small = tree.bytes[kids] < threshold
    columns = (tree.bytes, tree.count, tree.numpy)
    under = [st.group_sum(up[small], c[kids][small], len(tree))[shown].tolist() for c in columns]
    every = [st.group_sum(up, c[kids], len(tree))[shown].tolist() for c in columns]
    shown = shown.tolist()
    count = np.bincount(up, minlength=len(tree))
    return (dict(zip(shown, count[shown].tolist())), dict(zip(shown, zip(*under))),
            dict(zip(shown, zip(*every))))


def _columns(tree: Tree, order: list, parents: list, others: list) -> dict:
    """The page's arrays for nodes in `order` (-1 - k: others[k]); names and files
    are numbered in the order the nodes first use them."""
    order = np.array(order, np.int64)
    node = np.maximum(order, 0)
    other = np.flatnonzero(order < 0)
    names = st.Interner()
    names.many(tree.names)
    name = tree.name[node]
    name[other] = names.many(o[0] for o in others)
    file = tree.file[node]
    file[other] = tree.files.index("") if "" in tree.files else len(tree.files)
    files = list(tree.files) + [""]
    out = {"parent": parents}
    for key, ids, table in (("name", name, names.keys), ("file", file, files)):
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), np.int64)
        rank[np.argsort(first)] = np.arange(len(uniq))
        out[key] = rank[inverse].tolist()
        out[key + "s"] = [table[u] for u in uniq[np.argsort(first)].tolist()]
    line, kind = tree.line[node], tree.kind[node]
    line[other], kind[other] = 0, OTHER
    out["line"], out["kind"] = line.tolist(), kind.tolist()
    for i, key in enumerate(("bytes", "count", "numpy"), 1):
        column = getattr(tree, key)[node]
        column[other] = [o[i] for o in others]
        out[key] = column.tolist()
    names_key, files_key = out.pop("names"), out.pop("files")
    out["names"], out["files"] = names_key, files_key
    return out
