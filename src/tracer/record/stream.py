"""One traced process image as the collector holds it: its shared-memory stream and
aggregator, plus four small pieces of state, each owned by one part of the collector."""

import mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple

from tracer._native import ffi, lib
from tracer.record.aggregate import Aggregator
from tracer.record.capture_writer import EventPacker
from tracer.record.names import Kept

if TYPE_CHECKING:
    from tracer.record.answers import Names


@dataclass
class RssSamples:
    """RSS read from /proc (record/snapshots.py), waiting to be written."""

    pending: List[tuple] = field(default_factory=list)
    peak: int = 0
    recent: List[int] = field(default_factory=lambda: [0, 0, 0])  # the last three samples


@dataclass
class HeapTimeline:
    """The heap timeline: a point per sample interval with the highest heap since the
    point before (the collector's _note_heap)."""

    pending: List[tuple] = field(default_factory=list)
    last_t: float = -1.0
    max: int = 0
    last: Tuple[int, int] = (0, 0)  # (heap, max) the timeline last recorded


@dataclass
class SnapshotState:
    """When the heap-level snapshots were taken (record/snapshots.py)."""

    t: float  # the last snapshot (the first comes once the heap has a peak)
    peak: int = 0  # the heap peak the last snapshot was for
    next_stats: float = 0.0  # no glibc statistics asked for before then
    exit_seen: bool = False


@dataclass
class CensusState:
    """The object census's pacing (--objects, record/census.py)."""

    next: float = 0.0  # no census asked for before then
    heap: int = 0  # the traced heap at the last census
    spent: float = 0.0  # seconds the process spent in censuses so far


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
