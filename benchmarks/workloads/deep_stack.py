"""Allocation cost against stack depth: N native allocations made DEPTH frames deep.

python deep_stack.py DEPTH [N]
"""

import sys

DEPTH = int(sys.argv[1]) if len(sys.argv) > 1 else 5
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000


def allocate(n):
    x = b"x"
    for i in range(n):
        b = x * (600 + (i & 255))  # one malloc + one free


def recurse(depth, n):
    if depth <= 1:
        return allocate(n)
    return recurse(depth - 1, n)


if __name__ == "__main__":
    recurse(DEPTH - 1, N)  # the module frame is the first
    print("done")
