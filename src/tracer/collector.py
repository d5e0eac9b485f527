"""The collector: accepts traced processes, drains their streams, writes the capture.

Each traced process connects once to a Unix socket in a private 0700 session
directory and hands over a memfd holding its shared-memory stream
(csrc/events.h). The collector maps it and, in one loop, drains every
stream's committed events in batches through C (never one event at a time in
Python), appends them to the capture as they arrive, feeds the aggregator,
and samples each process's RSS. A process's end is seen through its pidfd;
whatever it committed before dying is still in the mapping and is drained.
"""
import array
import mmap
import os
import selectors
import socket
import struct
import time
from typing import Dict, Optional

import numpy as np

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.aggregate import PAGE_SIZE, Aggregator
from tracer.capture import CaptureWriter
from tracer.session import Session

HELLO = struct.Struct("<IIIIQ")  # mt_hello: magic, version, pid, ppid, shm size
HELLO_MAGIC = 0x4D54484C
WIRE_VERSION = 1
BATCH_EVENTS = 1 << 16
BATCHES_PER_ROUND = 4
META_BATCH = 1 << 20
RSS_FLUSH_SECONDS = 1.0
AGGREGATE_REFRESH_SECONDS = 5.0


def read_proc(pid: int, name: str) -> Optional[bytes]:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


class Stream:
    """One traced process image: its mapping, aggregator and RSS samples."""

    def __init__(self, sid: int, pid: int, ppid: int, shm: mmap.mmap, t: float):
        self.sid = sid
        self.pid = pid
        self.ppid = ppid
        self.shm = shm
        self.ptr = ffi.from_buffer(shm)
        self.agg = Aggregator()
        self.t_start = t
        self.pidfd: Optional[int] = None
        self.alive = True
        self.rss_pending = []
        self.rss_peak = 0
        self.heap_pending = []
        self.heap_last_t = -1.0
        self.heap_max = 0
        self.lost = 0
        self.n_events = 0
        self.ended_by_exec = False
        argv = read_proc(pid, "cmdline") or b""
        self.argv = [a.decode(errors="replace") for a in argv.split(b"\0")[:-1]]
        try:
            self.exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            self.exe = None

    def counter(self, which: int) -> int:
        return lib.mt_shm_counter(self.ptr, which)


