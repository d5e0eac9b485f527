"""The model every report reads: processes, their sites, stacks, libraries, threads.

Built from a capture alone. Aggregates written by the collector are used as
they are; a stream that never got its final aggregate (the collector itself
was killed) is rebuilt by replaying its events through the C aggregator.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from tracer import _format as fmt
from tracer.analyze import stacks as st
from tracer.analyze.capture import Capture, Snapshot, StreamData, read_capture
from tracer.record.aggregate import Aggregator

LOST_FRAME = ("<unknown>", 0, "<stack lost>")  # file, line, function


@dataclass
class Frame:
    file: str
    line: int
    function: str


@dataclass
class Process:
    sid: int
    pid: int
    ppid: int
    argv: List[str]
    exe: Optional[str]
    python: Optional[str]
    frames_off: Optional[str]
    numpy: Optional[str]
    warnings: List[str]
    totals: dict
    sites: np.ndarray
    codes: Dict[int, Tuple[str, str, int]]
    stacks: st.StackTable
    libs: Dict[int, str]
    threads: Dict[int, str]
    rss: np.ndarray
    heap: np.ndarray
    library_paths: Tuple[str, ...]
    texts: List[Tuple[int, str]]
    heapstats: np.ndarray  # glibc mallinfo2 records (stacks.HEAPSTATS_RECORD)
    meta: bytes
    snapshots: List[Snapshot]
    end: dict
    t_start: float
    replayed: bool = False
    sample_rate: int = 0  # --sample-rate: byte numbers are estimates
    stacks_read: Optional[str] = None  # pinned frames, or whole walks and why
    # in a merged capture (memtrace merge): source, host, worker, key (docs/cluster.md)
    labels: dict = field(default_factory=dict)

    @property
    def peak_rss(self) -> Optional[int]:
        """Highest RSS sampled; None when the process was never sampled (too short)."""
        peak = int(self.rss["rss"].max()) if len(self.rss) else 0
        peak = max(peak, int(self.totals.get("rss_peak", 0)))
        return peak or None

    @property
    def nodes(self) -> Dict[int, Tuple[int, int, int]]:
        """{node id: (parent id, code id, line)} of the stack trie."""
        records = self.stacks.records
        return dict(
            zip(
                records["id"].tolist(),
                zip(records["parent"].tolist(), records["code"].tolist(), records["line"].tolist()),
            )
        )

    def frame_of_row(self, row: int) -> Frame:
        """The frame of a StackTable row (LOST: the lost frame)."""
        if row < 0:
            return Frame(*LOST_FRAME)
        code = int(self.stacks.code[row])
        return Frame(self.stacks.files[code], int(self.stacks.line[row]), self.stacks.functions[code])

    def frame(self, node: int) -> Optional[Frame]:
        row = self.stacks.row_of(node) if node else st.LOST
        return None if row < 0 else self.frame_of_row(row)

    def stack(self, node: int) -> List[Frame]:
        """Frames from innermost to outermost."""
        starts, rows = self.stacks.paths(np.array([self.stacks.row_of(node)]))
        return [self.frame_of_row(r) for r in reversed(rows.tolist())]

    def is_library(self, file: str) -> bool:
        """Code of the stdlib, of installed packages or of the import machinery."""
        return bool(st.is_library_file([file], self.library_paths)[0])

    def library_codes(self) -> np.ndarray:
        """is_library of each code of the stack table (its last entry: unknown code)."""
        cached = getattr(self, "_library_codes", None)
        if cached is None:
            cached = self._library_codes = st.is_library_file(self.stacks.files, self.library_paths)
        return cached

    def user_rows(self, rows: np.ndarray) -> np.ndarray:
        """user_frame for many stack rows at once: the innermost row in user code,
        LOST for a lost frame, else the row itself."""
        user = ~self.library_codes()[self.stacks.code]
        found = self.stacks.nearest(rows, user, lost_flag=True)
        return np.where(found == st.ROOT, rows, found)

    def user_frame(self, node: int) -> Optional[Frame]:
        """The innermost frame in the user's own code (else the innermost frame)."""
        if not node:
            return None
        row = int(self.user_rows(np.array([self.stacks.row_of(node)]))[0])
        return self.frame_of_row(row)

    def thread_name(self, tid: int) -> str:
        name = self.threads.get(tid, "?")
        return f"{name} (main)" if tid == self.pid else f"{name} (tid {tid})"

    def lib_name(self, lib: int) -> str:
        return self.libs.get(lib, "<unknown>") if lib else "<unknown>"


