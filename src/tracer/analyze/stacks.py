"""A process's stacks as arrays, for reports that look at every site at once.

The capture interns stacks as a trie (node -> parent node, code, line). Walking it
per site in Python costs a dictionary lookup per frame; here it is indexed once
(rows sorted by node id), and the questions reports ask — the innermost frame,
the innermost frame of some kind, the path from the outermost frame — are
answered for all stacks together with NumPy.

A node id that the capture never described ends its stack in a "lost" frame (the
reports' `<stack lost>`); so does, in a corrupt capture, a parent link that goes
round in a cycle or more than MAX_STACK_DEPTH frames deep.
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from tracer import _format as fmt
from tracer._native import ffi, lib

MAX_STACK_DEPTH = 4096  # guards against cyclic parent links in a corrupt capture
ROOT = -1  # above the outermost frame
LOST = -2  # a node the capture never described
NODE_RECORD = fmt.c_dtype("mt_node_payload", names=("id", "parent", "code", "line"))


def meta_index(data: bytes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(type, payload offset, payload length) of each metadata record, in order."""
    buf = ffi.from_buffer(data)
    n = lib.mt_meta_index(buf, len(data), ffi.NULL, ffi.NULL, ffi.NULL, 0)
    types = np.zeros(n, np.uint16)
    offsets = np.zeros(n, np.uint64)
    lengths = np.zeros(n, np.uint16)
    if n:
        lib.mt_meta_index(
            buf,
            len(data),
            ffi.from_buffer("uint16_t[]", types),
            ffi.from_buffer("uint64_t[]", offsets),
            ffi.from_buffer("uint16_t[]", lengths),
            n,
        )
    return types, offsets.astype(np.int64), lengths.astype(np.int64)


HEAPSTATS_RECORD = fmt.c_dtype("mt_heapstats_payload")


