"""Capture files: appended as the run goes, readable after any crash.

A capture is a file header followed by chunks, each `type, stream, length,
payload` (see docs/capture-format.md and _format.py). The writer appends
chunks as they arrive and never rewrites earlier bytes, so a capture cut off
at any point reads up to its last complete chunk.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.errors import CaptureError
from tracer.progress import Progress


class CaptureWriter:
    """Appends chunks to a new capture file (0600, never follows a symlink or clobbers)."""

    def __init__(self, path: str, overwrite: bool = False):
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_TRUNC if overwrite else os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise CaptureError(f"{path} already exists (use -f to overwrite it)") from None
        except OSError as exc:
            raise CaptureError(f"cannot create {path}: {exc.strerror}") from None
        self.path = path
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._file.write(fmt.FILE_HEADER.pack(fmt.MAGIC, fmt.FORMAT_VERSION, 0))

    def chunk(self, ctype: int, stream: int, *parts) -> None:
        length = sum(len(memoryview(p).cast("B")) for p in parts)
        self._file.write(fmt.CHUNK_HEADER.pack(ctype, stream, length))
        for p in parts:
            self._file.write(p)

    def json_chunk(self, ctype: int, stream: int, obj) -> None:
        self.chunk(ctype, stream, json.dumps(obj, separators=(",", ":")).encode())

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class StreamData:
    """Everything a capture holds about one traced process's stream."""

    stream: int
    info: dict = field(default_factory=dict)
    meta: bytearray = field(default_factory=bytearray)
    event_chunks: List[tuple] = field(default_factory=list)  # (offset, length, count, t, first)
    rss: List[np.ndarray] = field(default_factory=list)
    heap: List[np.ndarray] = field(default_factory=list)
    snapshots: List[dict] = field(default_factory=list)
    totals: Optional[dict] = None
    sites: Optional[np.ndarray] = None
    exit_totals: Optional[dict] = None   # the aggregate at the program's exit point
    exit_sites: Optional[np.ndarray] = None
    end: Optional[dict] = None


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
                for offset, length, count, t, _first in chunks:
                    f.seek(offset)
                    data = f.read(length)
                    yield t, decode_events(data, count, self.path, offset)
                    progress.update(count)
        finally:
            progress.close()


def read_capture(path: str) -> Capture:
    """Index a capture: small chunks are loaded, event chunks only located."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(fmt.FILE_HEADER.size)
        if len(head) < fmt.FILE_HEADER.size or head[:8] != fmt.MAGIC:
            raise CaptureError(f"{path} is not a memtrace capture")
        _, version, _ = fmt.FILE_HEADER.unpack(head)
        if version != fmt.FORMAT_VERSION:
            raise CaptureError(f"{path} was written in capture format {version}; "
                               f"this memtrace reads format {fmt.FORMAT_VERSION}")
        info, end, streams, truncated = {}, None, {}, None
        pos = fmt.FILE_HEADER.size
        while pos < size:
            header = f.read(fmt.CHUNK_HEADER.size)
            if len(header) < fmt.CHUNK_HEADER.size:
                truncated = pos
                break
            ctype, sid, length = fmt.CHUNK_HEADER.unpack(header)
            body_at = pos + fmt.CHUNK_HEADER.size
            if length > fmt.MAX_CHUNK or ctype not in fmt.CHUNK_NAMES:
                raise CaptureError(f"{path} is corrupt at byte {pos} "
                                   f"(chunk type {ctype}, length {length})")
            if body_at + length > size:
                truncated = pos
                break
            stream = streams.get(sid)
            if stream is None and ctype not in (fmt.CHUNK_INFO, fmt.CHUNK_END):
                stream = streams[sid] = StreamData(sid)
            if ctype == fmt.CHUNK_EVENTS:
                if length < fmt.EVENTS_HEADER.size:
                    raise CaptureError(f"{path} is corrupt at byte {pos} (short events chunk)")
                t, first, count = fmt.EVENTS_HEADER.unpack(f.read(fmt.EVENTS_HEADER.size))
                data_length = length - fmt.EVENTS_HEADER.size
                if count > data_length:  # every event takes at least one byte
                    raise CaptureError(f"{path} is corrupt at byte {pos} (bad event count)")
                stream.event_chunks.append((body_at + fmt.EVENTS_HEADER.size, data_length,
                                            count, t, first))
                f.seek(body_at + length)
            else:
                body = f.read(length)
                _load_chunk(path, pos, ctype, body, stream)
                if ctype == fmt.CHUNK_INFO:
                    info = _json(path, pos, body)
                elif ctype == fmt.CHUNK_END:
                    end = _json(path, pos, body)
            pos = body_at + length
    return Capture(path, info, streams, end, truncated)


def decode_events(data: bytes, count: int, path: str = "capture", offset: int = 0) -> np.ndarray:
    """Decode one events chunk (mt_encode's format) into EVENT_DTYPE records."""
    events = np.zeros(count, dtype=fmt.EVENT_DTYPE)
    n = lib.mt_decode(ffi.from_buffer(data), len(data),
                      ffi.cast("mt_event *", ffi.from_buffer(events)), count)
    if n != count:
        raise CaptureError(f"{path} is corrupt at byte {offset} (undecodable events)")
    return events


def _json(path, pos, body):
    try:
        value = json.loads(body)
    except ValueError:
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad JSON chunk)") from None
    if not isinstance(value, dict):
        raise CaptureError(f"{path} is corrupt at byte {pos} (bad JSON chunk)")
    return value


def _load_chunk(path, pos, ctype, body, stream):
    if ctype == fmt.CHUNK_PROCESS:
        stream.info = _json(path, pos, body)
    elif ctype == fmt.CHUNK_META:
        stream.meta += body
    elif ctype in (fmt.CHUNK_RSS, fmt.CHUNK_HEAP):
        dtype = fmt.RSS_DTYPE if ctype == fmt.CHUNK_RSS else fmt.HEAP_DTYPE
        usable = len(body) - len(body) % dtype.itemsize
        (stream.rss if ctype == fmt.CHUNK_RSS else stream.heap).append(
            np.frombuffer(body[:usable], dtype=dtype))
    elif ctype == fmt.CHUNK_AGGREGATE:
        if len(body) < 4:
            raise CaptureError(f"{path} is corrupt at byte {pos} (short aggregate)")
        n = int.from_bytes(body[:4], "little")
        totals = _json(path, pos, body[4:4 + n])
        sites = body[4 + n:]
        if len(sites) % fmt.SITE_DTYPE.itemsize:
            raise CaptureError(f"{path} is corrupt at byte {pos} (bad aggregate)")
        sites = np.frombuffer(sites, dtype=fmt.SITE_DTYPE)
        if totals.get("checkpoint") == "exit":
            stream.exit_totals, stream.exit_sites = totals, sites
        else:
            stream.totals, stream.sites = totals, sites
    elif ctype == fmt.CHUNK_PROCESS_END:
        stream.end = _json(path, pos, body)
    elif ctype == fmt.CHUNK_SNAPSHOT:
        stream.snapshots.append(_json(path, pos, body))
