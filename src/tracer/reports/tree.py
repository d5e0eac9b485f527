"""`memtrace tree`: the biggest stacks as a terminal call tree."""

from tracer.analyze.model import Model
from tracer.reports import flame
from tracer.reports.text import clean, human


def render(model: Model, out, metric: str = "peak", min_share: float = 0.01, max_depth: int = 40) -> None:
    tree = flame.build_tree(model, metric)
    size, count, numpy = tree.bytes.tolist(), tree.count.tolist(), tree.numpy.tolist()
    total = size[0] or 1
    n_kids, (kid_bytes, _count, _numpy), _small = tree.children_totals()
    n_kids, kid_bytes = n_kids.tolist(), kid_bytes.tolist()
    out.write(f"{flame.METRIC_TITLES[metric]}: {human(size[0])} in {count[0]:,} blocks\n")
    stack = [(0, "", True, 0)]
    while stack:
        node, prefix, last, depth = stack.pop()
        if node != 0:
            share = 100.0 * size[node] / total
            numpy_part = f", NumPy {human(numpy[node])}" if numpy[node] else ""
            branch = "└─ " if last else "├─ "
            out.write(
                f"{prefix}{branch}{human(size[node]):>10} {share:5.1f}%  "
                f"{clean(tree.label(node))}  ({count[node]:,} blocks{numpy_part})\n"
            )
            prefix += "   " if last else "│  "
        if depth >= max_depth:
            continue
        kids = tree.children(node, total * min_share)
        hidden = n_kids[node] - len(kids)
        if hidden and node != 0:
            rest = kid_bytes[node] - sum(size[c] for c in kids)
            if rest > 0:
                out.write(f"{prefix}   ({hidden} smaller: {human(rest)})\n")
        for i, child in reversed(list(enumerate(kids))):
            stack.append((child, prefix, i == len(kids) - 1, depth + 1))
