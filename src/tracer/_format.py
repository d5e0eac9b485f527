"""The wire and capture formats, on the Python side.

Every wire constant and layout comes from csrc/events.h through the compiled cffi
module (lib.MT_*, ffi.typeof, ffi.offsetof), so C and Python cannot drift apart;
tests/unit/test_wire_format.py checks the few places that cannot import it. The
capture file layout is documented in docs/capture-format.md.
"""

import struct

from tracer._native import ffi, lib


# ---- csrc/events.h (read by cffi: every value below comes from the header) ----
def _enum(name: str, prefix: str) -> dict:
    """{NAME: value} of a C enum, the prefix taken off (MT_TEXT_ARGV -> ARGV)."""
    return {k[len(prefix) :]: v for k, v in ffi.typeof(f"enum {name}").relements.items()}


_KINDS = _enum("mt_kind", "MT_")
KIND_NAMES = dict(sorted((v, k.lower()) for k, v in _KINDS.items() if k not in ("LAST_ALLOC", "KIND_COUNT")))
LAST_ALLOC = _KINDS["LAST_ALLOC"]
FREE, MMAP, MUNMAP, MREMAP, REGION = (_KINDS[k] for k in ("FREE", "MMAP", "MUNMAP", "MREMAP", "REGION"))
FLAG_NUMPY, FLAG_ANON, FLAG_REMAP = lib.MT_FLAG_NUMPY, lib.MT_FLAG_ANON, lib.MT_FLAG_REMAP
FLAG_SHARED, FLAG_SAMPLED, FLAG_KEEP = lib.MT_FLAG_SHARED, lib.MT_FLAG_SAMPLED, lib.MT_FLAG_KEEP

_META = _enum("mt_meta_type", "MT_META_")
META_CODE, META_NODE, META_LIB, META_THREAD = _META["CODE"], _META["NODE"], _META["LIB"], _META["THREAD"]
META_TEXT, META_HEAPSTATS, META_REGION = _META["TEXT"], _META["HEAPSTATS"], _META["REGION"]

_TEXT = _enum("mt_text_key", "MT_TEXT_")
TEXT_PYTHON_VERSION, TEXT_FRAMES_OFF, TEXT_NUMPY = (
    _TEXT["PYTHON_VERSION"],
    _TEXT["FRAMES_OFF"],
    _TEXT["NUMPY"],
)
TEXT_WARNING, TEXT_LIBRARY_PATHS, TEXT_ARGV = _TEXT["WARNING"], _TEXT["LIBRARY_PATHS"], _TEXT["ARGV"]
TEXT_EXE, TEXT_PYMALLOC, TEXT_TRACER_RANGES = _TEXT["EXE"], _TEXT["PYMALLOC"], _TEXT["TRACER_RANGES"]
TEXT_SAMPLE_RATE, TEXT_STACKS = _TEXT["SAMPLE_RATE"], _TEXT["STACKS"]
TEXT_CENSUS, TEXT_CENSUS_LINES = _TEXT["CENSUS"], _TEXT["CENSUS_LINES"]  # a census (JSON), its blocks joined
TEXT_CLUSTER = _TEXT["CLUSTER"]  # JSON from a cluster integration: worker labels, engine numbers

_STATE = _enum("mt_state", "MT_STATE_")
STATE_RUNNING, STATE_EXITED = _STATE["RUNNING"], _STATE["EXITED"]
STATE_DISABLED, STATE_EXITING = _STATE["DISABLED"], _STATE["EXITING"]

_REGION_KIND = _enum("mt_region_kind", "MT_REGION_KIND_")
REGION_KIND_USER, REGION_KIND_TEST = _REGION_KIND["USER"], _REGION_KIND["TEST"]
REGION_KIND_CELL, REGION_KIND_TASK = _REGION_KIND["CELL"], _REGION_KIND["TASK"]
REGION_KINDS = {
    REGION_KIND_USER: "region",
    REGION_KIND_TEST: "test",
    REGION_KIND_CELL: "cell",
    REGION_KIND_TASK: "task",
}

_ASK = _enum("mt_ask", "MT_ASK_")
ASK_USAGE, ASK_AT_PEAK, ASK_LIVE, ASK_CHECKPOINT = (
    _ASK[k] for k in ("USAGE", "AT_PEAK", "LIVE", "CHECKPOINT")
)
STATS_REQUESTED, STATS_EXIT = lib.MT_STATS_REQUESTED, lib.MT_STATS_EXIT

