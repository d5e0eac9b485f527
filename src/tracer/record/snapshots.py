"""Heap-level snapshots (docs/reconciliation.md): RSS samples, glibc's statistics on
request, and /proc/PID/smaps read by the collector itself the moment a heap peak is
over (never waiting for the program), now and then, and as a process exits."""

import time
from typing import TYPE_CHECKING, Optional

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.record import census, procfs
from tracer.record.stream import Stream

if TYPE_CHECKING:
    from tracer.record.collector import Collector

# Snapshots near the heap peak (docs/reconciliation.md, "When"): a peak with no
# snapshot is read once it stops rising -- unchanged for PEAK_HOLD while RSS has not
# grown by RSS_RISING over its last samples (the program is done writing new pages;
# PEAK_HOLD_MAX at most), or the heap fell PEAK_DROP below it -- at most one snapshot
# per PEAK_SNAPSHOT_SPACING; while it keeps rising, one per GROWTH_SNAPSHOT_SECONDS.
# Reading smaps costs 5-50 ms on a big process, so snapshots may take SNAPSHOT_SHARE
# of the collector's time, in bursts of at most SNAPSHOT_BURST seconds.
PEAK_SNAPSHOT_SPACING = 0.05
PEAK_HOLD = 0.02
PEAK_HOLD_MAX = 0.25
RSS_RISING = 1 << 20
PEAK_DROP, PEAK_DROP_MIN = 0.01, 64 << 10
GROWTH_SNAPSHOT_SECONDS = 1.0
SNAPSHOT_SHARE = 0.10
SNAPSHOT_BURST = 0.5
SMALL_PROCESS = 4 << 20  # heap peak under which a child's exit snapshot is skipped
PERIODIC_SNAPSHOT_SECONDS = 10.0
# glibc's statistics walk its free lists (mallinfo2 is O(free chunks)): ask for them
# at most so often that the walks take this share of the program's time
STATS_COST_SHARE = 0.02


def sample_rss(collector: "Collector", t: float) -> None:
    """RSS and its split, and a request for the target's heap statistics."""
    for stream in collector.streams.values():
        if not stream.alive:
            continue
        collector._note_heap(stream, t, drained=False)
        st = procfs.status(stream.pid)
        if st is not None:
            rss = st["RssAnon"] + st["RssFile"] + st["RssShmem"]
            stream.rss.recent = stream.rss.recent[1:] + [rss]
            stream.rss.peak = max(stream.rss.peak, rss)
            stream.rss.pending.append((t, rss, st["RssAnon"], st["RssFile"], st["RssShmem"], st["VmSwap"]))
        # glibc's books, spaced so that walking its free lists costs the target
        # at most ~2% (mallinfo2 is O(free chunks))
        if t >= stream.snaps.next_stats:
            lib.mt_shm_request_stats(stream.ptr, 0)
            cost = stream.counters().stats_cost_ns / 1e9
            stream.snaps.next_stats = t + max(collector.sample_interval, cost / STATS_COST_SHARE)


def take(collector: "Collector", stream: Stream, kind: str) -> None:
    """Mappings with their resident bytes and the traced bytes inside each, now."""
    t = collector.now()
    started = time.perf_counter()
    vmas = procfs.smaps(stream.pid)
    totals = stream.agg.totals()
    # position: the ring's event index (heap statistics carry one too); events: the
    # aggregator's count, the peak's index space; cost: seconds smaps took to read
    record = {
        "kind": kind,
        "t": t,
        "position": stream.counters().consumed,
        "events": totals["n_events"],
        "heap": totals["heap"],
        "peak_heap": totals["peak_heap"],
        "peak_time": totals["peak_time"],
        "peak_event": totals["peak_event"],
        "status": procfs.status(stream.pid),
    }
    if vmas is None:
        record["error"] = f"/proc/{stream.pid}/smaps could not be read"
    else:
        record["cost"] = round(time.perf_counter() - started, 6)
        n = len(vmas)
        starts = ffi.new("uint64_t[]", [v[0] for v in vmas])
        ends = ffi.new("uint64_t[]", [v[1] for v in vmas])
        blocks, anon, filemap, top = (ffi.new("int64_t[]", n) for _ in range(4))
        top_site = ffi.new("uint32_t[]", n)
        lib.mt_agg_bytes_in_ranges(stream.agg._agg, starts, ends, n, blocks, anon, filemap, top_site, top)
        record["vmas"] = [
            v + [blocks[i], anon[i], filemap[i], top_site[i] if top_site[i] != 0xFFFFFFFF else -1, top[i]]
            for i, v in enumerate(vmas)
        ]
        record["stack_pointers"] = procfs.thread_stack_pointers(stream.pid)
    stream.snaps.t = t
    stream.snaps.peak = totals["peak_heap"]
    collector.writer.json_chunk(fmt.CHUNK_SNAPSHOT, stream.sid, record)
    collector.snap_budget -= time.perf_counter() - started