@dataclass
class Model:
    capture: Capture
    processes: List[Process] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    temporary_threshold: Optional[int] = None  # set once temporaries were counted
    live: bool = False  # the run is still going (build_model)
    region: Optional[str] = None  # the --region pattern of a focused model (regions.focus)
    region_ids: Optional[Dict[int, list]] = None  # a focused model's region ids per stream

    def track_temporary(self, threshold: int = 1) -> None:
        """Replay every stream's events to count temporary allocations (blocks
        freed before `threshold` more allocations on their thread); once."""
        if self.temporary_threshold == threshold:
            return
        self.temporary_threshold = threshold
        for proc in self.processes:
            agg = Aggregator(proc.sample_rate)
            agg.track_temporary(threshold)
            for t, events in self.capture.events(proc.sid):
                agg.feed(events, t)
            proc.sites = _with_temporary(proc.sites, agg.sites())

    @property
    def sample_rate(self) -> int:
        """--sample-rate of the run (0: every event was recorded)."""
        return max((p.sample_rate for p in self.processes), default=0)

    @property
    def estimate_note(self) -> Optional[str]:
        """What every report says when the numbers are sampled estimates."""
        rate = self.sample_rate
        if not rate:
            return None
        return (
            f"sampled run (--sample-rate {rate:,} B): byte figures are unbiased estimates; "
            "allocation counts are of the sampled blocks"
        )

    @property
    def command(self) -> List[str]:
        return list(self.capture.info.get("command", []))

    @property
    def end(self) -> dict:
        return self.capture.end or {}


def _with_temporary(sites: np.ndarray, replayed: np.ndarray) -> np.ndarray:
    """The sites with the replay's temporary counts, filled in place (what reports
    computed from the other columns still holds); everything else, live at the exit
    point above all (the replay only knows the end of the stream), stays as it was.
    A replay creates sites in the order the collector did, so site i is site i."""
    if not sites.flags.writeable:
        sites = sites.copy()
    keys = ("stack", "tid", "lib", "kind", "flags")
    n = min(len(sites), len(replayed))
    if all(np.array_equal(sites[k][:n], replayed[k][:n]) for k in keys):
        sites["temp_bytes"][:n] = replayed["temp_bytes"][:n]
        sites["temp_count"][:n] = replayed["temp_count"][:n]
        return sites
    # a stream rebuilt differently: match sites by their key
    index = {tuple(int(s[k]) for k in keys): i for i, s in enumerate(replayed)}
    for i, s in enumerate(sites):
        j = index.get(tuple(int(s[k]) for k in keys))
        if j is not None:
            sites["temp_bytes"][i] = replayed["temp_bytes"][j]
            sites["temp_count"][i] = replayed["temp_count"][j]
    return sites


