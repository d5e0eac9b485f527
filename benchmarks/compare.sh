#!/usr/bin/env bash
# Overhead of memtrace against the untraced run and memray, side by side in one run,
# on the workloads of this folder and the real programs of benchmarks/realworld.
#   bash benchmarks/compare.sh [RUNS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-5}"
mkdir -p "$here/results"
stamp=$(date -u +%Y%m%d-%H%M%S)
python "$here/compare.py" -n "$runs" --json "$here/results/workloads-$stamp.json"
python "$here/compare.py" -n "$runs" --dir "$here/realworld" --json "$here/results/realworld-$stamp.json"
