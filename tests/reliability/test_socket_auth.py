"""Only the traced user's processes can feed the collector.

While a traced program runs: the session folder is 0700 and the socket 0700 (bound
under umask 077); no abstract-namespace socket exists (/proc/net/unix); user nobody
cannot even connect. Then the test opens the folder and socket to everyone — as if
the permissions had been lost — and, as nobody, sends a forged hello with a memfd
and runs a real shim-preloaded program pointed at the socket: the collector refuses
both through SO_PEERCRED (counted in the capture's end record), and no stream from
them reaches the capture.
"""

import glob
import os
import shutil
import stat
import subprocess
import sys

import pytest

from helpers import MEMTRACE, TARGETS, build, open_to_other_users, shim_so, stats, wait_for

NOBODY = 65534

FORGER = r"""
import os, socket, struct, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
except OSError as e:
    print("connect", e.errno); sys.exit(0)
fd = os.memfd_create("forged")
os.ftruncate(fd, 1 << 20)
hello = struct.pack("<IIIIQ", 0x4D54484C, 1, os.getpid(), os.getppid(), 1 << 20)
try:
    s.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    print("sent")
except OSError as e:      # the collector already checked SO_PEERCRED and hung up
    print("closed", e.errno)
for name in ("\0" + path, "\0memtrace", "\0collector.sock"):
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.connect(name); print("abstract-connected", repr(name))
    except OSError as e:
        print("abstract", e.errno)
"""


def as_nobody(argv, **kw):
    return subprocess.run(
        argv, capture_output=True, text=True, user=NOBODY, group=NOBODY, extra_groups=[], timeout=30, **kw
    )


@pytest.fixture
def running(tmp_path, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user (nobody)")
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 for user nobody")
    shared = open_to_other_users(tmp_path, tmp_path_factory.getbasetemp())
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    os.chmod(sessions, 0o711)
    forger = shared / "forger.py"
    forger.write_text(FORGER)
    cap = tmp_path / "s.mtrace"
    env = dict(os.environ, TMPDIR=str(sessions))
    proc = subprocess.Popen(
        MEMTRACE
        + [
            "run",
            "-q",
            "--no-report",
            "-o",
            str(cap),
            "--",
            sys.executable,
            "-c",
            "import time\nfor i in range(60):\n    b = bytearray(100_000); time.sleep(0.1)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks = wait_for(
        lambda: glob.glob(str(sessions / "memtrace-*" / "collector.sock")),
        timeout=20,
        what="the collector's socket",
    )
    yield proc, socks[0], cap, system_python, forger, shared
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_socket_refuses_other_users(running):
    proc, sock, cap, python, forger, shared = running
    folder = os.path.dirname(sock)
    # the rendezvous is private
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert os.stat(folder).st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0
    unix = open("/proc/net/unix").read().splitlines()[1:]
    paths = [line.split()[7] for line in unix if len(line.split()) >= 8]
    assert sock in paths
    assert not [p for p in paths if p.startswith("@") and "memtrace" in p]
    # nobody cannot reach it at all
    out = as_nobody([python, str(forger), sock])
    assert out.stdout.strip() == "connect 13", out  # EACCES
    # defence in depth: even with the permissions gone, the collector refuses them
    os.chmod(folder, 0o711)
    os.chmod(sock, 0o777)
    out = as_nobody([python, str(forger), sock])
    assert out.stdout.splitlines()[:1] in (["sent"], ["closed 32"], ["closed 104"]), (out.stdout, out.stderr)
    assert "abstract-connected" not in out.stdout  # nothing listens in the abstract namespace
    prog = build(TARGETS / "at_secure.c", shared / "victim")
    os.chmod(prog, 0o755)
    # a copy nobody can read (an installed shim may sit under a private folder)
    shim = shutil.copy(shim_so(), shared / "memtrace_shim.so")
    os.chmod(shim, 0o755)
    out = as_nobody(
        [str(prog)],
        env={
            "LD_PRELOAD": str(shim),
            "MEMTRACE_SOCKET": sock,
            "MEMTRACE_COLLECTOR_PID": str(proc.pid),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert out.returncode == 0, out  # the shim's refusal costs the program nothing
    assert " shim 1" in out.stdout, out
    # the shim's hello is sent only if the collector has not hung up on it first (it
    # refuses on accept, before reading): then its stream opened and it wakes the
    # collector at exit, a second connection
    stream_opened = out.stdout.strip().endswith("stream 1")
    os.chmod(folder, 0o700)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    from tracer.analyze.capture import read_capture

    end = read_capture(str(cap)).end
    # the forged hello, the real shim's hello and, if its stream opened, its wake-up at exit
    assert end["refused_connections"] == 2 + stream_opened, end
    st = stats(cap)
    assert all("victim" not in (p["exe"] or "") for p in st["processes"])
    assert len(st["processes"]) == 1
