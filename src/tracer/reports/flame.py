"""Call trees of memory: the data behind the flame graph, `memtrace tree` and the exports.

A tree node is a frame (function, file, line) under its caller; leaves below the
innermost Python frame name the native library that called the allocator, so a
NumPy buffer shows as `… → build (x.py:14) → _multiarray_umath…so`. Allocations made
with no Python frame hang under a `[thread NAME]` node. Each node carries, per
metric, the bytes and count of its whole subtree.

The tree is made from all sites at once (NumPy, and C for merging frames into
nodes), never by walking each site's stack in Python.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.analyze import stacks as st
from tracer.analyze.model import Model, Process, heap_mask
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
KINDS = ("python", "native", "thread", "process", "other", "imports")
PYTHON, NATIVE, THREAD, PROCESS, OTHER, IMPORTS = range(6)
# Children keys below a node: frames are stacks.frame_key values (>= 0); a thread
# is THREAD_KEY - tid, a library and allocator LEAF_KEY - (library * 256 + kind),
# a process PROCESS_KEY - stream, folded import machinery IMPORTS_KEY.
THREAD_KEY, LEAF_KEY, PROCESS_KEY, IMPORTS_KEY = -1, -(1 << 40), -(1 << 50), -(1 << 60)
IMPORTS_NAME = "[import machinery]"
# Python's own code that imports modules and runs them (`python -m`): frozen
# modules (importlib._bootstrap, zipimport, runpy...) and their source files.
IMPORT_FILES = (
    "/importlib/_bootstrap.py",
    "/importlib/_bootstrap_external.py",
    "/importlib/__init__.py",
    "/runpy.py",
    "/zipimport.py",
    "/pkgutil.py",
)


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.int64)


def _ptr(a: np.ndarray):
    """An int64_t * to the array's data (the same array, where it is int64 and
    contiguous: outputs must be); the cdata keeps the array alive for the call."""
    return ffi.from_buffer("int64_t[]", _i64(a))


def is_import_machinery(file: str) -> bool:
    return file.startswith("<frozen ") or file.endswith(IMPORT_FILES)


class Tree:
    """A call tree as arrays, node 0 its root, every node numbered after its
    parent. Per node: parent, name and file (indexes into `names` and `files`),
    line, kind (KINDS), key (what it is under its parent: frames with one key
    under one parent are one node), user (a frame of the user's own code), the
    subtree's bytes, count and NumPy bytes, and `first`, the position of the first
    site under it: children are listed biggest first, ties in the order the sites
    first reach them."""

    COLUMNS = ("parent", "name", "file", "line", "kind", "key", "user")
    parent: np.ndarray
    name: np.ndarray
    file: np.ndarray
    line: np.ndarray
    kind: np.ndarray
    key: np.ndarray
    user: np.ndarray
    bytes: np.ndarray
    count: np.ndarray
    numpy: np.ndarray
    first: np.ndarray

    def __init__(self, columns: Dict[str, np.ndarray], names: List[str], files: List[str]):
        for column in self.COLUMNS:
            setattr(self, column, columns[column])
        self.names, self.files = names, files
        # a tree's shape has no values (with_values() and subset() give them): typed as
        # arrays, which every tree the reports read has
        self.bytes = self.count = self.numpy = self.first = None  # type: ignore[assignment]
        self.shape = self  # the tree whose columns these are (its values aside)
        self._threshold: Optional[float] = None
        self._folded: Optional[Tuple[np.ndarray, "Tree"]] = None

    def __len__(self) -> int:
        return len(self.parent)

    def with_values(self, leaf, first, size, count, numpy) -> "Tree":
        """This tree's nodes with site values on their leaf nodes, summed up.
        Nodes no site with a value reaches keep 0 bytes: they are not listed."""
        n = len(self)
        tree = Tree({c: getattr(self, c) for c in self.COLUMNS}, self.names, self.files)
        tree.shape = self.shape
        tree.bytes, tree.count, tree.numpy, tree.first = (np.empty(n, np.int64) for _ in range(4))
        lib.mt_tree_leaf_values(
            _ptr(leaf),
            len(leaf),
            _ptr(size),
            _ptr(count),
            _ptr(numpy),
            _ptr(first),
            n,
            _ptr(tree.bytes),
            _ptr(tree.count),
            _ptr(tree.numpy),
            _ptr(tree.first),
        )
        lib.mt_tree_sum_up(
            _ptr(self.parent), n, _ptr(tree.bytes), _ptr(tree.count), _ptr(tree.numpy), _ptr(tree.first)
        )
        return tree

    def children(self, i: int, threshold: float = 0) -> List[int]:
        """Children of node i of at least `threshold` bytes, biggest first."""
        start, kids = self.child_index(threshold)
        return kids[start[i] : start[i + 1]].tolist()

    def child_index(self, threshold: float):
        """(start, kids): the children of node i of at least `threshold` bytes are
        kids[start[i]:start[i + 1]], biggest first."""
        if self._threshold != threshold:
            big = np.flatnonzero((self.bytes[1:] >= threshold) & (self.bytes[1:] > 0)) + 1
            kids = big[np.lexsort((self.first[big], -self.bytes[big], self.parent[big]))]
            per_node = np.bincount(self.parent[kids], minlength=len(self))
            self._start = np.concatenate(([0], np.cumsum(per_node)))
            self._kids, self._threshold = kids, threshold
        return self._start, self._kids

    def children_totals(self, threshold: int = 0):
        """Per node: its number of children, their bytes, count and NumPy bytes,
        and those of its children under threshold: (n, [3 totals], [3 totals])."""
        out = [np.empty(len(self), np.int64) for _ in range(7)]
        lib.mt_tree_child_sums(
            _ptr(self.parent),
            len(self),
            _ptr(self.bytes),
            _ptr(self.count),
            _ptr(self.numpy),
            threshold,
            *map(_ptr, out),
        )
        return out[0], out[1:4], out[4:]

    def subset(self, keep: np.ndarray):
        """(a tree of the nodes where keep is set, their numbers in this one); the
        kept nodes' parents must be kept (the root is)."""
        nodes = np.flatnonzero(keep)
        new = np.cumsum(keep) - 1
        columns = {c: getattr(self, c)[nodes] for c in self.COLUMNS}
        columns["parent"] = np.where(columns["parent"] < 0, -1, new[np.maximum(columns["parent"], 0)])
        tree = Tree(columns, self.names, self.files)
        for column in ("bytes", "count", "numpy", "first"):
            setattr(tree, column, getattr(self, column)[nodes])
        return tree, nodes

    def label(self, i: int) -> str:
        name, file = self.names[self.name[i]], self.files[self.file[i]]
        return f"{name} ({file}:{int(self.line[i])})" if file else name

    def sum_down(self, add) -> np.ndarray:
        """Per node, the sum of `add` over it and its ancestors."""
        add, out = _i64(np.broadcast_to(add, (len(self),))), np.empty(len(self), np.int64)
        lib.mt_tree_sum_down(_ptr(self.parent), len(self), _ptr(add), _ptr(out))
        return out

    def depths(self) -> np.ndarray:
        """Edges from each node to the root."""
        return self.sum_down(1) - 1

    def fold_imports(self) -> "Tree":
        """This tree with every run of import-machinery frames made one
        IMPORTS_NAME node (whose children merge where their frames are equal)."""
        shape = self.shape
        if shape._folded is None:
            shape._folded = shape._fold_shape()
        new, folded = shape._folded
        leaf = np.flatnonzero(shape.kind == NATIVE)  # the nodes that hold the sites' values
        return folded.with_values(
            new[leaf], self.first[leaf], self.bytes[leaf], self.count[leaf], self.numpy[leaf]
        )

    def _fold_shape(self):
        """(the folded node of each node, the folded tree without values)."""
        machinery = np.fromiter(map(is_import_machinery, self.files), bool, len(self.files))
        fold = (machinery[self.file] & (self.kind == PYTHON)).astype(np.uint8)
        index = ffi.gc(lib.mt_tree_new(), lib.mt_tree_free)
        new = np.empty(len(self), np.int64)
        made = lib.mt_tree_fold(
            index,
            _ptr(self.parent),
            _ptr(self.key),
            ffi.from_buffer("uint8_t[]", fold),
            len(self),
            IMPORTS_KEY,
            _ptr(new),
        )
        parent, source = _made(index, made)
        source = np.concatenate(([0], source))
        columns = {c: getattr(self, c)[source] for c in self.COLUMNS}
        columns["parent"] = np.concatenate(([-1], parent))
        folded = fold[source] != 0
        names = list(self.names) + [IMPORTS_NAME]
        for column, value in (
            ("name", len(names) - 1),
            ("file", self.files.index("")),
            ("line", 0),
            ("kind", IMPORTS),
            ("key", IMPORTS_KEY),
            ("user", False),
        ):
            columns[column][folded] = value
        return new, Tree(columns, names, self.files)

    def focus(self) -> int:
        """Where the user's code is: the deepest node, above the user's own frames,
        that holds 90% of the bytes of the outermost of them (0: the root)."""
        inside = self.sum_down(self.user) > 0  # in the user's code, or called from it
        outermost = self.user & ~inside[np.maximum(self.parent, 0)]
        held = np.where(outermost, np.maximum(self.bytes, 0), 0)
        if not held.any():
            return 0
        # coarser units where the sums could overflow (only a share is wanted)
        held >>= max(0, int(held.max()).bit_length() + len(self).bit_length() - 56)
        ignored = [np.zeros(len(self), np.int64) for _ in range(3)]
        lib.mt_tree_sum_up(_ptr(self.parent), len(self), _ptr(held), *map(_ptr, ignored))
        candidates = np.flatnonzero(~inside & (held * 10 >= held[0] * 9))
        return int(candidates[np.argmax(self.depths()[candidates])]) if len(candidates) else 0


def _made(index, made: int):
    """(parent node, source row) of each node the last mt_tree_* call made."""
    if made < 0:
        raise MemoryError("memtrace: out of memory making a call tree")
    parent, row = np.empty(made, np.int64), np.empty(made, np.int64)
    lib.mt_tree_made(index, _ptr(parent), _ptr(row))
    return parent, row


class _Nodes:
    """A tree's nodes, added in batches (each under nodes added before)."""

    def __init__(self) -> None:
        self.columns: Dict[str, List[np.ndarray]] = {c: [] for c in Tree.COLUMNS}
        self.names, self.files = st.Interner(), st.Interner()
        self.n = 0
        self.index = ffi.gc(lib.mt_tree_new(), lib.mt_tree_free)  # (parent, key) -> node
        if self.index == ffi.NULL:
            raise MemoryError("memtrace: cannot allocate a call tree")
        self.add([-1], ["all"], [""], 0, PROCESS, 0)

    def add(self, parent, names, files, lines, kind, key, user=False) -> np.ndarray:
        """New nodes, names and files as strings."""
        return self.add_ids(parent, self.names.many(names), self.files.many(files), lines, kind, key, user)

    def add_ids(self, parent, name_ids, file_ids, lines, kind, key, user=False) -> np.ndarray:
        """New nodes, names and files as ids of `names` and `files`."""
        parent = np.asarray(parent, np.int64)
        ids = np.arange(self.n, self.n + len(parent))
        self.n += len(parent)
        values = {
            "parent": parent,
            "name": name_ids,
            "file": file_ids,
            "line": lines,
            "kind": kind,
            "key": key,
            "user": user,
        }
        for column, value in values.items():
            dtype = bool if column == "user" else np.int64
            self.columns[column].append(np.broadcast_to(np.asarray(value, dtype), (len(parent),)))
        return ids

    def add_frames(self, parent, frame, base, rows):
        """The node of each (base node, stack row) — see mt_tree_frames — and the
        (parent node, row) of each node this made; the caller adds those next."""
        parent, frame, base, rows = (_i64(a) for a in (parent, frame, base, rows))
        node = np.empty(len(rows), np.int64)
        made = lib.mt_tree_frames(
            self.index,
            _ptr(parent),
            _ptr(frame),
            len(parent),
            _ptr(base),
            _ptr(rows),
            len(rows),
            self.n,
            _ptr(node),
        )
        return node, *_made(self.index, made)

    def add_children(self, parent, key, names, files, kind) -> np.ndarray:
        """The child `key` (an int below 0: frames have the others) of each parent
        node, made on first sight and named from the arrays at its position."""
        parent, key = _i64(parent), _i64(key)
        node = np.empty(len(key), np.int64)
        made = lib.mt_tree_children(self.index, _ptr(parent), _ptr(key), len(key), self.n, _ptr(node))
        made_parent, first = _made(self.index, made)
        every = lambda values: np.broadcast_to(np.asarray(values, np.int64), (len(key),))[first]
        self.add_ids(made_parent, every(names), every(files), 0, kind, key[first])
        return node

    def tree(self) -> Tree:
        columns = {c: np.ascontiguousarray(np.concatenate(v)) for c, v in self.columns.items()}
        return Tree(columns, self.names.keys, self.files.keys)


def build_tree(
    model: Model, metric: str = "peak", by_thread: bool = False, pid: Optional[int] = None
) -> Tree:
    """The call tree of one metric over all processes (or one pid). A node is a
    frame (function, file, line) under its caller's node; below the innermost
    frame, a leaf per calling library and allocator."""
    return Trees(model, (metric,), by_thread, pid).tree(metric)


def build_trees(model: Model, metrics, by_thread: bool = False, pid: Optional[int] = None) -> Dict[str, Tree]:
    """build_tree of several metrics, their nodes made once."""
    trees = Trees(model, metrics, by_thread, pid)
    return {metric: trees.tree(metric) for metric in metrics}


class Trees:
    """The nodes of the trees of some metrics, made once from the heap sites where
    any of them has bytes; each metric's tree is the nodes its own sites reach
    (the others, there with no bytes, are never listed)."""

    def __init__(self, model: Model, metrics, by_thread: bool = False, pid: Optional[int] = None):
        self.model, self.metrics, self.by_thread, self.pid = model, tuple(metrics), by_thread, pid
        self.processes = [p for p in model.processes if pid is None or p.pid == pid]
        nodes, libraries, functions = _Nodes(), st.Interner(), st.Interner()
        many = len({p.pid for p in self.processes}) > 1
        leaves, self.picked = [], []  # per process: its leaf nodes, its picked sites' indexes
        for proc in self.processes:
            heap = heap_mask(proc.sites)
            picked = np.flatnonzero(
                heap & np.logical_or.reduce([proc.sites[METRICS[m][0]] > 0 for m in metrics])
            )
            self.picked.append(picked)
            if len(picked) == 0:
                continue
            top = 0
            if many:
                label = f"pid {proc.pid}: {' '.join(proc.argv)[:80]}"
                top = int(nodes.add([0], [label], [""], 0, PROCESS, PROCESS_KEY - proc.sid)[0])
            leaves.append(
                _process_leaves(nodes, proc, proc.sites[picked], top, by_thread, libraries, functions)
            )
        self.shape = nodes.tree()
        self.leaf = np.concatenate(leaves) if leaves else np.zeros(0, np.int64)

    def tree(self, metric: str) -> Tree:
        """The tree of a metric, from the sites' values now (the temporary columns
        are filled by a replay): its sites must be among those the nodes were made
        from (temporary bytes are part of the total bytes)."""
        bytes_col, count_col = METRICS[metric]
        if metric not in self.metrics and not self._covers(bytes_col):
            return Trees(self.model, (metric,), self.by_thread, self.pid).tree(metric)
        column = lambda name: np.concatenate(
            [np.zeros(0, fmt.SITE_DTYPE)[name]]
            + [p.sites[name][picked] for p, picked in zip(self.processes, self.picked)]
        )
        size, count = column(bytes_col), column(count_col)
        mine = np.flatnonzero(size > 0)
        size = size[mine].astype(np.int64)
        numpy = np.where((column("flags")[mine] & fmt.FLAG_NUMPY) != 0, size, 0)
        return self.shape.with_values(self.leaf[mine], mine, size, count[mine].astype(np.int64), numpy)

    def _covers(self, bytes_col: str) -> bool:
        """Whether every heap site with bytes in this column is one of ours."""
        for proc, picked in zip(self.processes, self.picked):
            made = np.zeros(len(proc.sites), bool)
            made[picked] = True
            if (heap_mask(proc.sites) & (proc.sites[bytes_col] > 0) & ~made).any():
                return False
        return True


def _process_leaves(
    nodes: _Nodes,
    proc: Process,
    sites,
    top: int,
    by_thread: bool,
    libraries: st.Interner,
    functions: st.Interner,
) -> np.ndarray:
    """Add one process's nodes under top; the leaf node of each site."""
    rows = proc.stacks.rows(sites["stack"])
    base = np.full(len(sites), top, np.int64)
    threaded = np.ones(len(sites), bool) if by_thread else rows == st.ROOT
    if threaded.any():
        tids, inverse = np.unique(sites["tid"][threaded], return_inverse=True)
        names = nodes.names.many(f"[thread {proc.thread_name(t)}]" for t in tids.tolist())
        base[threaded] = nodes.add_children(
            np.full(len(tids), top), THREAD_KEY - tids.astype(np.int64), names, nodes.files(""), THREAD
        )[inverse]
    node = base.copy()
    framed = rows != st.ROOT
    if framed.any():
        node[framed] = _frame_nodes(nodes, proc, base[framed], rows[framed], functions)
    # leaves: one per (node, library, allocator)
    pair = lib_name_ids(proc, sites["lib"], libraries) * 256 + sites["kind"]
    pairs, pair_of = np.unique(pair, return_inverse=True)
    labels = nodes.names.many(
        f"{libraries.keys[p // 256]} → {fmt.KIND_NAMES[p % 256]}" for p in pairs.tolist()
    )
    leaves, inverse = np.unique(node * len(pairs) + pair_of, return_inverse=True)
    node, pair_of = leaves // len(pairs), leaves % len(pairs)
    made = nodes.add_children(node, LEAF_KEY - pairs[pair_of], labels[pair_of], nodes.files(""), NATIVE)
    return made[inverse]


def _frame_nodes(
    nodes: _Nodes, proc: Process, base: np.ndarray, rows: np.ndarray, functions: st.Interner
) -> np.ndarray:
    """The frame node of each (base node, stack row): frames equal in function,
    file and line under one node are one node (in every process)."""
    table = proc.stacks
    lost = len(table)  # the lost frame, as one more row
    parent = np.append(np.where(table.parent == st.LOST, lost, table.parent), st.ROOT)
    fn = np.append(table.interned(functions, "pairs")[table.code], functions(("<stack lost>", None)))
    line = np.append(table.line, 0)
    rows = np.where(rows == st.LOST, lost, rows)
    frame = st.frame_key(fn, line)
    node, made_parent, made = nodes.add_frames(parent, frame, base, rows)
    name = np.append(table.interned(nodes.names, "functions")[table.code], nodes.names("<stack lost>"))
    file = np.append(table.interned(nodes.files, "files")[table.code], nodes.files(""))
    kind = np.append(np.full(len(table), PYTHON), OTHER)
    files, index = table.distinct("files")
    machinery = np.fromiter(map(is_import_machinery, files), bool, len(files))[index]
    user = np.append(~proc.library_codes()[table.code] & ~machinery[table.code], False)
    nodes.add_ids(made_parent, name[made], file[made], line[made], kind[made], frame[made], user[made])
    return node
