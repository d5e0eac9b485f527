"""The wire and capture formats, on the Python side.

Mirrors csrc/events.h (kinds, flags, metadata records) — the C header is the
definition; the event record's NumPy dtype is derived from the compiled cffi
module, so its layout cannot drift. The capture file layout is documented in
docs/capture-format.md.
"""
import struct

from tracer._native import ffi

# ---- csrc/events.h -------------------------------------------------------
KIND_NAMES = {
    0: "none", 1: "malloc", 2: "calloc", 3: "realloc", 4: "reallocarray",
    5: "posix_memalign", 6: "aligned_alloc", 7: "memalign", 8: "valloc", 9: "pvalloc",
    10: "free", 11: "mmap", 12: "munmap", 13: "mremap", 14: "region",
}
LAST_ALLOC = 9
FREE, MMAP, MUNMAP, MREMAP, REGION = 10, 11, 12, 13, 14
FLAG_NUMPY, FLAG_ANON, FLAG_REMAP, FLAG_SHARED, FLAG_SAMPLED, FLAG_KEEP = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

META_CODE, META_NODE, META_LIB, META_THREAD, META_TEXT = 1, 2, 3, 4, 5
TEXT_PYTHON_VERSION, TEXT_FRAMES_OFF, TEXT_NUMPY, TEXT_WARNING, TEXT_LIBRARY_PATHS = 1, 2, 3, 4, 5
TEXT_ARGV, TEXT_EXE = 6, 7

STATE_RUNNING, STATE_EXITED, STATE_DISABLED, STATE_EXITING = 0, 1, 2, 3
META_HEAPSTATS, META_REGION = 6, 7
REGION_KIND_USER, REGION_KIND_TEST, REGION_KIND_CELL, REGION_KIND_TASK = 0, 1, 2, 3
REGION_KINDS = {0: "region", 1: "test", 2: "cell", 3: "task"}
ASK_USAGE, ASK_AT_PEAK, ASK_LIVE, ASK_CHECKPOINT = 1, 2, 3, 4
STATS_REQUESTED, STATS_EXIT = 0, 1
TEXT_PYMALLOC, TEXT_TRACER_RANGES, TEXT_SAMPLE_RATE, TEXT_STACKS = 8, 9, 10, 11
TEXT_CENSUS, TEXT_CENSUS_LINES = 12, 13  # an object census (JSON), its blocks joined by the collector
TEXT_CLUSTER = 14  # JSON from a cluster integration (tracer.cluster): worker labels, engine numbers
MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                   "uordblks", "fordblks", "keepcost")


# Record layouts as (name, NumPy format); the dtypes are built on first use, so
# that the collector, which never needs NumPy, starts without importing it.
EVENT_FIELDS = [
    ("addr", "<u8"), ("size", "<u8"), ("stack", "<u4"), ("tid", "<u4"),
    ("lib", "<u2"), ("kind", "u1"), ("flags", "u1"), ("seq", "<u4")]
SITE_FIELDS = [
    ("stack", "<u4"), ("tid", "<u4"), ("lib", "<u2"), ("kind", "u1"), ("flags", "u1"),
    ("dirty", "<u4"), ("alloc_bytes", "<u8"), ("n_allocs", "<u8"), ("live_bytes", "<i8"),
    ("live_count", "<i8"), ("peak_bytes", "<i8"), ("peak_count", "<i8"),
    ("temp_bytes", "<u8"), ("temp_count", "<u8")]

TOTALS_FIELDS = [name for name, _ in ffi.typeof("mt_totals").fields]

# Regions (csrc/collector/native.h): a region's closed instances or one open instance, and
# the numbers of each site inside them.
REGION_ROW_FIELDS = [
    ("region", "<u4"), ("tid", "<u4"), ("instances", "<u4"), ("parent", "<u4"),
    ("peak_bytes", "<i8"), ("peak_time", "<f8"), ("peak_event", "<u8"), ("t_enter", "<f8"),
    ("t_leave", "<f8"), ("alloc_bytes", "<u8"), ("n_allocs", "<u8"), ("live_bytes", "<i8"),
    ("live_count", "<i8"), ("last_peak_bytes", "<i8"), ("last_live_bytes", "<i8"),
    ("last_alloc_bytes", "<u8")]
REGION_SITE_FIELDS = [
    ("row", "<u4"), ("site", "<u4"), ("alloc_bytes", "<u8"), ("n_allocs", "<u8"),
    ("live_bytes", "<i8"), ("live_count", "<i8"), ("peak_bytes", "<i8"), ("peak_count", "<i8"),
    ("temp_bytes", "<u8"), ("temp_count", "<u8")]

# ---- capture file (docs/capture-format.md) -------------------------------
MAGIC = b"MTRACE\x00\n"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)          # 1: no compressed events chunks; 2: no delta chunks;
                                          # 3: no regions
