"""`memtrace merge A.mtrace B.mtrace ... -o cluster.mtrace`: many captures as one.

The merge works chunk by chunk and never decodes an event: each input is checked
(read_capture: every small chunk decoded and its checksum verified; each events
chunk's zstd frames decompressed one chunk at a time and dropped), then its chunks
are copied as they are, compressed, with the stream ids renumbered so that the
streams of every input stay apart. What a chunk refers to stays inside its stream
(a delta chunk's dictionary is its stream's previous chunk of its type, and they
are copied in order), so nothing else in a chunk needs to change. Only small JSON
chunks are rewritten:

- each process chunk gains `labels`: the capture it came from (`source`, its index),
  its host, and — from the worker's own cluster note — the worker's address and name,
  plus a `key` that names the process uniquely in the merged capture (`pid@host`);
- the inputs' info and end chunks become one info chunk listing the inputs
  (`merged`) and one end chunk.

Times stay relative to each input's own start (`labels.start_time` is that start,
in epoch seconds): the workers' clocks are not one clock.
"""

import json
import os
import socket
from typing import Any, Dict, List, Optional, Tuple

import zstandard

from tracer import __version__
from tracer import _format as fmt
from tracer.analyze.capture import read_capture
from tracer.errors import CaptureError
from tracer.record.capture_writer import CaptureWriter

COPY_BLOCK = 1 << 20


