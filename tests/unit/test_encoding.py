"""The capture's event encoding round-trips exactly and rejects malformed bytes."""

import numpy as np
import pytest

from tracer import _format as fmt
from tracer._native import ffi, lib
from tracer.analyze.capture import decode_events
from tracer.errors import CaptureError


def encode(events):
    out = bytearray(len(events) * lib.MT_ENCODED_MAX)
    n = lib.mt_encode(ffi.cast("mt_event *", ffi.from_buffer(events)), len(events), ffi.from_buffer(out))
    return bytes(out[:n])


def random_events(n, seed=1):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=fmt.EVENT_DTYPE)
    ev["kind"] = rng.integers(1, 14, n)
    ev["addr"] = rng.integers(0, 2**63, n, dtype=np.uint64) * rng.integers(0, 2, n, dtype=np.uint64)
    ev["size"] = rng.integers(0, 2**40, n, dtype=np.uint64)
    ev["stack"] = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    ev["tid"] = rng.integers(1, 5, n)
    ev["lib"] = rng.integers(0, 2**16, n)
    ev["flags"] = rng.integers(0, 16, n)
    free = ev["kind"] == 10  # frees carry no size, stack or library
    ev["size"][free] = 0
    ev["stack"][free] = 0
    ev["lib"][free] = 0
    return ev


def test_round_trip_is_exact():
    ev = random_events(50_000)
    data = encode(ev)
    back = decode_events(data, len(ev))
    ev["seq"] = 0
    assert (back == ev).all()


def churn(n, seed=3):
    """Frees of recently allocated blocks in shuffled order, some of old ones."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(2 * n, dtype=fmt.EVENT_DTYPE)
    addrs = 0x5555_0000_0000 + np.arange(n, dtype=np.uint64) * 64
    ev["kind"][0::2], ev["addr"][0::2] = 1, addrs
    ev["size"][0::2] = rng.integers(1, 5000, n)
    ev["kind"][1::2] = 10
    ev["addr"][1::2] = addrs[np.clip(np.arange(n) - rng.integers(0, 80, n), 0, None)]
    ev["flags"][1::2] = rng.integers(0, 2, n) * 4
    ev["stack"][0::2], ev["tid"], ev["lib"][0::2] = 7, rng.integers(1, 3, 2 * n), 2
    return ev


def test_recent_block_frees_round_trip():
    ev = churn(20_000)
    back = decode_events(encode(ev), len(ev))
    assert (back == ev).all()


def test_typical_stream_is_compact():
    # a malloc/free churn on one thread, one stack: a few bytes per event
    n = 10_000
    ev = np.zeros(2 * n, dtype=fmt.EVENT_DTYPE)
    ev["kind"][0::2], ev["kind"][1::2] = 1, 10
    addrs = 0x5555_0000_0000 + (np.arange(n, dtype=np.uint64) % 64) * 1024
    ev["addr"][0::2] = ev["addr"][1::2] = addrs
    ev["size"][0::2] = 600 + np.arange(n) % 256
    ev["stack"][0::2], ev["tid"], ev["lib"][0::2] = 42, 1000, 3
    assert len(encode(ev)) / len(ev) < 5


@pytest.mark.parametrize("cut", [1, 2, 5, 17])
def test_truncated_or_garbled_bytes_are_rejected(cut):
    ev = random_events(100, seed=cut)
    data = encode(ev)
    with pytest.raises(CaptureError):
        decode_events(data[:-cut], len(ev))
    with pytest.raises(CaptureError):
        decode_events(b"\x00" + data[1:], len(ev))  # kind 0 never appears
    with pytest.raises(CaptureError):
        decode_events(data, len(ev) - 1)  # more events than announced


def test_region_marks_round_trip_among_events():
    ev = random_events(20_000, seed=5)
    marks = np.arange(0, len(ev), 7)
    ev["kind"][marks] = fmt.REGION
    ev["addr"][marks] = np.arange(len(marks)) % 1000 + 1  # region ids
    ev["size"][marks] = np.arange(len(marks)) % 2  # enter / leave
    ev["stack"][marks], ev["lib"][marks] = 0, 0
    back = decode_events(encode(ev), len(ev))
    ev["seq"] = 0
    assert (back == ev).all()
