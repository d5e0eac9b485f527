#!/usr/bin/env bash
# Run a command inside a Debian sid root that has CPython 3.14 and 3.15.
#
#   .ci/sid-root.sh [--copy-source] -- COMMAND [ARGS...]
#
# The root is built once (mmdebstrap, about a minute) into $MEMTRACE_SID_ROOT
# (default: ~/.cache/memtrace/sid-root) with python3.14-dev, python3.15-dev, their
# venv packages and gcc, plus one virtual environment per Python (/opt/py3.14,
# /opt/py3.15) holding memtrace's run and test dependencies. Later calls reuse it.
#
# --copy-source copies this checkout (without .git and build outputs) to /src in
# the root before running COMMAND there, so `pip install /src` builds it fresh.
# Needs root (chroot and bind mounts) and Debian's mmdebstrap.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${MEMTRACE_SID_ROOT:-$HOME/.cache/memtrace/sid-root}"
mirror="${MEMTRACE_SID_MIRROR:-http://deb.debian.org/debian}"
pythons="3.14 3.15"

copy_source=0
while [ $# -gt 0 ]; do
  case "$1" in
    --copy-source) copy_source=1; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done

die() { echo "sid-root: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (chroot and bind mounts)"

build_root() {
  command -v mmdebstrap >/dev/null 2>&1 || {
    command -v apt-get >/dev/null 2>&1 || die "mmdebstrap is missing and apt-get is not here"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
  }
  local packages="gcc,libc6-dev,ca-certificates"
  for v in $pythons; do packages="$packages,python$v-dev,python$v-venv"; done
  rm -rf "$root.partial"
  mkdir -p "$(dirname "$root")"
  # sid's Release file may be older than its Valid-Until on a cached mirror.
  mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
    --include="$packages" sid "$root.partial" "$mirror" >"$root.partial.log" 2>&1 \
    || { tail -20 "$root.partial.log" >&2; die "mmdebstrap failed (log: $root.partial.log)"; }
  mv "$root.partial" "$root"
}

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

bind() {  # bind SRC DEST-inside-root
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  mounted+=("$root$2")
}

enter() {  # run a command inside the root
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "$@"
}

[ -x "$root/usr/bin/python3.15" ] || build_root
bind /proc /proc
bind /dev /dev
bind /sys /sys
# pip needs the host's resolver and CA bundle.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
[ -f /etc/ssl/certs/ca-certificates.crt ] && \
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

for v in $pythons; do
  if [ ! -x "$root/opt/py$v/bin/python" ]; then
    enter "python$v" -m venv "/opt/py$v"
    enter "/opt/py$v/bin/pip" install -q --upgrade pip
    enter "/opt/py$v/bin/pip" install -q numpy cffi psutil zstandard pytest setuptools wheel
  fi
done

if [ "$copy_source" = 1 ]; then
  rm -rf "$root/src"
  mkdir -p "$root/src"
  (cd "$repo" && tar --exclude=.git --exclude=build --exclude='*.egg-info' --exclude='*.so' \
     --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - .) \
    | tar -xf - -C "$root/src"
fi

[ $# -gt 0 ] || exit 0
enter "$@"
