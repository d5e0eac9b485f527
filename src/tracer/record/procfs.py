"""What the collector reads about a traced process from /proc (Linux).

Every reader returns None when the number cannot be had (the process is gone,
/proc is hidden): callers report "unknown", never a guess.
"""

import os
from typing import Dict, List, Optional

STATUS_FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmSwap")


def status(pid: int) -> Optional[Dict[str, int]]:
    """RSS split from /proc/PID/status, in bytes."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.split(b"\n"):
        key, _, rest = line.partition(b":")
        name = key.decode()
        if name in STATUS_FIELDS:
            out[name] = int(rest.split()[0]) * 1024
    return out if len(out) == len(STATUS_FIELDS) else None


def smaps(pid: int) -> Optional[List[list]]:
    """Each mapping as [start, end, rss, anonymous, swap, perms, path] (bytes)."""
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return parse_smaps(text)


def parse_smaps(text: bytes) -> List[list]:
    """smaps text parsed in C (a snapshot near the heap peak must be quick)."""
    from tracer._native import ffi, lib

    buf = ffi.from_buffer(text)
    n = lib.mt_parse_smaps(buf, len(text), ffi.NULL, 0)
    out = ffi.new("mt_vma[]", n)
    lib.mt_parse_smaps(buf, len(text), out, n)
    rows = []
    for v in out:
        path = text[v.path_at : v.path_at + v.path_len].decode("utf-8", "replace")
        rows.append([v.start, v.end, v.rss, v.anon, v.swap, ffi.string(v.perms).decode(), path])
    return rows


def parse_smaps_py(text: bytes) -> List[list]:
    """The reference parser (parse_smaps must agree with it)."""
    vmas, cur = [], None
    for line in text.split(b"\n"):
        if not line:
            continue
        first = line[:1]
        if first.isdigit() or (b"a" <= first <= b"f"):
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split(b"-"))
            path = parts[5].decode("utf-8", "replace") if len(parts) > 5 else ""
            cur = [start, end, 0, 0, 0, parts[1].decode(), path]
            vmas.append(cur)
        elif cur is not None:
            if line.startswith(b"Rss:"):
                cur[2] = int(line.split()[1]) * 1024
            elif line.startswith(b"Anonymous:"):
                cur[3] = int(line.split()[1]) * 1024
            elif line.startswith(b"Swap:"):
                cur[4] = int(line.split()[1]) * 1024
    return vmas


def thread_stack_pointers(pid: int) -> List[int]:
    """The stack pointer of each thread blocked in the kernel (/proc/PID/task/*/syscall)."""
    sps: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return sps
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as f:
                fields = f.read().split()
        except OSError:
            continue
        if len(fields) >= 3 and fields[0] != b"running":
            try:
                sps.append(int(fields[-2], 16))
            except ValueError:
                pass
    return sps


def zombie_wait_status(pid: int) -> Optional[int]:
    """The wait status of a process that has ended but is not reaped yet (field 52
    of /proc/PID/stat, Linux 3.5+); None if it is running, reaped or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    if len(fields) < 50 or fields[0] != b"Z":
        return None
    return int(fields[49])
