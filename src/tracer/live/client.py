"""A live view's side: fetch the collector's numbers, and make them readable.

Lines are named with the model's own code: the metadata a stream has sent so far
goes through tracer.analyze.model.build_model (as if it were a capture), and the Process
it makes names stack nodes. That Process is made again only when a node it does
not know comes up (at most every REBUILD_SECONDS): metadata is interned, so a
running program sends few new nodes once it is under way.
"""

import json
import os
import socket
import time
from typing import Dict, List, Optional

import numpy as np

from tracer import _format as fmt
from tracer.analyze.capture import Capture, StreamData
from tracer.analyze.model import Process, build_model, heap_mask, native_bucket
from tracer.errors import MemtraceError
from tracer.live.server import FRAME, SOCKET_NAME

REBUILD_SECONDS = 1.0
SORTS = ("live_bytes", "peak_bytes", "alloc_bytes", "n_allocs")
SORT_TITLES = {
    "live_bytes": "live bytes",
    "peak_bytes": "held at peak",
    "alloc_bytes": "allocated",
    "n_allocs": "allocations",
}


def find_socket(target: str) -> str:
    """The live socket of a run: given as a path, or found from the PID of a traced
    process (its MEMTRACE_SOCKET) or of memtrace itself. Same user only."""
    if not target.isdigit():
        if os.path.isdir(target):
            target = os.path.join(target, SOCKET_NAME)
        if not os.path.exists(target):
            raise MemtraceError(
                f"{target}: no such socket (give the PID of a traced program "
                "or the live socket of a memtrace run)"
            )
        return target
    pid = int(target)
    env = _environ(pid)
    if env is None:
        raise MemtraceError(f"no process {pid} of yours is running")
    path = env.get("MEMTRACE_SOCKET")
    if path is None:  # memtrace itself? its targets name it as their collector
        path = next(
            (
                e["MEMTRACE_SOCKET"]
                for e in map(_environ, _pids())
                if e and e.get("MEMTRACE_COLLECTOR_PID") == str(pid) and "MEMTRACE_SOCKET" in e
            ),
            None,
        )
    if path is None:
        raise MemtraceError(f"process {pid} is not traced by memtrace (run it with `memtrace run`)")
    live = os.path.join(os.path.dirname(path), SOCKET_NAME)
    if not os.path.exists(live):
        raise MemtraceError(f"the memtrace run of process {pid} has ended (or serves no live view)")
    return live


def _pids():
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


