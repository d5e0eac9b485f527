"""Errors that end a memtrace command with one clear line and an exit code."""

from typing import Optional


class MemtraceError(Exception):
    """A problem the user can act on: printed as `memtrace: <message>`."""

    exit_code = 2

    def __init__(self, message: str, exit_code: Optional[int] = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CaptureError(MemtraceError):
    """A capture file that cannot be read (wrong magic, version, corrupt chunk)."""
