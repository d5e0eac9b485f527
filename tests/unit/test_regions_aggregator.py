"""Region numbers of the C aggregator against hand-made event streams: exact peaks,
nesting, other threads, frees after a region ended, re-entry, repeated instances,
mappings, and the table staying small however many instances come and go."""

import numpy as np

from tracer import _format as fmt
from tracer.analyze.regions import merge
from tracer.record.aggregate import PAGE_SIZE, Aggregator

MALLOC, FREE, REGION = 1, 10, fmt.REGION
ENTER, LEAVE = 1, 0


def events(*rows):
    """rows of (kind, addr, size, stack, tid)"""
    out = np.zeros(len(rows), dtype=fmt.EVENT_DTYPE)
    for i, (kind, addr, size, stack, tid) in enumerate(rows):
        out[i]["kind"], out[i]["addr"], out[i]["size"] = kind, addr, size
        out[i]["stack"], out[i]["tid"] = stack, tid
    return out


def regions(agg):
    rows, sites = agg.region_records()
    return (np.frombuffer(rows, fmt.REGION_ROW_DTYPE), np.frombuffer(sites, fmt.REGION_SITE_DTYPE))


def region(agg, rid):
    rows, sites = regions(agg)
    return merge(rows, sites, [rid])


def by_stack(agg, m, column):
    """A merged region's column per stack (site indices resolved through the sites)."""
    stacks = agg.sites()["stack"]
    out = {}
    for rec in m.sites:
        out[int(stacks[rec["site"]])] = out.get(int(stacks[rec["site"]]), 0) + int(rec[column])
    return out


def test_peak_allocated_and_left_live_are_exact():
    agg = Aggregator()
    agg.feed(
        events(
            (MALLOC, 0x9000, 999, 9, 1),  # before: not the region's
            (REGION, 1, ENTER, 0, 1),
            (MALLOC, 0x1000, 4000, 1, 1),
            (FREE, 0x1000, 0, 0, 1),
            (MALLOC, 0x2000, 2500, 2, 1),
            (MALLOC, 0x3000, 1000, 3, 1),
            (FREE, 0x9000, 0, 0, 1),  # freed inside, made before
            (REGION, 1, LEAVE, 0, 1),
            (FREE, 0x3000, 0, 0, 1),  # after: still left live at the end
            (MALLOC, 0x4000, 7000, 4, 1),
        ),
        1.0,
    )
    m = region(agg, 1)
    assert (m.instances, m.open) == (1, 0)
    assert m.peak_bytes == 4000  # 2500 + 1000 = 3500 never beat it
    assert m.alloc_bytes == 7500 and m.n_allocs == 3
    assert m.live_at_end_bytes == 3500
    assert by_stack(agg, m, "peak_bytes") == {1: 4000, 2: 0, 3: 0}
    assert by_stack(agg, m, "live_bytes") == {1: 0, 2: 2500, 3: 1000}
    assert 4 not in by_stack(agg, m, "alloc_bytes") and 9 not in by_stack(agg, m, "alloc_bytes")


def test_nested_regions_count_in_both_and_frees_follow_the_block():
    agg = Aggregator()
    agg.feed(
        events(
            (REGION, 1, ENTER, 0, 1),
            (MALLOC, 0x1000, 100, 1, 1),
            (REGION, 2, ENTER, 0, 1),
            (MALLOC, 0x2000, 1000, 2, 1),
            (REGION, 2, LEAVE, 0, 1),
            (FREE, 0x2000, 0, 0, 1),  # inner ended: outer gives it back
            (MALLOC, 0x3000, 500, 3, 1),
            (REGION, 1, LEAVE, 0, 1),
        ),
        1.0,
    )
    outer, inner = region(agg, 1), region(agg, 2)
    assert inner.peak_bytes == 1000 and inner.live_at_end_bytes == 1000
    assert outer.peak_bytes == 1100 and outer.alloc_bytes == 1600
    assert outer.live_at_end_bytes == 600
    rows, _ = regions(agg)
    assert int(rows["parent"][rows["region"] == 2][0]) == 1


def test_other_threads_do_not_count_but_their_frees_do():
    agg = Aggregator()
    agg.feed(
        events(
            (REGION, 1, ENTER, 0, 1),
            (MALLOC, 0x1000, 800, 1, 1),
            (MALLOC, 0x2000, 5000, 2, 2),  # thread 2: outside the region
            (FREE, 0x1000, 0, 0, 2),  # thread 2 frees the region's block
            (MALLOC, 0x3000, 300, 1, 1),
            (REGION, 1, LEAVE, 0, 1),
        ),
        1.0,
    )
    m = region(agg, 1)
    assert m.peak_bytes == 800 and m.alloc_bytes == 1100 and m.live_at_end_bytes == 300


