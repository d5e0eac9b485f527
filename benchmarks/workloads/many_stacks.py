"""10 million native allocations from ~1,500 distinct Python stacks (for report speed).

Each allocation is a bytes object above pymalloc's 512-byte limit (one malloc, one
free), made at the bottom of a recursion whose depth (1-30) and branch (one of 50
functions) vary, so a report has many stacks to merge, as in a real program.
"""

import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000


def make_branch(k):
    def branch(depth, n):
        if depth:
            return branch(depth - 1, n)
        x = b"x"
        total = 0
        for i in range(n):
            total += len(x * (600 + k))
        return total

    branch.__name__ = branch.__qualname__ = f"branch_{k}"
    return branch


BRANCHES = [make_branch(k) for k in range(50)]


def main():
    done, total, i = 0, 0, 0
    while done < N:
        n = min(1000, N - done)
        total += BRANCHES[i % 50](i % 30, n)
        done += n
        i += 1
    print("total", total)


if __name__ == "__main__":
    main()
