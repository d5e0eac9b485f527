"""Shared helpers for the reliability tests (GitHub issue #6, part 1).

Everything here drives the installed memtrace exactly as a user would
(`python -m tracer run ...`), then reads the capture two ways: through
`memtrace stats --json` (what users see) and through `tracer.capture`
(the raw events, to count exactly what each process streamed).
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tracer import _format as fmt
from tracer.capture import read_capture

MEMTRACE = [sys.executable, "-m", "tracer"]
TARGETS = Path(__file__).resolve().parents[1] / "targets"
HERE = Path(__file__).resolve().parent

KIND = {name: code for code, name in fmt.KIND_NAMES.items()}


# ---- building C targets ------------------------------------------------------

@pytest.fixture(scope="session")
def cbuild(tmp_path_factory):
    """cbuild("name.c", *flags) -> path of the compiled program (cached per session)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    out_dir = tmp_path_factory.mktemp("reltargets")
    cache = {}

    def build(source: str, *flags: str, compiler: str = "cc", name: str = None) -> Path:
        key = (source, flags, compiler, name)
        if shutil.which(compiler) is None:
            pytest.skip(f"no {compiler} compiler")
        if key not in cache:
            exe = out_dir / (name or Path(source).stem)
            # -fno-builtin: the compiler must not fold malloc/free pairs away, the
            # tests count every call
            cmd = [compiler, "-O1", "-g", "-Wall", "-fno-builtin", "-o", str(exe),
                   str(TARGETS / source), *flags]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            cache[key] = exe
        return cache[key]

    build.dir = out_dir
    return build


# ---- running under memtrace ----------------------------------------------------

