"""The C aggregator against hand-made event streams (no LD_PRELOAD needed)."""

import numpy as np

from tracer import _format as fmt
from tracer.record.aggregate import PAGE_SIZE, Aggregator

MALLOC, CALLOC, REALLOC, FREE = 1, 2, 3, 10
MMAP, MUNMAP, MREMAP = fmt.MMAP, fmt.MUNMAP, fmt.MREMAP


def events(*rows):
    """rows of (kind, addr, size, stack[, flags])"""
    out = np.zeros(len(rows), dtype=fmt.EVENT_DTYPE)
    for i, row in enumerate(rows):
        kind, addr, size, stack, *rest = row
        out[i]["kind"], out[i]["addr"], out[i]["size"], out[i]["stack"] = kind, addr, size, stack
        out[i]["flags"] = rest[0] if rest else 0
        out[i]["tid"] = 7
    return out


def by_stack(agg):
    sites = agg.sites()
    table = {}
    for s in sites:
        row = table.setdefault(int(s["stack"]), [0, 0, 0, 0])
        row[0] += int(s["alloc_bytes"])
        row[1] += int(s["live_bytes"])
        row[2] += int(s["peak_bytes"])
        row[3] += int(s["n_allocs"])
    return table


def test_peak_snapshot_is_exact():
    agg = Aggregator()
    agg.feed(
        events(
            (MALLOC, 0x1000, 100, 1), (MALLOC, 0x2000, 300, 2), (FREE, 0x1000, 0, 0), (MALLOC, 0x3000, 50, 1)
        ),
        1.0,
    )
    t = agg.totals()
    assert t["peak_heap"] == 400 and t["heap"] == 350
    table = by_stack(agg)
    assert table[1] == [150, 50, 100, 2]  # held 100 at the peak, 50 now
    assert table[2] == [300, 300, 300, 1]
    # a later, higher peak replaces the snapshot
    agg.feed(events((MALLOC, 0x4000, 1000, 3)), 2.0)
    t = agg.totals()
    assert t["peak_heap"] == 1350 and t["peak_time"] == 2.0
    assert by_stack(agg)[1][2] == 50 and by_stack(agg)[3][2] == 1000


def test_realloc_pair_and_unknown_free():
    agg = Aggregator()
    agg.feed(
        events(
            (MALLOC, 0x1000, 100, 1),
            (FREE, 0x1000, 0, 0, fmt.FLAG_REMAP),
            (REALLOC, 0x5000, 900, 1),
            (FREE, 0xDEAD, 0, 0),
        ),
        0.5,
    )
    t = agg.totals()
    assert t["heap"] == 900 and t["unknown_frees"] == 1 and t["n_frees"] == 1
    assert t["total_allocated"] == 1000 and t["n_allocations"] == 2


def test_partial_munmap_splits_and_counts():
    agg = Aggregator()
    p = PAGE_SIZE
    agg.feed(events((MMAP, 0x100000, 10 * p, 1, fmt.FLAG_ANON)), 0.1)
    assert agg.totals()["heap"] == 10 * p
    # punch a hole in the middle, then unmap a range spanning the rest
    agg.feed(events((MUNMAP, 0x100000 + 4 * p, 2 * p, 0)), 0.2)
    assert agg.totals()["heap"] == 8 * p and agg.totals()["live_mappings"] == 2
    agg.feed(events((MUNMAP, 0x100000, 10 * p, 0)), 0.3)
    t = agg.totals()
    assert t["heap"] == 0 and t["live_mappings"] == 0 and t["peak_heap"] == 10 * p


def test_file_mappings_are_not_heap_and_mremap_keeps_kind():
    agg = Aggregator()
    p = PAGE_SIZE
    agg.feed(
        events(
            (MMAP, 0x200000, 3 * p, 1, 0),  # file-backed
            (MMAP, 0x400000, 2 * p, 2, fmt.FLAG_ANON),
            (MUNMAP, 0x400000, 2 * p, 0, fmt.FLAG_REMAP),  # mremap moves it
            (MREMAP, 0x800000, 5 * p, 2),
        ),
        0.1,
    )
    t = agg.totals()
    assert t["mapped_file"] == 3 * p
    assert t["heap"] == 5 * p
    # MAP_FIXED over part of the anonymous mapping replaces that part
    agg.feed(events((MMAP, 0x800000, p, 3, fmt.FLAG_ANON)), 0.2)
    assert agg.totals()["heap"] == 5 * p and agg.totals()["live_mappings"] == 3


def test_many_blocks_grow_the_table_and_balance():
    agg = Aggregator()
    n = 200_000
    addrs = np.arange(1, n + 1, dtype=np.uint64) * 64
    alloc = np.zeros(n, dtype=fmt.EVENT_DTYPE)
    alloc["kind"], alloc["addr"], alloc["size"], alloc["stack"] = MALLOC, addrs, 10, 1
    free = np.zeros(n, dtype=fmt.EVENT_DTYPE)
    free["kind"], free["addr"] = FREE, addrs[::-1]
    agg.feed(alloc, 1.0)
    assert agg.totals()["live_blocks"] == n
    agg.feed(free[: n // 2], 2.0)
    agg.feed(free[n // 2 :], 3.0)
    t = agg.totals()
    assert t["heap"] == 0 and t["live_blocks"] == 0 and t["peak_heap"] == 10 * n
