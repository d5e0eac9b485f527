"""One traced process image as the collector holds it: its shared-memory stream and
aggregator, plus four small pieces of state, each owned by one part of the collector."""

import mmap
from typing import TYPE_CHECKING, List, Optional, Tuple

from tracer._native import ffi, lib
from tracer.record.aggregate import Aggregator
from tracer.record.capture_writer import EventPacker
from tracer.record.names import Kept

if TYPE_CHECKING:
    from tracer.record.answers import Names


# Plain classes, not dataclasses: importing dataclasses (and inspect with it) cost the
# collector's start 13 ms, which every traced run waits for.


class RssSamples:
    """RSS read from /proc (record/snapshots.py), waiting to be written."""

    __slots__ = ("pending", "peak", "recent")

    def __init__(self) -> None:
        self.pending: List[tuple] = []
        self.peak = 0
        self.recent = [0, 0, 0]  # the last three samples


class HeapTimeline:
    """The heap timeline: a point per sample interval with the highest heap since the
    point before (the collector's _note_heap)."""

    __slots__ = ("pending", "last_t", "max", "last")

    def __init__(self) -> None:
        self.pending: List[tuple] = []
        self.last_t = -1.0
        self.max = 0
        self.last: Tuple[int, int] = (0, 0)  # (heap, max) the timeline last recorded


class SnapshotState:
    """When the heap-level snapshots were taken (record/snapshots.py)."""

    __slots__ = ("t", "peak", "next_stats", "exit_seen")

    def __init__(self, t: float) -> None:
        self.t = t  # the last snapshot (the first comes once the heap has a peak)
        self.peak = 0  # the heap peak the last snapshot was for
        self.next_stats = 0.0  # no glibc statistics asked for before then
        self.exit_seen = False


class CensusState:
    """The object census's pacing (--objects, record/census.py)."""

    __slots__ = ("next", "heap", "spent")

    def __init__(self) -> None:
        self.next = 0.0  # no census asked for before then
        self.heap = 0  # the traced heap at the last census
        self.spent = 0.0  # seconds the process spent in censuses so far


class Stream:
    """One traced process image: its mapping, aggregator, samples and snapshots."""

    def __init__(self, sid: int, pid: int, ppid: int, shm: mmap.mmap, t: float, sample_rate: int = 0):
        self.sid, self.pid, self.ppid = sid, pid, ppid
        self.shm = shm
        self.ptr = ffi.from_buffer(shm)
        self.agg = Aggregator(sample_rate)
        self.t_start = t
        self.pidfd: Optional[int] = None
        self.alive = True
        self.ended_by_exec = False
        self.forks = 0  # children it forked, read when its stream ends
        self.n_events = 0
        self.lost = 0
        self.packer: Optional[EventPacker] = None  # set by the collector as it connects
        self.meta_pending = bytearray()  # metadata gathered for one compressed chunk
        self.kept = Kept()  # the metadata kept for answers, live views and censuses
        self.names: Optional["Names"] = None  # made by the first question with details
        self.rss = RssSamples()
        self.timeline = HeapTimeline()
        self.snaps = SnapshotState(t=t)
        self.census = CensusState()
        self._counters = ffi.new("mt_shm_counters *")

    def counters(self):
        """The stream header's counters, read now: an mt_shm_counters (fields named in
        csrc/collector/native.h), overwritten by the next call."""
        lib.mt_shm_read_counters(self.ptr, self._counters)
        return self._counters
