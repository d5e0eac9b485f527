"""Programs the loader will not preload the shim into are refused by the
launcher in one line, quickly, with no capture left behind: static binaries, setuid
and setgid binaries, and (for a user other than root) binaries with file
capabilities (secure execution). And under AT_SECURE, a shim that does get loaded
(from a trusted directory, set-user-ID, as ld.so(8) allows) ignores its
configuration environment: it never connects to the socket it is pointed at."""

import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from helpers import MEMTRACE, ROOT, TARGETS, build, need_compiler, open_to_other_users, shim_so

NOBODY = 65534


def one_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("memtrace: ") and "Traceback" not in err


def memtrace_as_nobody():
    """The memtrace command line for user nobody, who cannot read this venv's Python
    (it may live in a private home folder): a system Python running the launcher from
    the source tree — the refusal happens before anything heavy is imported."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no system python3 that user nobody can run")
    src = str(ROOT / "src")
    return [
        system,
        "-c",
        f"import sys; sys.path.insert(0, {src!r}); from tracer.cli import main; sys.exit(main())",
    ]


def refuse(tmp_path, exe, user=None):
    t0 = time.monotonic()
    command = MEMTRACE if user is None else memtrace_as_nobody()
    out = subprocess.run(
        command + ["run", "--", str(exe)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert one_line(out.stderr), out.stderr
    assert elapsed < 10
    assert not list(tmp_path.glob("*.mtrace"))
    return out.stderr


def test_static_binary(tmp_path):
    need_compiler()
    src = tmp_path / "s.c"
    src.write_text("#include <stdlib.h>\nint main(void){return malloc(10)==0;}\n")
    exe = tmp_path / "static-prog"
    if subprocess.run(["cc", "-static", "-o", str(exe), str(src)], capture_output=True).returncode:
        pytest.skip("no static libc to link with")
    assert "statically linked" in refuse(tmp_path, exe)


@pytest.mark.parametrize("bit", [stat.S_ISUID, stat.S_ISGID], ids=["setuid", "setgid"])
def test_setuid_setgid_binary(tmp_path, bit):
    exe = build(TARGETS / "at_secure.c", tmp_path / "prog")
    os.chmod(exe, 0o755 | bit)
    assert "setuid/setgid" in refuse(tmp_path, exe)


def need_root_and_setcap():
    if os.geteuid() != 0:
        pytest.skip("needs root (to set file capabilities and switch to another user)")
    if shutil.which("setcap") is None:
        pytest.skip("setcap (libcap2-bin) is not installed")


def capability_binary(tmp_path, basetemp):
    d = open_to_other_users(tmp_path, basetemp)
    exe = build(TARGETS / "at_secure.c", d / "capprog")
    os.chmod(exe, 0o755)
    done = subprocess.run(["setcap", "cap_net_bind_service+ep", str(exe)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot set file capabilities here: {done.stderr.strip()}")
    return d, exe


def test_file_capabilities_binary_refused_for_other_users(tmp_path, tmp_path_factory):
    need_root_and_setcap()
    d, exe = capability_binary(tmp_path, tmp_path_factory.getbasetemp())
    # the kernel does mark it secure for nobody (the premise of the refusal)
    plain = subprocess.run(
        [str(exe)], capture_output=True, text=True, user=NOBODY, group=NOBODY, extra_groups=[], timeout=30
    )
    if not plain.stdout.startswith("secure 1"):
        pytest.skip(f"file capabilities do not make a secure exec here: {plain.stdout}")
    err = refuse(d, exe, user=NOBODY)
    assert "file capabilities" in err


@pytest.mark.slow
def test_shim_ignores_its_environment_under_at_secure(tmp_path, tmp_path_factory):
    """ld.so loads a slash-less LD_PRELOAD name from a trusted directory if the file is
    set-user-ID even in secure mode: the shim is then in the process, and must stay
    passive (no connection to MEMTRACE_SOCKET)."""
    need_root_and_setcap()
    d, exe = capability_binary(tmp_path, tmp_path_factory.getbasetemp())
    trusted = None
    for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if os.path.isdir(folder) and os.access(folder, os.W_OK):
            trusted = folder
            break
    if trusted is None:
        pytest.skip("no writable trusted library folder")
    name = f"libmemtrace-atsecure-test-{os.getpid()}.so"
    installed = os.path.join(trusted, name)
    shutil.copy(shim_so(), installed)
    os.chmod(installed, 0o4755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = str(d / "collector.sock")
    try:
        listener.bind(sock_path)
        os.chmod(sock_path, 0o777)
        listener.listen(8)
        listener.settimeout(0.2)
        env = {
            "PATH": "/usr/bin:/bin",
            "LD_PRELOAD": name,
            "MEMTRACE_SOCKET": sock_path,
            "MEMTRACE_COLLECTOR_PID": str(os.getpid()),
        }

        def run_as_nobody(program):
            out = subprocess.run(
                [str(program)],
                capture_output=True,
                text=True,
                env=env,
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                timeout=30,
            )
            connected = False  # a traced process connects twice: hello, and a wake at exit
            while True:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    return out, connected
                conn.close()
                connected = True

        # control: the same program without capabilities connects (the test can see it)
        plain = d / "plainprog"
        shutil.copy(exe, plain)
        os.chmod(plain, 0o755)
        out, connected = run_as_nobody(plain)
        assert out.stdout.startswith("secure 0 shim 1") and connected, out
        # secure execution: the shim is loaded, and stays silent
        out, connected = run_as_nobody(exe)
        assert out.returncode == 0 and out.stdout.startswith("secure 1 shim 1"), out
        assert not connected
    finally:
        listener.close()
        os.unlink(installed)
