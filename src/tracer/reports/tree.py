"""`memtrace tree`: the biggest stacks as a terminal call tree."""
from tracer.model import Model
from tracer.reports import flame
from tracer.reports.summary import clean, human


def render(model: Model, out, metric: str = "peak", min_share: float = 0.01,
           max_depth: int = 40) -> None:
    root = flame.build_tree(model, metric)
    total = root.bytes or 1
    out.write(f"{flame.METRIC_TITLES[metric]}: {human(root.bytes)} in {root.count:,} blocks\n")
    stack = [(root, "", True, 0)]
    while stack:
        node, prefix, last, depth = stack.pop()
        if node is not root:
            share = 100.0 * node.bytes / total
            numpy = f", NumPy {human(node.numpy)}" if node.numpy else ""
            branch = "└─ " if last else "├─ "
            out.write(f"{prefix}{branch}{human(node.bytes):>10} {share:5.1f}%  "
                      f"{clean(node.label)}  ({node.count:,} blocks{numpy})\n")
            prefix += "   " if last else "│  "
        if depth >= max_depth:
            continue
        kids = [c for c in sorted(node.children.values(), key=lambda c: -c.bytes)
                if c.bytes >= total * min_share]
        hidden = len(node.children) - len(kids)
        if hidden and node is not root:
            rest = sum(c.bytes for c in node.children.values()) - sum(c.bytes for c in kids)
            if rest > 0:
                out.write(f"{prefix}   ({hidden} smaller: {human(rest)})\n")
        for i, child in reversed(list(enumerate(kids))):
            stack.append((child, prefix, i == len(kids) - 1, depth + 1))
