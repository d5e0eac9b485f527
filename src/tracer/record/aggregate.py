"""Python face of the C aggregator (csrc/collector/aggregate.c): batches in, totals and sites out.
No NumPy at import: the collector uses it through cffi buffers only."""

import json
import os

from tracer import _format as fmt
from tracer._native import ffi, lib

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Aggregator:
    """Live blocks, mappings, per-site totals and the exact heap peak of one stream."""

    def __init__(self, sample_rate: int = 0):
        agg = lib.mt_agg_new(PAGE_SIZE)
        if agg == ffi.NULL:
            raise MemoryError("memtrace: cannot allocate the aggregator")
        self._agg = ffi.gc(agg, lib.mt_agg_free)
        # Events kept by --sample-rate carry their real size; the aggregator
        # counts each as size / P(kept), an unbiased estimate of the bytes.
        lib.mt_agg_set_sample_rate(self._agg, sample_rate)

    def track_temporary(self, threshold: int) -> None:
        if lib.mt_agg_track_temporary(self._agg, threshold) != 0:
            raise ValueError("the temporary threshold must be 1 to 64")

    def feed(self, events, t: float) -> None:
        """Feed a contiguous NumPy array of EVENT_DTYPE records, in stream order."""
        if len(events):
            self.feed_events(ffi.cast("mt_event *", ffi.from_buffer(events)), len(events), t)

    def feed_events(self, ptr, n: int, t: float) -> None:
        """Feed n mt_event records at a cffi pointer, in stream order."""
        if n and lib.mt_agg_feed(self._agg, ptr, n, t) != 0:
            raise MemoryError("memtrace: the aggregator ran out of memory")

    def totals(self) -> dict:
        out = ffi.new("mt_totals *")
        lib.mt_agg_totals(self._agg, out)
        return {name: getattr(out, name) for name in fmt.TOTALS_FIELDS}

    def site_records(self) -> bytes:
        """Every site as packed mt_site records (SITE_DTYPE)."""
        n = lib.mt_agg_sites(self._agg, ffi.NULL, 0)
        if n == 0:
            return b""
        out = ffi.new("mt_site[]", n)
        lib.mt_agg_sites(self._agg, out, n)
        return bytes(ffi.buffer(out))

    def sites(self):
        """Every site, as a (read-only) NumPy array of SITE_DTYPE."""
        import numpy as np

        return np.frombuffer(self.site_records(), dtype=fmt.SITE_DTYPE)

    def size_histogram(self) -> dict:
        """Heap allocations by power-of-two size: {"count": [...], "bytes": [...]}
        (index i: sizes in [2**(i-1), 2**i), index 0: size 0)."""
        out = ffi.new("uint64_t[]", 2 * lib.MT_SIZE_BUCKETS)
        lib.mt_agg_size_histogram(self._agg, out)
        n = lib.MT_SIZE_BUCKETS
        return {"count": list(out[0:n]), "bytes": list(out[n : 2 * n])}

    def region_records(self) -> tuple:
        """(rows, site records) of the regions, as packed mt_region_row and
        mt_region_site records (b"" when no region was ever entered)."""
        n = lib.mt_agg_region_rows(self._agg, ffi.NULL, 0)
        if n == 0:
            return b"", b""
        rows = ffi.new("mt_region_row[]", n)
        lib.mt_agg_region_rows(self._agg, rows, n)
        m = lib.mt_agg_region_sites(self._agg, ffi.NULL, 0)
        sites = ffi.new("mt_region_site[]", max(m, 1))
        lib.mt_agg_region_sites(self._agg, sites, m)
        return bytes(ffi.buffer(rows)), bytes(ffi.buffer(sites, m * ffi.sizeof("mt_region_site")))

    def regions_payload(self):
        """The regions chunk (u32 row count, rows, site records), or None if none."""
        rows, sites = self.region_records()
        if not rows:
            return None
        n = len(rows) // ffi.sizeof("mt_region_row")
        return [n.to_bytes(4, "little"), rows, sites]

    def chunk_payload(self, extra: dict) -> list:
        """The aggregate chunk: u32 JSON length, JSON (totals + extra), site records."""
        head = json.dumps(
            {**self.totals(), "size_histogram": self.size_histogram(), **extra}, separators=(",", ":")
        ).encode()
        return [len(head).to_bytes(4, "little"), head, self.site_records()]
