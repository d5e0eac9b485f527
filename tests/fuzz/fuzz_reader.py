"""Fuzz the capture reader and the reports with damaged captures.

    python tests/fuzz/fuzz_reader.py make SEED.mtrace CORPUS_DIR [--every-offset] [--flips N]
    python tests/fuzz/fuzz_reader.py run CORPUS_DIR [--native DIR] [--json RESULT]

`make` writes mutants of a real capture into CORPUS_DIR: truncations (at every offset
with --every-offset, else at every chunk boundary +-2 and a stride), random bit
flips, chunk lengths and event counts of 2^63 / 2^32 / 2^30+1, an aggregate whose
JSON length is 2^32-1, wrong magic and format versions; plus synthetic captures:
cyclic, self-parented, duplicate and dangling stack node ids, a 100,000-node chain,
absurd sizes and addresses (2^63, wrapping mmaps), unknown event kinds and site kinds.
Each file name says what it is (`trunc-<offset>`, `flip-…`, `synth-…`).

`run` feeds every corpus file to `memtrace stats --json`, `summary`, `tree`, `log`
and `flamegraph -o -` (in-process, through tracer.cli.main) in a worker process
limited to 1 GiB of address space (or, under ASan, 1 GiB of RSS) and 10 s per input.
Each (input, command) must end with status 0, 3 (a partial report, one warning line)
or 2 with exactly one `memtrace: …` line on stderr; a truncation must give 3 (2 when
shorter than the file header, 0 at full length). Anything else — an exception escaping
main, a crash, a hang, running out of memory — is a finding, reported with a
signature. `--native DIR` puts another build of tracer._native (e.g. the
ASan/UBSan one from run_asan.sh) in front of the installed one.
"""

import argparse
import contextlib
import io
import json
import os
import random
import resource
import select
import struct
import subprocess
import sys
import time
import traceback

COMMANDS = (["stats", "--json"], ["summary"], ["tree"], ["log", "-n", "200"], ["flamegraph", "-o", "-"])
TIMEOUT = 10.0
MEMORY = 1 << 30
HEADER = 16


# ---- making the corpus -------------------------------------------------------


def chunk_offsets(data: bytes):
    """[(offset, type, length)] of each chunk header of a well-formed capture."""
    out, pos = [], HEADER
    while pos + 16 <= len(data):
        ctype, _sid, length = struct.unpack_from("<IIQ", data, pos)
        out.append((pos, ctype, length))
        pos += 16 + length
    return out


def mutants(data: bytes, every_offset: bool, flips: int, seed: int):
    rng = random.Random(seed)
    chunks = chunk_offsets(data)
    offsets = set(range(len(data) + 1)) if every_offset else set(range(0, len(data) + 1, 97))
    for pos, _t, length in chunks:
        for p in (pos, pos + 16, pos + 16 + length):
            offsets.update(range(max(0, p - 2), min(len(data), p + 3)))
    offsets.update(range(0, HEADER + 1))
    for off in sorted(offsets):
        yield f"trunc-{off}", data[:off]
    for i in range(flips):
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 4, 16))):
            at = rng.randrange(len(b))
            b[at] ^= 1 << rng.randrange(8)
        yield f"flip-{i}", bytes(b)
    for value, name in (
        (1 << 63, "2p63"),
        ((1 << 64) - 1, "max"),
        (1 << 32, "2p32"),
        ((1 << 30) + 1, "1g"),
        (0, "zero"),
    ):
        for k, (pos, ctype, length) in enumerate(chunks):
            b = bytearray(data)
            struct.pack_into("<Q", b, pos + 8, value)
            yield f"len-{name}-chunk{k}-type{ctype}", bytes(b)
            if ctype == 3 and length >= 24:  # events: t, first, count
                b = bytearray(data)
                struct.pack_into("<Q", b, pos + 16 + 16, value)
                yield f"count-{name}-chunk{k}", bytes(b)
            if ctype == 6 and length >= 4:  # aggregate: u32 JSON length
                b = bytearray(data)
                struct.pack_into("<I", b, pos + 16, value & 0xFFFFFFFF)
                yield f"aggjson-{name}-chunk{k}", bytes(b)
        b = bytearray(data)
    for k, (pos, _ctype, _l) in enumerate(chunks[:40]):
        for t in (0, 11, 0xFFFFFFFF):
            b = bytearray(data)
            struct.pack_into("<I", b, pos, t)
            yield f"type-{t}-chunk{k}", bytes(b)
    yield "magic-wrong", b"NOTRACE\n" + data[8:]
    for v in (0, 2, 0xFFFFFFFF):
        yield f"version-{v}", data[:8] + struct.pack("<I", v) + data[12:]
    yield "empty", b""


