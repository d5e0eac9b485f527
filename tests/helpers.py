"""Helpers shared by every test folder: run the installed memtrace as a user would,
build the C targets in tests/targets/, read a capture's numbers (through
`memtrace stats --json`, what users see, and through `tracer.analyze.capture`, the raw events
each process streamed), and watch a traced program from outside (/proc, a shared
counter file, a subreaper).

Pytest fixtures live in tests/conftest.py; test files import these by name
(`from helpers import ...`: pytest puts tests/ on sys.path for its conftest.py).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tracer import _format as fmt
from tracer.analyze.capture import read_capture

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TARGETS = TESTS / "targets"
MEMTRACE = [sys.executable, "-m", "tracer"]

KIND = {name: code for code, name in fmt.KIND_NAMES.items()}

# The bytes a bytearray(n) asks malloc for: n and a NUL, and since 3.15 a bytes object's
# header too (the buffer is a bytes object there: sys.getsizeof(b"") counts both).
BYTEARRAY_EXTRA = 1 if sys.version_info < (3, 15) else sys.getsizeof(b"")

# What a region, a cell or a test may hold beside the blocks it made on purpose: one
# pymalloc arena (1 MiB on 64-bit CPython since 3.10, mapped whole when the small objects
# made on the way need a new one) and some of those small objects.
ARENA_SLACK = (1 << 20) + (1 << 16)


def ba(n: int) -> int:
    """The bytes `bytearray(n)` allocates for its buffer on this Python."""
    return n + BYTEARRAY_EXTRA


# ---- running memtrace ----------------------------------------------------------------


def memtrace(*args, timeout=180, text=True, **kw) -> subprocess.CompletedProcess:
    """`memtrace ARGS...` (output captured, as text unless text=False), with a hard
    timeout."""
    return subprocess.run(
        MEMTRACE + [str(a) for a in args], capture_output=True, text=text, timeout=timeout, **kw
    )


def traced(argv, capture, *options, timeout=120, **kw) -> subprocess.CompletedProcess:
    """`memtrace run -q -f -o CAPTURE [OPTIONS] -- ARGV` with a hard timeout (a hang
    fails the test). Without "--no-report" in OPTIONS the HTML report is written too,
    as for a user."""
    return memtrace("run", "-q", "-f", "-o", capture, *options, "--", *argv, timeout=timeout, **kw)


def traced_popen(argv, capture, *options, **kw) -> subprocess.Popen:
    """Start `memtrace run` in the background. Its pid is the collector's (the launcher
    runs the collector loop in the `memtrace` process itself)."""
    cmd = MEMTRACE + ["run", "-q", "-f", "-o", str(capture), *options, "--", *map(str, argv)]
    return subprocess.Popen(cmd, **kw)


def stats(capture, *extra, timeout=300) -> dict:
    """`memtrace stats --json [EXTRA...] CAPTURE` (status 3, a cut-short capture, allowed)."""
    out = memtrace("stats", "--json", *extra, capture, timeout=timeout)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


@dataclass
class Traced:
    """A traced Python program: its exit status and output, and its capture."""

    returncode: int
    stdout: str
    stderr: str
    capture: Path

    def stats(self, *extra) -> dict:
        return stats(self.capture, *extra)


def shim_so() -> str:
    """Path of the installed preload library."""
    from tracer.record import launcher

    return launcher.shim_path()


# ---- reading stats --------------------------------------------------------------------


def lines_of(stats: dict, filename: str, key: str = "by_line") -> dict:
    """by_line (or by_user_line) rows of one file, keyed by line number."""
    rows = {}
    for row in stats[key]:
        if row["file"].endswith(filename):
            assert row["line"] not in rows, f"line {row['line']} listed twice"
            rows[row["line"]] = row
    return rows


def line_of(path: Path, marker: str) -> int:
    """Line number of the source line holding `marker` (tests mark lines with comments)."""
    for number, text in enumerate(Path(path).read_text().splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def library_row(st: dict, name: str) -> dict:
    """by_library row of one shared object (the test program itself, by its file name)."""
    rows = [r for r in st["by_library"] if r["library"] == name]
    assert len(rows) == 1, [r["library"] for r in st["by_library"]]
    return rows[0]


def terminal_safe(text: str) -> bool:
    """No control character but newline, no line/paragraph separators, no bidi or
    other format characters: what a terminal shows is what the report printed."""
    return all(c == "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co") for c in text)


# ---- building C targets -----------------------------------------------------------------


def need_compiler(compiler: str = "cc") -> None:
    """Skip the test, saying why, when the compiler is not on PATH."""
    if shutil.which(compiler) is None:
        pytest.skip(f"no C{'++' if '++' in compiler else ''} compiler ({compiler}) on PATH")


def build(source, out, *flags, compiler: str = "cc", opt: str = "-O0") -> Path:
    """Compile SOURCE (a path, or the name of a file in tests/targets/) into OUT with
    debug info and warnings; skip the test when there is no compiler. -fno-builtin:
    the compiler must not fold a malloc/free pair away or turn a call into another
    (the tests count every call), even at -O1."""
    need_compiler(compiler)
    source = Path(source)
    if not source.is_absolute():
        source = TARGETS / source
    cmd = [compiler, opt, "-g", "-Wall", "-fno-builtin", "-o", str(out), str(source), *map(str, flags)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Path(out)


# ---- watching a traced program from outside ------------------------------------------------


def wait_for(predicate, timeout=30.0, interval=0.01, what="condition"):
    """Poll predicate() until it returns something true, and return that; fail the
    test after `timeout` seconds."""
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


def kill_if_running(pid) -> None:
    """SIGKILL a program a test started if it is still running (a failed test must not
    leave it behind)."""
    if pid is not None and proc_state(pid) not in (None, "Z"):
        os.kill(pid, signal.SIGKILL)


def proc_state(pid: int):
    """Single-letter state from /proc/PID/stat, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


