#!/usr/bin/env bash
# Time (and peak memory) of making the HTML report from a 10-million-allocation run:
# memtrace's flamegraph vs memray's, each on its own capture of alloc_storm.
#   bash benchmarks/report_speed.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
cd "$work"
workload="$here/../../shared/bench/workloads/alloc_storm.py"
memtrace run --no-report -o storm.mtrace -- python "$workload" >/dev/null
python -m memray run -q -o storm.memray "$workload" >/dev/null
ls -l storm.mtrace storm.memray
t() { /usr/bin/time -f "$1: %e s, %M KB max RSS" "${@:2}" >/dev/null 2>"$work/err" || cat "$work/err"; tail -1 "$work/err"; }
for i in 1 2 3; do
  t "memtrace flamegraph" memtrace flamegraph storm.mtrace -o m.html
  t "memray flamegraph" python -m memray flamegraph -f -o r.html storm.memray
  t "memtrace flamegraph --temporary" memtrace flamegraph storm.mtrace --temporary -o m2.html
  t "memray flamegraph --temporary-allocations" python -m memray flamegraph --temporary-allocations -f -o r2.html storm.memray
done
rm -rf "$work"
