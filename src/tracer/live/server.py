"""The collector's side of the live view: its numbers, served on a Unix socket.

`live.sock` sits next to the collector's socket in the private 0700 session
directory; only the same user may connect (SO_PEERCRED). A view sends one request
line (JSON: how much of each stream's metadata it has) and gets one answer: per
stream its totals, its sites (mt_site records, from C), the metadata it lacks, and
a coarse history (heap, its maximum, RSS, every HISTORY_STEP seconds).

The collector calls poll() between rounds, at most every POLL_SECONDS: nothing
here blocks (sockets are non-blocking, answers are written as the socket takes
them), and an answer costs one copy of the sites and a JSON of a few numbers, so a
view polling twice a second cannot make the collector fall behind. Once the
collector is done, serve_until_closed() answers from a thread with the final
numbers until the view leaves.
"""

import json
import os
import selectors
import socket
import struct
import threading
from typing import Dict, Optional, cast

FRAME = struct.Struct("<II")  # answer: JSON length, blob length; then JSON, then blobs
POLL_SECONDS = 0.05
HISTORY_STEP = 0.5
HISTORY_MAX = 4096  # points kept per stream; past it, halved (pairs merged)
MAX_REQUEST = 1 << 16
SOCKET_NAME = "live.sock"


class _Client:
    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.inbox = bytearray()
        self.outbox = bytearray()


class _History:
    """[t, heap, highest heap since the previous point, RSS, events, allocator-held]
    every HISTORY_STEP (allocator-held: glibc's arena + mmapped bytes in its latest
    statistics, None before the first)."""

    def __init__(self):
        self.points = []
        self.generation = 0  # bumped when the points are halved: views start over
        self.high = 0
        self.next_t = 0.0

    def note(self, t: float, heap: int, high: int, rss: int, events: int, held) -> None:
        self.high = max(self.high, high, heap)
        if t < self.next_t:
            return
        self.points.append([round(t, 3), heap, self.high, rss, events, held])
        self.high = heap
        self.next_t = t + HISTORY_STEP * (1 << self.generation)
        if len(self.points) > HISTORY_MAX:
            merged = []
            for a, b in zip(self.points[0::2], self.points[1::2]):
                merged.append([b[0], b[1], max(a[2], b[2]), b[3], b[4], b[5]])
            self.points = merged + self.points[len(merged) * 2 :]
            self.generation += 1


class LiveServer:
    def __init__(self, directory: str, collector):
        self.collector = collector
        self.path = os.path.join(directory, SOCKET_NAME)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.histories: Dict[int, _History] = {}
        self.run_end: Optional[dict] = None  # set once the program is done
        self._next_poll = 0.0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # ---- called by the collector ------------------------------------------

    def note(self, stream, t: float) -> None:
        """Record the stream's numbers for the history (each collector round)."""
        history = self.histories.get(stream.sid)
        if history is None:
            history = self.histories[stream.sid] = _History()
        totals = stream.agg.totals()  # (every round: the highest heap between two points)
        held = stream.kept.held
        history.note(
            t,
            totals["heap"],
            max(stream.timeline.max, totals["feed_max"]),
            stream.rss.recent[-1],
            totals["n_events"],
            held[1] if held else None,
        )

    def poll(self, t: float) -> None:
        """Accept views and answer their requests, without waiting for anything."""
        if t < self._next_poll:
            return
        self._next_poll = t + POLL_SECONDS
        self._serve(0)

    def finish(self, run_end: dict) -> None:
        """The program is done: say so in every answer from now on."""
        self.run_end = run_end

    def serve_until_closed(self) -> None:
        """Keep answering from a thread (the collector's loop has ended)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="memtrace-live", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for key in list(self.selector.get_map().values()):
            cast(socket.socket, key.fileobj).close()  # only sockets are registered
        self.selector.close()
        try:
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))  # the session's, once the collector left it
        except OSError:
            pass

    # ---- sockets -------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._serve(0.1)

    def _serve(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            elif events & selectors.EVENT_READ:
                self._read(key.data)
            elif events & selectors.EVENT_WRITE:
                self._write(key.data)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, OSError):
                return
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] != os.getuid():
                conn.close()  # only the user who runs the program may watch it
                continue
            conn.setblocking(False)
            self.selector.register(conn, selectors.EVENT_READ, _Client(conn))

    def _drop(self, client: _Client) -> None:
        self.selector.unregister(client.conn)
        client.conn.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or len(client.inbox) + len(data) > MAX_REQUEST:
            self._drop(client)
            return
        client.inbox += data
        if b"\n" not in client.inbox or client.outbox:
            return
        line, _, rest = bytes(client.inbox).partition(b"\n")
        client.inbox = bytearray(rest)
        try:
            request = json.loads(line)
        except ValueError:
            self._drop(client)
            return
        client.outbox = self._answer(request if isinstance(request, dict) else {})
        self.selector.modify(client.conn, selectors.EVENT_WRITE, client)
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.conn.send(client.outbox)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        del client.outbox[:sent]
        if not client.outbox:
            self.selector.modify(client.conn, selectors.EVENT_READ, client)

    # ---- answers -----------------------------------------------------------

    def _answer(self, request: dict) -> bytearray:
        have = request.get("meta") or {}
        generations = request.get("history") or {}
        col = self.collector
        streams, blobs = [], []
        for stream in list(col.streams.values()):
            sid = str(stream.sid)
            sites = stream.agg.site_records()
            start = have.get(sid, 0) if isinstance(have.get(sid, 0), int) else 0
            meta = bytes(stream.kept.names[start:])
            history = self.histories.get(stream.sid) or _History()
            seen = generations.get(sid) or [-1, 0]
            first = seen[1] if seen[0] == history.generation else 0
            streams.append(
                {
                    "sid": stream.sid,
                    "pid": stream.pid,
                    "ppid": stream.ppid,
                    "t_start": stream.t_start,
                    "alive": stream.alive,
                    "totals": stream.agg.totals(),
                    "rss": stream.rss.recent[-1],
                    "rss_peak": stream.rss.peak,
                    "held": stream.kept.held[1] if stream.kept.held else None,
                    "sites_length": len(sites),
                    "meta_from": start,
                    "meta_length": len(meta),
                    "history_generation": history.generation,
                    "history_from": first,
                    "history": history.points[first:],
                }
            )
            blobs += [sites, meta]
        head = json.dumps(
            {
                "t": col.now(),
                "main_pid": col.main_pid,
                "end": self.run_end,
                "cwd": os.getcwd(),
                "streams": streams,
            },
            separators=(",", ":"),
        ).encode()
        body = b"".join(blobs)
        return bytearray(FRAME.pack(len(head), len(body)) + head + body)