def traced(argv, capture, timeout=120, env=None, **kw) -> subprocess.CompletedProcess:
    """memtrace run -q -f -o CAPTURE -- ARGV, with a hard timeout (a hang fails the test)."""
    cmd = MEMTRACE + ["run", "-q", "-f", "-o", str(capture), "--", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def traced_popen(argv, capture, env=None, **kw) -> subprocess.Popen:
    """Start memtrace in the background. Its pid is the collector's (launcher.py runs
    the collector loop in the `memtrace` process itself)."""
    cmd = MEMTRACE + ["run", "-q", "-f", "-o", str(capture), "--", *map(str, argv)]
    return subprocess.Popen(cmd, env=env, **kw)


def stats(capture, pid=None) -> dict:
    extra = ["--pid", str(pid)] if pid is not None else []
    out = subprocess.run(MEMTRACE + ["stats", "--json", *extra, str(capture)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def library_row(st: dict, name: str) -> dict:
    """by_library row of one shared object (the test program itself, by its file name)."""
    rows = [r for r in st["by_library"] if r["library"] == name]
    assert len(rows) == 1, [r["library"] for r in st["by_library"]]
    return rows[0]


def wait_for(predicate, timeout=30.0, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def env_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def children_of(pid: int):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def proc_state(pid: int):
    """Single-letter state from /proc/PID/stat, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


# ---- a shared counter file between a C target and the test --------------------

class Shared:
    """A 4 KiB file the C targets map MAP_SHARED: word 0 = progress counter written
    by the target, word 1 = a command word written by the test (see alloc_loop.c)."""

    def __init__(self, path: Path):
        self.path = path
        path.write_bytes(b"\0" * 4096)

    def words(self):
        return np.frombuffer(self.path.read_bytes()[:64], dtype="<u8")

    @property
    def counter(self) -> int:
        return int(self.words()[0])

    def command(self, value: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(8)
            f.write(int(value).to_bytes(8, "little"))


# ---- raw capture checks ---------------------------------------------------------

def chunk_types(capture) -> list:
    """Chunk types of the capture in file order (to check END is the very last)."""
    data = Path(capture).read_bytes()
    pos, types = fmt.FILE_HEADER.size, []
    while pos + fmt.CHUNK_HEADER.size <= len(data):
        ctype, _sid, length = fmt.CHUNK_HEADER.unpack_from(data, pos)
        types.append(ctype)
        pos += fmt.CHUNK_HEADER.size + length
    assert pos == len(data), f"trailing bytes after the last chunk: {pos} != {len(data)}"
    return types


class Raw:
    """The capture's streams with their events, by stream id and by pid."""

    def __init__(self, capture):
        self.capture = read_capture(str(capture))
        self.streams = {}
        for sid, sd in self.capture.streams.items():
            chunks = [ev for _t, ev in self.capture.events(sid)]
            events = (np.concatenate(chunks) if chunks
                      else np.zeros(0, dtype=fmt.EVENT_DTYPE))
            self.streams[sid] = (sd, events)

    def pids(self):
        return [sd.info["pid"] for sd, _ in self.streams.values()]

    def of_pid(self, pid: int):
        return [(sd, ev) for sd, ev in self.streams.values() if sd.info.get("pid") == pid]

    def events_of(self, pid: int) -> np.ndarray:
        parts = [ev for sd, ev in self.of_pid(pid)]
        assert parts, f"no stream for pid {pid}"
        return np.concatenate(parts)

    def count(self, events, kind: str, size=None) -> int:
        sel = events["kind"] == KIND[kind]
        if size is not None:
            sel &= events["size"] == size
        return int(sel.sum())

    def assert_valid(self, require_end=True, allow_lost=0):
        """The capture is complete (END is the last chunk, nothing after it), every
        stream was announced and ended, its event chunks are contiguous (each chunk's
        `first` = events before it), and nothing was dropped; at most allow_lost slots
        per stream were claimed by a thread that died before filling them."""
        cap = self.capture
        assert cap.truncated_at is None, f"capture cut short at byte {cap.truncated_at}"
        if require_end:
            assert cap.end is not None, "no END chunk"
            types = chunk_types(cap.path)
            assert types[-1] == fmt.CHUNK_END and types.count(fmt.CHUNK_END) == 1, types[-5:]
        for sid, (sd, events) in self.streams.items():
            assert sd.info, f"stream {sid} has chunks but no process announcement"
            assert sd.end is not None, f"stream {sid} (pid {sd.info.get('pid')}) never ended"
            seen = 0
            for _off, _len, count, _t, first, *_ in sd.event_chunks:
                assert first == seen, f"stream {sid}: events chunk starts at {first}, expected {seen}"
                seen += count
            assert seen == len(events)
            lost = sd.totals.get("lost", 0) if sd.totals is not None else 0
            assert lost <= allow_lost, (sid, sd.totals)
            assert sd.end.get("dropped", 0) == lost, (sid, sd.end)


def live_model_check(events: np.ndarray, forked: bool = False):
    """Replay a stream's malloc-family events against a reference model of live
    pointers: per address, events must alternate allocation, free, allocation, ...
    starting with an allocation (no free of an unknown pointer, no allocation of an
    address already live). forked=True: the stream is a fork child's, whose first
    event for an address may be the free of a block inherited from its parent. Returns (final live set {addr: size}, problems).
    Vectorised: group events by address (stable, so each group keeps stream order)."""
    kind = events["kind"].astype(np.int64)
    is_alloc = (kind >= 1) & (kind <= fmt.LAST_ALLOC)
    sel = is_alloc | (kind == KIND["free"])
    addr = events["addr"][sel]
    alloc = is_alloc[sel]
    size = events["size"][sel]
    order = np.argsort(addr, kind="stable")
    addr, alloc, size = addr[order], alloc[order], size[order]
    problems = []
    if len(addr):
        start = np.ones(len(addr), dtype=bool)
        start[1:] = addr[1:] != addr[:-1]
        bad_start = start & ~alloc & (not forked)
        bad_repeat = np.zeros(len(addr), dtype=bool)
        bad_repeat[1:] = ~start[1:] & (alloc[1:] == alloc[:-1])
        for i in np.flatnonzero(bad_start)[:10]:
            problems.append(("unknown-free", hex(int(addr[i]))))
        for i in np.flatnonzero(bad_repeat)[:10]:
            problems.append(("reused-live" if alloc[i] else "double-free", hex(int(addr[i]))))
        last = np.ones(len(addr), dtype=bool)
        last[:-1] = addr[1:] != addr[:-1]
        keep = last & alloc
        live = dict(zip(addr[keep].tolist(), size[keep].tolist()))
    else:
        live = {}
    return live, problems


# ---- a subreaper, for runs where the collector is killed -------------------------

REAPER = HERE / "reaper.py"


def reaper_popen(status_file: Path, argv, **kw) -> subprocess.Popen:
    """Run argv under reaper.py: it becomes a child subreaper, so the traced program
    (orphaned when memtrace is killed) is re-parented to it and its exit status is
    still observed. Each reaped child is appended to status_file as a JSON line."""
    return subprocess.Popen([sys.executable, str(REAPER), str(status_file), "--", *map(str, argv)],
                            **kw)


def reaped(status_file: Path) -> dict:
    statuses = {}
    if status_file.exists():
        for line in status_file.read_text().splitlines():
            rec = json.loads(line)
            if "pid" in rec:
                statuses[rec["pid"]] = rec
    return statuses


def spawned_pid(status_file: Path) -> int:
    """The reaper's child, or 0 while its line is not written yet (the reaper creates
    the file before it writes: poll this with wait_for)."""
    if not status_file.exists():
        return 0
    text = status_file.read_text()
    first, newline, _rest = text.partition("\n")
    if not newline:
        return 0
    rec = json.loads(first)
    assert "spawned" in rec, f"reaper's first line is not its child: {first!r}"
    return rec["spawned"]
