"""The collector's side of the object census (`memtrace run --objects`, docs/objects.md).

The target writes a census (metadata text key TEXT_CENSUS, JSON) and waits, holding
the GIL, until the collector has drained every event before it: no object of the
census can be freed meanwhile, so looking its blocks up in the live table now is
exact. The collector writes what it found as a TEXT_CENSUS_LINES record of its
own into the stream's metadata, then lets the target go on. No NumPy here.
"""

import json
import struct
from typing import Dict, List

from tracer import _format as fmt
from tracer._native import ffi, lib

BUDGET = 0.10  # censuses asked for at peaks take at most this share of the time
HIGHER = 1.25  # a peak this much above the last census's heap need not wait its turn


def due(stream, t: float) -> bool:
    """Whether the at-peak snapshot being taken should ask for a census: never while
    one is asked for and not yet joined, nor while the censuses so far have taken more
    than BUDGET of the process's time; then, once the last one's turn has passed (9
    times its cost later), or at once for a peak well above its heap (the first census
    often comes while modules load; the peak that matters may come soon after)."""
    if stream.census.next == float("inf") or stream.census.spent > BUDGET * (t - stream.t_start):
        return False
    peak = stream.agg.totals()["peak_heap"]
    return t >= stream.census.next or peak >= HIGHER * stream.census.heap


def join(collector, stream) -> None:
    """A census was sent: drain up to it, join its blocks, write the lines, let it go."""
    sent = stream.counters().census_sent
    collector._drain(stream, everything=True)
    for record in _new_records(stream):
        lines = _lines(stream, record, collector.now())
        payload = struct.pack("<H", fmt.TEXT_CENSUS_LINES) + json.dumps(lines, separators=(",", ":")).encode()
        entry = struct.pack("<HH", fmt.META_TEXT, len(payload)) + payload
        entry += b"\0" * (-len(entry) % 4)
        # the drain above took every committed record: the metadata ends at a
        # record boundary, where one of the collector's own may go
        stream.meta_pending += entry
        cost = record.get("cost_ns", 0) / 1e9
        stream.census.next = collector.now() + cost * (1 - BUDGET) / BUDGET
        stream.census.heap = lines["heap"]
        stream.census.spent += cost
    if stream.census.next == float("inf"):  # asked for, and no record came
        stream.census.next = collector.now()
    lib.mt_shm_ack_census(stream.ptr, sent)


def _new_records(stream):
    """Census records that arrived since the last join (the collector set them aside)."""
    data, stream.kept.aside = bytes(stream.kept.aside), bytearray()
    for _rtype, payload in fmt.iter_meta(data):
        try:
            record = json.loads(payload[2:])
        except ValueError:
            continue  # cut short with its process
        if isinstance(record, dict):
            yield record


def _lines(stream, record, t: float) -> dict:
    """Per type of the census, its blocks that are live traced blocks, by site."""
    types = []
    for index, row in enumerate(record.get("types", [])):
        blocks = row.get("blocks") or []
        if not blocks:
            continue
        n = len(blocks)
        addrs = ffi.new("uint64_t[]", [int(b[0]) for b in blocks])
        sites, sizes = ffi.new("uint32_t[]", n), ffi.new("uint64_t[]", n)
        lib.mt_agg_blocks_at(stream.agg._agg, addrs, n, sites, sizes)
        by_site: Dict[int, List[int]] = {}  # site -> [count, bytes]
        for i in range(n):
            if sites[i] != 0xFFFFFFFF:
                entry = by_site.setdefault(sites[i], [0, 0])
                entry[0] += 1
                entry[1] += int(blocks[i][1])
        types.append(
            {
                "type": index,
                "blocks": n,
                "block_bytes": sum(int(b[1]) for b in blocks),
                "sites": sorted(([s, c, b] for s, (c, b) in by_site.items()), key=lambda e: -e[2]),
            }
        )
    totals = stream.agg.totals()
    # the target is still waiting: the traced heap now is the heap at its census
    return {
        "position": record.get("position"),
        "t": t,
        "events": totals["n_events"],
        "heap": totals["heap"],
        "types": types,
    }
