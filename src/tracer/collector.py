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
from typing import TYPE_CHECKING, Dict, List, Optional, Set

from tracer import _format as fmt
from tracer import census, procfs
from tracer._native import ffi, lib
from tracer.aggregate import Aggregator
from tracer.answers import Questions
from tracer.capture_writer import CaptureWriter, EventPacker
from tracer.names import Kept
from tracer.session import Session

if TYPE_CHECKING:
    from tracer.live.server import LiveServer

HELLO = struct.Struct("<IIIIQ")  # mt_hello: magic, version, pid, ppid, shm size
HELLO_MAGIC = 0x4D54484C
WIRE_VERSION = 2
BATCH_EVENTS = 1 << 16
BATCHES_PER_ROUND = 4
META_BATCH = 1 << 20
RSS_FLUSH_SECONDS = 1.0
AGGREGATE_REFRESH_SECONDS = 5.0
# Snapshots near the heap peak (docs/reconciliation.md, "When"): a peak with no
# snapshot is read once it stops rising -- unchanged for PEAK_HOLD while RSS has not
# grown by RSS_RISING over its last samples (the program is done writing new pages;
# PEAK_HOLD_MAX at most), or the heap fell PEAK_DROP below it -- at most one snapshot
# per PEAK_SNAPSHOT_SPACING; while it keeps rising, one per GROWTH_SNAPSHOT_SECONDS.
# Reading smaps costs 5-50 ms on a big process, so snapshots may take SNAPSHOT_SHARE
# of the collector's time, in bursts of at most SNAPSHOT_BURST seconds.
PEAK_SNAPSHOT_SPACING = 0.05
PEAK_HOLD = 0.02
PEAK_HOLD_MAX = 0.25
RSS_RISING = 1 << 20
PEAK_DROP, PEAK_DROP_MIN = 0.01, 64 << 10
GROWTH_SNAPSHOT_SECONDS = 1.0
SNAPSHOT_SHARE = 0.10
SNAPSHOT_BURST = 0.5
SMALL_PROCESS = 4 << 20         # heap peak under which a child's exit snapshot is skipped
PERIODIC_SNAPSHOT_SECONDS = 10.0
IDLE_WAIT_MIN, IDLE_WAIT_MAX = 0.001, 0.008  # seconds between rounds
BATCH_TARGET = 16384  # while events flow, wait about as long as this many take to come


class Stream:
    """One traced process image: its mapping, aggregator and RSS samples."""

    def __init__(self, sid: int, pid: int, ppid: int, shm: mmap.mmap, t: float,
                 sample_rate: int = 0):
        self.sid = sid
        self.pid = pid
        self.ppid = ppid
        self.shm = shm
        self.ptr = ffi.from_buffer(shm)
        self.agg = Aggregator(sample_rate)
        self.t_start = t
        self.pidfd: Optional[int] = None
        self.alive = True
        self.rss_pending: List[tuple] = []
        self.rss_peak = 0
        self.rss_recent = [0, 0, 0]  # the last three RSS samples (20 ms at 10 ms a sample)
        self.heap_pending: List[tuple] = []
        self.heap_last_t = -1.0
        self.heap_max = 0
        self.heap_last = (0, 0)  # (heap, max) the timeline last recorded
        self.next_stats = 0.0
        self.snap_t = t  # (the first snapshot comes once the heap has a peak)
        self.snap_peak = 0
        self.exit_seen = False
        self.lost = 0
        self.n_events = 0
        self.meta_pending = bytearray()  # metadata gathered for one compressed chunk
        self.kept = Kept()  # the metadata kept for answers, live views and censuses (names.py)
        self.census_next = 0.0  # no census asked for before then (--objects)
        self.census_heap = 0  # the traced heap at the last census
        self.census_spent = 0.0  # seconds the process spent in censuses so far
        self.names = None  # answers.Names, made by the first question with details
        self.ended_by_exec = False
        self.packer: Optional[EventPacker] = None  # set by the collector
        self.forks = 0  # children it forked, read when its stream ends

    def counter(self, which: int) -> int:
        return lib.mt_shm_counter(self.ptr, which)