FILE_HEADER = struct.Struct("<8sII")      # magic, format version, reserved
CHUNK_HEADER = struct.Struct("<IIQ")      # type, stream id, payload length
EVENTS_HEADER = struct.Struct("<dQQ")     # seconds since start, index of first event, count
MAX_CHUNK = 1 << 30                       # larger lengths mean a corrupt file
# Compressed events: ZEVENTS_HEADER, then a zstd frame of the batches' columns
# (so the index knows when each batch was drained without the events): float64
# seconds, uint32 event counts, uint32 encoded lengths, n of each; then one zstd
# frame holding the batches' encoded events back to back.
ZEVENTS_HEADER = struct.Struct("<QQII")   # first event, decompressed length, batches, columns' frame length
MAX_ZEVENTS_RAW = 64 << 20                # larger decompressed lengths mean a corrupt file
MAX_BATCHES = 1 << 20
MAX_MARK_EVENTS = 1 << 22                 # events under one time mark (10 ms of drains)

CHUNK_INFO = 1         # JSON: the run (command, start time, memtrace version, page size)
CHUNK_PROCESS = 2      # JSON: a traced process's stream (pid, ppid, argv, exe, t)
CHUNK_EVENTS = 3       # EVENTS_HEADER + events encoded by mt_encode (csrc/collector/codec.c)
CHUNK_META = 4         # bytes of the stream's metadata ring (csrc/events.h)
CHUNK_RSS = 5          # float64 seconds, uint64 RSS bytes pairs
CHUNK_AGGREGATE = 6    # u32 JSON length, JSON totals, mt_site records
CHUNK_PROCESS_END = 7  # JSON: how the process ended
CHUNK_END = 8          # JSON: how the run ended; the last chunk of a complete capture
CHUNK_HEAP = 9         # HEAP_DTYPE records: the heap over time
CHUNK_SNAPSHOT = 10    # JSON: /proc/PID/smaps and traced bytes per mapping, at a moment
CHUNK_ZEVENTS = 11     # batches of encoded events, zstd-compressed together (see ZEVENTS_HEADER)
CHUNK_Z = 12           # u32 inner type, u32 inner length, zstd frame of that chunk's payload
CHUNK_ZD = 13          # the same, compressed against the payload of the stream's previous
                       # chunk of that inner type (a zstd raw-content dictionary)
CHUNK_REGIONS = 14     # u32 n, n region rows, then region site records (with each aggregate)
DELTA_TYPES = (CHUNK_AGGREGATE, CHUNK_SNAPSHOT, CHUNK_REGIONS)  # each repeats most of the previous
ZCHUNK_HEADER = struct.Struct("<II")
ZCHUNK_MIN = 1024      # smaller payloads are written as they are

CHUNK_NAMES = {1: "info", 2: "process", 3: "events", 4: "meta", 5: "rss", 6: "aggregate",
               7: "process_end", 8: "end", 9: "heap", 10: "snapshot", 11: "zevents", 12: "compressed",
               13: "delta", 14: "regions"}

RSS_FIELDS = [("t", "<f8"), ("rss", "<u8"), ("anon", "<u8"), ("file", "<u8"),
              ("shmem", "<u8"), ("swap", "<u8")]
# heap: live heap at t; max: the highest it reached since the previous record
HEAP_FIELDS = [("t", "<f8"), ("heap", "<i8"), ("max", "<i8")]


def row_struct(fields) -> struct.Struct:
    """The struct layout of one packed record of fields (how the collector writes rows)."""
    codes = {"<f8": "d", "<u8": "Q", "<i8": "q", "<u4": "I", "<u2": "H", "u1": "B"}
    return struct.Struct("<" + "".join(codes[f] for _, f in fields))


RSS_ROW = row_struct(RSS_FIELDS)
HEAP_ROW = row_struct(HEAP_FIELDS)


def _dtype(fields, ctype=None):
    """A NumPy dtype for fields; with ctype, at the exact offsets and size cffi computed."""
    import numpy as np
    if ctype is None:
        return np.dtype(fields)
    return np.dtype({
        "names": [name for name, _ in fields],
        "formats": [f for _, f in fields],
        "offsets": [ffi.offsetof(ctype, name) for name, _ in fields],
        "itemsize": ffi.sizeof(ctype),
    })


_DTYPES = {"EVENT_DTYPE": (EVENT_FIELDS, "mt_event"), "SITE_DTYPE": (SITE_FIELDS, "mt_site"),
           "REGION_ROW_DTYPE": (REGION_ROW_FIELDS, "mt_region_row"),
           "REGION_SITE_DTYPE": (REGION_SITE_FIELDS, "mt_region_site"),
           "RSS_DTYPE": (RSS_FIELDS, None), "HEAP_DTYPE": (HEAP_FIELDS, None)}


def __getattr__(name):
    if name in _DTYPES:
        value = _dtype(*_DTYPES[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def iter_meta(data: bytes):
    """Yield (type, payload) for each record of a metadata byte stream."""
    pos, end = 0, len(data)
    while pos + 4 <= end:
        rtype, length = struct.unpack_from("<HH", data, pos)
        if pos + 4 + length > end:
            return  # cut short: the process died mid-record
        yield rtype, data[pos + 4:pos + 4 + length]
        pos += (4 + length + 3) & ~3
