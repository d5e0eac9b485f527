"""`memtrace export`: speedscope JSON, pprof (gzipped protobuf) and CSV.

speedscope and pprof get one sample per allocation site (stack + library), weighted
by the chosen metric; CSV lists every allocation event.
"""
import csv
import gzip
import json
from typing import Dict, List, Tuple


from tracer import __version__
from tracer import _format as fmt
from tracer.model import Model, heap_mask
from tracer.regions import event_filter
from tracer.reports.flame import METRICS

Frame = Tuple[str, str, int]  # function, file, line


def site_samples(model: Model, metric: str = "peak"):
    """Yield (frames root→leaf, bytes, count) per heap site with a non-zero metric."""
    bytes_col, count_col = METRICS[metric]
    for proc in model.processes:
        sites = proc.sites[heap_mask(proc.sites)]
        stacks: Dict[int, List[Frame]] = {}
        for site in sites[sites[bytes_col] > 0]:
            stack = int(site["stack"])
            if stack not in stacks:
                frames = [(f.function, f.file, f.line) for f in reversed(proc.stack(stack))]
                stacks[stack] = frames
            frames = list(stacks[stack])
            if stack == 0:
                frames = [(f"[thread {proc.thread_name(int(site['tid']))}]", "", 0)]
            lib = proc.lib_name(int(site["lib"])).rsplit("/", 1)[-1]
            frames.append((f"{lib} → {fmt.KIND_NAMES[int(site['kind'])]}", lib, 0))
            yield frames, int(site[bytes_col]), int(site[count_col])


def speedscope(model: Model, out, metric: str = "peak") -> None:
    frames: Dict[Frame, int] = {}
    samples, weights = [], []
    for stack, size, _count in site_samples(model, metric):
        samples.append([frames.setdefault(f, len(frames)) for f in stack])
        weights.append(size)
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": n, "file": f, "line": l} if f else {"name": n}
                              for (n, f, l) in frames]},
        "profiles": [{"type": "sampled", "name": f"memtrace: {metric}", "unit": "bytes",
                      "startValue": 0, "endValue": sum(weights), "samples": samples,
                      "weights": weights}],
        "name": " ".join(model.command), "activeProfileIndex": 0,
        "exporter": f"memtrace {__version__}",
    }
    out.write(json.dumps(doc))


# ---- pprof (profile.proto), written by hand: varints and length-delimited fields ----

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 values are two's complement
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _packed(number: int, values) -> bytes:
    return _field_bytes(number, b"".join(_varint(v) for v in values)) if values else b""


def pprof(model: Model, out, metric: str = "peak") -> None:
    strings: Dict[str, int] = {"": 0}
    s = lambda text: strings.setdefault(text, len(strings))
    functions: Dict[Tuple[str, str], int] = {}
    locations: Dict[Frame, int] = {}
    body = bytearray()
    count_name = {"peak": "inuse_objects", "leaks": "leaked_objects", "total": "alloc_objects",
                  "temporary": "temporary_objects"}[metric]
    bytes_name = {"peak": "inuse_space", "leaks": "leaked_space", "total": "alloc_space",
                  "temporary": "temporary_space"}[metric]
    for name, unit in ((count_name, "count"), (bytes_name, "bytes")):
        body += _field_bytes(1, _field_varint(1, s(name)) + _field_varint(2, s(unit)))
    function_msgs, location_msgs = bytearray(), bytearray()
    for stack, size, count in site_samples(model, metric):
        ids = []
        for frame in reversed(stack):  # pprof: leaf first
            loc = locations.get(frame)
            if loc is None:
                name, file, line = frame
                fid = functions.get((name, file))
                if fid is None:
                    fid = functions[(name, file)] = len(functions) + 1
                    function_msgs += _field_bytes(5, _field_varint(1, fid) + _field_varint(2, s(name))
                                                  + _field_varint(3, s(name)) + _field_varint(4, s(file)))
                loc = locations[frame] = len(locations) + 1
                line_msg = _field_varint(1, fid) + _field_varint(2, line)
                location_msgs += _field_bytes(4, _field_varint(1, loc) + _field_bytes(4, line_msg))
            ids.append(loc)
        body += _field_bytes(2, _packed(1, ids) + _packed(2, [count, size]))
    body += location_msgs + function_msgs
    for text in strings:  # insertion order is index order
        body += _field_bytes(6, text.encode("utf-8"))
    start = model.capture.info.get("start_time")
    if start:
        body += _field_varint(9, int(start * 1e9))
    body += _field_varint(10, int(model.end.get("duration", 0) * 1e9))
    out.write(gzip.compress(bytes(body)))


def csv_events(model: Model, out) -> int:
    """Every allocation (not frees) as a CSV row; `heap` says whether it counts in the
    heap (malloc family, anonymous mappings) or is a file-backed mapping."""
    writer = csv.writer(out)
    writer.writerow(["time_s", "pid", "tid", "allocator", "size", "address", "numpy", "heap",
                     "library", "file", "line", "function"])
    rows = 0
    for proc in model.processes:
        libs = {lid: path.rsplit("/", 1)[-1] for lid, path in proc.libs.items()}
        frames = {}
        mapping_anon = {}  # start of each traced mapping -> anonymous?
        moved_anon = True  # the kind of the mapping an mremap moves (as the aggregator rules)
        inside = event_filter(model, proc)  # --region: only what happened inside it
        for t, events in model.capture.events(proc.sid):
            if inside is not None:
                events = events[inside.mask(events)]
            for e in events:
                kind, flags, addr = int(e["kind"]), int(e["flags"]), int(e["addr"])
                if kind in (fmt.FREE, fmt.REGION):
                    continue
                if kind == fmt.MUNMAP:
                    anon = mapping_anon.pop(addr, True) if not flags & fmt.FLAG_KEEP \
                        else mapping_anon.get(addr, True)
                    if flags & fmt.FLAG_REMAP:
                        moved_anon = anon
                    continue
                if kind == fmt.MMAP:
                    in_heap = bool(flags & fmt.FLAG_ANON)
                    mapping_anon[addr] = in_heap
                elif kind == fmt.MREMAP:
                    in_heap = moved_anon
                    mapping_anon[addr] = in_heap
                else:
                    in_heap = True
                stack = int(e["stack"])
                if stack not in frames:
                    f = proc.frame(stack) if stack else None
                    frames[stack] = (f.file, f.line, f.function) if f else ("<native>", 0, "")
                file, line, function = frames[stack]
                writer.writerow([f"{t:.6f}", proc.pid, int(e["tid"]), fmt.KIND_NAMES[kind],
                                 int(e["size"]), f"0x{addr:x}",
                                 int(bool(flags & fmt.FLAG_NUMPY)), int(in_heap),
                                 libs.get(int(e["lib"]), ""), file, line, function])
                rows += 1
    return rows
