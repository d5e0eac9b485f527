#!/usr/bin/env bash
# Overhead of memtrace (full and --sample-rate 512K) against every peer installed here,
# side by side in one run per workload folder: benchmarks/compare.py, medians of N
# paired runs (Fil writes a folder per run: {out}-dir). memtrace is started as `python -m tracer` (like memray's `python -m memray`),
# not through a version-manager shim.
#   bash benchmarks/compare_all.sh [RUNS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs=${1:-5}
stamp=$(date -u +%Y%m%d-%H%M%S)
compare="$here/compare.py"
tracers=(
  --tracer "memtrace={python} -m tracer run --no-report -o {out} -- {python} {script}"
  --tracer "memtrace-512K={python} -m tracer run --no-report --sample-rate 512K -o {out} -- {python} {script}"
  --tracer "memray={python} -m memray run -f -q -o {out} {script}"
  --tracer "memray-native={python} -m memray run --native -f -q -o {out} {script}"
)
command -v fil-profile >/dev/null && tracers+=(--tracer "fil=fil-profile -o {out}-dir run {script}")
python -c "import scalene" 2>/dev/null && tracers+=(--tracer "scalene={python} -m scalene run -o {out} {script}")
command -v heaptrack >/dev/null && tracers+=(--tracer "heaptrack=heaptrack -o {out} {python} {script}")
python "$compare" -n "$runs" --only none "${tracers[@]}" --json "$here/results/all-$stamp.json"