# Syscalls a thread waiting for something (a timer or another thread) sits in.
_WAITING_SYSCALLS = {
    "x86_64": {35: "nanosleep", 230: "clock_nanosleep", 202: "futex", 449: "futex_waitv"},
    "aarch64": {101: "nanosleep", 115: "clock_nanosleep", 98: "futex", 449: "futex_waitv"},
}.get(os.uname().machine, {})


def thread_waiting(pid: int, tid: int) -> bool:
    """The thread is asleep in the kernel (state S or D) inside a sleep or futex call:
    waiting, not running and not merely waiting for a CPU."""
    task = Path(f"/proc/{pid}/task/{tid}")
    try:
        stat = (task / "stat").read_text()
        syscall = (task / "syscall").read_text().split()
    except OSError:
        return False
    if stat[stat.rindex(")") + 2] not in "SD":
        return False
    if not _WAITING_SYSCALLS:
        return True  # a machine whose syscall numbers are not listed: the state alone
    if not syscall or not syscall[0].lstrip("-").isdigit():
        return False  # "running"
    return int(syscall[0]) in _WAITING_SYSCALLS


def process_waiting(pid: int) -> bool:
    """Every thread of the process is asleep in a sleep or futex call."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    return bool(tids) and all(thread_waiting(pid, tid) for tid in tids)


def wait_until_blocked(
    pid: int,
    progress,
    polls: int = 10,
    interval: float = 0.02,
    timeout: float = 30.0,
    what: str = "the program to block",
):
    """Wait until the process is observably blocked: progress() (a counter the program
    moves as it works) has not changed across `polls` consecutive polls `interval`
    apart, and every one of its threads is asleep in a sleep or futex call at the
    same time. Returns the counter. Fails the test after `timeout` seconds: a program
    that keeps going is never taken for a blocked one."""
    deadline = time.monotonic() + timeout
    last, still = progress(), 0
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = progress()
        still = still + 1 if now == last else 0
        last = now
        if still >= polls and process_waiting(pid):
            return now
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (counter {last}, unchanged for {still} polls)"
    )


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


def open_to_other_users(tmp_path: Path, basetemp: Path) -> Path:
    """A folder inside tmp_path another user can write to: tmp_path and the folders
    above it up to pytest's base folder (and pytest's per-user folder above that) get
    search permission for others; the new folder is 0777."""
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    top = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
    for p in [tmp_path, *tmp_path.parents]:
        os.chmod(p, os.stat(p).st_mode | 0o011)
        if p == top:
            break
    else:
        raise AssertionError(f"{tmp_path} is not under {basetemp}")
    return folder


# ---- a subreaper, for runs where the collector is killed ------------------------------

REAPER = TESTS / "reliability" / "reaper.py"


def reaper_popen(status_file: Path, argv, **kw) -> subprocess.Popen:
    """Run argv under reaper.py: it becomes a child subreaper, so the traced program
    (orphaned when memtrace is killed) is re-parented to it and its exit status is
    still observed. Each reaped child is appended to status_file as a JSON line."""
    return subprocess.Popen([sys.executable, str(REAPER), str(status_file), "--", *map(str, argv)], **kw)


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


# ---- raw capture checks ------------------------------------------------------------------


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


def _events(capture, sid) -> np.ndarray:
    chunks = [np.asarray(ev) for _t, ev in capture.events(sid)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=fmt.EVENT_DTYPE)


def streams(capture):
    """[(process from the model, its events)] in stream order, straight from the
    capture file (the shim's record, before any aggregation); the process carries
    the libraries (`libs`: id -> path) its events name."""
    from tracer.analyze.model import build_model

    cap = read_capture(str(capture))
    return [(proc, _events(cap, proc.sid)) for proc in build_model(cap).processes]


class Raw:
    """The capture's streams with their events, by stream id and by pid."""

    def __init__(self, capture):
        self.capture = read_capture(str(capture))
        self.streams = {sid: (sd, _events(self.capture, sid)) for sid, sd in self.capture.streams.items()}

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
    event for an address may be the free of a block inherited from its parent.
    Returns (final live set {addr: size}, problems).
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


# ---- HTML reports in Debian's chromium ---------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A quiet, offline browser: nothing it does on its own (updates, sync, first-run pages)
# shows up among the requests a report made.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def playwright_or_skip(module_level: bool = True):
    """Playwright's sync API; skips when it or Debian's chromium is not installed."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed", allow_module_level=module_level)
    return playwright


def launch_chromium(p):
    """A headless Debian chromium from a sync_playwright() context; close it after."""
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
