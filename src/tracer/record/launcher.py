"""`memtrace run`: start a program under the shim, collect, write the capture.

The target keeps its stdin, stdout and stderr; memtrace exits with its exit
code (128 + N when signal N killed it, as shells do).
"""

import importlib.util
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional, Tuple

from tracer import __version__
from tracer.errors import MemtraceError
from tracer.record.session import Session

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bootstrap")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


# NamedTuples rather than dataclasses: importing dataclasses (and inspect) costs
# ~10 ms, paid before the program starts.
class RunOptions(NamedTuple):
    argv: List[str]
    output: Optional[str] = None
    force: bool = False
    quiet: bool = False
    no_report: bool = False
    sample_interval: float = 0.01
    heap_stats: bool = True
    sample_rate: int = 0  # --sample-rate BYTES; 0 records every event
    redact_argv: bool = False
    objects: bool = False  # --objects: census of live Python objects at peak and exit
    live: bool = False  # --live: a terminal view of the run (tracer.live)


class RunResult(NamedTuple):
    capture: str
    exit_code: Optional[int]
    signal: Optional[int]
    view: Optional[object] = None  # --live: the view, still open (tracer.live.run.LiveRun)

    @property
    def status(self) -> int:
        return 128 + self.signal if self.signal else (self.exit_code or 0)


def _component(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise MemtraceError(f"{name} is missing: memtrace is not built (run `pip install .`)")
    return spec.origin


def shim_path() -> str:
    return _component("tracer._preload")


def resolve_program(name: str) -> str:
    path = shutil.which(name) if os.sep not in name else name
    if path is None or not os.path.exists(path):
        raise MemtraceError(f"cannot find program '{name}'", exit_code=127)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise MemtraceError(f"'{name}' is not an executable program", exit_code=126)
    return os.path.abspath(path)


def _elf_interp(path: str) -> Optional[bool]:
    """True if the ELF file asks for a dynamic loader, False if static, None if not ELF."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return None
            (phoff,) = struct.unpack_from("<Q", ident, 32)
            phentsize, phnum = struct.unpack_from("<HH", ident, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    for i in range(phnum):
        (ptype,) = struct.unpack_from("<I", table, i * phentsize)
        if ptype == 3:  # PT_INTERP
            return True
    return False


def _has_file_capabilities(path: str) -> bool:
    """True if the file carries capabilities (security.capability): exec'ing it as a
    user other than root is a secure execution (AT_SECURE), where the loader drops
    LD_PRELOAD paths (root gains nothing from file capabilities: not secure)."""
    try:
        return bool(os.getxattr(path, "security.capability"))
    except (OSError, AttributeError):
        return False


def check_traceable(path: str, depth: int = 0) -> None:
    """Refuse, in one line, programs the loader will not preload the shim into."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_ISUID | stat.S_ISGID):
        raise MemtraceError(
            f"{path} is setuid/setgid: the loader ignores LD_PRELOAD for it, so memtrace cannot trace it"
        )
    if os.geteuid() != 0 and _has_file_capabilities(path):
        raise MemtraceError(
            f"{path} has file capabilities (secure execution): the loader "
            "ignores LD_PRELOAD for it, so memtrace cannot trace it"
        )
    interp = _elf_interp(path)
    if interp is False:
        raise MemtraceError(
            f"{path} is statically linked: LD_PRELOAD cannot hook its allocator, so memtrace cannot trace it"
        )
    if interp is None and depth == 0:
        try:
            with open(path, "rb") as f:
                first = f.readline(256)
        except OSError:
            return
        if first.startswith(b"#!"):
            words = first[2:].split()
            if words:
                interpreter = words[0].decode(errors="replace")
                if os.path.basename(interpreter) == "env" and len(words) > 1:
                    interpreter = shutil.which(words[1].decode(errors="replace")) or ""
                if os.path.exists(interpreter):
                    check_traceable(interpreter, depth + 1)


def program_label(argv: List[str]) -> str:
    """The <program> part of the default capture name: the script for Python runs."""
    base = os.path.basename(argv[0])
    if base.startswith("python"):
        args = argv[1:]
        for i, arg in enumerate(args):
            if arg == "-m" and i + 1 < len(args):
                return args[i + 1].split(".")[-1]
            if arg == "-c":
                return "c"
            if not arg.startswith("-"):
                return os.path.splitext(os.path.basename(arg))[0] or base
    return base


def target_env(
    socket_path: str, sample_rate: int = 0, capture: Optional[str] = None, objects: bool = False
) -> dict:
    env = dict(os.environ)
    env.pop("MEMTRACE_CAPTURE", None)
    if capture:  # where the program's own capture goes (the pytest plugin and notebooks say so)
        env["MEMTRACE_CAPTURE"] = os.path.abspath(capture)
    env.pop("MEMTRACE_SAMPLE_RATE", None)  # only ever what the collector was told
    env.pop("MEMTRACE_OBJECTS", None)
    if objects:
        env["MEMTRACE_OBJECTS"] = "1"  # the bootstrap sets the census up
    if sample_rate:
        env["MEMTRACE_SAMPLE_RATE"] = str(sample_rate)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = shim_path() + (":" + preload if preload else "")
    env["MEMTRACE_SOCKET"] = socket_path
    env["MEMTRACE_COLLECTOR_PID"] = str(os.getpid())
    pythonpath = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + pythonpath if pythonpath else "")
    try:
        env["MEMTRACE_PYFRAMES"] = _component("tracer._pyframes")
    except MemtraceError:
        env.pop("MEMTRACE_PYFRAMES", None)
    return env


