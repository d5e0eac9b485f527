"""csrc/events.h is the one definition of the wire format: the shim is compiled from
it, cffi reads it for the collector, and tracer._format takes every constant and
layout from cffi. These tests fail when any of them disagree: the C compiler's view
of the header against cffi's, and the few literal copies kept where cffi cannot be
imported (the bootstrap and tracer.region run inside the traced program)."""

import ast
import re
import subprocess

import pytest

from helpers import ROOT, build
from tracer import _format as fmt
from tracer import _regions
from tracer._native import ffi, lib

EVENTS_H = ROOT / "csrc" / "events.h"


def cdef_block() -> str:
    text = EVENTS_H.read_text()
    return re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S).group(1)


def constant_names():
    """Every #define and enum constant between the CDEF markers."""
    block = re.sub(r"/\*.*?\*/", "", cdef_block(), flags=re.S)
    defines = re.findall(r"#define\s+(MT_\w+)", block)
    enums = re.findall(r"\b(MT_[A-Z0-9_]+)\s*=", block)
    return sorted(set(defines + enums))


def struct_names():
    return re.findall(r"\}\s*(mt_\w+)\s*;", cdef_block())


def test_the_cdef_block_holds_the_wire_format():
    names = constant_names()
    assert {
        "MT_WIRE_VERSION",
        "MT_HELLO_MAGIC",
        "MT_FREE",
        "MT_META_HEAPSTATS",
        "MT_TEXT_CLUSTER",
        "MT_REGION_KIND_TASK",
        "MT_ASK_CHECKPOINT",
        "MT_STATS_EXIT",
        "MT_STATE_EXITING",
        "MT_FLAG_KEEP",
    } <= set(names)
    assert {
        "mt_event",
        "mt_hello",
        "mt_meta_header",
        "mt_code_payload",
        "mt_node_payload",
        "mt_lib_payload",
        "mt_thread_payload",
        "mt_text_payload",
        "mt_region_payload",
        "mt_heapstats_payload",
    } <= set(struct_names())


def test_the_compiler_and_cffi_read_the_header_alike(tmp_path):
    # GIVEN a C program that prints what the compiler makes of every constant and
    # every struct's size and field offsets
    lines = [f'    printf("{n} %lld\\n", (long long){n});' for n in constant_names()]
    for s in struct_names():
        lines.append(f'    printf("sizeof {s} %zu\\n", sizeof({s}));')
        lines += [
            f'    printf("offsetof {s}.{f} %zu\\n", offsetof({s}, {f}));' for f, _ in ffi.typeof(s).fields
        ]
    source = tmp_path / "layout.c"
    source.write_text(
        '#include <stddef.h>\n#include <stdio.h>\n#include "events.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\n    return 0;\n}\n"
    )
    program = build(source, tmp_path / "layout", f"-I{ROOT / 'csrc'}")
    printed = dict(
        line.rsplit(" ", 1)
        for line in subprocess.run(
            [str(program)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    # THEN cffi (and so tracer._format) has the same values and layouts
    expected = {n: str(getattr(lib, n)) for n in constant_names()}
    for s in struct_names():
        expected[f"sizeof {s}"] = str(ffi.sizeof(s))
        expected.update({f"offsetof {s}.{f}": str(ffi.offsetof(s, f)) for f, _ in ffi.typeof(s).fields})
    assert printed == expected


def test_format_takes_its_layouts_from_the_header():
    assert fmt.HELLO.size == ffi.sizeof("mt_hello")
    assert fmt.META_HEADER.size == ffi.sizeof("mt_meta_header")
    for ctype, rtype in [
        ("mt_code_payload", fmt.META_CODE),
        ("mt_node_payload", fmt.META_NODE),
        ("mt_lib_payload", fmt.META_LIB),
        ("mt_thread_payload", fmt.META_THREAD),
        ("mt_text_payload", fmt.META_TEXT),
        ("mt_region_payload", fmt.META_REGION),
        ("mt_heapstats_payload", fmt.META_HEAPSTATS),
    ]:
        assert fmt.PAYLOADS[rtype].size == ffi.sizeof(ctype), ctype
    for dtype, ctype in [(fmt.EVENT_DTYPE, "mt_event"), (fmt.SITE_DTYPE, "mt_site")]:
        assert dtype.itemsize == ffi.sizeof(ctype)
        assert [dtype.fields[name][1] for name in dtype.names] == [
            ffi.offsetof(ctype, name) for name in dtype.names
        ]
    assert fmt.MALLINFO_FIELDS[0] == "arena" and fmt.MALLINFO_FIELDS[-1] == "keepcost"
    assert fmt.KIND_NAMES[lib.MT_MALLOC] == "malloc" and fmt.KIND_NAMES[lib.MT_REGION] == "region"


def test_a_metadata_record_round_trips_through_the_layouts():
    payload = fmt.PAYLOADS[fmt.META_THREAD].pack(4242) + b"worker-1"
    record = fmt.META_HEADER.pack(fmt.META_THREAD, len(payload)) + payload
    record += b"\0" * (fmt.meta_record_size(len(payload)) - len(record))
    text = fmt.PAYLOADS[fmt.META_TEXT].pack(fmt.TEXT_ARGV) + b"python\0x.py\0"
    record += fmt.META_HEADER.pack(fmt.META_TEXT, len(text)) + text
    assert list(fmt.iter_meta(record)) == [(fmt.META_THREAD, payload), (fmt.META_TEXT, text)]


def literal_assignments(path) -> dict:
    """NAME = number assignments at the top of a module (tuple targets too)."""
    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            numbers = value.elts if isinstance(value, ast.Tuple) else [value]
            for n, v in zip(names, numbers):
                if isinstance(n, ast.Name) and isinstance(v, ast.Constant) and isinstance(v.value, int):
                    values[n.id] = v.value
    return values


def test_the_bootstraps_text_keys_match_the_header():
    # the bootstrap runs in the traced Python, which may not have cffi: it keeps copies
    copies = literal_assignments(ROOT / "src" / "tracer" / "bootstrap" / "sitecustomize.py")
    keys = {name: value for name, value in copies.items() if name.startswith("_TEXT_")}
    assert len(keys) >= 6
    for name, value in keys.items():
        assert getattr(lib, "MT" + name) == value, name


@pytest.mark.parametrize(
    "name, c_name",
    [
        ("KIND_USER", "MT_REGION_KIND_USER"),
        ("KIND_TEST", "MT_REGION_KIND_TEST"),
        ("KIND_CELL", "MT_REGION_KIND_CELL"),
        ("KIND_TASK", "MT_REGION_KIND_TASK"),
        ("ASK_USAGE", "MT_ASK_USAGE"),
        ("ASK_AT_PEAK", "MT_ASK_AT_PEAK"),
        ("ASK_LIVE", "MT_ASK_LIVE"),
        ("ASK_CHECKPOINT", "MT_ASK_CHECKPOINT"),
    ],
)
def test_tracer_region_codes_match_the_header(name, c_name):
    # tracer.region calls the shim through ctypes inside the traced program
    assert getattr(_regions, name) == getattr(lib, c_name)
