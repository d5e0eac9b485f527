"""A call tree laid out for the flame graph page: preorder arrays of the nodes worth
showing, small subtrees folded into one "[other]" entry per parent (the layout itself
is C: mt_tree_preorder)."""

from typing import Optional

import numpy as np

from tracer._native import lib
from tracer.analyze import stacks as st
from tracer.reports.flame import OTHER, Tree, _ptr


def flatten(
    tree: Tree, min_share: float = 0.0005, max_nodes: int = 20000, focus: Optional[int] = None
) -> dict:
    """Preorder arrays for the HTML page; subtrees under min_share of the root
    (or beyond max_nodes) fold into one "[other]" node per parent. With a focus
    node, "focus" is its entry (or its nearest shown ancestor's)."""
    threshold = max(1, int(int(tree.bytes[0]) * min_share))
    # what is left out is summed on the whole tree; the rest is laid out on the
    # nodes that can be shown (their parents can too: bytes grow towards the root)
    n_kids, every, small = tree.children_totals(threshold)
    keep = tree.bytes >= threshold
    keep[0] = True
    shown_tree, nodes = tree.subset(keep)
    start, kids = shown_tree.child_index(threshold)
    order, parents, shown = (np.empty(2 * len(shown_tree) + 2, np.int64) for _ in range(3))
    count = lib.mt_tree_preorder(
        _ptr(start),
        _ptr(kids),
        _ptr(n_kids[nodes]),
        len(shown_tree),
        max_nodes,
        _ptr(order),
        _ptr(parents),
        _ptr(shown),
    )
    if count == 0:
        raise MemoryError("memtrace: out of memory laying out a call tree")
    order, parents, shown = order[:count], parents[:count], shown[:count]
    # entries as nodes of the whole tree (-1 - node: that node's "other" entry)
    whole = np.where(order >= 0, nodes[np.maximum(order, 0)], -1 - nodes[np.maximum(-1 - order, 0)])
    out = _columns(tree, whole, parents, shown, n_kids, small, every)
    if focus is not None:
        entry = dict(zip(whole.tolist(), range(count)))
        while focus not in entry:
            focus = int(tree.parent[focus])
        out["focus"] = entry[focus]
    return out


def _columns(tree: Tree, order, parents, shown, n_kids, small, every) -> dict:
    """The page's arrays for the entries in `order` (-1 - node: that node's
    children not shown, as one entry: the `small` ones' totals, or `every` one's
    when none is shown); names and files are numbered in the order the entries
    first use them."""
    node = np.maximum(order, 0)
    name, file, line, kind = (getattr(tree, c)[node] for c in ("name", "file", "line", "kind"))
    values = {key: getattr(tree, key)[node] for key in ("bytes", "count", "numpy")}
    names = st.Interner.of(tree.names)
    other = np.flatnonzero(order < 0)
    if len(other):
        owner = -1 - order[other]
        name[other] = names.many(f"[other: {n} small]" for n in (n_kids[owner] - shown[other]).tolist())
        file[other], line[other], kind[other] = tree.files.index(""), 0, OTHER
        for key, part, whole in zip(("bytes", "count", "numpy"), small, every):
            values[key][other] = np.where(shown[other] > 0, part[owner], whole[owner])
    out = {"parent": parents.tolist()}
    tables = {}
    for key, ids, table in (("name", name, names.keys), ("file", file, tree.files)):
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        by_first = np.argsort(first)
        rank = np.empty(len(uniq), np.int64)
        rank[by_first] = np.arange(len(uniq))
        out[key] = rank[inverse].tolist()
        tables[key + "s"] = [table[u] for u in uniq[by_first].tolist()]
    out["line"], out["kind"] = line.tolist(), kind.tolist()
    for key in ("bytes", "count", "numpy"):
        out[key] = values[key].tolist()
    out.update(tables)
    return out
