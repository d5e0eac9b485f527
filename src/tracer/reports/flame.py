"""Call trees of memory: the data behind the flame graph, `memtrace tree` and the exports.

A tree node is a frame (function, file, line) under its caller; leaves below the
innermost Python frame name the native library that called the allocator, so a
NumPy buffer shows as `… → build (x.py:14) → _multiarray_umath…so`. Allocations made
with no Python frame hang under a `[thread NAME]` node. Each node carries, per
metric, the bytes and count of its whole subtree.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


from tracer import _format as fmt
from tracer.model import Model, Process, heap_mask

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


@dataclass
class Node:
    name: str                       # function, "[thread …]", library, or "pid …"
    file: str = ""
    line: int = 0
    kind: str = "python"            # python | native | thread | process | other
    children: Dict[tuple, "Node"] = field(default_factory=dict)
    bytes: int = 0                  # subtree totals for the tree's metric
    count: int = 0
    numpy: int = 0                  # NumPy array data within bytes

    def child(self, key: tuple, make) -> "Node":
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = make()
        return node

    @property
    def label(self) -> str:
        return f"{self.name} ({self.file}:{self.line})" if self.file else self.name


def build_tree(model: Model, metric: str = "peak", by_thread: bool = False,
               pid: Optional[int] = None) -> Node:
    """The call tree of one metric over all processes (or one pid)."""
    bytes_col, count_col = METRICS[metric]
    root = Node("all", kind="process")
    processes = [p for p in model.processes if pid is None or p.pid == pid]
    many = len({p.pid for p in processes}) > 1
    for proc in processes:
        sites = proc.sites[heap_mask(proc.sites)]
        sites = sites[sites[bytes_col] > 0]
        if len(sites) == 0:
            continue
        top = root
        if many:
            label = f"pid {proc.pid}: {' '.join(proc.argv)[:80]}"
            top = root.child(("pid", proc.sid), lambda: Node(label, kind="process"))
        memo: Dict[Tuple[int, int], Node] = {}
        for site in sites:
            stack, tid = int(site["stack"]), int(site["tid"])
            base = top
            if by_thread or stack == 0:
                name = f"[thread {proc.thread_name(tid)}]"
                base = top.child(("thread", tid), lambda: Node(name, kind="thread"))
            node = _frame_node(proc, stack, base, memo, tid if (by_thread or stack == 0) else 0)
            lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]
            alloc = fmt.KIND_NAMES[int(site["kind"])]
            leaf = node.child(("lib", lib, alloc), lambda: Node(f"{lib} → {alloc}", kind="native"))
            size, count = int(site[bytes_col]), int(site[count_col])
            numpy = size if int(site["flags"]) & fmt.FLAG_NUMPY else 0
            leaf.bytes += size
            leaf.count += count
            leaf.numpy += numpy
    _sum_up(root)
    return root


def _frame_node(proc: Process, stack: int, base: Node, memo: dict, bucket: int) -> Node:
    """The tree node of a stack trie node under base (memoised per trie node)."""
    if stack == 0:
        return base
    key = (stack, bucket)
    node = memo.get(key)
    if node is not None:
        return node
    # Walk up to the first memoised ancestor (or the root), then come back down.
    chain, cur, seen = [], stack, set()
    while cur and (cur, bucket) not in memo and cur not in seen and len(chain) < 4096:
        seen.add(cur)
        chain.append(cur)
        entry = proc.nodes.get(cur)
        cur = entry[0] if entry else 0
    node = memo.get((cur, bucket), base) if cur else base
    for trie in reversed(chain):
        frame = proc.frame(trie)
        if frame is None:
            frame_key = ("?", "<stack lost>", 0)
            make = lambda: Node("<stack lost>", kind="other")
        else:
            frame_key = (frame.function, frame.file, frame.line)
            make = lambda f=frame: Node(f.function, f.file, f.line)
        node = node.child(frame_key, make)
        memo[(trie, bucket)] = node
    return node


def _sum_up(node: Node) -> None:
    """Fill subtree totals (iteratively: trees can be deep)."""
    order, stack = [], [node]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children.values())
    for n in reversed(order):
        for c in n.children.values():
            n.bytes += c.bytes
            n.count += c.count
            n.numpy += c.numpy


def flatten(root: Node, min_share: float = 0.0005, max_nodes: int = 20000) -> dict:
    """Preorder arrays for the HTML page; subtrees under min_share of the root
    (or beyond max_nodes) fold into one "[other]" node per parent."""
    names: Dict[str, int] = {}
    files: Dict[str, int] = {}

    def intern(table, s):
        return table.setdefault(s, len(table))

    out = {"parent": [], "name": [], "file": [], "line": [], "kind": [], "bytes": [],
           "count": [], "numpy": []}
    kinds = {"python": 0, "native": 1, "thread": 2, "process": 3, "other": 4}
    threshold = max(1, int(root.bytes * min_share))

    def emit(node, parent, name=None, bytes_=None, count=None, numpy=None, kind=None):
        out["parent"].append(parent)
        out["name"].append(intern(names, name if name is not None else node.name))
        out["file"].append(intern(files, node.file if node else ""))
        out["line"].append(node.line if node else 0)
        out["kind"].append(kinds[kind or node.kind])
        out["bytes"].append(bytes_ if bytes_ is not None else node.bytes)
        out["count"].append(count if count is not None else node.count)
        out["numpy"].append(numpy if numpy is not None else node.numpy)
        return len(out["parent"]) - 1

    stack = [(root, -1)]
    while stack:
        node, parent = stack.pop()
        index = emit(node, parent)
        kids = sorted(node.children.values(), key=lambda c: -c.bytes)
        keep = [c for c in kids if c.bytes >= threshold]
        if len(out["parent"]) + len(keep) > max_nodes:
            keep = []
        rest = kids[len(keep):]
        if rest:
            emit(None, index, name=f"[other: {len(rest)} small]", kind="other",
                 bytes_=sum(c.bytes for c in rest), count=sum(c.count for c in rest),
                 numpy=sum(c.numpy for c in rest))
        for c in reversed(keep):
            stack.append((c, index))
    out["names"] = list(names)
    out["files"] = list(files)
    return out
