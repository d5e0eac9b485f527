"""Reading captures (writing them: capture_writer.py), readable after any crash:
a capture cut off at any point reads up to its last complete chunk.

A capture is a file header followed by chunks, each `type, stream, length,
payload` (see docs/capture-format.md and _format.py).
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Tuple

import numpy as np
import zstandard

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.analyze.progress import Progress
from tracer.errors import CaptureError
from tracer.record.capture_writer import CaptureWriter, EventPacker, prefix_dict  # noqa: F401 (writer re-exported)


@dataclass
class StreamData:
    """Everything a capture holds about one traced process's stream."""

    stream: int
    info: dict = field(default_factory=dict)
    meta: bytearray = field(default_factory=bytearray)
    # (offset, length, count, t, first, batches): batches is None for a plain events
    # chunk, else [(t, first, count, encoded length)] of a compressed one
    event_chunks: List[tuple] = field(default_factory=list)
    rss: List[np.ndarray] = field(default_factory=list)
    heap: List[np.ndarray] = field(default_factory=list)
    snapshots: List["Snapshot"] = field(default_factory=list)
    totals: Optional[dict] = None
    sites: Optional[np.ndarray] = None
    exit_totals: Optional[dict] = None  # the aggregate at the program's exit point
    exit_sites: Optional[np.ndarray] = None
    end: Optional[dict] = None
    # the latest regions chunk: (REGION_ROW_DTYPE rows, REGION_SITE_DTYPE records)
    regions: Optional[Tuple[np.ndarray, np.ndarray]] = None


@dataclass
class Capture:
    path: str
    info: dict
    streams: Dict[int, StreamData]
    end: Optional[dict]
    truncated_at: Optional[int] = None  # byte offset where a cut-short capture ends

    def events(self, stream: int, label: str = "reading events"):
        """Yield (t, events array) for each events chunk of a stream, in order
        (with a progress line on a terminal when there are many)."""
        chunks = self.streams[stream].event_chunks
        progress = Progress(sum(c[2] for c in chunks), label)
        try:
            with open(self.path, "rb") as f:
                for offset, length, count, t, _first, batches in chunks:
                    f.seek(offset)
                    data = f.read(length)
                    if batches is None:
                        yield t, decode_events(data, count, self.path, offset)
                    else:
                        raw = self._decompress(data, sum(b[3] for b in batches), offset)
                        codec = ffi.new("mt_codec *")
                        at = 0
                        for bt, _bfirst, bcount, blen in batches:
                            yield bt, decode_events(raw[at : at + blen], bcount, self.path, offset, codec)
                            at += blen
                    progress.update(count)
        finally:
            progress.close()

    def _decompress(self, frame: bytes, raw_len: int, offset: int) -> bytes:
        try:
            raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=raw_len)
        except zstandard.ZstdError:
            raw = b""
        if len(raw) != raw_len:
            raise CaptureError(f"{self.path} is corrupt at byte {offset} (undecodable events)")
        return raw

    def marks(self, stream: int) -> List[tuple]:
        """(index of first event, seconds) of every drained batch, in order."""
        out = []
        for _o, _l, _c, t, first, batches in self.streams[stream].event_chunks:
            out.extend([(first, t)] if batches is None else [(b[1], b[0]) for b in batches])
        return out