def synthetic(tmpdir: str):
    """Captures written from scratch with the real writer, each with one kind of damage
    the writer itself would never produce (the stack nodes are the reader's only links)."""
    import numpy as np

    from tracer import _format as fmt
    from tracer._native import ffi, lib
    from tracer.analyze.capture import CaptureWriter
    from tracer.record.aggregate import Aggregator

    def rec(rtype, payload):
        r = struct.pack("<HH", rtype, len(payload)) + payload
        return r + b"\0" * (-len(r) % 4)

    def code(cid, name="f", file="/x/prog.py"):
        f, n = file.encode(), name.encode()
        return rec(fmt.META_CODE, struct.pack("<IiHH", cid, 1, len(f), len(n)) + f + n)

    def node(nid, parent, cid=1, line=3):
        return rec(fmt.META_NODE, struct.pack("<IIIi", nid, parent, cid, line))

    def build(name, meta_records, events, aggregate="replay", sites=None):
        path = os.path.join(tmpdir, f"synth-{name}")
        w = CaptureWriter(path, overwrite=True)
        w.json_chunk(fmt.CHUNK_INFO, 0, {"command": ["prog"], "main_pid": 7, "page_size": 4096, "cwd": "/x"})
        w.json_chunk(fmt.CHUNK_PROCESS, 1, {"pid": 7, "ppid": 1, "t_start": 0.0})
        meta = (
            rec(fmt.META_TEXT, struct.pack("<H", fmt.TEXT_PYTHON_VERSION) + b"3.11")
            + rec(fmt.META_TEXT, struct.pack("<H", fmt.TEXT_ARGV) + b"prog\0")
            + rec(fmt.META_LIB, struct.pack("<HHIQ", 1, 0, 0, 0) + b"/x/libc.so")
            + b"".join(meta_records)
        )
        w.chunk(fmt.CHUNK_META, 1, meta)
        ev = np.zeros(len(events), dtype=fmt.EVENT_DTYPE)
        for i, (kind, addr, size, stack) in enumerate(events):
            ev[i] = (addr, size, stack, 7, 1, kind, 0x02 if kind in (11, 12, 13) else 0, i + 1)
        if len(ev):
            out = bytearray(len(ev) * lib.MT_ENCODED_MAX)
            n = lib.mt_encode(
                ffi.cast("mt_event *", ffi.from_buffer(ev)),
                len(ev),
                ffi.cast("uint8_t *", ffi.from_buffer(out)),
            )
            w.chunk(fmt.CHUNK_EVENTS, 1, fmt.EVENTS_HEADER.pack(0.0, 0, len(ev)), bytes(out[:n]))
        if aggregate == "real":
            agg = Aggregator()
            try:
                agg.feed(ev, 0.0)
            except MemoryError:
                pass
            w.chunk(fmt.CHUNK_AGGREGATE, 1, *agg.chunk_payload({"checkpoint": "latest"}))
            w.json_chunk(fmt.CHUNK_PROCESS_END, 1, {"how": "exit", "t_end": 1.0, "dropped": 0})
        elif aggregate == "crafted":
            head = json.dumps({"heap": -5, "peak_heap": 1 << 63, "n_allocations": -1}).encode()
            w.chunk(fmt.CHUNK_AGGREGATE, 1, len(head).to_bytes(4, "little"), head, sites.tobytes())
            w.json_chunk(fmt.CHUNK_PROCESS_END, 1, {"how": "exit", "t_end": 1.0, "dropped": 0})
        w.json_chunk(fmt.CHUNK_END, 0, {"exit_code": 0, "signal": None, "duration": 1.0, "main_pid": 7})
        w.close()
        return path

    a = 0x10000
    made = []
    for agg in ("replay", "real"):
        made += [
            build(f"cycle2-{agg}", [code(1), node(5, 6), node(6, 5)], [(1, a, 100, 5)], agg),
            build(f"selfloop-{agg}", [code(1), node(5, 5)], [(1, a, 100, 5)], agg),
            build(f"duplicate-{agg}", [code(1), node(5, 0), node(5, 9), node(9, 5)], [(1, a, 100, 5)], agg),
            build(f"dangling-{agg}", [code(1), node(5, 77, cid=99)], [(1, a, 100, 5)], agg),
            build(
                f"chain100k-{agg}",
                [code(1)] + [node(i, i - 1) for i in range(1, 100_001)],
                [(1, a, 100, 100_000)],
                agg,
            ),
            build(
                f"huge-size-{agg}",
                [code(1), node(5, 0)],
                [
                    (1, a, 1 << 63, 5),
                    (1, a + 64, (1 << 63) - 1, 5),
                    (2, a + 128, (1 << 64) - 1, 5),
                    (10, a, 0, 0),
                ],
                agg,
            ),
            build(
                f"wrapping-mmap-{agg}",
                [code(1), node(5, 0)],
                [
                    (11, (1 << 64) - 4096, 1 << 20, 5),
                    (11, 0, (1 << 64) - 1, 5),
                    (12, (1 << 64) - 8192, 1 << 63, 0),
                    (13, 4096, 1 << 62, 5),
                ],
                agg,
            ),
            build(f"free-unknown-{agg}", [], [(10, a, 0, 0)] * 50 + [(12, a, 1 << 40, 0)], agg),
            build(f"realloc-alone-{agg}", [code(1), node(5, 0)], [(3, a, 10, 5), (3, a, 20, 5)], agg),
            build(
                f"hostile-names-{agg}",
                [
                    code(1, "\x1b]8;;x\x07</script>\u2028", "\x00\x1b[2J.py"),
                    node(5, 0),
                    rec(fmt.META_THREAD, struct.pack("<I", 7) + b"\xff\xfe\x1b[31m"),
                ],
                [(1, a, 100, 5), (1, a + 200, 50, 0)],
                agg,
            ),
        ]
    from tracer import _format as fmt  # noqa: F811

    sites = np.zeros(4, dtype=fmt.SITE_DTYPE)
    sites["kind"] = [200, 0, 1, 14]
    sites["stack"] = [5, 6, 0xFFFFFFFF, 5]
    sites["alloc_bytes"] = (1 << 64) - 1
    sites["live_bytes"] = -(1 << 63)
    sites["peak_bytes"] = (1 << 63) - 1
    sites["n_allocs"] = 1 << 63
    sites["lib"] = 0xFFFF
    made.append(build("crafted-sites", [code(1), node(5, 6), node(6, 5)], [(1, a, 100, 5)], "crafted", sites))
    return made


