#!/usr/bin/env bash
# Overhead of memtrace vs untraced vs memray, side by side in one run, on the shared
# workloads and on ours (call_heavy). Needs memray installed in the same Python.
#   bash benchmarks/compare.sh [RUNS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-5}"
shared="$here/../../shared/bench"
mkdir -p "$here/results"
stamp=$(date +%Y%m%d-%H%M%S)
python "$shared/compare.py" -n "$runs" --json "$here/results/shared-$stamp.json"
python "$shared/compare.py" -n "$runs" --dir "$here/workloads" -w call_heavy \
  --json "$here/results/ours-$stamp.json"