def test_repeated_instances_keep_the_highest_peak_with_its_breakdown():
    agg = Aggregator()
    rows = []
    for i, size in enumerate((1000, 3000, 2000)):
        addr = 0x1000 * (i + 1)
        rows += [
            (REGION, 5, ENTER, 0, 1),
            (MALLOC, addr, size, 10 + i, 1),
            (FREE, addr, 0, 0, 1),
            (MALLOC, addr + 8, 10, 20, 1),
            (REGION, 5, LEAVE, 0, 1),
        ]
    agg.feed(events(*rows), 1.0)
    m = region(agg, 5)
    assert m.instances == 3 and m.peak_bytes == 3000
    assert m.alloc_bytes == 6030 and m.live_at_end_bytes == 30
    assert by_stack(agg, m, "peak_bytes") == {10: 0, 11: 3000, 12: 0, 20: 0}
    assert by_stack(agg, m, "live_bytes") == {10: 0, 11: 0, 12: 0, 20: 30}


def test_reentered_region_is_one_instance_and_unmatched_leaves_are_ignored():
    agg = Aggregator()
    agg.feed(
        events(
            (REGION, 3, LEAVE, 0, 1),  # never entered: ignored
            (REGION, 1, ENTER, 0, 1),
            (REGION, 1, ENTER, 0, 1),  # recursion
            (MALLOC, 0x1000, 100, 1, 1),
            (REGION, 1, LEAVE, 0, 1),
            (MALLOC, 0x2000, 100, 1, 1),
            (REGION, 1, LEAVE, 0, 1),
            (MALLOC, 0x3000, 100, 1, 1),
        ),
        1.0,
    )
    m = region(agg, 1)
    assert m.instances == 1 and m.alloc_bytes == 200 and m.peak_bytes == 200


def test_open_instance_at_the_end_and_leaving_an_outer_region_closes_inner_ones():
    agg = Aggregator()
    agg.feed(
        events(
            (REGION, 1, ENTER, 0, 1),
            (REGION, 2, ENTER, 0, 1),
            (MALLOC, 0x1000, 100, 1, 1),
            (REGION, 1, LEAVE, 0, 1),  # region 2 never left: closes too
            (REGION, 4, ENTER, 0, 2),
            (MALLOC, 0x2000, 70, 1, 2),
        ),
        1.0,
    )
    assert (region(agg, 2).instances, region(agg, 2).open) == (1, 0)
    still = region(agg, 4)
    assert (still.instances, still.open, still.t_leave) == (1, 1, None)
    assert still.live_at_end_bytes == 70 and still.peak_bytes == 70


def test_mappings_count_in_pages_and_partial_unmaps():
    agg = Aggregator()
    anon = fmt.FLAG_ANON
    ev = events(
        (REGION, 1, ENTER, 0, 1),
        (fmt.MMAP, 0x100000, 4 * PAGE_SIZE, 1, 1),
        (fmt.MUNMAP, 0x100000 + PAGE_SIZE, PAGE_SIZE, 0, 1),  # a hole: split in two
        (REGION, 1, LEAVE, 0, 1),
        (fmt.MUNMAP, 0x100000, 4 * PAGE_SIZE, 0, 1),
    )
    ev["flags"][1] = anon
    agg.feed(ev, 1.0)
    m = region(agg, 1)
    assert m.peak_bytes == 4 * PAGE_SIZE and m.live_at_end_bytes == 3 * PAGE_SIZE


def test_instances_that_come_and_go_do_not_grow_the_tables():
    agg = Aggregator()
    for batch in range(20):
        rows = []
        for i in range(500):
            addr = 0x10000 + 16 * i
            rows += [
                (REGION, 1 + i % 7, ENTER, 0, 1 + i % 3),
                (MALLOC, addr, 64, 1 + i % 5, 1 + i % 3),
                (REGION, 1 + i % 7, LEAVE, 0, 1 + i % 3),
                (FREE, addr, 0, 0, 1),
            ]
        agg.feed(events(*rows), float(batch))
    rows, sites = regions(agg)
    n_sites = len(agg.sites())  # (stack, thread) pairs: 15
    assert len(rows) == 7 and len(sites) <= 7 * n_sites and n_sites == 15
    assert sum(int(r["instances"]) for r in rows) == 20 * 500
    assert all(int(r["live_bytes"]) == int(r["instances"]) * 64 for r in rows)
