"""memtrace: a native allocation tracer for Python (import package `tracer`)."""
__version__ = "0.1.0"
