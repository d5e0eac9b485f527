"""The collector's reading of a stream's metadata for its answers: every record read
once, whatever the cut between what was written and what is still pending."""
import struct

from tracer import _format as fmt
from tracer.answers import Names


def record(rtype: int, payload: bytes) -> bytes:
    raw = struct.pack("<HH", rtype, len(payload)) + payload
    return raw + b"\0" * (-len(raw) % 4)


META = (record(fmt.META_CODE, struct.pack("<IiHH", 1, 10, 6, 4) + b"app.pyload")
        + record(fmt.META_NODE, struct.pack("<IIIi", 7, 0, 1, 12))
        + record(fmt.META_NODE, struct.pack("<IIIi", 8, 7, 1, 14))
        + record(fmt.META_THREAD, struct.pack("<I", 99) + b"worker")
        + record(fmt.META_REGION, struct.pack("<II", 3, 1) + "t\u00e9st::a".encode()))


def test_every_cut_reads_the_same():
    for cut in range(len(META) + 1):
        for seen in range(0, len(META) + 1, 5):   # questions asked as the bytes arrive
            names = Names()
            log, pending = bytearray(META[:min(cut, seen)]), bytearray(META[min(cut, seen):seen])
            names.update(log, pending)
            names.update(bytearray(META[:cut]), bytearray(META[cut:]))
            assert names.frames(8, 0) == [["load", "app.py", 14], ["load", "app.py", 12]]
            assert names.regions == {3: "t\u00e9st::a"} and names.threads == {99: "worker"}
            assert names.parsed == len(META)


def test_a_thread_without_python_frames():
    names = Names()
    names.update(bytearray(META), bytearray())
    assert names.frames(0, 99) == [["[no Python frame] thread worker (tid 99)", "<native>", 0]]
