"""Pytest fixtures shared by every test folder (the helpers they use are in helpers.py)."""

import sys
import textwrap

import pytest

from helpers import Traced, build, traced


@pytest.fixture
def trace(tmp_path):
    """trace(source, *args) writes the Python program to a file and runs it under memtrace."""

    def run(source: str, *args, name="prog.py", options=(), stdin=None, timeout=180) -> Traced:
        script = tmp_path / name
        script.write_text(textwrap.dedent(source))
        capture = tmp_path / (name + ".mtrace")
        out = traced(
            [sys.executable, script, *args], capture, *options, timeout=timeout, input=stdin, cwd=tmp_path
        )
        return Traced(out.returncode, out.stdout, out.stderr, capture)

    return run


@pytest.fixture(scope="session")
def cbuild(tmp_path_factory):
    """cbuild("name.c", *flags, compiler="cc", name=None) -> a program built from
    tests/targets/name.c at -O1 (once per session, whatever test asks first)."""
    out_dir = tmp_path_factory.mktemp("targets")
    cache = {}

    def build_once(source: str, *flags: str, compiler: str = "cc", name: str = None):
        key = (source, flags, compiler, name)
        if key not in cache:
            cache[key] = build(
                source, out_dir / (name or source.rsplit(".", 1)[0]), *flags, compiler=compiler, opt="-O1"
            )
        return cache[key]

    build_once.dir = out_dir
    return build_once