class Collector:
    _round_t: float  # when the round began (set by run())

    def __init__(self, session: Session, writer: CaptureWriter, t0: float,
                 sample_interval: float = 0.01, heap_stats: bool = True, sample_rate: int = 0,
                 objects: bool = False):
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
        self.snap_budget = SNAPSHOT_BURST  # seconds of snapshot work allowed now
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
        self.writer.json_chunk(fmt.CHUNK_PROCESS, stream.sid, {
            "pid": pid, "ppid": ppid, "t_start": stream.t_start,
            "sample_rate": self.sample_rate})
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
        claimed = stream.counter(4) if everything else 0  # the events claimed by now
        for _ in range(1 << 62 if dead or everything else BATCHES_PER_ROUND):
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
            if n < BATCH_EVENTS or (everything and stream.counter(5) >= claimed):
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

    def _note_heap(self, stream: Stream, t: float, drained: bool = True,
                   at_once: bool = False) -> None:
        """Keep a heap timeline point per sample interval, with the max in between;
        also when no events came (drained=False) if the heap is not yet recorded as
        it stands, so that the timelines of several processes can be added up;
        `at_once`: now, however soon after the last point."""
        totals = stream.agg.totals()
        if drained:
            stream.heap_max = max(stream.heap_max, totals["feed_max"])
        elif stream.heap_last == (totals["heap"], stream.heap_max):
            return
        if at_once or t - stream.heap_last_t >= self.sample_interval:
            stream.heap_pending.append((t, totals["heap"], stream.heap_max))
            stream.heap_last_t = t
            stream.heap_max = totals["heap"]
            stream.heap_last = (totals["heap"], totals["heap"])

    def _sample_rss(self, t: float) -> None:
        """RSS and its split, and a request for the target's heap statistics."""
        for stream in self.streams.values():
            if not stream.alive:
                continue
            self._note_heap(stream, t, drained=False)
            st = procfs.status(stream.pid)
            if st is not None:
                rss = st["RssAnon"] + st["RssFile"] + st["RssShmem"]
                stream.rss_recent = stream.rss_recent[1:] + [rss]
                stream.rss_peak = max(stream.rss_peak, rss)
                stream.rss_pending.append((t, rss, st["RssAnon"], st["RssFile"], st["RssShmem"],
                                           st["VmSwap"]))
            # glibc's books, spaced so that walking its free lists costs the target
            # at most ~2% (mallinfo2 is O(free chunks))
            if t >= stream.next_stats:
                lib.mt_shm_request_stats(stream.ptr, 0)
                cost = stream.counter(6) / 1e9
                stream.next_stats = t + max(self.sample_interval, 50 * cost)

    def _snapshot(self, stream: Stream, kind: str) -> None:
        """Mappings with their resident bytes and the traced bytes inside each, now."""
        t = self.now()
        started = time.perf_counter()
        vmas = procfs.smaps(stream.pid)
        totals = stream.agg.totals()
        # position: the ring's event index (heap statistics carry one too); events: the
        # aggregator's count, the peak's index space; cost: seconds smaps took to read
        record = {"kind": kind, "t": t, "position": stream.counter(5),
                  "events": totals["n_events"], "heap": totals["heap"],
                  "peak_heap": totals["peak_heap"], "peak_time": totals["peak_time"],
                  "peak_event": totals["peak_event"], "status": procfs.status(stream.pid)}
        if vmas is None:
            record["error"] = f"/proc/{stream.pid}/smaps could not be read"
        else:
            record["cost"] = round(time.perf_counter() - started, 6)
            n = len(vmas)
            starts = ffi.new("uint64_t[]", [v[0] for v in vmas])
            ends = ffi.new("uint64_t[]", [v[1] for v in vmas])
            blocks, anon, filemap, top = (ffi.new("int64_t[]", n) for _ in range(4))
            top_site = ffi.new("uint32_t[]", n)
            lib.mt_agg_bytes_in_ranges(stream.agg._agg, starts, ends, n, blocks, anon, filemap,
                                       top_site, top)
            record["vmas"] = [v + [blocks[i], anon[i], filemap[i],
                                   top_site[i] if top_site[i] != 0xFFFFFFFF else -1, top[i]]
                              for i, v in enumerate(vmas)]
            record["stack_pointers"] = procfs.thread_stack_pointers(stream.pid)
        stream.snap_t = t
        stream.snap_peak = totals["peak_heap"]
        self.writer.json_chunk(fmt.CHUNK_SNAPSHOT, stream.sid, record)
        self.snap_budget -= time.perf_counter() - started

    def _may_snapshot(self, t: float, floor: float) -> bool:
        """Whether the snapshots' share of the collector's time allows one now (the
        budget is above `floor`)."""
        self.snap_budget = min(SNAPSHOT_BURST,
                               self.snap_budget + (t - self.snap_budget_t) * SNAPSHOT_SHARE)
        self.snap_budget_t = t
        return self.snap_budget > floor

    def _watch(self, stream: Stream, t: float) -> None:
        """Snapshots: at each new heap peak, now and then, and as the process exits."""
        state = stream.counter(3)
        if state == fmt.STATE_EXITING and not stream.exit_seen:
            stream.exit_seen = True
            self._drain(stream, everything=True)
            # Small short-lived children (a shell, `true`) are let go at once: their
            # exit snapshot is not worth making every exec in a build wait for it.
            if stream.pid == self.main_pid or stream.agg.totals()["peak_heap"] >= SMALL_PROCESS:
                self._snapshot(stream, "exit")
            # Let the process go on exiting before writing the aggregate: nothing
            # is drained in between, so it still describes the exit point.
            lib.mt_shm_ack_exit(stream.ptr)
            self._write_aggregate(stream, checkpoint="exit")
            return
        since = t - stream.snap_t
        floor = self._peak_due(stream, t)
        if floor is not None and self._may_snapshot(t, floor):
            # glibc's and pymalloc's books need the program: it answers in its next
            # allocator call (a pending call for pymalloc); the nearest answer is used
            # (the reconciliation says how far it was)
            if self.objects and census.due(stream, t):
                lib.mt_shm_request_census(stream.ptr)  # (pymalloc's statistics with it)
                stream.census_next = float("inf")  # none more until this one is joined
            else:
                lib.mt_shm_request_stats(stream.ptr, 1)
            self._snapshot(stream, "peak")
        elif since >= PERIODIC_SNAPSHOT_SECONDS:
            self._snapshot(stream, "periodic")

    def _peak_due(self, stream: Stream, t: float) -> Optional[float]:
        """Whether a peak with no snapshot yet should be read now (never waiting for
        the program): once it has stopped rising -- while it still rises, a snapshot
        would only be replaced by the next one. Returns the budget floor it may draw
        to (a peak that is over is the one most worth having: it may overdraw; one of
        a peak still rising must leave room for it), or None."""
        totals = stream.agg.totals()
        peak, heap = totals["peak_heap"], totals["heap"]
        since = t - stream.snap_t
        if peak <= stream.snap_peak or since < PEAK_SNAPSHOT_SPACING:
            return None
        if heap < peak - max(PEAK_DROP_MIN, int(peak * PEAK_DROP)):
            return -SNAPSHOT_BURST  # it fell
        held_for = t - totals["peak_time"]
        rss_rising = stream.rss_recent[-1] - stream.rss_recent[0] >= RSS_RISING
        if held_for >= PEAK_HOLD and (not rss_rising or held_for >= PEAK_HOLD_MAX):
            return 0.0
        return SNAPSHOT_BURST / 2 if since >= GROWTH_SNAPSHOT_SECONDS else None

    def _flush_samples(self, stream: Stream, final: bool = False) -> None:
        """Write the pending RSS samples and heap timeline points."""
        if final:
            totals = stream.agg.totals()
            stream.heap_pending.append((self.now(), totals["heap"],
                                        max(stream.heap_max, totals["heap"])))
        for pending, ctype, row in ((stream.rss_pending, fmt.CHUNK_RSS, fmt.RSS_ROW),
                                    (stream.heap_pending, fmt.CHUNK_HEAP, fmt.HEAP_ROW)):
            if pending:
                self.writer.chunk(ctype, stream.sid, b"".join(row.pack(*r) for r in pending))
                pending.clear()

    def _write_aggregate(self, stream: Stream, checkpoint: str = "latest") -> None:
        """checkpoint: "exit" (the program's exit point: what it left live), or
        "latest" (refreshed while it runs, and the final one)."""
        extra = {"rss_peak": stream.rss_peak, "dropped": stream.counter(0) + stream.lost,
                 "unattributed": stream.counter(1), "lost": stream.lost, "checkpoint": checkpoint}
        # Events go to disk in large compressed groups (the ratio depends on it);
        # an aggregate refreshed while the process runs flushes them every 30 s
        # at least, and the final ones flush everything.
        packer = stream.packer
        assert packer is not None  # given to each stream as it connects
        if not stream.alive:
            packer.flush(self.now(), wait=True)
        elif packer.age(self.now()) > 30.0:
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
        state = stream.counter(3)
        how = ("exec" if stream.ended_by_exec else
               "running" if still_running else
               "exit" if state == fmt.STATE_EXITED else "killed_or_exit")
        stream.forks = stream.counter(7)
        ending = {"how": how, "t_end": self.now(), "dropped": stream.counter(0) + stream.lost,
                  "unrecorded_reentrant": stream.counter(2), "forks": stream.counter(7)}
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
        status = stream.counter(8)
        if status & 0x100:
            return {"exit_code": status & 0xff}
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
            forks = s.forks if not s.alive else s.counter(7)
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
                if self.objects and stream.counter(9) != stream.counter(10):
                    census.join(self, stream)
                if self.heap_stats:
                    self._watch(stream, t)
                elif stream.counter(3) == fmt.STATE_EXITING:
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
            wait = IDLE_WAIT_MIN if idle_rounds < 20 else \
                IDLE_WAIT_MIN * 2 ** min(idle_rounds - 19, 3)
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
                if not alive and (not self._children_pending() or
                                  time.monotonic() - done_at > grace):
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