def make(seed_path: str, corpus: str, every_offset: bool, flips: int, seed: int) -> int:
    os.makedirs(corpus, exist_ok=True)
    data = open(seed_path, "rb").read()
    n = 0
    for name, blob in mutants(data, every_offset, flips, seed):
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(blob)
        n += 1
    with open(os.path.join(corpus, "ORIGINAL-LENGTH"), "w") as f:
        f.write(str(len(data)))
    n += len(synthetic(corpus))
    return n


# ---- running it ----------------------------------------------------------------


def judge(name: str, cmd, status, err: str, full_length):
    """None if the outcome is acceptable, else a short reason."""
    lines = err.strip().splitlines()
    if status == 2:
        if len(lines) != 1 or not lines[0].startswith("memtrace: "):
            return f"status 2 without exactly one memtrace line: {lines[:3]}"
    elif status == 3:
        if not lines or not all(ln.startswith("memtrace: warning: ") for ln in lines):
            return f"status 3 without a warning line: {lines[:3]}"
    elif status == 0:
        if err.strip() and not all(ln.startswith("memtrace: ") for ln in lines):
            return f"status 0 with stray stderr: {lines[:3]}"
    else:
        return f"status {status}"
    if name.startswith("trunc-"):
        off = int(name.split("-")[1])
        want = 0 if off == full_length else (2 if off < HEADER else 3)
        if status != want and not (status == 3 and off == full_length):
            return f"truncated at {off}: status {status}, expected {want}"
    return None


def corpus_files(corpus):
    return sorted(os.path.join(corpus, f) for f in os.listdir(corpus) if f != "ORIGINAL-LENGTH")