def fixed_records(data: bytes, offsets: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Records of one fixed layout at these payload offsets (each long enough)."""
    rows: np.ndarray
    if dtype.itemsize % 4 == 0 and not (offsets % 4).any():
        # payloads follow 4-byte record headers at 4-byte boundaries: gather words
        words = np.frombuffer(data, np.uint32, len(data) // 4)
        at = offsets // 4
        rows = np.empty((len(offsets), dtype.itemsize // 4), np.uint32)
        for k in range(rows.shape[1]):
            rows[:, k] = words[at + k]
    else:
        rows = np.frombuffer(data, np.uint8)[offsets[:, None] + np.arange(dtype.itemsize)]
    return np.ascontiguousarray(rows).view(dtype).reshape(-1)


def code_records(data: bytes, offsets, lengths) -> Dict[int, Tuple[str, str, int]]:
    """{code id: (file, function, first line)} of the CODE records (the last one
    of an id wins, as when the records are read one by one)."""
    codes = {}
    head = fmt.PAYLOADS[fmt.META_CODE]
    for at, length in zip(offsets.tolist(), lengths.tolist()):
        if length < head.size:
            continue
        cid, first, flen, nlen = head.unpack_from(data, at)
        end, text = at + length, at + head.size
        file = data[text : min(text + flen, end)].decode("utf-8", "replace")
        name = data[text + flen : min(text + flen + nlen, end)].decode("utf-8", "replace")
        codes[cid] = (file, name, first)
    return codes


def _last_per_id(ids: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct id, in id order."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    last = np.ones(len(order), bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return order[last]


class StackTable:
    """The trie of one process. Row r is a node (records[r] its NODE record):
    parent[r] is a row, ROOT or LOST;
    code[r] indexes `files`/`functions` (the last entry: a code never described);
    depth[r] is the number of frames from r to the outermost, a lost frame included."""

    def __init__(self, nodes: np.ndarray, codes: Dict[int, Tuple[str, str, int]]):
        keep = _last_per_id(nodes["id"]) if len(nodes) else np.zeros(0, np.int64)
        nodes = nodes[keep]
        if len(nodes) and nodes["id"][0] == 0:
            nodes = nodes[1:]  # node 0 means "no Python frame", never a frame
        self.records = nodes  # the NODE records, as the capture has them
        self.ids = nodes["id"].astype(np.int64)
        self.line = nodes["line"].astype(np.int64)
        code_ids = np.array(sorted(codes), dtype=np.int64)
        self.files = [codes[c][0] for c in code_ids.tolist()] + ["<unknown>"]
        self.functions = [codes[c][1] for c in code_ids.tolist()] + ["<unknown>"]
        self.code = self._lookup(code_ids, nodes["code"].astype(np.int64), len(code_ids))
        parent_ids = nodes["parent"].astype(np.int64)
        parent = self._lookup(self.ids, parent_ids, LOST)
        parent[parent_ids == 0] = ROOT
        self.parent, self.depth = chain_depths(parent)

    def __len__(self) -> int:
        return len(self.ids)

    def distinct(self, what: str) -> Tuple[list, np.ndarray]:
        """(distinct values, each code's index among them) of the codes' "files",
        "functions" or "pairs" (function, file); reports intern these, not every code."""
        cache = self.__dict__.setdefault("_distinct", {})
        if what not in cache:
            values = list(zip(self.functions, self.files)) if what == "pairs" else getattr(self, what)
            index = {v: i for i, v in enumerate(dict.fromkeys(values))}
            cache[what] = list(index), np.fromiter(map(index.__getitem__, values), np.int64, len(values))
        return cache[what]

    def interned(self, interner: "Interner", what: str) -> np.ndarray:
        """The id in `interner` of each code's value (see distinct)."""
        values, index = self.distinct(what)
        return interner.many(values)[index]

    @staticmethod
    def _lookup(sorted_ids: np.ndarray, ids: np.ndarray, missing: int) -> np.ndarray:
        """Positions of ids in sorted_ids, `missing` where absent."""
        if len(sorted_ids) == 0:
            return np.full(len(ids), missing, np.int64)
        if sorted_ids[0] == 1 and sorted_ids[-1] == len(sorted_ids):  # ids 1..n, as the shim numbers them
            at = ids - 1
            return np.where((at >= 0) & (at < len(sorted_ids)), at, missing).astype(np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[at] == ids, at, missing).astype(np.int64)

    def rows(self, stacks) -> np.ndarray:
        """Rows of stack node ids: ROOT for 0 (no Python frame), LOST if undescribed."""
        stacks = np.asarray(stacks, dtype=np.int64)
        rows = self._lookup(self.ids, stacks, LOST)
        rows[stacks == 0] = ROOT
        return rows

    def row_of(self, stack: int) -> int:
        return int(self.rows([stack])[0])

    def nearest(self, rows: np.ndarray, flag: np.ndarray, lost_flag: bool) -> np.ndarray:
        """For each row, the first row on the way to the outermost frame (itself
        included) whose flag is set; LOST when the walk reaches a lost frame and
        lost_flag is set; ROOT when no frame qualifies."""
        parent = self.parent if lost_flag else np.where(self.parent == LOST, ROOT, self.parent)
        out = nearest_flagged(parent, flag, rows)
        if not lost_flag:
            out[out == LOST] = ROOT
        return out

    def paths(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The frames of each row from the outermost to the row itself, as rows
        (LOST for a lost frame), all in one array: (starts, frames), the frames of
        rows[i] being frames[starts[i]:starts[i + 1]]. ROOT has no frames."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.where(rows == LOST, 1, take(self.depth, rows, 0))
        starts = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        frames = np.empty(int(starts[-1]), np.int64)
        cur, at, left = rows.copy(), starts[1:] - 1, lengths.copy()
        while True:
            live = left > 0
            if not live.any():
                break
            frames[at[live]] = cur[live]
            cur[live] = take(self.parent, cur[live], ROOT)
            at -= 1
            left -= 1
        return starts, frames


def nearest_flagged(parent: np.ndarray, flag: np.ndarray, rows) -> np.ndarray:
    """For each row, the first row from it towards the root (itself included)
    whose flag is set, else where its chain ends (ROOT or LOST); parent links
    must not go round (see chain_depths)."""
    rows_now = np.arange(len(parent))
    if (parent < rows_now).all():  # parents first (the shim numbers them so): one pass
        step = np.empty(len(parent), np.int64)
        lib.mt_nearest_flagged(
            ffi.from_buffer("int64_t[]", np.ascontiguousarray(parent, np.int64)),
            ffi.from_buffer("uint8_t[]", np.ascontiguousarray(flag, np.uint8)),
            len(parent),
            ffi.from_buffer("int64_t[]", step),
        )
        return take(step, rows)
    step = np.where(flag, rows_now, parent)
    # pointer doubling: flagged rows point at themselves, others jump up
    while True:
        moved = take(step, step)
        if np.array_equal(moved, step):
            break
        step = moved
    return take(step, rows)


def take(values: np.ndarray, rows, missing=None) -> np.ndarray:
    """values[rows] where rows >= 0; elsewhere `missing` (None: the row itself)."""
    rows = np.asarray(rows, dtype=np.int64)
    found = values[np.maximum(rows, 0)] if len(values) else np.zeros(len(rows), values.dtype)
    return np.where(rows >= 0, found, rows if missing is None else missing)


def chain_depths(parent: np.ndarray, limit: int = MAX_STACK_DEPTH) -> Tuple[np.ndarray, np.ndarray]:
    """(parent, depth: rows from each row to the end of its chain, a lost frame
    included) with every chain ending at ROOT or LOST: a row whose chain does not
    end within `limit` rows (a cycle, in a corrupt capture) gets a LOST parent."""
    up, depth = parent.copy(), np.ones(len(parent), np.int64)
    for _ in range(limit.bit_length()):
        inner = up >= 0
        if not inner.any():
            break
        safe = np.where(inner, up, 0)
        depth = np.where(inner, depth + depth[safe], depth)
        up = np.where(inner, up[safe], up)
    broken = (up >= 0) | (depth + (up == LOST) >= limit)
    if broken.any():
        parent = parent.copy()
        parent[broken] = LOST
        return chain_depths(parent, limit)
    return parent, depth + (up == LOST)


def is_library_file(files: List[str], library_paths) -> np.ndarray:
    """Which files are the stdlib's, installed packages' or the import machinery's."""
    prefixes = tuple(p.rstrip("/") + "/" for p in library_paths)
    return np.array([f.startswith("<frozen") or f.startswith(prefixes) for f in files], bool)


class Interner:
    """Dense ids for hashable keys, in order of first use (each interner's users know
    what its keys are: strings, (name, file) pairs, frame keys)."""

    def __init__(self) -> None:
        self.ids: Dict[Any, int] = {}
        self.keys: List[Any] = []

    @classmethod
    def of(cls, keys: list) -> "Interner":
        """An interner holding these distinct keys, in this order."""
        interner = cls()
        interner.keys = list(keys)
        interner.ids = dict(zip(interner.keys, range(len(interner.keys))))
        return interner

    def __call__(self, key) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return i

    def many(self, keys) -> np.ndarray:
        keys = list(keys)
        for key in dict.fromkeys(keys):  # new ones, in order of first use
            if key not in self.ids:
                self.ids[key] = len(self.keys)
                self.keys.append(key)
        return np.fromiter(map(self.ids.__getitem__, keys), np.int64, len(keys))

    def __len__(self) -> int:
        return len(self.keys)


def frame_key(function_ids: np.ndarray, lines: Union[np.ndarray, int]) -> np.ndarray:
    """One int64 per (function id, line) pair (lines are 32-bit in the capture)."""
    return (np.asarray(function_ids, np.int64) << 32) | (np.asarray(lines, np.int64) & 0xFFFFFFFF)


def frame_key_parts(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    lines = (keys & 0xFFFFFFFF).astype(np.int64)
    return keys >> 32, np.where(lines >= 1 << 31, lines - (1 << 32), lines)


def first_of_each(ids: np.ndarray, size: Optional[int] = None) -> np.ndarray:
    """Position of the first occurrence of each id 0..size-1 (len(ids) where absent)."""
    size = int(ids.max()) + 1 if size is None and len(ids) else (size or 0)
    first = np.full(size, len(ids), np.int64)
    np.minimum.at(first, ids, np.arange(len(ids)))
    return first


def group_sum(ids: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Exact integer sums of values per id."""
    dtype = np.uint64 if values.dtype.kind == "u" else np.int64
    values = values.astype(dtype, copy=False)
    # np.bincount adds in float64: exact while no sum can reach 2^53
    if len(values) == 0 or int(np.abs(values).max()) * len(values) < 1 << 53:
        return np.bincount(ids, weights=values, minlength=size).astype(dtype)
    out = np.zeros(size, dtype)
    np.add.at(out, ids, values)
    return out


def meta_text_records(data: bytes, types, offsets, lengths) -> List[Tuple[int, bytes]]:
    """(type, payload) of the libraries', threads' and text records (few)."""
    pick = np.flatnonzero((types == fmt.META_LIB) | (types == fmt.META_THREAD) | (types == fmt.META_TEXT))
    return [(int(types[i]), data[int(offsets[i]) : int(offsets[i]) + int(lengths[i])]) for i in pick.tolist()]
