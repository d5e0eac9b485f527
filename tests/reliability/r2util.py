"""Shared helpers of the part-2 reliability tests (items 2-4, 22-30 of PITFALLS.md).

Kept out of a conftest.py so that it cannot collide with the other reliability
helpers; test files import it by name (pytest puts this folder on sys.path).
"""
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ROOT / "tests" / "targets"
MEMTRACE = [sys.executable, "-m", "tracer"]


def memtrace(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(MEMTRACE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def need_cc():
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")


def build(source: Path, out: Path, *flags) -> Path:
    """Compile a C target (tests/targets/…) with cc; skip the test if there is no compiler."""
    need_cc()
    cmd = ["cc", "-O0", "-g", "-Wall", "-o", str(out), str(source), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def trace(capture: Path, argv, options=(), timeout=120, **kw) -> subprocess.CompletedProcess:
    return memtrace("run", "-q", "--no-report", "-f", "-o", capture, *options, "--",
                    *argv, timeout=timeout, **kw)


def stats(capture: Path) -> dict:
    out = memtrace("stats", "--json", capture)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def streams(capture: Path):
    """[(process dict from the model, list of event arrays)] in stream order, straight
    from the capture file (the shim's record, before any aggregation)."""
    from tracer.capture import read_capture
    from tracer.model import build_model

    cap = read_capture(str(capture))
    model = build_model(cap)
    out = []
    for proc in model.processes:
        chunks = [np.array(ev) for _t, ev in cap.events(proc.sid)]
        events = np.concatenate(chunks) if chunks else np.zeros(0, dtype=chunks_dtype())
        out.append((proc, events))
    return out


def chunks_dtype():
    from tracer import _format as fmt

    return fmt.EVENT_DTYPE


def lib_ids(proc, name_part: str):
    """Ids of the shared objects (or the executable) whose path contains name_part."""
    return {lid for lid, path in proc.libs.items() if name_part in os.path.basename(path)}


def terminal_safe(text: str) -> bool:
    """No control character but newline, no line/paragraph separators, no bidi or
    other format characters: what a terminal shows is what the report printed."""
    return all(c == "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
               for c in text)


def shim_so() -> str:
    from tracer import launcher

    return launcher.shim_path()