REDACTED = "<redacted>"


def redact(argv: List[str]) -> List[str]:
    """argv[0] kept, the arguments replaced by one placeholder."""
    return argv[:1] + ([REDACTED] if len(argv) > 1 else [])


def _redacting_writer(base):
    """A CaptureWriter that rewrites every traced process's argv record (the shim
    reads it from /proc/self/cmdline) to argv[0] + placeholder before it is written.
    Metadata records may straddle chunks: each stream's incomplete tail waits for the
    next chunk (and is dropped if the stream never completes it)."""

    from tracer import _format as fmt

    class RedactingWriter(base):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self._pending = {}

        def chunk(self, ctype, stream, *parts):
            if ctype != fmt.CHUNK_META:
                return super().chunk(ctype, stream, *parts)
            data = self._pending.pop(stream, b"") + b"".join(bytes(p) for p in parts)
            out, pos = bytearray(), 0
            head, text = fmt.META_HEADER, fmt.PAYLOADS[fmt.META_TEXT]
            while pos + head.size <= len(data):
                rtype, length = head.unpack_from(data, pos)
                size = fmt.meta_record_size(length)
                if pos + size > len(data):
                    break  # completed by the stream's next chunk
                record = data[pos : pos + size]
                body = pos + head.size
                if (
                    rtype == fmt.META_TEXT
                    and length >= text.size
                    and text.unpack_from(data, body)[0] == fmt.TEXT_ARGV
                ):
                    args = data[body + text.size : body + length].rstrip(b"\0").split(b"\0")
                    kept = args[:1] + ([REDACTED.encode()] if len(args) > 1 else [])
                    payload = text.pack(fmt.TEXT_ARGV) + b"\0".join(kept) + b"\0"
                    record = head.pack(rtype, len(payload)) + payload
                    record += b"\0" * (-len(record) % 4)
                out += record
                pos += size
            if pos < len(data):
                self._pending[stream] = data[pos:]
            if out:
                super().chunk(ctype, stream, bytes(out))

    return RedactingWriter


class _Reaper:
    """Waits for the main target without blocking the collector loop."""

    def __init__(self, pid: int):
        self.pid = pid
        self.status: Optional[int] = None
        self.max_rss = 0
        self.cpu = 0.0

    def done(self) -> bool:
        if self.status is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = status
                self.max_rss = usage.ru_maxrss * 1024
                self.cpu = usage.ru_utime + usage.ru_stime
        return self.status is not None


def _output_folder(opts: RunOptions) -> Optional[str]:
    """-o DIR/ (or an existing folder): the capture goes inside it, with the usual name."""
    folder = (
        opts.output if opts.output and (opts.output.endswith(os.sep) or os.path.isdir(opts.output)) else None
    )
    if folder is not None:
        try:
            os.makedirs(folder, 0o700, exist_ok=True)
        except OSError as exc:
            raise MemtraceError(f"cannot create the folder {folder}: {exc.strerror}") from None
    return folder


def _start_target(opts: RunOptions, program: str, env: dict, view) -> subprocess.Popen:
    try:
        proc = subprocess.Popen(
            opts.argv, executable=program, env=env, **(view.target_stdio() if view else {})
        )
    except OSError as exc:
        raise MemtraceError(f"cannot start {opts.argv[0]}: {exc.strerror}", exit_code=126) from None
    if view is not None:
        view.start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the target too
    for forwarded in FORWARDED_SIGNALS:
        signal.signal(forwarded, lambda signum, _frame: proc.send_signal(signum))
    return proc


