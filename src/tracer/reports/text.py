"""What every report writes with: the traced program's strings made safe for a
terminal, byte counts for people (or exact, with --raw), and how a run ended."""

import unicodedata

from tracer.analyze.model import Model

_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def clean(text) -> str:
    """Strings from the traced program never reach the terminal as control codes
    (escape sequences, line separators, bidi overrides): each becomes '?'."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join("?" if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


RAW = False  # --raw: exact byte counts instead of KiB/MiB


def human(n: float) -> str:
    if RAW:
        return f"{int(n):,}"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe_end(model: Model) -> str:
    end = model.end
    if getattr(model, "live", False):
        return "still running"
    if not end:
        return "the capture is incomplete: the run was cut short"
    if end.get("merged"):  # memtrace merge: each run's own end is in `memtrace cluster`
        return f"{end['merged']} captures merged; the longest run took {end.get('duration', 0):.2f} s"
    if end.get("signal"):
        return f"killed by signal {end['signal']} after {end.get('duration', 0):.2f} s"
    return f"exited with code {end.get('exit_code')} after {end.get('duration', 0):.2f} s"
