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
from typing import TYPE_CHECKING, Dict, Optional, Set

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.record import census, procfs, snapshots
from tracer.record.answers import Questions
from tracer.record.capture_writer import CaptureWriter, EventPacker
from tracer.record.session import Session
from tracer.record.stream import Stream

if TYPE_CHECKING:
    from tracer.live.server import LiveServer

BATCH_EVENTS = 1 << 16
BATCHES_PER_ROUND = 4  # while the process lives (so one busy process cannot starve the others)
UNLIMITED = 1 << 62  # batches to drain from a dead process, or at its exit point: all
META_BATCH = 1 << 20
RSS_FLUSH_SECONDS = 1.0
AGGREGATE_REFRESH_SECONDS = 5.0
EVENTS_FLUSH_SECONDS = 30.0  # a running process's events reach the disk at least this often
IDLE_WAIT_MIN, IDLE_WAIT_MAX = 0.001, 0.008  # seconds between rounds
BATCH_TARGET = 16384  # while events flow, wait about as long as this many take to come


class Collector:
    _round_t: float  # when the round began (set by run())

    def __init__(
        self,
        session: Session,
        writer: CaptureWriter,
        t0: float,
        sample_interval: float = 0.01,
        heap_stats: bool = True,
        sample_rate: int = 0,
        objects: bool = False,
    ):
        self.writer = writer
        self.objects = objects  # --objects: a census of Python objects at peak and exit
        self.sample_rate = sample_rate
        self.heap_stats = heap_stats
        self.main_pid: Optional[int] = None  # set by the launcher once the target is started
        self.t0 = t0
        self.sample_interval = sample_interval
        self.listener = session.listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.streams: Dict[int, Stream] = {}
        self.by_pid: Dict[int, Stream] = {}
        self.next_sid = 1
        self.buffer_ptr = ffi.new("mt_event[]", BATCH_EVENTS)
        self.encoded = bytearray(BATCH_EVENTS * lib.MT_ENCODED_MAX)
        self.encoded_ptr = ffi.cast("uint8_t *", ffi.from_buffer(self.encoded))
        self.meta_buffer = bytearray(META_BATCH)
        self.meta_ptr = ffi.cast("uint8_t *", ffi.from_buffer(self.meta_buffer))
        self.refused = 0
        self._next_sample = 0.0
        self._next_rss_flush = 0.0
        self._next_aggregate = AGGREGATE_REFRESH_SECONDS
        self.snap_budget = snapshots.SNAPSHOT_BURST  # seconds of snapshot work allowed now
        self.snap_budget_t = 0.0
        self.questions = Questions()  # the programs' questions about their regions
        self.live: Optional["LiveServer"] = None  # the live view's server, set by the launcher

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
            msg, anc, _flags, _addr = conn.recvmsg(fmt.HELLO.size, socket.CMSG_LEN(fds.itemsize))
        except OSError:
            return
        for level, ctype, data in anc:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        try:
            if len(msg) != fmt.HELLO.size or len(fds) != 1:
                return
            magic, version, pid, ppid, size = fmt.HELLO.unpack(msg)
            if magic != fmt.HELLO_MAGIC or version != fmt.WIRE_VERSION or size > 1 << 32:
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
        # What the others did before this process existed is in their rings now:
        # read it and close their timelines' stretch first, so no stretch of theirs
        # is stamped after this process started (the tree's peak adds stretches
        # that overlap in time).
        for other in list(self.streams.values()):
            if other.alive:
                self._drain(other)
                self._note_heap(other, self.now(), drained=False, at_once=True)
        stream = Stream(self.next_sid, pid, ppid, shm, self.now(), self.sample_rate)
        stream.packer = EventPacker(self.writer, stream.sid)
        self.next_sid += 1
        self.streams[stream.sid] = stream
        self.by_pid[pid] = stream
        # argv and the executable come with the stream's metadata (the shim reads its
        # own /proc/self at start: the process may be gone by the time we look)
        self.writer.json_chunk(
            fmt.CHUNK_PROCESS,
            stream.sid,
            {"pid": pid, "ppid": ppid, "t_start": stream.t_start, "sample_rate": self.sample_rate},
        )
        try:
            stream.pidfd = os.pidfd_open(pid)
            self.selector.register(stream.pidfd, selectors.EVENT_READ, stream)
        except OSError:
            stream.pidfd = None  # already gone: drain what it left and finish
            self._finish(stream)

    # ---- draining --------------------------------------------------------

    def _drain(self, stream: Stream, dead: bool = False, everything: bool = False) -> int:
        """Drain a stream's committed events (a few batches per round, so one busy
        process cannot starve the others; all of them once the process is dead or
        when `everything`: at its exit point)."""
        total = 0
        packer = stream.packer
        assert packer is not None  # given to each stream as it connects
        lost = ffi.new("uint64_t *")
        claimed = stream.counters().claimed if everything else 0  # the events claimed by now
        for _ in range(UNLIMITED if dead or everything else BATCHES_PER_ROUND):
            if dead:
                n = lib.mt_ring_drain_dead(stream.ptr, self.buffer_ptr, BATCH_EVENTS, lost)
            else:
                n = lib.mt_ring_drain(stream.ptr, self.buffer_ptr, BATCH_EVENTS)
            if n == 0:
                break
            t = self.now()
            size = lib.mt_encode_more(packer.codec, self.buffer_ptr, n, self.encoded_ptr)
            packer.add(t, stream.n_events, n, memoryview(self.encoded)[:size])
            packer.write_ready()
            stream.agg.feed_events(self.buffer_ptr, n, t)
            stream.n_events += n
            self._note_heap(stream, t)
            total += n
            if n < BATCH_EVENTS or (everything and stream.counters().consumed >= claimed):
                break
        stream.lost += lost[0]
        while True:
            m = lib.mt_meta_drain(stream.ptr, self.meta_ptr, META_BATCH)
            if m == 0:
                break
            stream.meta_pending += memoryview(self.meta_buffer)[:m]
            stream.kept.add(memoryview(self.meta_buffer)[:m])
            if len(stream.meta_pending) >= META_BATCH:
                self._write_meta(stream)
        return total

    def _write_meta(self, stream: Stream) -> None:
        """Metadata goes out in large chunks (code names and paths compress 4-6x
        together, not in the small pieces each drain brings), at least whenever
        an aggregate is written."""
        if stream.meta_pending:
            self.writer.chunk(fmt.CHUNK_META, stream.sid, stream.meta_pending)
            stream.meta_pending = bytearray()

    def _note_heap(self, stream: Stream, t: float, drained: bool = True, at_once: bool = False) -> None:
        """Keep a heap timeline point per sample interval, with the max in between;
        also when no events came (drained=False) if the heap is not yet recorded as
        it stands, so that the timelines of several processes can be added up;
        `at_once`: now, however soon after the last point."""
        totals = stream.agg.totals()
        if drained:
            stream.timeline.max = max(stream.timeline.max, totals["feed_max"])
        elif stream.timeline.last == (totals["heap"], stream.timeline.max):
            return
        if at_once or t - stream.timeline.last_t >= self.sample_interval:
            stream.timeline.pending.append((t, totals["heap"], stream.timeline.max))
            stream.timeline.last_t = t
            stream.timeline.max = totals["heap"]
            stream.timeline.last = (totals["heap"], totals["heap"])

    def _flush_samples(self, stream: Stream, final: bool = False) -> None:
        """Write the pending RSS samples and heap timeline points."""
        if final:
            totals = stream.agg.totals()
            stream.timeline.pending.append(
                (self.now(), totals["heap"], max(stream.timeline.max, totals["heap"]))
            )
        for pending, ctype, row in (
            (stream.rss.pending, fmt.CHUNK_RSS, fmt.RSS_ROW),
            (stream.timeline.pending, fmt.CHUNK_HEAP, fmt.HEAP_ROW),
        ):
            if pending:
                self.writer.chunk(ctype, stream.sid, b"".join(row.pack(*r) for r in pending))
                pending.clear()

    def _write_aggregate(self, stream: Stream, checkpoint: str = "latest") -> None:
        """checkpoint: "exit" (the program's exit point: what it left live), or
        "latest" (refreshed while it runs, and the final one)."""
        counters = stream.counters()
        extra = {
            "rss_peak": stream.rss.peak,
            "dropped": counters.dropped + stream.lost,
            "unattributed": counters.unattributed,
            "lost": stream.lost,
            "checkpoint": checkpoint,
        }
        # Events go to disk in large compressed groups (the ratio depends on it);
        # an aggregate refreshed while the process runs flushes them every
        # EVENTS_FLUSH_SECONDS at least, and the final ones flush everything.
        packer = stream.packer
        assert packer is not None  # given to each stream as it connects
        if not stream.alive:
            packer.flush(self.now(), wait=True)
        elif packer.age(self.now()) > EVENTS_FLUSH_SECONDS:
            packer.flush(self.now())
        self._write_meta(stream)
        self.writer.chunk(fmt.CHUNK_AGGREGATE, stream.sid, *stream.agg.chunk_payload(extra))
        regions = stream.agg.regions_payload()
        if regions:
            self.writer.chunk(fmt.CHUNK_REGIONS, stream.sid, *regions)

    def _finish(self, stream: Stream, still_running: bool = False) -> None:
        """The process ended (or the trace is ending): drain all, write its results."""
        if not stream.alive:
            return
        self._drain(stream, dead=not still_running)
        stream.alive = False
        self._flush_samples(stream, final=True)
        self._write_aggregate(stream)
        counters = stream.counters()
        state = counters.state
        how = (
            "exec"
            if stream.ended_by_exec
            else "running"
            if still_running
            else "exit"
            if state == fmt.STATE_EXITED
            else "killed_or_exit"
        )
        stream.forks = counters.forks
        ending = {
            "how": how,
            "t_end": self.now(),
            "dropped": counters.dropped + stream.lost,
            "unrecorded_reentrant": counters.reentrant,
            "forks": counters.forks,
        }
        if how not in ("exec", "running"):
            ending.update(self._exit_status(stream))
            if how == "killed_or_exit" and "signal" in ending:
                ending["how"] = "signal"
            elif how == "killed_or_exit" and "exit_code" in ending:
                ending["how"] = "_exit"  # left without running exit handlers
        self.writer.json_chunk(fmt.CHUNK_PROCESS_END, stream.sid, ending)
        self.writer.end_stream(stream.sid)
        stream.names = None  # no more questions from it
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

    def _exit_status(self, stream: Stream) -> dict:
        """How an ended process went: the status it gave exit()/_exit() (the shim
        wrote it into the stream), else the wait status the kernel shows for it
        while it is a zombie (a signal); {} if neither can be known."""
        status = stream.counters().exit_status
        if status & 0x100:
            return {"exit_code": status & 0xFF}
        wait_status = procfs.zombie_wait_status(stream.pid)
        if wait_status is None:
            return {}
        if os.WIFSIGNALED(wait_status):
            return {"signal": os.WTERMSIG(wait_status)}
        return {"exit_code": os.WEXITSTATUS(wait_status)}

    def _children_pending(self) -> bool:
        """Some process forked a child whose stream has not connected yet (a child
        forked just before the program ended connects a moment later)."""
        children: Dict[int, Set[int]] = {}
        for s in self.streams.values():
            children.setdefault(s.ppid, set()).add(s.pid)
        for s in self.streams.values():
            forks = s.forks if not s.alive else s.counters().forks
            if forks > len(children.get(s.pid, ())):
                return True
        return False

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
                self.questions.answer(self, stream)
        t = self.now()
        for stream in list(self.streams.values()):
            if stream.alive:
                counters = stream.counters()
                if self.objects and counters.census_sent != counters.census_ack:
                    census.join(self, stream)
                if self.heap_stats:
                    snapshots.watch(self, stream, t)
                elif counters.state == fmt.STATE_EXITING:
                    lib.mt_shm_ack_exit(stream.ptr)
        for key, _ in self.selector.select(0):
            if key.data is not None and key.data.alive:
                self._finish(key.data)  # its pidfd is readable: the process ended
        if self.live is not None:  # live views: a history point now and then, answers
            for stream in self.streams.values():
                if stream.alive:
                    self.live.note(stream, t)
            self.live.poll(t)
        if self.heap_stats and t >= self._next_sample:
            snapshots.sample_rss(self, t)
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
        self._drained = drained
        self._rate = drained / max(t - self._round_t, 1e-4)  # events per second
        self._round_t = t

    def _wait(self, idle_rounds: int) -> float:
        """Seconds to wait before the next round. At once while a backlog is being
        worked off; while events flow, about as long as BATCH_TARGET of them take
        to come (1-8 ms: the ring holds 8 ms of the fastest allocation storm, and
        a wait is backpressure, never loss); after 20 rounds with nothing, backing
        off from 1 to 8 ms. Few, large batches keep the collector's per-round
        Python work and wake-ups, and its share of the CPUs the program also
        uses, small. A process that exits wakes the collector (the shim connects
        to its socket), and RSS sampling keeps its interval."""
        if self._drained >= BATCH_EVENTS:  # a backlog
            return 0.0
        if self._drained:
            wait = BATCH_TARGET / self._rate
        else:
            wait = IDLE_WAIT_MIN if idle_rounds < 20 else IDLE_WAIT_MIN * 2 ** min(idle_rounds - 19, 3)
        wait = min(IDLE_WAIT_MAX, max(IDLE_WAIT_MIN, wait))
        if self.heap_stats:
            wait = min(wait, max(0.0, self._next_sample - self.now()))
        return wait

    def run(self, main_done, grace: float = 2.0) -> None:
        """Loop until main_done() is true and every traced process has ended
        (or `grace` seconds after main_done, for children left running)."""
        done_at = None
        self._drained, self._round_t = 0, self.now()
        idle_rounds = 0
        while True:
            idle_rounds = 0 if self._drained else idle_rounds + 1
            self.step(self._wait(idle_rounds))
            if done_at is None and main_done():
                done_at = time.monotonic()
                self.step(0)  # connections queued just before the end
            if done_at is not None:
                alive = [s for s in self.streams.values() if s.alive]
                if not alive and (not self._children_pending() or time.monotonic() - done_at > grace):
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
