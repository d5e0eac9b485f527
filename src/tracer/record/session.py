"""The private rendezvous between memtrace and the processes it traces.

A fresh 0700 directory (mkdtemp) holding a listening Unix socket, bound under
umask 077 so there is no moment when another user could connect. Kept free of
heavy imports: the launcher makes it and starts the target first, and loads
the collector (NumPy, cffi) while the target starts up.
"""

import os
import socket
import tempfile


class Session:
    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="memtrace-")  # mode 0700
        self.socket_path = os.path.join(self.directory, "collector.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            self.listener.bind(self.socket_path)
        finally:
            os.umask(old_umask)
        self.listener.listen(128)
        self.listener.setblocking(False)

    def close(self) -> None:
        self.listener.close()
        try:
            os.unlink(self.socket_path)
            os.rmdir(self.directory)
        except OSError:
            pass
