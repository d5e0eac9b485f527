"""Dask workers under memtrace (docs/cluster.md).

Three ways in, all through Dask's own mechanisms:

- `memtrace run -o DIR/ -- dask worker SCHEDULER --preload tracer.cluster.dask ...`:
  each worker (and its children) one process tree, one capture in DIR; the preload
  registers MemtracePlugin in the worker.
- `client.register_plugin(MemtracePlugin())` for workers already started under memtrace.
- `LocalCluster(n_workers=2, processes=True, worker_class=MemtraceWorker,
  capture_dir="traces/")` (or a SpecCluster worker spec `{"cls": MemtraceWorker,
  "options": {...}}`): the cluster starts each worker as
  `memtrace run -o DIR/ -- python -m distributed.cli.dask_worker ...`.

The plugin writes, into the worker's capture: its labels (host, address, name, pid),
each task it runs as a region of kind `task` named by the task's key — entered and left
on the thread that runs the task — and Dask's managed memory each time it changes.
Outside memtrace the plugin does nothing.
"""

import asyncio
import os
import shlex
import socket
import sys
import threading
import time
from typing import List, Optional

from distributed.deploy.spec import ProcessInterface
from distributed.diagnostics.plugin import WorkerPlugin

from tracer import _regions
from tracer.cluster import note, traced


def key_name(key) -> str:
    """A task key as a region name (Dask's keys are str, or tuples like ('x-1f2e', 0))."""
    return key if isinstance(key, str) else str(key)


class _TaskRegions(dict):
    """The worker's `active_threads` (thread id -> key of the task it runs). Dask sets
    `active_threads[threading.get_ident()] = key` on the executing thread right before
    it runs a task's function, and deletes it on that thread right after: the task's
    region is entered and left there, so every allocation the task makes on its
    thread is inside it, and nothing of another thread's."""

    def __init__(self, *args):
        super().__init__(*args)
        self.open = {}

    def __setitem__(self, ident, key):
        super().__setitem__(ident, key)
        if ident == threading.get_ident():
            region = _regions.Region(key_name(key), _regions.KIND_TASK)
            region.__enter__()
            self.open[ident] = region

    def __delitem__(self, ident):
        region = self.open.pop(ident, None)
        if region is not None and ident == threading.get_ident():
            region.__exit__()
        super().__delitem__(ident)


class MemtracePlugin(WorkerPlugin):
    """Labels the worker's capture, makes each task a region (kind `task`), and notes
    Dask's managed memory (`worker.state.nbytes`) whenever a key enters or leaves
    memory. Does nothing in a worker that memtrace does not trace."""

    name = "memtrace"
    idempotent = True

    def setup(self, worker):
        self.worker = worker
        self.last = None
        if not traced():
            return
        import distributed

        note(
            {
                "what": "worker",
                "engine": "dask",
                "engine_version": distributed.__version__,
                "host": socket.gethostname(),
                "address": worker.address,
                "name": str(worker.name),
                "pid": os.getpid(),
                "nthreads": worker.state.nthreads,
                "memory_limit": getattr(worker.memory_manager, "memory_limit", None),
                "t": time.time(),
            }
        )
        if isinstance(worker.active_threads, dict) and not isinstance(worker.active_threads, _TaskRegions):
            worker.active_threads = _TaskRegions(worker.active_threads)
        else:
            note(
                {
                    "what": "warning",
                    "text": "this distributed's worker has no active_threads "
                    "dict: tasks are not marked as regions",
                }
            )
        self.managed("setup")

    def managed(self, why: str, key=None) -> None:
        """Note Dask's managed memory if it changed since the last note."""
        state = self.worker.state
        nbytes, keys = int(state.nbytes), len(self.worker.data)
        if (nbytes, keys) == self.last:
            return
        self.last = (nbytes, keys)
        record = {"what": "managed", "managed": nbytes, "keys": keys, "t": time.time(), "why": why}
        if key is not None:
            record["key"] = key_name(key)
        fast = getattr(self.worker.data, "fast", None)
        if fast is not None and hasattr(fast, "total_weight"):
            record["in_memory"] = int(fast.total_weight)  # the rest is spilled to disk
        note(record)

    def transition(self, key, start, finish, *args, **kwargs):
        if (start == "memory" or finish == "memory") and traced():
            self.managed(f"{start}->{finish}", key)

    def teardown(self, worker):
        if traced():
            self.managed("teardown")


async def dask_setup(worker):
    """`dask worker --preload tracer.cluster.dask`: register the plugin in the worker."""
    await worker.plugin_add(MemtracePlugin(), name=MemtracePlugin.name)


START_TIMEOUT = 120.0  # seconds for a traced worker to say where it listens
CLOSE_TIMEOUT = 60.0  # seconds for it to exit (and memtrace to write its capture)


def _worker_options(
    name,
    nthreads,
    memory_limit,
    nanny,
    host,
    protocol,
    interface,
    dashboard_address,
    local_directory,
    resources,
    death_timeout,
) -> List[str]:
    """`dask worker`'s options for a MemtraceWorker's arguments (the plugin preloaded)."""
    options = ["--nthreads", str(nthreads), "--memory-limit", str(memory_limit)]
    options += ["--preload", "tracer.cluster.dask", "--nanny" if nanny else "--no-nanny"]
    if name is not None:
        options += ["--name", str(name)]
    if host:
        options += ["--host", host]
    if protocol:
        options += ["--protocol", protocol.replace("://", "")]
    if interface:
        options += ["--interface", interface]
    if dashboard_address:
        options += ["--dashboard-address", str(dashboard_address)]
    else:
        options += ["--no-dashboard"]
    if local_directory:
        options += ["--local-directory", local_directory]
    if resources:
        options += ["--resources", " ".join(f"{k}={v}" for k, v in resources.items())]
    if death_timeout:
        options += ["--death-timeout", str(death_timeout)]
    return options


