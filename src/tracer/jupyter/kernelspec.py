"""`memtrace jupyter install` and the kernel it registers.

The kernel spec ("Python 3 (memtrace)") starts `memtrace jupyter kernel -f
CONNECTION_FILE`, which runs ipykernel under memtrace like `memtrace run` does,
with the capture named after the kernel (memtrace-kernel-ID.mtrace, in the
notebook's folder unless --capture-dir says where). Jupyter signals the
kernel's process group, so interrupts reach the kernel itself; on shutdown the
capture is completed like any run's.
"""

import json
import os
import sys
import tempfile
from typing import List, Optional

from tracer.errors import MemtraceError

NAME = "memtrace"
DISPLAY_NAME = "Python 3 (memtrace)"


def kernel_argv(capture_dir: Optional[str]) -> List[str]:
    argv = [sys.executable, "-m", "tracer", "jupyter", "kernel", "-f", "{connection_file}"]
    if capture_dir:
        argv += ["--capture-dir", os.path.abspath(capture_dir)]
    return argv


def install(
    user: bool = True,
    prefix: Optional[str] = None,
    name: str = NAME,
    display_name: str = DISPLAY_NAME,
    capture_dir: Optional[str] = None,
) -> str:
    """Register the kernel spec; returns the folder it went into."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise MemtraceError(
            "memtrace jupyter install needs jupyter_client and ipykernel "
            "(pip install jupyter_client ipykernel)"
        ) from None
    try:
        import ipykernel  # noqa: F401  (the kernel must be able to start)
    except ImportError:
        raise MemtraceError(
            f"ipykernel is not installed for {sys.executable} (pip install ipykernel)"
        ) from None
    spec = {
        "argv": kernel_argv(capture_dir),
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": False, "memtrace": True},
    }
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        try:
            return KernelSpecManager().install_kernel_spec(
                folder, kernel_name=name, user=user and prefix is None, prefix=prefix
            )
        except OSError as exc:
            raise MemtraceError(f"cannot install the kernel spec: {exc}") from None


def capture_path(connection_file: str, capture_dir: Optional[str]) -> str:
    """memtrace-kernel-ID.mtrace, ID from kernel-ID.json."""
    base = os.path.splitext(os.path.basename(connection_file))[0]
    kernel_id = base[len("kernel-") :] if base.startswith("kernel-") else base
    return os.path.join(capture_dir or os.getcwd(), f"memtrace-kernel-{kernel_id}.mtrace")


def run_kernel(connection_file: str, capture_dir: Optional[str]) -> int:
    from tracer.record import launcher

    if capture_dir:
        os.makedirs(capture_dir, exist_ok=True)
    result = launcher.run(
        launcher.RunOptions(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", connection_file],
            output=capture_path(connection_file, capture_dir),
            force=True,
            quiet=True,
            no_report=True,
        )
    )
    return result.status
