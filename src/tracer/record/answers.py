"""The collector's answers to a traced program's questions about its regions
(`tracer.usage()`, `Region.usage()`, the pytest plugin's limits): its side of the
ask/answer area of csrc/events.h.

A question is answered once every event claimed before it was asked has been
aggregated, from the C aggregator's numbers for the asking thread's region. A
question with details also names the stacks that hold the most; the collector
reads each stream's kept metadata (names.Kept: what names things) for that, only
when such a question comes. No NumPy: this runs in the collector.
"""

import json
import os
from typing import Dict, List, Tuple

from tracer import _format as fmt
from tracer._native import ffi, lib

TOP_STACKS = 10
MAX_FRAMES = 16
ANSWER_BYTES = 1 << 16  # the answer area (csrc/shim/transport.c)


class Names:
    """Code objects, stack nodes, libraries, threads and regions of one stream, read
    from its kept metadata as it grows. Each record is read once."""

    def __init__(self):
        self.parsed = 0  # offset of the first record not read yet
        self.codes, self.nodes, self.libs, self.threads, self.regions = {}, {}, {}, {}, {}

    def update(self, kept) -> None:
        """Read the records added to `kept` (whole records only) since the last call."""
        end = len(kept)
        for rtype, payload in fmt.iter_meta(bytes(kept[self.parsed : end])):
            self._record(rtype, payload)
            self.parsed += fmt.meta_record_size(len(payload))

    def _record(self, rtype: int, p: bytes) -> None:
        head = fmt.PAYLOADS.get(rtype)
        if head is None or len(p) < head.size:
            return
        fields, text = head.unpack_from(p), p[head.size :]
        if rtype == fmt.META_CODE:
            flen, nlen = fields[2], fields[3]
            self.codes[fields[0]] = (
                text[:flen].decode("utf-8", "replace"),
                text[flen : flen + nlen].decode("utf-8", "replace"),
            )
        elif rtype == fmt.META_NODE:
            self.nodes[fields[0]] = fields[1:]  # parent, code, line
        elif rtype in (fmt.META_LIB, fmt.META_THREAD, fmt.META_REGION):
            names = {fmt.META_LIB: self.libs, fmt.META_THREAD: self.threads, fmt.META_REGION: self.regions}[
                rtype
            ]
            names[fields[0]] = text.decode("utf-8", "replace")

    def frames(self, stack: int, tid: int) -> list:
        """[function, file, line] of a stack, innermost first."""
        if stack == 0:
            return [[f"[no Python frame] thread {self.threads.get(tid, '?')} (tid {tid})", "<native>", 0]]
        out: List[list]
        out, seen = [], set()
        while stack and stack not in seen and len(out) < MAX_FRAMES:
            seen.add(stack)
            parent, code, line = self.nodes.get(stack, (0, 0, 0))
            file, function = self.codes.get(code, ("<unknown>", "<unknown>"))
            out.append([function, file, line])
            stack = parent
        return out


class Questions:
    """Finds and answers the questions of the collector's streams."""

    def __init__(self):
        self.question = ffi.new("mt_question *")
        self.row = ffi.new("mt_region_row *")
        self.site = ffi.new("mt_site *")

    def answer(self, collector, stream) -> None:
        """Answer the stream's waiting question, if any, once its events are in."""
        q = self.question
        if not lib.mt_shm_question(stream.ptr, q):
            return
        if stream.counters().consumed < q.position:
            collector._drain(stream, everything=True)
            if stream.counters().consumed < q.position:
                return  # another thread's event is not committed yet: next round
        if q.what == fmt.ASK_CHECKPOINT:  # the program reads its own capture next
            collector._flush_samples(stream)
            collector._write_aggregate(stream)
            collector.writer.flush()
            path = os.path.abspath(collector.writer.path)
            text = json.dumps({"found": True, "capture": path}).encode()
            lib.mt_shm_answer(stream.ptr, q.seq, text, len(text))
            return
        text = json.dumps(self._answer(stream, q), separators=(",", ":")).encode()
        if len(text) > ANSWER_BYTES:  # too many long frames: fewer of them
            answer = self._answer(stream, q)
            for line in answer.get("lines", []):
                line["stack"] = line["stack"][:2]
            text = json.dumps(answer, separators=(",", ":")).encode()[:ANSWER_BYTES]
        lib.mt_shm_answer(stream.ptr, q.seq, text, len(text))

    def _answer(self, stream, q) -> dict:
        agg, row = stream.agg._agg, self.row
        found = lib.mt_agg_region_usage(agg, q.tid, q.region, row)
        if found == 0:
            return {"found": False}
        names = self._names(stream)
        out = {"found": True, "open": found == 1, "region": row.region, "name": names.regions.get(row.region)}
        if found == 1:  # the instance open on the thread, so far
            out.update(
                live=row.live_bytes,
                peak=row.peak_bytes,
                allocated=row.alloc_bytes,
                n_allocations=row.n_allocs,
                instances=None,
            )
        else:  # the last instance that ended
            out.update(
                live=row.last_live_bytes,
                peak=row.last_peak_bytes,
                allocated=row.last_alloc_bytes,
                instances=row.instances,
            )
        if found == 1 and q.what in (fmt.ASK_AT_PEAK, fmt.ASK_LIVE):
            column = "peak" if q.what == fmt.ASK_AT_PEAK else "live"
            out["lines"] = self._top(stream, names, q.tid, row.region, column)
        return out

    def _names(self, stream) -> Names:
        if stream.names is None:
            stream.names = Names()
        stream.names.update(stream.kept.names)
        return stream.names

    def _top(self, stream, names: Names, tid: int, region: int, column: str) -> list:
        """The stacks holding the most of the open instance's `column` bytes."""
        agg = stream.agg._agg
        n = lib.mt_agg_region_usage_sites(agg, tid, region, ffi.NULL, 0)
        if n == 0:
            return []
        records = ffi.new("mt_region_site[]", n)
        lib.mt_agg_region_usage_sites(agg, tid, region, records, n)
        by_stack: Dict[Tuple[int, int], list] = {}  # (stack, tid) -> [bytes, count, {lib: bytes}]
        for r in records:
            held = getattr(r, column + "_bytes")
            if held <= 0 or lib.mt_agg_site(agg, r.site, self.site) != 0:
                continue
            s = self.site
            key = (s.stack, s.tid if s.stack == 0 else 0)
            entry = by_stack.setdefault(key, [0, 0, {}])
            entry[0] += held
            entry[1] += getattr(r, column + "_count")
            entry[2][s.lib] = entry[2].get(s.lib, 0) + held
        top = sorted(by_stack.items(), key=lambda kv: -kv[1][0])[:TOP_STACKS]
        return [
            {
                "bytes": held,
                "count": count,
                "library": names.libs.get(max(libs, key=libs.get), "").rsplit("/", 1)[-1],
                "stack": names.frames(stack, thread),
            }
            for (stack, thread), (held, count, libs) in top
        ]