def read_capture(path: str, snapshots: bool = True) -> Capture:
    """Index a capture: small chunks are loaded, event chunks only located (snapshots
    too, unless `snapshots` is False: only the reconciliation reads them)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        _check_file_header(path, f)
        return _Indexer(path, f, snapshots).read(size)


def _check_file_header(path: str, f: BinaryIO) -> None:
    """The magic and a format version this memtrace reads, else a CaptureError."""
    head = f.read(fmt.FILE_HEADER.size)
    if len(head) < fmt.FILE_HEADER.size or head[:8] != fmt.MAGIC:
        raise CaptureError(f"{path} is not a memtrace capture")
    _, version, _ = fmt.FILE_HEADER.unpack(head)
    if version not in fmt.READABLE_VERSIONS:
        raise CaptureError(
            f"{path} was written in capture format {version}; this memtrace "
            f"reads formats {fmt.READABLE_VERSIONS[0]} to {fmt.FORMAT_VERSION}"
        )


class _Indexer:
    """One pass over a capture's chunks, after its file header: what read_capture
    gathers as it goes."""

    def __init__(self, path: str, f: BinaryIO, snapshots: bool):
        self.path, self.f, self.snapshots = path, f, snapshots
        self.info: dict = {}
        self.end: Optional[dict] = None
        self.streams: Dict[int, StreamData] = {}
        # (type, stream) -> payload of the last DELTA_TYPES chunk
        self.previous: Dict[Tuple[int, int], bytes] = {}
        self.plain = zstandard.ZstdDecompressor()

    def read(self, size: int) -> Capture:
        """Every chunk up to the end of the file, or up to the first one cut short."""
        truncated = None
        pos = fmt.FILE_HEADER.size
        while pos < size:
            header = self.f.read(fmt.CHUNK_HEADER.size)
            if len(header) < fmt.CHUNK_HEADER.size:
                truncated = pos
                break
            ctype, sid, length = fmt.CHUNK_HEADER.unpack(header)
            body_at = pos + fmt.CHUNK_HEADER.size
            if length > fmt.MAX_CHUNK or ctype not in fmt.CHUNK_NAMES:
                raise CaptureError(
                    f"{self.path} is corrupt at byte {pos} (chunk type {ctype}, length {length})"
                )
            if body_at + length > size:
                truncated = pos
                break
            self._chunk(pos, ctype, sid, length)
            pos = body_at + length
        return Capture(self.path, self.info, self.streams, self.end, truncated)

    def _chunk(self, pos: int, ctype: int, sid: int, length: int) -> None:
        """Load or index one chunk, its header just read."""
        ctype, body = self._payload(pos, ctype, sid, length)
        stream = self.streams.get(sid)
        if stream is None and ctype not in (fmt.CHUNK_INFO, fmt.CHUNK_END):
            stream = self.streams[sid] = StreamData(sid)
        if body is not None:
            if self.snapshots or ctype != fmt.CHUNK_SNAPSHOT:
                _load_chunk(self.path, pos, ctype, body, stream)
            if ctype == fmt.CHUNK_INFO:
                self.info = _json(self.path, pos, body)
        elif ctype in (fmt.CHUNK_EVENTS, fmt.CHUNK_ZEVENTS):
            assert stream is not None  # (made above for any chunk but INFO and END)
            if ctype == fmt.CHUNK_EVENTS:
                stream.event_chunks.append(_events_index(self.path, pos, self.f, length))
            else:
                stream.event_chunks.append(_zevents_index(self.path, pos, self.f, length))
            self.f.seek(pos + fmt.CHUNK_HEADER.size + length)
        else:
            body = self.f.read(length)
            _load_chunk(self.path, pos, ctype, body, stream)
            if ctype == fmt.CHUNK_INFO:
                self.info = _json(self.path, pos, body)
            elif ctype == fmt.CHUNK_END:
                self.end = _json(self.path, pos, body)

    def _payload(self, pos: int, ctype: int, sid: int, length: int) -> Tuple[int, Optional[bytes]]:
        """(type, payload) of a compressed chunk (its inner type) or of a DELTA_TYPES
        one, read now (each the base of its stream's next delta); (type, None) for
        the others, which _chunk reads (or only locates) itself."""
        if ctype in (fmt.CHUNK_Z, fmt.CHUNK_ZD):
            ctype, body = _unwrap(self.path, pos, self.f.read(length), ctype, sid, self.previous, self.plain)
        elif ctype in fmt.DELTA_TYPES:
            body = self.f.read(length)
        else:
            return ctype, None
        if ctype in fmt.DELTA_TYPES:
            self.previous[(ctype, sid)] = body
        return ctype, body


def _unwrap(path, pos, data, outer, sid, previous, plain) -> tuple:
    """(inner type, payload) of a compressed chunk; a delta chunk (CHUNK_ZD) is
    decompressed against its stream's previous payload of its type, another with
    `plain` (one decompressor for the whole read: a new one costs its memory)."""
    if len(data) >= fmt.ZCHUNK_HEADER.size:
        ctype, length = fmt.ZCHUNK_HEADER.unpack_from(data)
        if outer == fmt.CHUNK_ZD:
            prefix = previous.get((ctype, sid)) if ctype in fmt.DELTA_TYPES else None
            usable = bool(prefix)
        else:
            prefix, usable = (
                None,
                ctype in fmt.CHUNK_NAMES
                and ctype not in (fmt.CHUNK_Z, fmt.CHUNK_ZD, fmt.CHUNK_ZEVENTS, fmt.CHUNK_EVENTS),
            )
        if usable and length <= fmt.MAX_CHUNK:
            try:
                d = zstandard.ZstdDecompressor(dict_data=prefix_dict(prefix)) if prefix else plain
                body = d.decompress(data[fmt.ZCHUNK_HEADER.size :], max_output_size=length)
            except (zstandard.ZstdError, MemoryError):  # a corrupt length can be absurd
                body = None
            if body is not None and len(body) == length:
                return ctype, body
    raise CaptureError(f"{path} is corrupt at byte {pos} (bad compressed chunk)")


def _events_index(path, pos, f, length) -> tuple:
    """Index entry of a plain events chunk, from its header."""
    if length < fmt.EVENTS_HEADER.size:
        raise CaptureError(f"{path} is corrupt at byte {pos} (short events chunk)")
    t, first, count = fmt.EVENTS_HEADER.unpack(f.read(fmt.EVENTS_HEADER.size))
    data_length = length - fmt.EVENTS_HEADER.size
    if count > data_length:  # every event takes at least one byte
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad event count)")
    data_at = pos + fmt.CHUNK_HEADER.size + fmt.EVENTS_HEADER.size
    return (data_at, data_length, count, t, first, None)


def _zevents_index(path, pos, f, length) -> tuple:
    """Index entry of a compressed events chunk, from its uncompressed headers."""

    def corrupt(why):
        return CaptureError(f"{path} is corrupt at byte {pos} ({why})")

    if length < fmt.ZEVENTS_HEADER.size:
        raise corrupt("short events chunk")
    first, raw_len, n, columns_len = fmt.ZEVENTS_HEADER.unpack(f.read(fmt.ZEVENTS_HEADER.size))
    heads = fmt.ZEVENTS_HEADER.size + columns_len
    # (an event index near 2^64 cannot be counted to: a flipped bit)
    if not 0 < n <= fmt.MAX_BATCHES or heads > length or raw_len > fmt.MAX_ZEVENTS_RAW or first >= 1 << 62:
        raise corrupt("bad events chunk header")
    try:
        columns = zstandard.ZstdDecompressor().decompress(f.read(columns_len), max_output_size=16 * n)
    except zstandard.ZstdError:
        columns = b""
    if len(columns) != 16 * n:
        raise corrupt("bad events chunk header")
    times = np.frombuffer(columns, "<f8", n)
    counts = np.frombuffer(columns, "<u4", n, 8 * n).astype(np.int64)
    lengths = np.frombuffer(columns, "<u4", n, 12 * n).astype(np.int64)
    # every event takes at least one byte; a mark covers 10 ms of drains, so more
    # than MAX_MARK_EVENTS in one (400 M events/s) is a corrupt count
    if int(lengths.sum()) != raw_len or (counts > lengths).any() or (counts > fmt.MAX_MARK_EVENTS).any():
        raise corrupt("bad event count")
    firsts = first + np.concatenate(([0], np.cumsum(counts)[:-1]))
    batches = list(zip(times.tolist(), firsts.tolist(), counts.tolist(), lengths.tolist()))
    return (f.tell(), length - heads, int(counts.sum()), batches[0][0], first, batches)


def decode_events(data: bytes, count: int, path: str = "capture", offset: int = 0, codec=None) -> np.ndarray:
    """Decode encoded events (mt_encode's format) into EVENT_DTYPE records; with a
    codec, continuing the encoded stream its earlier calls decoded."""
    try:
        events = np.zeros(count, dtype=fmt.EVENT_DTYPE)
    except MemoryError:
        raise CaptureError(f"{path} is corrupt at byte {offset} (implausible event count)") from None
    out = ffi.cast("mt_event *", ffi.from_buffer(events))
    if codec is None:
        n = lib.mt_decode(ffi.from_buffer(data), len(data), out, count)
    else:
        n = lib.mt_decode_more(codec, ffi.from_buffer(data), len(data), out, count)
    if n != count:
        raise CaptureError(f"{path} is corrupt at byte {offset} (undecodable events)")
    return events


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# a snapshot's mapping row: start, end, rss, anon, swap, perms, path, then five counts
_VMA_TYPES = (int, int, int, int, int, str, str, int, int, int, int, int)


def _vma_rows(rows) -> bool:
    # values decoded from JSON have exact types (a bool is not an int here)
    return type(rows) is list and all(type(r) is list and tuple(map(type, r)) == _VMA_TYPES for r in rows)


def _snapshot_ok(snap: dict) -> bool:
    """The fields the reconciliation reads have their types (a time is required)."""
    if not _is_number(snap.get("t")) or ("vmas" in snap and not _vma_rows(snap["vmas"])):
        return False
    if not all(
        _is_number(snap[k])
        for k in ("position", "heap", "peak_heap", "peak_time", "events", "peak_event", "cost")
        if k in snap
    ):
        return False
    status, sps = snap.get("status"), snap.get("stack_pointers", [])
    return (
        (status is None or (isinstance(status, dict) and all(map(_is_number, status.values()))))
        and isinstance(sps, list)
        and all(isinstance(x, int) for x in sps)
    )


class Snapshot(Mapping):
    """A snapshot chunk's JSON object. Its mappings ("vmas", nearly all of its
    bytes) are decoded and checked when first read: reports read those of one or
    two snapshots, and the other fields of every one. (The collector writes the
    mappings after the other fields; a snapshot written otherwise is decoded whole.)"""

    def __init__(self, path: str, pos: int, body: bytes):
        self._where, self._rest = (path, pos), None
        cut = body.find(b',"vmas":')
        head = _json_or_none(body[:cut] + b"}") if cut > 0 else None
        if head is None or "t" not in head:
            head = _json(path, pos, body)
        else:
            self._rest = b"{" + body[cut + 1 :]
        self._fields = self._checked(head)

    def _checked(self, fields: dict) -> dict:
        if not _snapshot_ok(fields):
            raise CaptureError(f"{self._where[0]} is corrupt at byte {self._where[1]} (bad snapshot)")
        return fields

    def _all(self) -> dict:
        if self._rest is not None:
            rest = _json(*self._where, self._rest)
            self._fields, self._rest = self._checked({**self._fields, **rest}), None
        return self._fields

    def __getitem__(self, key):
        if key in self._fields:
            return self._fields[key]
        return self._all()[key]

    def __contains__(self, key) -> bool:
        if key in self._fields or (key == "vmas" and self._rest is not None):
            return True
        return key in self._all()

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _json_or_none(body):
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json(path, pos, body):
    try:
        value = json.loads(body)
    except ValueError:
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad JSON chunk)") from None
    if not isinstance(value, dict):
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad JSON chunk)")
    return value


def _regions(path, pos, body) -> tuple:
    """A regions chunk: u32 n, n rows, then site records naming their row."""
    row_size, site_size = fmt.REGION_ROW_DTYPE.itemsize, fmt.REGION_SITE_DTYPE.itemsize
    n = int.from_bytes(body[:4], "little") if len(body) >= 4 else -1
    rest = len(body) - 4 - n * row_size
    if n < 0 or rest < 0 or rest % site_size:
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad regions chunk)")
    rows = np.frombuffer(body, fmt.REGION_ROW_DTYPE, n, 4)
    sites = np.frombuffer(body, fmt.REGION_SITE_DTYPE, rest // site_size, 4 + n * row_size)
    if len(sites) and int(sites["row"].max()) >= n:
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad regions chunk)")
    return rows, sites


def _load_chunk(path, pos, ctype, body, stream):
    if ctype == fmt.CHUNK_PROCESS:
        stream.info = _json(path, pos, body)
    elif ctype == fmt.CHUNK_META:
        stream.meta += body
    elif ctype in (fmt.CHUNK_RSS, fmt.CHUNK_HEAP):
        dtype = fmt.RSS_DTYPE if ctype == fmt.CHUNK_RSS else fmt.HEAP_DTYPE
        usable = len(body) - len(body) % dtype.itemsize
        (stream.rss if ctype == fmt.CHUNK_RSS else stream.heap).append(
            np.frombuffer(body[:usable], dtype=dtype)
        )
    elif ctype == fmt.CHUNK_AGGREGATE:
        if len(body) < 4:
            raise CaptureError(f"{path} is corrupt at byte {pos} (short aggregate)")
        n = int.from_bytes(body[:4], "little")
        totals = _json(path, pos, body[4 : 4 + n])
        if not all(_is_number(totals.get(k)) for k in fmt.TOTALS_FIELDS):
            raise CaptureError(f"{path} is corrupt at byte {pos} (bad aggregate)")
        sites = body[4 + n :]
        if len(sites) % fmt.SITE_DTYPE.itemsize:
            raise CaptureError(f"{path} is corrupt at byte {pos} (bad aggregate)")
        sites = np.frombuffer(sites, dtype=fmt.SITE_DTYPE)
        if totals.get("checkpoint") == "exit":
            stream.exit_totals, stream.exit_sites = totals, sites
        else:
            stream.totals, stream.sites = totals, sites
    elif ctype == fmt.CHUNK_PROCESS_END:
        stream.end = _json(path, pos, body)
    elif ctype == fmt.CHUNK_REGIONS:
        stream.regions = _regions(path, pos, body)
    elif ctype == fmt.CHUNK_SNAPSHOT:
        stream.snapshots.append(Snapshot(path, pos, body))
