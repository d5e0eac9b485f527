#!/usr/bin/env bash
# Build the collector's C code (csrc/collector/, tracer._native) with AddressSanitizer and
# UndefinedBehaviorSanitizer into a separate folder, and run the reader fuzz corpus
# through it (tests/fuzz/fuzz_reader.py). The installed memtrace is not touched.
#
#   tests/fuzz/run_asan.sh [SEED.mtrace] [WORKDIR]
#
# Without SEED, a small capture of a C program is made first. Prints the number of
# inputs fuzzed; exits non-zero on any finding (a sanitizer report kills the worker
# and is reported with its first lines).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
WORK=${2:-$(mktemp -d -t memtrace-asan.XXXXXX)}
ASAN_LIB=$(gcc -print-file-name=libasan.so)
if [ ! -e "$ASAN_LIB" ] || [ "$ASAN_LIB" = "libasan.so" ]; then
  echo "run_asan.sh: gcc's libasan is not installed" >&2
  exit 77
fi
mkdir -p "$WORK/native"
"$PY" - "$WORK/native" <<'PYEOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("build_ffi", "src/tracer/_build_ffi.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
ffi = mod.ffibuilder
name, source, ext, kwds = ffi._assigned_source
# every UBSan check aborts the worker (-fno-sanitize-recover)
san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
       "-fno-omit-frame-pointer", "-g", "-O1"]
import os
kwds = dict(kwds, extra_compile_args=["-std=gnu11"] + san, extra_link_args=san,
            sources=[os.path.abspath(s) for s in kwds["sources"]],
            include_dirs=[os.path.abspath(d) for d in kwds["include_dirs"]])
ffi._assigned_source = (name, source, ext, kwds)
print(ffi.compile(tmpdir=sys.argv[1]))
PYEOF
SEED=${1:-}
if [ -z "$SEED" ]; then
  printf '#include <stdlib.h>\n#include <sys/mman.h>\nint main(void){void*k[20];for(int i=0;i<20;i++)k[i]=malloc(100*i+1);for(int i=0;i<10;i++)free(k[i]);void*m=mmap(0,8192,3,0x22,-1,0);munmap(m,4096);return 0;}\n' > "$WORK/seed.c"
  cc -o "$WORK/seedprog" "$WORK/seed.c"
  "$PY" -m tracer run -q --no-report -f -o "$WORK/seed.mtrace" -- "$WORK/seedprog"
  SEED="$WORK/seed.mtrace"
fi
rm -rf "$WORK/corpus"
"$PY" tests/fuzz/fuzz_reader.py make "$SEED" "$WORK/corpus" --every-offset --flips ${FLIPS:-500} >/dev/null
LD_PRELOAD="$ASAN_LIB" \
ASAN_OPTIONS="detect_leaks=0:hard_rss_limit_mb=1024:allocator_may_return_null=1:abort_on_error=0" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  "$PY" tests/fuzz/fuzz_reader.py run "$WORK/corpus" --native "$WORK/native" --json "$WORK/result.json"