def worker(corpus, start, native):
    """Runs in the limited child: one JSON line per (input, command), from input `start`."""
    files = corpus_files(corpus)[start:]
    if native:
        import tracer

        tracer.__path__.insert(0, os.path.join(native, "tracer"))
    from tracer import cli
    from tracer.reports import text

    full = None
    for path in files:
        marker = os.path.join(os.path.dirname(path), "ORIGINAL-LENGTH")
        if full is None and os.path.exists(marker):
            full = int(open(marker).read())
        name = os.path.basename(path)
        for cmd in COMMANDS:
            print(json.dumps({"start": name, "cmd": cmd[0]}), flush=True)
            out, err = io.StringIO(), io.StringIO()
            out.buffer = io.BytesIO()
            text.RAW = False
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    status = cli.main([*cmd, path])
                problem = judge(name, cmd, status, err.getvalue(), full)
            except BaseException as exc:  # noqa: BLE001 - everything escaping main is a finding
                tb = traceback.extract_tb(exc.__traceback__)
                where = next(
                    (
                        f"{os.path.basename(f.filename)}:{f.lineno}"
                        for f in reversed(tb)
                        if "/tracer/" in f.filename
                    ),
                    "?",
                )
                problem = f"exception {type(exc).__name__} at {where}: {str(exc)[:120]}"
                status = None
            print(json.dumps({"done": name, "cmd": cmd[0], "status": status, "problem": problem}), flush=True)


def limit_memory():
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run(corpus: str, native=None):
    files = corpus_files(corpus)
    results = {"inputs": len(files), "runs": 0, "findings": []}
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    i = 0
    while i < len(files):
        child = subprocess.Popen(
            [sys.executable, __file__, "worker", *(["--native", native] if native else []), corpus, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=limit_memory,
        )
        current = None
        while True:
            ready, _, _ = select.select([child.stdout], [], [], TIMEOUT)
            if not ready:
                child.kill()
                child.wait()
                results["findings"].append(
                    {
                        "input": current[0],
                        "cmd": current[1],
                        "problem": f"hang (no answer in {TIMEOUT:.0f} s)",
                    }
                )
                break
            line = child.stdout.readline()
            if not line:
                child.wait()
                err = child.stderr.read()
                if current is not None:
                    tail = [ln for ln in err.splitlines() if ln.strip()][-3:]
                    results["findings"].append(
                        {
                            "input": current[0],
                            "cmd": current[1],
                            "problem": f"worker died (status {child.returncode}): {' | '.join(tail)[:400]}",
                        }
                    )
                break
            msg = json.loads(line)
            if "start" in msg:
                current = (msg["start"], msg["cmd"])
            else:
                results["runs"] += 1
                if msg["problem"]:
                    results["findings"].append(
                        {"input": msg["done"], "cmd": msg["cmd"], "problem": msg["problem"]}
                    )
                current = None
        if current is None and child.returncode == 0:
            break
        # restart after the input that hung or crashed
        names = [os.path.basename(f) for f in files]
        i = names.index(current[0]) + 1 if current else len(files)
    return results


def signature(problem: str) -> str:
    """A finding's class: the exception type and place, or the kind of failure."""
    if problem.startswith("exception "):
        return problem.split(":", 1)[0]
    if problem.startswith("worker died"):
        return "worker died: " + problem.split("):", 1)[-1].strip()[:80]
    if problem.startswith("truncated at"):
        return "truncation status"
    return problem.split(":", 1)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("seed")
    m.add_argument("corpus")
    m.add_argument("--every-offset", action="store_true")
    m.add_argument("--flips", type=int, default=300)
    m.add_argument("--random-seed", dest="rseed", type=int, default=6)
    r = sub.add_parser("run")
    r.add_argument("corpus")
    r.add_argument("--native")
    r.add_argument("--json")
    w = sub.add_parser("worker")
    w.add_argument("--native")
    w.add_argument("corpus")
    w.add_argument("start", type=int)
    args = p.parse_args(argv)
    if args.what == "make":
        print(make(args.seed, args.corpus, args.every_offset, args.flips, args.rseed))
        return 0
    if args.what == "worker":
        worker(args.corpus, args.start, args.native)
        return 0
    t0 = time.monotonic()
    results = run(args.corpus, args.native)
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["signatures"] = sorted({signature(f["problem"]) for f in results["findings"]})
    text = json.dumps(results, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(
        f"fuzzed {results['inputs']} inputs ({results['runs']} report runs) in "
        f"{results['seconds']} s: {len(results['findings'])} findings"
    )
    for s in results["signatures"]:
        print("  ", s)
    return 1 if results["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
