"""Call-heavy, allocation-light (like the Theano tutorial's pickle experiment):
millions of small Python calls, few native allocations. A tracer whose cost
follows calls (a profile hook) pays here; one whose cost follows allocations
should not."""

import sys


def leaf(x):
    return x + 1


def middle(x):
    return leaf(x) + leaf(x)


def top(n):
    total = 0
    for i in range(n):
        total += middle(i)
    return total


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    print("total", top(n))