def _write_info(writer, opts: RunOptions, program: str, pid: int) -> None:
    from tracer import _format as fmt
    from tracer.record.aggregate import PAGE_SIZE

    writer.json_chunk(
        fmt.CHUNK_INFO,
        0,
        {
            "command": redact(opts.argv) if opts.redact_argv else opts.argv,
            "program": program,
            "memtrace_version": __version__,
            "start_time": time.time(),
            "page_size": PAGE_SIZE,
            "main_pid": pid,
            "sample_interval": opts.sample_interval,
            "sample_rate": opts.sample_rate,
            "cwd": os.getcwd(),
            "python": sys.version.split()[0],
            "host": socket.gethostname(),
        },
    )


def _write_end(
    writer, collector, reaper: "_Reaper", pid: int, t0: float
) -> Tuple[Optional[int], Optional[int]]:
    """The run's end chunk: the target's exit status and what memtrace itself cost."""
    from tracer import _format as fmt

    status = reaper.status
    assert status is not None  # collector.run() returns once reaper.done()
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    own = resource.getrusage(resource.RUSAGE_SELF)  # memtrace's own cost, for the record
    writer.json_chunk(
        fmt.CHUNK_END,
        0,
        {
            "exit_code": code,
            "signal": sig,
            "duration": time.monotonic() - t0,
            "main_pid": pid,
            "main_max_rss": reaper.max_rss,
            "main_cpu_seconds": reaper.cpu,
            "refused_connections": collector.refused,
            "collector_cpu_seconds": own.ru_utime + own.ru_stime,
            "collector_max_rss": own.ru_maxrss * 1024,
        },
    )
    return code, sig


def run(opts: RunOptions) -> RunResult:
    program = resolve_program(opts.argv[0])
    check_traceable(program)
    folder = _output_folder(opts)
    if folder is not None:
        opts = opts._replace(output=None)
    session = Session()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, *FORWARDED_SIGNALS)}
    writer = collector = view = None
    try:
        env = target_env(session.socket_path, opts.sample_rate, opts.output, opts.objects)
        if opts.output and not opts.force and os.path.lexists(opts.output):
            # refuse before starting anything (the writer checks again, atomically)
            raise MemtraceError(f"{opts.output} already exists (use -f to overwrite it)")
        t0 = time.monotonic()
        if opts.live:
            from tracer.live.run import LiveRun

            view = LiveRun(session.directory, opts.output)
        proc = _start_target(opts, program, env, view)
        # The collector's imports (NumPy, cffi) load while the target starts; its
        # first connection waits in the socket's backlog meanwhile.
        from tracer.record.capture_writer import CaptureWriter
        from tracer.record.collector import Collector

        writer = _open_capture(opts, folder, proc, CaptureWriter)
        collector = Collector(
            session, writer, t0, opts.sample_interval, opts.heap_stats, opts.sample_rate, opts.objects
        )
        collector.main_pid = proc.pid
        from tracer.live.server import LiveServer

        collector.live = LiveServer(session.directory, collector)  # `memtrace live` can attach
        _write_info(writer, opts, program, proc.pid)
        reaper = _Reaper(proc.pid)
        collector.run(reaper.done)
        assert reaper.status is not None
        proc.returncode = os.waitstatus_to_exitcode(reaper.status)
        code, sig = _write_end(writer, collector, reaper, proc.pid, t0)
        collector.live.finish({"exit_code": code, "signal": sig, "duration": time.monotonic() - t0})
        if view is not None:
            view.capture_written(writer.path)
        return RunResult(writer.path, code, sig, view)
    finally:
        _close(collector, view, session, writer)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _open_capture(opts: RunOptions, folder: Optional[str], proc: subprocess.Popen, writer_class):
    """The capture's writer, at -o PATH or memtrace-<program>-<pid>.mtrace (in -o DIR/);
    the target is stopped if it cannot be written."""
    label = os.path.basename(opts.argv[0]) if opts.redact_argv else program_label(opts.argv)
    path = opts.output or os.path.join(folder or "", f"memtrace-{label}-{proc.pid}.mtrace")
    try:
        return (_redacting_writer(writer_class) if opts.redact_argv else writer_class)(path, opts.force)
    except MemtraceError:
        proc.kill()
        proc.wait()
        raise


def _close(collector, view, session: Session, writer) -> None:
    """Whatever the run got to open, closed (a live view kept serving until it leaves)."""
    if collector is not None:
        collector.close()
        if collector.live is not None:
            if view is not None and view.open():
                view.keep_serving(collector.live)  # until the view leaves
            else:
                collector.live.close()
    session.close()
    if writer is not None:
        writer.close()
