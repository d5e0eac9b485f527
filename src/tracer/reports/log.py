"""`memtrace log`: the event log, ltrace style:
`_multiarray_umath…so->malloc(123000) = 0x7f… at script.py:7`."""

import fnmatch
from typing import Optional

import numpy as np

from tracer import _format as fmt
from tracer.analyze.model import Model
from tracer.analyze.regions import event_filter
from tracer.analyze.regions import names as region_names
from tracer.reports.text import clean


def render(
    model: Model, out, min_size: int = 0, library: Optional[str] = None, limit: int = 0, frees: bool = False
) -> int:
    written = 0
    for proc in model.processes:
        libs = {lid: path.rsplit("/", 1)[-1] for lid, path in proc.libs.items()}
        wanted_libs = None
        if library:
            wanted_libs = np.array(
                [lid for lid, name in libs.items() if fnmatch.fnmatch(name, library) or library in name],
                dtype=np.uint16,
            )
        where = {}
        inside = event_filter(model, proc)  # --region: only what happened inside it
        regions = region_names(proc)
        for t, events in model.capture.events(proc.sid):
            kinds = events["kind"]
            keep = (kinds != 10) & (kinds != fmt.MUNMAP) if not frees else np.ones(len(events), bool)
            if inside is not None:
                keep &= inside.mask(events)
            keep &= (events["flags"] & fmt.FLAG_KEEP) == 0  # DONTUNMAP: nothing was unmapped
            if min_size:
                keep &= events["size"] >= min_size
            if wanted_libs is not None:
                keep &= np.isin(events["lib"], wanted_libs)
            keep |= kinds == fmt.REGION  # where threads enter and leave regions
            for e in events[keep]:
                kind = fmt.KIND_NAMES[int(e["kind"])]
                if kind == "region":  # a thread enters or leaves a region
                    name = regions.get(int(e["addr"]), (f"<region {int(e['addr'])}>",))[0]
                    if inside is None or int(e["addr"]) in inside.wanted:
                        out.write(
                            f"{t:9.3f} {proc.pid} {int(e['tid'])} "
                            f"{'enter' if int(e['size']) else 'leave'} region {clean(name)!r}\n"
                        )
                    continue
                stack = int(e["stack"])
                if stack not in where:
                    frame = proc.frame(stack) if stack else None
                    where[stack] = (
                        f" at {clean(frame.file)}:{frame.line} in {clean(frame.function)}"
                        if frame
                        else f" in thread {clean(proc.thread_name(int(e['tid'])))}"
                    )
                if kind in ("free", "munmap"):
                    line = f"{kind}(0x{int(e['addr']):x}"
                    line += f", {int(e['size'])})" if kind == "munmap" else ")"
                    out.write(f"{t:9.3f} {proc.pid} {int(e['tid'])} {line}\n")
                else:
                    lib = clean(libs.get(int(e["lib"]), "?"))
                    numpy = " [NumPy data]" if int(e["flags"]) & fmt.FLAG_NUMPY else ""
                    out.write(
                        f"{t:9.3f} {proc.pid} {int(e['tid'])} {lib}->{kind}({int(e['size'])}) "
                        f"= 0x{int(e['addr']):x}{numpy}{where[stack]}\n"
                    )
                written += 1
                if limit and written >= limit:
                    return written
    return written