WIRE_VERSION, HELLO_MAGIC = lib.MT_WIRE_VERSION, lib.MT_HELLO_MAGIC
HELLO_SIZE = ffi.sizeof("mt_hello")

# C field types as NumPy formats and struct codes (the layouts below are read from cffi).
_C_TYPES = {
    "uint8_t": ("u1", "B"),
    "uint16_t": ("<u2", "H"),
    "uint32_t": ("<u4", "I"),
    "int32_t": ("<i4", "i"),
    "uint64_t": ("<u8", "Q"),
    "int64_t": ("<i8", "q"),
    "double": ("<f8", "d"),
}


def c_fields(ctype: str) -> list:
    """[(name, NumPy format)] of a C struct's fields, in order, as cffi read them."""
    return [(name, _C_TYPES[f.type.cname][0]) for name, f in ffi.typeof(ctype).fields]


def payload_struct(ctype: str) -> struct.Struct:
    """The struct module's layout of a fixed payload (csrc/events.h), checked against
    cffi's size: fields in order, no padding inside (the header says so)."""
    layout = struct.Struct("<" + "".join(_C_TYPES[f.type.cname][1] for _, f in ffi.typeof(ctype).fields))
    assert layout.size == ffi.sizeof(ctype), ctype
    return layout


def c_dtype(ctype: str, names=None):
    """A NumPy dtype at the exact offsets and size of a C struct (fields renamed by
    `names`, in order, when given)."""
    import numpy as np

    fields = ffi.typeof(ctype).fields
    return np.dtype(
        {
            "names": list(names or [name for name, _ in fields]),
            "formats": [_C_TYPES[f.type.cname][0] for _, f in fields],
            "offsets": [f.offset for _, f in fields],
            "itemsize": ffi.sizeof(ctype),
        }
    )


MALLINFO_FIELDS = tuple(
    name
    for name, _ in ffi.typeof("mt_heapstats_payload").fields
    if name not in ("position", "reason", "cost_ns")
)
HELLO = payload_struct("mt_hello")  # magic, version, pid, ppid, shm size
META_HEADER = payload_struct("mt_meta_header")  # type, payload length
# Each metadata payload's fixed part; its bytes (names, paths, text) follow at .size.
PAYLOADS = {
    META_CODE: payload_struct("mt_code_payload"),  # id, first line, name lengths
    META_NODE: payload_struct("mt_node_payload"),  # id, parent id, code id, line
    META_LIB: payload_struct("mt_lib_payload"),  # id, pad, pad, base
    META_THREAD: payload_struct("mt_thread_payload"),  # tid
    META_TEXT: payload_struct("mt_text_payload"),  # key
    META_REGION: payload_struct("mt_region_payload"),  # id, kind
    META_HEAPSTATS: payload_struct("mt_heapstats_payload"),
}  # position, reason, cost, mallinfo2


# Record layouts as (name, NumPy format); the dtypes are built on first use, so
# that the collector, which never needs NumPy, starts without importing it.
EVENT_FIELDS = c_fields("mt_event")
SITE_FIELDS = c_fields("mt_site")

TOTALS_FIELDS = [name for name, _ in ffi.typeof("mt_totals").fields]

# Regions (csrc/collector/native.h): a region's closed instances or one open instance, and
# the numbers of each site inside them.
REGION_ROW_FIELDS = c_fields("mt_region_row")
REGION_SITE_FIELDS = c_fields("mt_region_site")

# ---- capture file (docs/capture-format.md) -------------------------------
MAGIC = b"MTRACE\x00\n"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)  # 1: no compressed events chunks; 2: no delta chunks;
# 3: no regions
FILE_HEADER = struct.Struct("<8sII")  # magic, format version, reserved
CHUNK_HEADER = struct.Struct("<IIQ")  # type, stream id, payload length
EVENTS_HEADER = struct.Struct("<dQQ")  # seconds since start, index of first event, count
MAX_CHUNK = 1 << 30  # larger lengths mean a corrupt file
# Compressed events: ZEVENTS_HEADER, then a zstd frame of the batches' columns
# (so the index knows when each batch was drained without the events): float64
# seconds, uint32 event counts, uint32 encoded lengths, n of each; then one zstd
# frame holding the batches' encoded events back to back.
ZEVENTS_HEADER = struct.Struct("<QQII")  # first event, decompressed length, batches, columns' frame length
MAX_ZEVENTS_RAW = 64 << 20  # larger decompressed lengths mean a corrupt file
MAX_BATCHES = 1 << 20
MAX_MARK_EVENTS = 1 << 22  # events under one time mark (10 ms of drains)