def _environ(pid: int) -> Optional[Dict[str, str]]:
    """A process's environment, if it is one of this user's."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


class StreamView:
    """What a view knows of one traced process."""

    def __init__(self, sid: int):
        self.sid = sid
        self.pid = self.ppid = 0
        self.alive = True
        self.meta = bytearray()
        self.held: Optional[int] = None  # glibc's arena + mmapped bytes, latest
        self.totals: dict = {}
        self.sites = np.zeros(0, dtype=fmt.SITE_DTYPE)
        self.history: List[list] = []
        self.generation = -1
        self.rss = 0
        self.process: Optional[Process] = None  # model Process naming this stream's stacks
        self.built_at = -1.0
        self.built_length = -1
        self.frames: Dict[int, tuple] = {}  # stack node -> (file, line, function) in user code

    def update(self, entry: dict, sites: bytes, meta: bytes) -> None:
        self.pid, self.ppid, self.alive = entry["pid"], entry["ppid"], entry["alive"]
        self.totals, self.rss, self.held = entry["totals"], entry["rss"], entry["held"]
        self.sites = np.frombuffer(sites, dtype=fmt.SITE_DTYPE)
        if entry["meta_from"] == len(self.meta):
            self.meta += meta
        if entry["history_generation"] != self.generation:
            self.history = []
            self.generation = entry["history_generation"]
        self.history += entry["history"]

    # ---- names ----------------------------------------------------------------

    def named(self, now: float, inherited: tuple = ()):
        """The model's Process for this stream's metadata (made again when stale).
        inherited: the library folders of its parent (a forked child does not send
        them again), so that its lines are the user's too."""
        orphan = inherited and self.process is not None and not self.process.library_paths
        if (
            self.process is None
            or orphan
            or (
                self.built_length != len(self.meta) and now - self.built_at >= REBUILD_SECONDS and self._stale
            )
        ):
            info = {"pid": self.pid, "ppid": self.ppid, "t_start": 0.0}
            totals = {name: 0 for name in fmt.TOTALS_FIELDS}
            totals.update(self.totals)
            stream = StreamData(
                self.sid, info=info, meta=bytearray(self.meta), totals=totals, sites=self.sites, end={}
            )
            self.process = build_model(Capture("<live>", {}, {self.sid: stream}, None)).processes[0]
            if not self.process.library_paths:
                self.process.library_paths = inherited
            self.built_at, self.built_length = now, len(self.meta)
            self.frames = {}
            self._stale = False
        return self.process

    _stale = False

    def frame_of(self, proc, stack: int, tid: int) -> tuple:
        if stack == 0:
            f = native_bucket(proc, tid)
            return (f.file, f.line, f.function)
        known = self.frames.get(stack)
        if known is None:
            if proc.frame(stack) is None:  # sent after the Process was made
                self._stale = True
                return ("", 0, "(naming…)")
            f = proc.user_frame(stack)
            known = self.frames[stack] = (f.file, f.line, f.function)
        return known

    def lines(self, sort: str, now: float, top: int = 200, inherited: tuple = ()) -> List[dict]:
        """Heap sites grouped by the innermost line of the user's code."""
        proc = self.named(now, inherited)
        sites = self.sites[heap_mask(self.sites)]
        if not len(sites):
            return []
        keys = sites["stack"].astype(np.uint64) << np.uint64(32)
        keys |= np.where(sites["stack"] == 0, sites["tid"], 0).astype(np.uint64)
        unique, inverse = np.unique(keys, return_inverse=True)
        columns = {}
        for name in ("live_bytes", "live_count", "peak_bytes", "alloc_bytes", "n_allocs"):
            columns[name] = np.bincount(
                inverse, weights=sites[name].astype(np.float64), minlength=len(unique)
            )
        rows: Dict[tuple, dict] = {}
        for i, key in enumerate(unique.tolist()):
            frame = self.frame_of(proc, key >> 32, key & 0xFFFFFFFF)
            row = rows.get(frame)
            if row is None:
                row = rows[frame] = {
                    "file": frame[0],
                    "line": frame[1],
                    "function": frame[2],
                    **{name: 0 for name in columns},
                }
            for name, values in columns.items():
                row[name] += int(values[i])
        out = sorted(rows.values(), key=lambda r: (-r[sort], -r["live_bytes"]))
        return [r for r in out if r["alloc_bytes"] or r["live_bytes"]][:top]

    def threads(self, now: float) -> List[dict]:
        """The process's threads: name and state from /proc, and what was allocated on
        each with no Python frame (the only allocations the trace files by thread)."""
        proc = self.named(now)
        native = self.sites[(self.sites["stack"] == 0) & heap_mask(self.sites)]
        live: Dict[int, int] = {}
        for tid, nbytes in zip(native["tid"].tolist(), native["live_bytes"].tolist()):
            live[tid] = live.get(tid, 0) + nbytes
        out = []
        for tid in sorted(_tasks(self.pid) if self.alive else []):
            stat = _task_stat(self.pid, tid)
            if stat is None:
                continue
            out.append(
                {
                    "tid": tid,
                    "name": proc.threads.get(tid) or stat["comm"],
                    "state": stat["state"],
                    "cpu_seconds": stat["cpu"],
                    "native_live_bytes": live.get(tid, 0),
                    "main": tid == self.pid,
                }
            )
        return out

    def argv(self, now: float) -> List[str]:
        return self.named(now).argv


def _tasks(pid: int) -> List[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


_TICKS = os.sysconf("SC_CLK_TCK")


def _task_stat(pid: int, tid: int) -> Optional[dict]:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = text[text.find("(") + 1 : text.rfind(")")]
    fields = text[text.rfind(")") + 2 :].split()
    return {"comm": comm, "state": fields[0], "cpu": (int(fields[11]) + int(fields[12])) / _TICKS}


class LiveClient:
    """One connection to a run's live socket; fetch() brings every stream up to date."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.streams: Dict[int, StreamView] = {}
        self.head: dict = {}
        self.fetched_at = 0.0

    def close(self) -> None:
        self.sock.close()

    def fetch(self) -> dict:
        request = {
            "meta": {str(s.sid): len(s.meta) for s in self.streams.values()},
            "history": {str(s.sid): [s.generation, len(s.history)] for s in self.streams.values()},
        }
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        head_len, body_len = FRAME.unpack(self._read(FRAME.size))
        head = json.loads(self._read(head_len))
        body = memoryview(self._read(body_len))
        at = 0
        for entry in head["streams"]:
            view = self.streams.get(entry["sid"])
            if view is None:
                view = self.streams[entry["sid"]] = StreamView(entry["sid"])
            sites = body[at : at + entry["sites_length"]]
            at += entry["sites_length"]
            meta = body[at : at + entry["meta_length"]]
            at += entry["meta_length"]
            view.update(entry, bytes(sites), bytes(meta))
        self.head = head
        self.fetched_at = time.monotonic()
        return head

    def inherited_paths(self, view: StreamView, now: float) -> tuple:
        """Library folders for a stream that sent none: its nearest ancestor's."""
        by_pid = {s.pid: s for s in self.streams.values() if s is not view}
        parent, seen = by_pid.get(view.ppid), set()
        while parent is not None and parent.pid not in seen:
            seen.add(parent.pid)
            paths = parent.named(now).library_paths
            if paths:
                return paths
            parent = by_pid.get(parent.ppid)
        return ()

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            data = self.sock.recv(min(left, 1 << 20))
            if not data:
                raise ConnectionError("the memtrace run ended")
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)