def may_snapshot(collector: "Collector", t: float, floor: float) -> bool:
    """Whether the snapshots' share of the collector's time allows one now (the
    budget is above `floor`)."""
    collector.snap_budget = min(
        SNAPSHOT_BURST, collector.snap_budget + (t - collector.snap_budget_t) * SNAPSHOT_SHARE
    )
    collector.snap_budget_t = t
    return collector.snap_budget > floor


def watch(collector: "Collector", stream: Stream, t: float) -> None:
    """Snapshots: at each new heap peak, now and then, and as the process exits."""
    state = stream.counters().state
    if state == fmt.STATE_EXITING and not stream.snaps.exit_seen:
        stream.snaps.exit_seen = True
        collector._drain(stream, everything=True)
        # Small short-lived children (a shell, `true`) are let go at once: their
        # exit snapshot is not worth making every exec in a build wait for it.
        if stream.pid == collector.main_pid or stream.agg.totals()["peak_heap"] >= SMALL_PROCESS:
            take(collector, stream, "exit")
        # Let the process go on exiting before writing the aggregate: nothing
        # is drained in between, so it still describes the exit point.
        lib.mt_shm_ack_exit(stream.ptr)
        collector._write_aggregate(stream, checkpoint="exit")
        return
    since = t - stream.snaps.t
    floor = peak_due(stream, t)
    if floor is not None and may_snapshot(collector, t, floor):
        # glibc's and pymalloc's books need the program: it answers in its next
        # allocator call (a pending call for pymalloc); the nearest answer is used
        # (the reconciliation says how far it was)
        if collector.objects and census.due(stream, t):
            lib.mt_shm_request_census(stream.ptr)  # (pymalloc's statistics with it)
            stream.census.next = float("inf")  # none more until this one is joined
        else:
            lib.mt_shm_request_stats(stream.ptr, 1)
        take(collector, stream, "peak")
    elif since >= PERIODIC_SNAPSHOT_SECONDS:
        take(collector, stream, "periodic")


def peak_due(stream: Stream, t: float) -> Optional[float]:
    """Whether a peak with no snapshot yet should be read now (never waiting for
    the program): once it has stopped rising -- while it still rises, a snapshot
    would only be replaced by the next one. Returns the budget floor it may draw
    to (a peak that is over is the one most worth having: it may overdraw; one of
    a peak still rising must leave room for it), or None."""
    totals = stream.agg.totals()
    peak, heap = totals["peak_heap"], totals["heap"]
    since = t - stream.snaps.t
    if peak <= stream.snaps.peak or since < PEAK_SNAPSHOT_SPACING:
        return None
    if heap < peak - max(PEAK_DROP_MIN, int(peak * PEAK_DROP)):
        return -SNAPSHOT_BURST  # it fell
    held_for = t - totals["peak_time"]
    rss_rising = stream.rss.recent[-1] - stream.rss.recent[0] >= RSS_RISING
    if held_for >= PEAK_HOLD and (not rss_rising or held_for >= PEAK_HOLD_MAX):
        return 0.0
    return SNAPSHOT_BURST / 2 if since >= GROWTH_SNAPSHOT_SECONDS else None