def _parse_meta(data: bytes):
    """Codes, the stack table, libraries, threads and texts of a metadata stream."""
    types, offsets, lengths = st.meta_index(data)
    nodes = (types == fmt.META_NODE) & (lengths >= st.NODE_RECORD.itemsize)
    code = (types == fmt.META_CODE) & (lengths >= fmt.PAYLOADS[fmt.META_CODE].size)
    codes = st.code_records(data, offsets[code], lengths[code])
    table = st.StackTable(st.fixed_records(data, offsets[nodes], st.NODE_RECORD), codes)
    stats = (types == fmt.META_HEAPSTATS) & (lengths >= st.HEAPSTATS_RECORD.itemsize)
    heapstats = st.fixed_records(data, offsets[stats], st.HEAPSTATS_RECORD)
    libs, threads, texts = {}, {}, []
    for rtype, payload in st.meta_text_records(data, types, offsets, lengths):
        head = fmt.PAYLOADS[rtype]
        if len(payload) < head.size:
            continue
        ident, text = head.unpack_from(payload)[0], payload[head.size :].decode("utf-8", "replace")
        if rtype == fmt.META_LIB:
            libs[ident] = text
        elif rtype == fmt.META_THREAD:
            threads[ident] = text
        else:
            texts.append((ident, text))
    return codes, table, libs, threads, texts, heapstats


def _argv(text: dict) -> List[str]:
    """argv from /proc/self/cmdline: NUL-terminated strings."""
    raw = text.get(fmt.TEXT_ARGV, "")
    return raw.rstrip("\0").split("\0") if raw else []


def _sample_rate(sd: StreamData) -> int:
    return int(sd.info.get("sample_rate") or 0)


def _replay(capture: Capture, sd: StreamData):
    agg = Aggregator(_sample_rate(sd))
    for t, events in capture.events(sd.stream):
        agg.feed(np.ascontiguousarray(events), t)
    totals = agg.totals()
    totals.update(
        {"rss_peak": 0, "dropped": 0, "unattributed": 0, "lost": 0, "size_histogram": agg.size_histogram()}
    )
    return totals, agg.sites()


def _live_at_exit_point(sd: StreamData):
    """The final aggregate, with "live" taken at the program's exit point (before
    the interpreter or libc freed everything on the way out). Sites are append-only,
    so the exit checkpoint's site i is the final aggregate's site i."""
    # (build_model calls this once it has read both the final and the exit aggregate)
    assert sd.sites is not None and sd.totals is not None
    assert sd.exit_sites is not None and sd.exit_totals is not None
    sites = sd.sites.copy()
    n = len(sd.exit_sites)
    sites["live_bytes"][:n] = sd.exit_sites["live_bytes"]
    sites["live_count"][:n] = sd.exit_sites["live_count"]
    sites["live_bytes"][n:] = 0
    sites["live_count"][n:] = 0
    totals = dict(sd.totals)
    totals["heap"] = sd.exit_totals["heap"]
    totals["live_blocks"] = sd.exit_totals.get("live_blocks", 0)
    return totals, sites


def build_model(capture: Capture, live: bool = False) -> Model:
    """live: the run is still going (a traced program reading its own capture, e.g. a
    notebook's kernel): each stream's latest aggregate is used as it is, and the
    capture is not called incomplete."""
    model = Model(capture)
    model.live = live
    if not live and (capture.truncated_at is not None or capture.end is None):
        model.warnings.append(
            "the capture is incomplete (the run was cut short); numbers cover what was recorded up to its end"
        )
    for sid in sorted(capture.streams):
        sd = capture.streams[sid]
        if not sd.info:
            continue  # chunks of a stream whose announcement was lost
        model.processes.append(_process(capture, sid, sd, live))
    return model


