"""json.dumps(obj, indent=N) text, made faster for big documents.

With an indent, the standard library encodes in pure Python, one generator step
per value; `stats --json` of a real program has hundreds of thousands of values.
This writes the same text (ensure_ascii, the default separators) with the C string
escaper and one join per container.
"""

import json
from json.encoder import encode_basestring_ascii as _string
from typing import Any, Iterable, List

_INF = float("inf")


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == _INF:
        return "Infinity"
    if o == -_INF:
        return "-Infinity"
    return float.__repr__(o)


def _scalar(v):
    """JSON text of a str, int, float, bool or None; None for anything else."""
    t = type(v)
    if t is str:
        return _string(v)
    if t is int:
        return int.__repr__(v)
    if t is float:
        return _float(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    return None


def _key(k) -> str:
    """A dict key as json.dumps writes it (keys that are not str are converted)."""
    if type(k) is str:
        return _string(k)
    text = _scalar(k)
    if text is None:
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
    return _string(text)


def dumps(obj, indent: int = 1) -> str:
    """The text of json.dumps(obj, indent=indent, ensure_ascii=True)."""
    out: List[str] = []
    _encode(obj, "\n", " " * indent, out)
    return "".join(out)


def _encode(o, newline: str, step: str, out: list) -> None:
    text = _scalar(o)
    if text is not None:
        out.append(text)
        return
    items: Iterable[Any]
    if isinstance(o, dict):
        items, opener, closer = o.items(), "{", "}"
        if not o:
            out.append("{}")
            return
    elif isinstance(o, (list, tuple)):
        items, opener, closer = o, "[", "]"
        if not o:
            out.append("[]")
            return
    else:
        out.append(json.dumps(o))  # raises the standard library's TypeError
        return
    inner = newline + step
    separator = "," + inner
    out.append(opener + inner)
    first = True
    for item in items:
        if first:
            first = False
        else:
            out.append(separator)
        if opener == "{":
            key, value = item
            out.append(_string(key) + ": " if type(key) is str else _key(key) + ": ")
        else:
            value = item
        t = type(value)
        if t is int:
            out.append(int.__repr__(value))
        elif t is str:
            out.append(_string(value))
        else:
            _encode(value, inner, step, out)
    out.append(newline + closer)
