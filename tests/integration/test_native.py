"""A C program traced native-only: its mallocs attributed to its own executable."""

import pytest

from helpers import build, memtrace

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    void *keep[10];
    for (int i = 0; i < 10; i++) {
        keep[i] = malloc(100000 + i);
        memset(keep[i], 1, 100000 + i);
    }
    for (int i = 0; i < 5; i++) free(keep[i]);
    void *c = calloc(1000, 1000);
    printf("%d\n", c != NULL);
    return 3;
}
"""


@pytest.fixture
def c_program(tmp_path):
    src = tmp_path / "alloc.c"
    src.write_text(C_PROGRAM)
    return build(src, tmp_path / "allocprog")


def test_c_program_native_only(c_program, tmp_path):
    cap = tmp_path / "c.mtrace"
    run = memtrace("run", "-o", cap, "--", c_program, cwd=tmp_path)
    assert run.returncode == 3
    assert run.stdout == "1\n"
    assert "not a Python program" in run.stderr
    import json

    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    proc = stats["processes"][0]
    assert proc["python"] is None and proc["end"]["exit_code"] == 3
    own = [r for r in stats["by_library"] if r["library"] == "allocprog"]
    assert own, stats["by_library"]
    expected = sum(100000 + i for i in range(10)) + 1000 * 1000
    assert own[0]["allocated_bytes"] == expected
    assert own[0]["n_allocations"] == 11
    assert own[0]["live_at_exit_bytes"] == expected - sum(100000 + i for i in range(5))
    # no Python frames: everything in the main thread's native bucket
    rows = [r for r in stats["by_line"] if r["file"] == "<native>"]
    assert rows and "(main)" in rows[0]["function"]