CHUNK_INFO = 1  # JSON: the run (command, start time, memtrace version, page size)
CHUNK_PROCESS = 2  # JSON: a traced process's stream (pid, ppid, argv, exe, t)
CHUNK_EVENTS = 3  # EVENTS_HEADER + events encoded by mt_encode (csrc/collector/codec.c)
CHUNK_META = 4  # bytes of the stream's metadata ring (csrc/events.h)
CHUNK_RSS = 5  # float64 seconds, uint64 RSS bytes pairs
CHUNK_AGGREGATE = 6  # u32 JSON length, JSON totals, mt_site records
CHUNK_PROCESS_END = 7  # JSON: how the process ended
CHUNK_END = 8  # JSON: how the run ended; the last chunk of a complete capture
CHUNK_HEAP = 9  # HEAP_DTYPE records: the heap over time
CHUNK_SNAPSHOT = 10  # JSON: /proc/PID/smaps and traced bytes per mapping, at a moment
CHUNK_ZEVENTS = 11  # batches of encoded events, zstd-compressed together (see ZEVENTS_HEADER)
CHUNK_Z = 12  # u32 inner type, u32 inner length, zstd frame of that chunk's payload
CHUNK_ZD = 13  # the same, compressed against the payload of the stream's previous
# chunk of that inner type (a zstd raw-content dictionary)
CHUNK_REGIONS = 14  # u32 n, n region rows, then region site records (with each aggregate)
DELTA_TYPES = (CHUNK_AGGREGATE, CHUNK_SNAPSHOT, CHUNK_REGIONS)  # each repeats most of the previous
ZCHUNK_HEADER = struct.Struct("<II")
ZCHUNK_MIN = 1024  # smaller payloads are written as they are

CHUNK_NAMES = {
    1: "info",
    2: "process",
    3: "events",
    4: "meta",
    5: "rss",
    6: "aggregate",
    7: "process_end",
    8: "end",
    9: "heap",
    10: "snapshot",
    11: "zevents",
    12: "compressed",
    13: "delta",
    14: "regions",
}

RSS_FIELDS = [
    ("t", "<f8"),
    ("rss", "<u8"),
    ("anon", "<u8"),
    ("file", "<u8"),
    ("shmem", "<u8"),
    ("swap", "<u8"),
]
# heap: live heap at t; max: the highest it reached since the previous record
HEAP_FIELDS = [("t", "<f8"), ("heap", "<i8"), ("max", "<i8")]


def row_struct(fields) -> struct.Struct:
    """The struct layout of one packed record of fields (how the collector writes rows)."""
    codes = dict(_C_TYPES.values())  # NumPy format -> struct code
    return struct.Struct("<" + "".join(codes[f] for _, f in fields))


RSS_ROW = row_struct(RSS_FIELDS)
HEAP_ROW = row_struct(HEAP_FIELDS)


# The NumPy dtypes, built on first use: a C struct's at cffi's offsets, the rows the
# collector packs itself as they are.
_DTYPES = {
    "EVENT_DTYPE": lambda: c_dtype("mt_event"),
    "SITE_DTYPE": lambda: c_dtype("mt_site"),
    "REGION_ROW_DTYPE": lambda: c_dtype("mt_region_row"),
    "REGION_SITE_DTYPE": lambda: c_dtype("mt_region_site"),
    "RSS_DTYPE": lambda: _row_dtype(RSS_FIELDS),
    "HEAP_DTYPE": lambda: _row_dtype(HEAP_FIELDS),
}


def _row_dtype(fields):
    import numpy as np

    return np.dtype(fields)


def __getattr__(name):
    if name in _DTYPES:
        value = _DTYPES[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def iter_meta(data: bytes):
    """Yield (type, payload) for each record of a metadata byte stream."""
    pos, end, head = 0, len(data), META_HEADER.size
    while pos + head <= end:
        rtype, length = META_HEADER.unpack_from(data, pos)
        if pos + head + length > end:
            return  # cut short: the process died mid-record
        yield rtype, data[pos + head : pos + head + length]
        pos += meta_record_size(length)


def meta_record_size(length: int) -> int:
    """Bytes a metadata record with a payload of `length` takes (padded to 4)."""
    return (META_HEADER.size + length + 3) & ~3
