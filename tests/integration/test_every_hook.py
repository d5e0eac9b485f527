"""Every hooked function, called with known sizes by a C program: exact bytes per
allocator, errno kept, failures recorded as nothing, partial unmaps and mremap tracked."""

import json

import pytest

from helpers import build, memtrace


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hooks")
    exe = build("every_hook.c", tmp / "every_hook")
    cap = tmp / "hooks.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", exe)
    assert run.returncode == 0, run.stderr
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    return run.stdout.split(), stats


def test_program_behaves_as_untraced(traced):
    out, _ = traced
    # ok errno_kept realloc_failed ovf covf pm_ret bad_einval moved page
    assert out[:8] == ["ok", "1", "1", "1", "1", "0", "1", "1"]


def test_exact_bytes_per_allocator(traced):
    out, stats = traced
    page = int(out[8])
    own = [r for r in stats["by_line"] if r["file"] == "<native>"]
    assert len(own) == 1
    alloc = own[0]["allocators"]
    mine = [r for r in stats["by_library"] if r["library"] == "every_hook"][0]
    # the program's own calls, by allocator (libc's own start-up blocks are not the program's)
    expected = {
        "calloc": 2020,
        "realloc": 3003 + 4004,  # realloc(NULL, n) and the growth
        "reallocarray": 77,
        "posix_memalign": 6006,
        "aligned_alloc": 1280,
        "memalign": 7007,
        "valloc": 8008,
        "pvalloc": 9009,
        "mmap": 10 * page + page + 2 * page,  # the three mmaps (mmap64 included)
        "mremap": 3 * page,
    }
    for name, size in expected.items():
        assert alloc.get(name) == size, (name, alloc)
    # malloc: 1001 + 5005 + 100 + 0 + 12345 from the program (plus libc's own, e.g. stdio)
    assert alloc["malloc"] >= 1001 + 5005 + 100 + 12345
    live = 1001 + 2020 + 4004 + 100 + 77 + 6006 + 1280 + 7007 + 8008 + 9009 + 8 * page + 3 * page
    assert mine["live_at_exit_bytes"] == live
    assert stats["processes"][0]["unknown_frees"] == 0