def _traced(python: str, capture_dir: str, memtrace_args, worker: List[str]) -> List[str]:
    """The worker's command under `memtrace run`, its capture in capture_dir."""
    return [
        python,
        "-m",
        "tracer",
        "run",
        "-q",
        "--no-report",
        "-o",
        capture_dir + os.sep,
        *map(str, memtrace_args),
        "--",
        *worker,
    ]


class MemtraceWorker(ProcessInterface):
    """A Dask worker started under memtrace, for SpecCluster and LocalCluster
    (`worker_class=MemtraceWorker`, with `processes=True`): the process
    `memtrace run -q --no-report -o CAPTURE_DIR/ -- python -m distributed.cli.dask_worker
    SCHEDULER --preload tracer.cluster.dask ...`. Its capture is
    `CAPTURE_DIR/memtrace-dask_worker-<worker pid>.mtrace` (`.capture` once started).

    Options: capture_dir (default "."), memtrace_args (more `memtrace run` options, e.g.
    ["--sample-rate", "512K"]), nanny (False: the worker is memtrace's child; True: a
    nanny and its worker, one process tree in one capture), python (the interpreter),
    trace (False: the same worker, untraced), and the worker's own: nthreads, memory_limit,
    host, protocol, interface, dashboard_address, local_directory, resources, death_timeout."""

    def __init__(
        self,
        scheduler: str,
        name=None,
        *,
        capture_dir: str = ".",
        memtrace_args=(),
        nanny: bool = False,
        python: Optional[str] = None,
        nthreads: int = 1,
        memory_limit="auto",
        host: Optional[str] = None,
        protocol: Optional[str] = None,
        interface: Optional[str] = None,
        dashboard: bool = False,
        dashboard_address: Optional[str] = None,
        local_directory: Optional[str] = None,
        resources: Optional[dict] = None,
        death_timeout=None,
        security=None,
        env: Optional[dict] = None,
        trace: bool = True,
        **ignored,
    ):
        super().__init__(scheduler, name)
        if security is not None and getattr(security, "require_encryption", False):
            raise ValueError(
                "MemtraceWorker starts workers with `dask worker`: TLS "
                "security objects are not passed on (give the TLS files "
                "through dask's configuration)"
            )
        self.scheduler = scheduler
        self.name = name
        self.capture_dir = os.path.abspath(capture_dir)
        self.env = env
        python = python or sys.executable
        worker = [python, "-m", "distributed.cli.dask_worker", scheduler] + _worker_options(
            name=name,
            nthreads=nthreads,
            memory_limit=memory_limit,
            nanny=nanny,
            host=host,
            protocol=protocol,
            interface=interface,
            dashboard_address=dashboard_address if dashboard else None,
            local_directory=local_directory,
            resources=resources,
            death_timeout=death_timeout,
        )
        # trace=False: the same worker without memtrace (to measure what tracing costs)
        self.command: List[str] = (
            _traced(python, self.capture_dir, memtrace_args, worker) if trace else worker
        )
        self.proc = None
        self.pid = None  # the worker's (memtrace's child)
        self.capture = None
        self._stderr_task = None

    async def start(self):
        env = dict(os.environ if self.env is None else self.env)
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        seen = []
        try:
            while True:
                line = await asyncio.wait_for(self.proc.stderr.readline(), START_TIMEOUT)
                if not line:
                    await self.proc.wait()
                    raise RuntimeError(
                        f"the traced worker exited with status {self.proc.returncode} before "
                        f"it started ({shlex.join(self.command)}): "
                        + " | ".join(s.strip() for s in seen[-5:])
                    )
                text = line.decode("utf-8", "replace")
                seen.append(text)
                if "Start worker at:" in text:
                    self.address = text.split("Start worker at:")[1].strip()
                    break
        except asyncio.TimeoutError:
            self._kill()
            raise RuntimeError(f"the traced worker did not start in {START_TIMEOUT:.0f} s") from None
        self._stderr_task = asyncio.ensure_future(self._drain())
        self.pid = _child_of(self.proc.pid) if trace_of(self.command) else self.proc.pid
        if self.pid and trace_of(self.command):
            self.capture = os.path.join(self.capture_dir, f"memtrace-dask_worker-{self.pid}.mtrace")
        await super().start()

    async def _drain(self):
        """Keep reading the worker's log (a full pipe would stop it); pass it on."""
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            sys.stderr.write(line.decode("utf-8", "replace"))

    def _kill(self):
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def close(self):
        """Wait for the worker to exit (the scheduler closes it first) and memtrace to
        write its capture; SIGTERM (which memtrace passes on) if it does not."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except asyncio.TimeoutError:
                try:
                    self.proc.terminate()
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(self.proc.wait(), CLOSE_TIMEOUT)
                except asyncio.TimeoutError:
                    self._kill()
                    await self.proc.wait()
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(self._stderr_task, 5.0)
            except asyncio.TimeoutError:
                self._stderr_task.cancel()
        await super().close()


def trace_of(command: List[str]) -> bool:
    return command[1:3] == ["-m", "tracer"]


def _child_of(pid: int) -> Optional[int]:
    """The first child of a process (memtrace's child is the traced program)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None
