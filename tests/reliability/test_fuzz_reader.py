"""The capture reader and the reports against damaged captures.

The harness is tests/fuzz/fuzz_reader.py (see its docstring): truncations, bit flips,
absurd lengths and counts, wrong magic and versions, and synthetic captures with
cyclic / duplicate / dangling stack nodes, a 100,000-node chain, 2^63 sizes and
wrapping mmaps. Every (input, report) must end in a clean one-line error (status 2),
a partial report (status 3, one warning line; every truncation past the header), or
a report — never an exception, crash, hang (10 s) or more than 1 GiB.

The default run uses a stride of truncations; the slow ones truncate at every offset,
fuzz a Python capture too, and run the corpus through an ASan/UBSan build of the C
reader (tests/fuzz/run_asan.sh).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, build, memtrace, need_compiler, traced

FUZZ = ROOT / "tests" / "fuzz" / "fuzz_reader.py"
SEED_C = r"""
#include <stdlib.h>
#include <sys/mman.h>
int main(void) {
    void *k[20];
    for (int i = 0; i < 20; i++) k[i] = malloc(100 * i + 1);
    for (int i = 0; i < 10; i++) free(k[i]);
    void *m = mmap(0, 8192, 3, 0x22, -1, 0);
    munmap(m, 4096);
    return 0;
}
"""


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    need_compiler()
    tmp = tmp_path_factory.mktemp("fuzzseed")
    (tmp / "seed.c").write_text(SEED_C)
    exe = build(tmp / "seed.c", tmp / "seedprog")
    cap = tmp / "seed.mtrace"
    out = traced([exe], cap, "--no-report")
    assert out.returncode == 0, out.stderr
    return cap


def fuzz(tmp, seed_capture, *make_args, timeout=900, env=None):
    corpus = tmp / "corpus"
    made = subprocess.run(
        [sys.executable, FUZZ, "make", seed_capture, corpus, *make_args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    result = tmp / "result.json"
    run = subprocess.run(
        [sys.executable, FUZZ, "run", corpus, "--json", result],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.exists(), run.stderr[-2000:]
    return json.loads(result.read_text())


def check(data):
    """Every input was fed to every report, and none gave a finding."""
    assert data["findings"] == [], data["findings"][:10]
    assert data["inputs"] > 100 and data["runs"] == 5 * data["inputs"], data


def test_fuzz_reader(seed, tmp_path):
    data = fuzz(tmp_path, seed, "--flips", "150")
    check(data)


@pytest.mark.slow
def test_fuzz_reader_every_offset(seed, tmp_path):
    data = fuzz(tmp_path, seed, "--every-offset", "--flips", "1000", timeout=3000)
    check(data)


@pytest.mark.slow
def test_fuzz_reader_python_capture(tmp_path):
    cap = tmp_path / "py.mtrace"
    out = traced(
        [sys.executable, "-c", "import json; x = [bytearray(1000) for i in range(50)]"], cap, "--no-report"
    )
    assert out.returncode == 0
    data = fuzz(tmp_path, cap, "--flips", "300", timeout=3000)
    check(data)


@pytest.mark.slow
def test_fuzz_reader_under_asan(seed, tmp_path):
    need_compiler()
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    if asan.returncode != 0 or not os.path.isabs(asan.stdout.strip()):
        pytest.skip("gcc's libasan is not installed")
    run = subprocess.run(
        ["bash", ROOT / "tests" / "fuzz" / "run_asan.sh", seed, tmp_path],
        capture_output=True,
        text=True,
        timeout=3500,
        env=dict(os.environ, PYTHON=sys.executable, FLIPS="300"),
    )
    if run.returncode == 77:
        pytest.skip("gcc's libasan is not installed")
    result = tmp_path / "result.json"
    assert result.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    check(json.loads(result.read_text()))


@pytest.mark.slow
def test_reader_has_no_undefined_behaviour_on_replay(seed, tmp_path):
    need_compiler()
    native = tmp_path / "native"
    build_script = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'src/tracer/_build_ffi.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "ffi = m.ffibuilder; name, src, ext, kw = ffi._assigned_source\n"
        "san = ['-fsanitize=undefined', '-fno-sanitize-recover=undefined', '-g']\n"
        "kw = dict(kw, extra_compile_args=['-std=gnu11'] + san, extra_link_args=san,\n"
        "          sources=[os.path.abspath(s) for s in kw['sources']],\n"
        "          include_dirs=[os.path.abspath(d) for d in kw['include_dirs']])\n"
        "ffi._assigned_source = (name, src, ext, kw); ffi.compile(tmpdir=sys.argv[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", build_script, native], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    data = Path(seed).read_bytes()
    (corpus / "trunc-cut").write_bytes(data[: len(data) * 2 // 3])  # replayed: no final aggregate
    run = subprocess.run(
        [sys.executable, FUZZ, "worker", "--native", native, corpus, "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"),
    )
    assert run.returncode == 0 and "runtime error" not in run.stderr, run.stderr[:600]


def rewrite_json_chunks(src: Path, dst: Path, ctype: int, change) -> int:
    """Copy a capture, passing the JSON of every chunk of `ctype` through change(obj)
    (aggregate chunks: their JSON head); returns how many chunks were changed."""
    import struct

    import zstandard

    data = src.read_bytes()
    out, pos, n = bytearray(data[:16]), 16, 0
    previous = {}  # (type, stream) -> payload, the dictionary of the next delta chunk
    while pos + 16 <= len(data):
        t, sid, length = struct.unpack_from("<IIQ", data, pos)
        body = data[pos + 16 : pos + 16 + length]
        if t in (12, 13):  # compressed (13: against the previous payload): rewrite plainly
            outer, (t, inner) = t, struct.unpack_from("<II", body)
            d = (
                zstandard.ZstdDecompressor(
                    dict_data=zstandard.ZstdCompressionDict(
                        previous[(t, sid)], dict_type=zstandard.DICT_TYPE_RAWCONTENT
                    )
                )
                if outer == 13
                else zstandard.ZstdDecompressor()
            )
            body = d.decompress(body[8:], max_output_size=inner)
        if t in (6, 10):
            previous[(t, sid)] = body
        if t == ctype:
            if t == 6:
                k = int.from_bytes(body[:4], "little")
                obj = json.loads(body[4 : 4 + k])
                if change(obj):
                    head = json.dumps(obj).encode()
                    body = len(head).to_bytes(4, "little") + head + body[4 + k :]
                    n += 1
            else:
                obj = json.loads(body)
                if change(obj):
                    body = json.dumps(obj).encode()
                    n += 1
        out += struct.pack("<IIQ", t, sid, len(body)) + body
        pos += 16 + length
    dst.write_bytes(bytes(out))
    return n


def one_clean_line(out):
    lines = out.stderr.strip().splitlines()
    return out.returncode == 2 and len(lines) == 1 and lines[0].startswith("memtrace: ")


def test_exit_aggregate_without_heap_is_refused(seed, tmp_path):

    def drop_heap(obj):
        if obj.get("checkpoint") == "exit":
            obj["heaq"] = obj.pop("heap")  # 'p' (0x70) -> 'q' (0x71): one flipped bit
            return True
        return False

    bad = tmp_path / "bad.mtrace"
    assert rewrite_json_chunks(Path(seed), bad, 6, drop_heap) == 1
    out = memtrace("stats", "--json", bad)
    assert "Traceback" not in out.stderr and one_clean_line(out), out.stderr[-800:]


def test_snapshot_without_time_is_refused(seed, tmp_path):
    """A damaged snapshot whose JSON still parses (a bit flip in a key) is corrupt,
    not a KeyError in the reconciliation (found by the fuzzer in a run)."""

    def drop_time(obj):
        obj["u"] = obj.pop("t")
        return True

    bad = tmp_path / "bad.mtrace"
    assert rewrite_json_chunks(Path(seed), bad, 10, drop_time) >= 1
    for command in (("stats", "--json"), ("reconcile",)):
        out = memtrace(*command, bad)
        assert out.returncode == 2 and "Traceback" not in out.stderr and one_clean_line(out), out.stderr[
            -800:
        ]
        assert "corrupt" in out.stderr


def test_snapshot_with_short_vma_row_is_refused(seed, tmp_path):

    def shorten(obj):
        if obj.get("vmas"):
            obj["vmas"][0] = obj["vmas"][0][:-1]
            return True
        return False

    bad = tmp_path / "bad.mtrace"
    assert rewrite_json_chunks(Path(seed), bad, 10, shorten) >= 1
    out = memtrace("stats", "--json", bad)
    assert "Traceback" not in out.stderr and one_clean_line(out), out.stderr[-800:]
