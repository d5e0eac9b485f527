"""Writing captures: the collector's side of capture.py, kept free of NumPy so that
the collector is ready (and the traced program unblocked) as early as possible.

A capture is a file header followed by chunks, each `type, stream, length,
payload` (see docs/capture-format.md and _format.py). The writer appends
chunks as they arrive and never rewrites earlier bytes, so a capture cut off
at any point reads up to its last complete chunk.
"""

import collections
import concurrent.futures
import json
import os
import struct
from typing import Deque, Dict, List, Optional, Tuple

import zstandard

from tracer import _format as fmt
from tracer._native import ffi
from tracer.errors import CaptureError


def prefix_dict(payload: bytes) -> "zstandard.ZstdCompressionDict":
    """A delta chunk's dictionary: the previous payload of its stream and type."""
    return zstandard.ZstdCompressionDict(payload, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


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
        # (type, stream) -> last payload of a DELTA_TYPES chunk
        self._previous: Dict[Tuple[int, int], bytes] = {}

    # Every frame carries a checksum: a damaged capture is reported as corrupt
    # rather than decompressed into different, plausible bytes.
    # Level 6: 8-15% smaller than 3 on metadata and aggregates, ~3 ms a chunk.
    LEVEL = 6
    _compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)

    def chunk(self, ctype: int, stream: int, *parts) -> None:
        length = sum(len(memoryview(p).cast("B")) for p in parts)
        raw = previous = None
        if ctype in fmt.DELTA_TYPES:
            raw = b"".join(bytes(p) for p in parts)
            previous = self._previous.get((ctype, stream))
            self._previous[(ctype, stream)] = raw
        if length >= fmt.ZCHUNK_MIN and ctype not in (fmt.CHUNK_ZEVENTS, fmt.CHUNK_END):
            # Snapshots (smaps text), aggregates and metadata shrink 5-20x. A snapshot
            # or aggregate is mostly its predecessor (the same mappings and sites,
            # other numbers): compressed against it, it takes 3-10x less again.
            compressor, outer = self._compressor, fmt.CHUNK_Z
            if previous:
                compressor = zstandard.ZstdCompressor(
                    level=self.LEVEL, dict_data=prefix_dict(previous), write_checksum=True
                )
                outer = fmt.CHUNK_ZD
            frame = compressor.compress(raw if raw is not None else b"".join(bytes(p) for p in parts))
            parts = (fmt.ZCHUNK_HEADER.pack(ctype, length), frame)
            ctype = outer
        self._write(ctype, stream, *parts)

    def _write(self, ctype: int, stream: int, *parts) -> None:
        length = sum(len(memoryview(p).cast("B")) for p in parts)
        self._file.write(fmt.CHUNK_HEADER.pack(ctype, stream, length))
        for p in parts:
            self._file.write(p)

    def end_stream(self, stream: int) -> None:
        """The stream wrote its last chunk: drop what delta chunks kept of it."""
        for ctype in fmt.DELTA_TYPES:
            self._previous.pop((ctype, stream), None)

    def json_chunk(self, ctype: int, stream: int, obj) -> None:
        self.chunk(ctype, stream, json.dumps(obj, separators=(",", ":")).encode())

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class EventPacker:
    """Gathers one stream's encoded event batches and writes them as one
    zstd-compressed chunk once FLUSH_BYTES have gathered, or when flushed.

    Compressing megabytes at a time lets zstd find the repetition across batches
    (the same stacks, sizes and address patterns recur): 20-40x smaller than the
    encoded events on the shared workloads, at over 1 GB/s."""

    FLUSH_BYTES = 4 << 20
    MARK_SECONDS = 0.01  # batches drained closer together share one time mark
    MAX_PENDING = 4  # groups being compressed before the collector waits for them
    # Level 1: twice level 3's speed for 5% more bytes. zstd releases the GIL, so
    # one worker thread compresses while the collector drains and aggregates.
    _compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    _worker: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def __init__(self, writer: CaptureWriter, stream: int):
        self.writer = writer
        self.stream = stream
        self.times: List[float] = []
        self.counts: List[int] = []
        self.lengths: List[int] = []
        self.first = 0
        self.mark_start = 0.0
        self.data = bytearray()
        self.flushed_at = 0.0
        # the group's batches are one encoded stream: the coder's state carries over
        self.codec = ffi.new("mt_codec *")
        # compressions in flight, in stream order
        self.pending: Deque[concurrent.futures.Future] = collections.deque()

    def age(self, now: float) -> float:
        """Seconds since the last flush."""
        return now - self.flushed_at

    def add(self, t: float, first: int, count: int, encoded) -> None:
        """Append a batch encoded with mt_encode_more(self.codec, ...), drained at t."""
        if not self.times:
            self.first = first
        if self.times and t - self.mark_start < self.MARK_SECONDS and self.counts[-1] < 1 << 30:
            self.times[-1] = t  # its events happened before the later drain
            self.counts[-1] += count
            self.lengths[-1] += len(encoded)
        else:
            self.mark_start = t  # a mark spans at most MARK_SECONDS of drains
            self.times.append(t)
            self.counts.append(count)
            self.lengths.append(len(encoded))
        self.data += encoded
        if len(self.data) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self, now: Optional[float] = None, wait: bool = False) -> None:
        """Start compressing what has gathered; wait: and write everything out."""
        if now is not None:
            self.flushed_at = now
        if self.times:
            if EventPacker._worker is None:
                EventPacker._worker = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="memtrace-zstd"
                )
            self.pending.append(
                EventPacker._worker.submit(
                    self._compress, self.first, self.times, self.counts, self.lengths, bytes(self.data)
                )
            )
            self.times, self.counts, self.lengths = [], [], []
            self.data = bytearray()
            self.codec = ffi.new("mt_codec *")
        self.write_ready(wait or len(self.pending) > self.MAX_PENDING)

    def write_ready(self, wait: bool = False) -> None:
        """Write the compressed groups that are done (all of them when waiting)."""
        while self.pending and (wait or self.pending[0].done()):
            self.writer.chunk(fmt.CHUNK_ZEVENTS, self.stream, *self.pending.popleft().result())

    @classmethod
    def _compress(cls, first, times, counts, lengths, data) -> tuple:
        n = len(times)
        columns = cls._compressor.compress(
            struct.pack(f"<{n}d", *times) + struct.pack(f"<{n}I", *counts) + struct.pack(f"<{n}I", *lengths)
        )
        frame = cls._compressor.compress(data)
        return (fmt.ZEVENTS_HEADER.pack(first, len(data), len(times), len(columns)), columns, frame)