class Collector:
    def __init__(self, session: Session, writer: CaptureWriter, t0: float,
                 sample_interval: float = 0.01):
        self.writer = writer
        self.t0 = t0
        self.sample_interval = sample_interval
        self.listener = session.listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.streams: Dict[int, Stream] = {}
        self.by_pid: Dict[int, Stream] = {}
        self.next_sid = 1
        self.buffer = np.zeros(BATCH_EVENTS, dtype=fmt.EVENT_DTYPE)
        self.buffer_ptr = ffi.cast("mt_event *", ffi.from_buffer(self.buffer))
        self.encoded = bytearray(BATCH_EVENTS * lib.MT_ENCODED_MAX)
        self.encoded_ptr = ffi.cast("uint8_t *", ffi.from_buffer(self.encoded))
        self.meta_buffer = bytearray(META_BATCH)
        self.meta_ptr = ffi.cast("uint8_t *", ffi.from_buffer(self.meta_buffer))
        self.refused = 0
        self._next_sample = 0.0
        self._next_rss_flush = 0.0
        self._next_aggregate = AGGREGATE_REFRESH_SECONDS

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---- connections -----------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            with conn:
                self._handshake(conn)

    def _handshake(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            self.refused += 1  # another user's process: never trust its stream
            return
        conn.settimeout(5)
        fds = array.array("i")
        try:
            msg, anc, _flags, _addr = conn.recvmsg(HELLO.size, socket.CMSG_LEN(fds.itemsize))
        except OSError:
            return
        for level, ctype, data in anc:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        try:
            if len(msg) != HELLO.size or len(fds) != 1:
                return
            magic, version, pid, ppid, size = HELLO.unpack(msg)
            if magic != HELLO_MAGIC or version != WIRE_VERSION or size > 1 << 32:
                return
            shm = mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError):
            return
        finally:
            for fd in fds:
                os.close(fd)
        if lib.mt_shm_check(ffi.from_buffer(shm), size) != 0:
            shm.close()
            return
        self._add_stream(pid, ppid, shm)

    def _add_stream(self, pid: int, ppid: int, shm: mmap.mmap) -> None:
        previous = self.by_pid.get(pid)
        if previous is not None and previous.alive:
            previous.ended_by_exec = True  # same pid, new image: the old one exec'd
            self._finish(previous)
        stream = Stream(self.next_sid, pid, ppid, shm, self.now())
        self.next_sid += 1
        self.streams[stream.sid] = stream
        self.by_pid[pid] = stream
        self.writer.json_chunk(fmt.CHUNK_PROCESS, stream.sid, {
            "pid": pid, "ppid": ppid, "argv": stream.argv, "exe": stream.exe,
            "t_start": stream.t_start})
        try:
            stream.pidfd = os.pidfd_open(pid)
            self.selector.register(stream.pidfd, selectors.EVENT_READ, stream)
        except OSError:
            stream.pidfd = None  # already gone: drain what it left and finish
            self._finish(stream)

    # ---- draining --------------------------------------------------------

    def _drain(self, stream: Stream, dead: bool = False) -> int:
        """Drain a stream's committed events (a few batches per round, so one busy
        process cannot starve the others; all of them once the process is dead)."""
        total = 0
        lost = ffi.new("uint64_t *")
        for _ in range(1 << 62 if dead else BATCHES_PER_ROUND):
            if dead:
                n = lib.mt_ring_drain_dead(stream.ptr, self.buffer_ptr, BATCH_EVENTS, lost)
            else:
                n = lib.mt_ring_drain(stream.ptr, self.buffer_ptr, BATCH_EVENTS)
            if n == 0:
                break
            t = self.now()
            events = self.buffer[:n]
            size = lib.mt_encode(self.buffer_ptr, n, self.encoded_ptr)
            self.writer.chunk(fmt.CHUNK_EVENTS, stream.sid,
                              fmt.EVENTS_HEADER.pack(t, stream.n_events, n),
                              memoryview(self.encoded)[:size])
            stream.agg.feed(events, t)
            stream.n_events += n
            self._note_heap(stream, t)
            total += n
            if n < BATCH_EVENTS:
                break
        stream.lost += lost[0]
        while True:
            m = lib.mt_meta_drain(stream.ptr, self.meta_ptr, META_BATCH)
            if m == 0:
                break
            self.writer.chunk(fmt.CHUNK_META, stream.sid, memoryview(self.meta_buffer)[:m])
        return total

    def _note_heap(self, stream: Stream, t: float) -> None:
        """Keep a heap timeline point per sample interval, with the max in between."""
        totals = stream.agg.totals()
        stream.heap_max = max(stream.heap_max, totals["feed_max"])
        if t - stream.heap_last_t >= self.sample_interval:
            stream.heap_pending.append((t, totals["heap"], stream.heap_max))
            stream.heap_last_t = t
            stream.heap_max = totals["heap"]

    def _sample_rss(self, t: float) -> None:
        for stream in self.streams.values():
            if not stream.alive:
                continue
            statm = read_proc(stream.pid, "statm")
            if not statm:
                continue
            rss = int(statm.split()[1]) * PAGE_SIZE
            stream.rss_peak = max(stream.rss_peak, rss)
            stream.rss_pending.append((t, rss))

    def _flush_samples(self, stream: Stream, final: bool = False) -> None:
        """Write the pending RSS samples and heap timeline points."""
        if final:
            totals = stream.agg.totals()
            stream.heap_pending.append((self.now(), totals["heap"],
                                        max(stream.heap_max, totals["heap"])))
        for pending, ctype, dtype in ((stream.rss_pending, fmt.CHUNK_RSS, fmt.RSS_DTYPE),
                                      (stream.heap_pending, fmt.CHUNK_HEAP, fmt.HEAP_DTYPE)):
            if pending:
                self.writer.chunk(ctype, stream.sid, np.array(pending, dtype=dtype).tobytes())
                pending.clear()

    def _write_aggregate(self, stream: Stream) -> None:
        extra = {"rss_peak": stream.rss_peak, "dropped": stream.counter(0) + stream.lost,
                 "unattributed": stream.counter(1), "lost": stream.lost}
        self.writer.chunk(fmt.CHUNK_AGGREGATE, stream.sid, *stream.agg.chunk_payload(extra))

    def _finish(self, stream: Stream, still_running: bool = False) -> None:
        """The process ended (or the trace is ending): drain all, write its results."""
        if not stream.alive:
            return
        self._drain(stream, dead=not still_running)
        stream.alive = False
        self._flush_samples(stream, final=True)
        self._write_aggregate(stream)
        state = stream.counter(3)
        how = ("exec" if stream.ended_by_exec else
               "running" if still_running else
               "exit" if state == fmt.STATE_EXITED else "killed_or_exit")
        self.writer.json_chunk(fmt.CHUNK_PROCESS_END, stream.sid, {
            "how": how, "t_end": self.now(), "dropped": stream.counter(0) + stream.lost})
        if stream.pidfd is not None:
            self.selector.unregister(stream.pidfd)
            os.close(stream.pidfd)
            stream.pidfd = None
        del stream.ptr
        try:
            stream.shm.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes with the process
        self.writer.flush()

    # ---- the loop --------------------------------------------------------

    def step(self, timeout: float) -> None:
        """One round: accept, drain every stream, notice ended processes, sample RSS."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
        drained = 0
        for stream in list(self.streams.values()):
            if stream.alive:
                drained += self._drain(stream)
        for key, _ in self.selector.select(0):
            if key.data is not None and key.data.alive:
                self._finish(key.data)  # its pidfd is readable: the process ended
        t = self.now()
        if t >= self._next_sample:
            self._sample_rss(t)
            self._next_sample = t + self.sample_interval
        if t >= self._next_rss_flush:
            for stream in self.streams.values():
                if stream.alive:
                    self._flush_samples(stream)
            self._next_rss_flush = t + RSS_FLUSH_SECONDS
            self.writer.flush()
        if t >= self._next_aggregate:  # so a collector crash loses little
            for stream in self.streams.values():
                if stream.alive:
                    self._write_aggregate(stream)
            self._next_aggregate = t + AGGREGATE_REFRESH_SECONDS
        self._busy = drained > 0

    def run(self, main_done, grace: float = 2.0) -> None:
        """Loop until main_done() is true and every traced process has ended
        (or `grace` seconds after main_done, for children left running)."""
        done_at = None
        self._busy = False
        while True:
            self.step(0 if self._busy else 0.001)
            if done_at is None and main_done():
                done_at = time.monotonic()
                self.step(0)  # connections queued just before the end
            if done_at is not None:
                alive = [s for s in self.streams.values() if s.alive]
                if not alive:
                    break
                if time.monotonic() - done_at > grace:
                    for stream in alive:
                        self._finish(stream, still_running=True)
                    break

    def close(self) -> None:
        for stream in self.streams.values():
            if stream.alive:
                self._finish(stream, still_running=True)
        self.selector.close()

    def summary_counts(self) -> dict:
        return {"refused_connections": self.refused}

