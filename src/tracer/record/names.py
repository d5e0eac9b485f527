"""What the collector keeps of each stream's metadata, for live views and censuses.

The metadata names stacks, libraries and threads: it grows with the distinct stacks,
not with the run. Records that come again and again are not kept: glibc's statistics
(only the last one: `held`, the allocator-held bytes a live view charts), pymalloc's
statistics, and object censuses (kept aside until the collector has joined them).
The sifting is C (csrc/collector/stream.c, mt_meta_sift): no record is handled in Python.
"""

from tracer import _format as fmt
from tracer._native import ffi, lib

ASIDE_MAX = 1 << 20  # census records waiting for their join (at most 64 KiB each)
_HEAPSTATS = fmt.PAYLOADS[fmt.META_HEAPSTATS]  # position, reason, cost, mallinfo2


class Kept:
    def __init__(self):
        self.names = bytearray()  # every record but the repeated ones, in order
        self.aside = bytearray()  # census records not yet joined
        self.held = None  # (position, glibc arena + mmapped bytes), latest
        self._carry = b""  # a record cut at the end of the last piece

    def add(self, piece) -> None:
        data = self._carry + bytes(piece)
        n = len(data)
        keep, aside = ffi.new("uint8_t[]", max(n, 1)), ffi.new("uint8_t[]", max(n, 1))
        aside_len, consumed = ffi.new("size_t *"), ffi.new("size_t *")
        stats, seen = ffi.new("uint8_t[]", _HEAPSTATS.size), ffi.new("int *")
        kept = lib.mt_meta_sift(
            ffi.from_buffer(data),
            n,
            keep,
            aside,
            max(0, min(n, ASIDE_MAX - len(self.aside))),
            aside_len,
            consumed,
            stats,
            seen,
        )
        self.names += ffi.buffer(keep, kept)
        self.aside += ffi.buffer(aside, aside_len[0])
        self._carry = data[consumed[0] :]
        if seen[0]:
            values = dict(
                zip(
                    ("position", "reason", "cost_ns") + fmt.MALLINFO_FIELDS,
                    _HEAPSTATS.unpack(bytes(ffi.buffer(stats, _HEAPSTATS.size))),
                )
            )
            self.held = (values["position"], values["arena"] + values["hblkhd"])
