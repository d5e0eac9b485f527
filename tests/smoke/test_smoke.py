"""The smoke test CI runs on every supported CPython: the bundled NumPy example, exact."""

import json
import sys
from pathlib import Path

from helpers import line_of, lines_of, memtrace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "numpy_lines.py"


def test_numpy_example_exact(tmp_path):
    cap = tmp_path / "smoke.mtrace"
    run = memtrace("run", "-q", "-o", cap, "--", sys.executable, EXAMPLE, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("built 88080000 bytes")
    stats = json.loads(memtrace("stats", "--json", cap).stdout)
    proc = stats["processes"][0]
    assert proc["python"] == "%d.%d.%d" % sys.version_info[:3], proc["frames_off_reason"]
    rows = lines_of(stats, "numpy_lines.py")
    for marker, size in (("small =", 80_000), ("medium =", 8_000_000), ("large =", 80_000_000)):
        row = rows[line_of(EXAMPLE, marker)]
        assert row["function"] == "build"
        assert row["numpy_allocators"] == {"calloc": size}
        assert row["numpy_bytes"] == size
    assert stats["peak_heap_bytes"] >= 88_080_000
    assert stats["dropped_events"] == 0