def cluster_notes(meta: bytes) -> List[dict]:
    """The cluster notes (text key TEXT_CLUSTER, JSON) of a stream's metadata, in order;
    malformed ones are skipped."""
    import struct

    out = []
    for rtype, payload in fmt.iter_meta(meta):
        if (
            rtype == fmt.META_TEXT
            and len(payload) >= 2
            and struct.unpack_from("<H", payload)[0] == fmt.TEXT_CLUSTER
        ):
            try:
                value = json.loads(bytes(payload[2:]).decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def worker_label(notes: List[dict]) -> Optional[dict]:
    """The worker note of a stream (the last one: a worker registered once)."""
    found = [n for n in notes if n.get("what") == "worker"]
    return found[-1] if found else None


def _check_events(path: str, capture) -> None:
    """Decompress every events chunk's frames (one chunk at a time): a damaged one
    fails its checksum now, not in a report of the merged capture."""
    d = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        for _sid, sd in capture.streams.items():
            for offset, length, _count, _t, _first, batches in sd.event_chunks:
                if batches is None:
                    continue
                f.seek(offset)
                raw_len = sum(b[3] for b in batches)
                try:
                    ok = len(d.decompress(f.read(length), max_output_size=raw_len)) == raw_len
                except zstandard.ZstdError:
                    ok = False
                if not ok:
                    raise CaptureError(f"{path} is corrupt at byte {offset} (undecodable events)")


def _labels(i: int, path: str, capture, sd, keys: Dict[str, int]) -> dict:
    info = capture.info
    labels = {
        "source": os.path.basename(path),
        "source_index": i,
        "host": info.get("host"),
        "start_time": info.get("start_time"),
    }
    worker = worker_label(cluster_notes(bytes(sd.meta)))
    if worker is not None:
        labels.update(
            worker=worker.get("address"), worker_name=worker.get("name"), engine=worker.get("engine")
        )
        labels["host"] = worker.get("host") or labels["host"]
    key = f"{sd.info.get('pid', 0)}@{labels['host'] or i}"
    keys[key] = keys.get(key, 0) + 1
    labels["key"] = key if keys[key] == 1 else f"{key}#{keys[key]}"
    return labels


def merge(inputs: List[str], output: str, force: bool = False, log=None) -> dict:
    """Merge captures into `output`; returns what was merged (for the command's lines)."""
    if len(inputs) < 1:
        raise CaptureError("nothing to merge (give one or more captures)")
    if any(os.path.abspath(p) == os.path.abspath(output) for p in inputs):
        raise CaptureError(f"{output} is also an input")
    sources, plans = _survey(inputs)
    writer = CaptureWriter(output, force)
    try:
        writer.json_chunk(fmt.CHUNK_INFO, 0, _merged_info(inputs, sources))
        base = 0
        for path, (labels, truncated_at) in zip(inputs, plans):
            top = _copy(path, truncated_at, writer, base, labels)
            base += top + 1
        writer.json_chunk(
            fmt.CHUNK_END,
            0,
            {
                "merged": len(inputs),
                "exit_code": None,
                "signal": None,
                "duration": max((s["duration"] or 0) for s in sources),
                "main_pid": None,
                "main_max_rss": 0,
                "refused_connections": 0,
            },
        )
    except BaseException:
        writer.close()
        os.unlink(output)
        raise
    writer.close()
    return {
        "sources": sources,
        "streams": sum(len(labels) for labels, _ in plans),
        "bytes": os.path.getsize(output),
    }


def _survey(inputs: List[str]) -> Tuple[List[Dict[str, Any]], list]:
    """The first pass, one input at a time (nothing of one is kept but its summary):
    check each, and make its streams' labels."""
    sources: List[Dict[str, Any]] = []
    plans: list = []
    keys: Dict[str, int] = {}
    for i, path in enumerate(inputs):
        capture = read_capture(path, snapshots=False)
        if capture.info.get("merged"):
            raise CaptureError(f"{path} is a merged capture: merge the original captures")
        _check_events(path, capture)
        sources.append(_source(i, path, capture))
        plans.append(
            (
                {sid: _labels(i, path, capture, sd, keys) for sid, sd in capture.streams.items() if sd.info},
                capture.truncated_at,
            )
        )
        del capture
    return sources, plans


def _source(i: int, path: str, capture) -> Dict[str, Any]:
    """What the merged capture says of one input."""
    end = capture.end or {}
    info = capture.info
    return {
        "source": os.path.basename(path),
        "index": i,
        "host": info.get("host"),
        "command": info.get("command"),
        "start_time": info.get("start_time"),
        "main_pid": info.get("main_pid"),
        "exit_code": end.get("exit_code"),
        "signal": end.get("signal"),
        "duration": end.get("duration"),
        "main_max_rss": end.get("main_max_rss"),
        "complete": capture.end is not None and capture.truncated_at is None,
        "bytes": os.path.getsize(path),
        "cwd": info.get("cwd"),
        "page_size": info.get("page_size"),
        "sample_interval": info.get("sample_interval"),
        "sample_rate": int(info.get("sample_rate") or 0),
        "python": info.get("python"),
    }


def _merged_info(inputs: List[str], sources: List[Dict[str, Any]]) -> dict:
    first = sources[0]
    cwds = {s["cwd"] for s in sources}
    return {
        "command": ["memtrace", "merge", *[os.path.basename(p) for p in inputs]],
        "program": "memtrace merge",
        "memtrace_version": __version__,
        "start_time": min((s["start_time"] or 0) for s in sources),
        "page_size": first["page_size"],
        "main_pid": None,
        "sample_interval": first["sample_interval"],
        "sample_rate": max(s["sample_rate"] for s in sources),
        "cwd": cwds.pop() if len(cwds) == 1 else None,
        "python": first["python"],
        "host": socket.gethostname(),
        "merged": sources,
    }


def _copy(
    path: str, truncated_at: Optional[int], writer: CaptureWriter, base: int, labels: Dict[int, dict]
) -> int:
    """Copy an input's stream chunks to the writer, stream ids + base; returns the
    highest stream id seen."""
    top = 0
    end = truncated_at
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size if end is None else end
        pos = fmt.FILE_HEADER.size
        f.seek(pos)
        out = writer._file
        while pos < size:
            ctype, sid, length = fmt.CHUNK_HEADER.unpack(f.read(fmt.CHUNK_HEADER.size))
            body_at = pos + fmt.CHUNK_HEADER.size
            pos = body_at + length
            if sid == 0:  # the run's info and end: summed up in the merged ones
                f.seek(pos)
                continue
            top = max(top, sid)
            inner = ctype
            if ctype == fmt.CHUNK_Z:
                head = f.read(fmt.ZCHUNK_HEADER.size)
                inner = fmt.ZCHUNK_HEADER.unpack(head)[0]
                f.seek(body_at)
            if inner == fmt.CHUNK_PROCESS:
                body = f.read(length)
                if ctype == fmt.CHUNK_Z:
                    body = zstandard.ZstdDecompressor().decompress(body[fmt.ZCHUNK_HEADER.size :])
                process = json.loads(body)
                process["labels"] = labels.get(sid, {})
                writer.json_chunk(fmt.CHUNK_PROCESS, base + sid, process)
                continue
            out.write(fmt.CHUNK_HEADER.pack(ctype, base + sid, length))
            left = length
            while left:
                block = f.read(min(left, COPY_BLOCK))
                out.write(block)
                left -= len(block)
    return top