def _process(capture: Capture, sid: int, sd: StreamData, live: bool) -> Process:
    """One stream's process: its aggregate (replayed from its events when none is
    usable), its metadata's names and texts, and its timelines."""
    replayed = sd.totals is None or (sd.end is None and not live)
    if replayed:
        totals, sites = _replay(capture, sd)
    elif sd.exit_totals is not None:
        totals, sites = _live_at_exit_point(sd)
    else:
        totals, sites = sd.totals, sd.sites
    if not sites.flags.writeable:
        sites = sites.copy()  # track_temporary fills in its temporary columns
    meta = bytes(sd.meta)
    codes, table, libs, threads, texts, heapstats = _parse_meta(meta)
    text = {}
    warnings = []
    for key, value in texts:
        if key == fmt.TEXT_WARNING:
            warnings.append(value)
        else:
            text[key] = value
    rss = np.concatenate(sd.rss) if sd.rss else np.zeros(0, dtype=fmt.RSS_DTYPE)
    heap = np.concatenate(sd.heap) if sd.heap else np.zeros(0, dtype=fmt.HEAP_DTYPE)
    return Process(
        sid=sid,
        pid=int(sd.info.get("pid", 0)),
        ppid=int(sd.info.get("ppid", 0)),
        argv=_argv(text) or [str(a) for a in sd.info.get("argv", [])],
        exe=text.get(fmt.TEXT_EXE) or sd.info.get("exe"),
        python=text.get(fmt.TEXT_PYTHON_VERSION),
        frames_off=text.get(fmt.TEXT_FRAMES_OFF),
        numpy=text.get(fmt.TEXT_NUMPY),
        warnings=warnings,
        totals=totals,
        sites=sites,
        codes=codes,
        stacks=table,
        libs=libs,
        threads=threads,
        rss=rss,
        heap=heap,
        library_paths=tuple(p for p in text.get(fmt.TEXT_LIBRARY_PATHS, "").split("\n") if p),
        texts=texts,
        heapstats=heapstats,
        meta=meta,
        snapshots=sd.snapshots,
        end=sd.end or {},
        t_start=float(sd.info.get("t_start", 0.0)),
        replayed=replayed,
        sample_rate=_sample_rate(sd),
        stacks_read=text.get(fmt.TEXT_STACKS),
        labels=dict(sd.info.get("labels") or {}),
    )


def load(path: str, live: bool = False, snapshots: bool = True) -> Model:
    return build_model(read_capture(path, snapshots), live)


# ---- views shared by the reports ------------------------------------------


def heap_mask(sites: np.ndarray) -> np.ndarray:
    """Sites that count towards the heap: malloc family and anonymous mappings."""
    kind = sites["kind"]
    malloc_family = (kind >= 1) & (kind <= fmt.LAST_ALLOC)
    anon_map = ((kind == fmt.MMAP) | (kind == fmt.MREMAP)) & ((sites["flags"] & fmt.FLAG_ANON) != 0)
    return malloc_family | anon_map


def native_bucket(proc: Process, tid: int) -> Frame:
    """Where allocations made with no Python frame on the stack are filed."""
    return Frame("<native>", 0, f"[no Python frame] thread {proc.thread_name(tid)}")


def site_frame(proc: Process, site, user_code: bool = False) -> Frame:
    """The frame a site is filed under: innermost, or innermost in user code."""
    stack = int(site["stack"])
    if stack == 0:
        return native_bucket(proc, int(site["tid"]))
    frame = proc.user_frame(stack) if user_code else proc.frame(stack)
    return frame or Frame(*LOST_FRAME)


def site_frame_keys(
    proc: Process, sites: np.ndarray, functions: st.Interner, user_code: bool = False
) -> np.ndarray:
    """site_frame of every site at once, as stacks.frame_key values over
    `functions`, an interner of (file, function) pairs shared across processes."""
    table = proc.stacks
    rows = table.rows(sites["stack"])
    if user_code:
        rows = proc.user_rows(rows)
    pairs, index = table.distinct("pairs")
    code_fn = functions.many((file, function) for function, file in pairs)[index]
    fn = st.take(code_fn[table.code], rows, 0)
    line = st.take(table.line, rows, 0)
    fn[rows == st.LOST] = functions((LOST_FRAME[0], LOST_FRAME[2]))
    native = np.flatnonzero(rows == st.ROOT)
    if len(native):
        tids, inverse = np.unique(sites["tid"][native], return_inverse=True)
        buckets = [native_bucket(proc, tid) for tid in tids.tolist()]
        fn[native] = functions.many((b.file, b.function) for b in buckets)[inverse]
    return st.frame_key(fn, line)


def display_path(path: str, cwd: Optional[str]) -> str:
    if cwd and path.startswith(cwd + os.sep):
        return path[len(cwd) + 1 :]
    return path
