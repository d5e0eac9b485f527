"""The collector's reading of a stream's metadata for its answers: every record read
once, whatever the pieces the metadata ring brought it in, and whenever a question
came."""

import struct

from tracer import _format as fmt
from tracer.record.answers import Names
from tracer.record.names import Kept


def record(rtype: int, payload: bytes) -> bytes:
    raw = struct.pack("<HH", rtype, len(payload)) + payload
    return raw + b"\0" * (-len(raw) % 4)


META = (
    record(fmt.META_CODE, struct.pack("<IiHH", 1, 10, 6, 4) + b"app.pyload")
    + record(fmt.META_NODE, struct.pack("<IIIi", 7, 0, 1, 12))
    + record(fmt.META_NODE, struct.pack("<IIIi", 8, 7, 1, 14))
    + record(fmt.META_THREAD, struct.pack("<I", 99) + b"worker")
    + record(fmt.META_REGION, struct.pack("<II", 3, 1) + "t\u00e9st::a".encode())
)


def test_every_cut_reads_the_same():
    pymalloc = record(fmt.META_TEXT, struct.pack("<H", fmt.TEXT_PYMALLOC) + b"position=1 arenas=2")
    first = len(record(fmt.META_CODE, struct.pack("<IiHH", 1, 10, 6, 4) + b"app.pyload"))
    meta = META[:first] + pymalloc + META[first:]  # statistics in between are not kept
    for cut in range(len(meta) + 1):
        for asked in range(0, len(meta) + 1, 5):  # a question as the bytes arrive
            kept, names = Kept(), Names()
            for lo, hi in sorted(
                {(0, min(cut, asked)), (min(cut, asked), max(cut, asked)), (max(cut, asked), len(meta))}
            ):
                kept.add(meta[lo:hi])
                names.update(kept.names)
            names.update(kept.names)
            assert names.frames(8, 0) == [["load", "app.py", 14], ["load", "app.py", 12]]
            assert names.regions == {3: "t\u00e9st::a"} and names.threads == {99: "worker"}
            assert names.parsed == len(kept.names) == len(META)


def test_a_thread_without_python_frames():
    names = Names()
    names.update(bytearray(META))
    assert names.frames(0, 99) == [["[no Python frame] thread worker (tid 99)", "<native>", 0]]
