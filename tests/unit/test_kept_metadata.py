"""What the collector keeps of a stream's metadata for live views and censuses
(tracer.record.names, mt_meta_sift): names kept, repeated statistics not, records cut
between two drains put together."""

import struct

from tracer import _format as fmt
from tracer.record.names import Kept


def record(rtype: int, payload: bytes) -> bytes:
    out = struct.pack("<HH", rtype, len(payload)) + payload
    return out + b"\0" * (-len(out) % 4)


def text(key: int, value: bytes) -> bytes:
    return record(fmt.META_TEXT, struct.pack("<H", key) + value)


def heapstats(position: int, arena: int, hblkhd: int) -> bytes:
    values = [arena, 0, 0, 0, hblkhd, 0, 0, 0, 0, 0]
    return record(fmt.META_HEAPSTATS, struct.pack("<QII10Q", position, 0, 0, *values))


CODE = record(fmt.META_CODE, struct.pack("<IiHH", 7, 1, 6, 1) + b"prog.pyf")
NODE = record(fmt.META_NODE, struct.pack("<IIIi", 3, 0, 7, 12))
CENSUS = text(fmt.TEXT_CENSUS, b'{"reason":"peak","position":9}')


def test_names_kept_statistics_not():
    # GIVEN names, glibc and pymalloc statistics and a census, as the shim sends them
    stream = (
        CODE
        + heapstats(10, 4096, 8192)
        + NODE
        + text(fmt.TEXT_PYMALLOC, b"arenas = 3\n")
        + CENSUS
        + heapstats(20, 1 << 20, 1 << 21)
        + text(fmt.TEXT_WARNING, b"w")
    )
    kept = Kept()
    kept.add(stream)
    # THEN the names stay in order, the statistics do not, the latest glibc answer is
    # kept as allocator-held bytes, and the census waits aside for its join
    assert bytes(kept.names) == CODE + NODE + text(fmt.TEXT_WARNING, b"w")
    assert kept.held == (20, (1 << 20) + (1 << 21))
    assert bytes(kept.aside) == CENSUS


def test_a_record_cut_between_two_drains_is_put_together():
    stream = CODE + NODE + CENSUS + heapstats(5, 1, 2)
    for cut in range(1, len(stream)):
        kept = Kept()
        kept.add(memoryview(stream)[:cut])
        kept.add(memoryview(stream)[cut:])
        assert bytes(kept.names) == CODE + NODE, cut
        assert bytes(kept.aside) == CENSUS and kept.held == (5, 3), cut
