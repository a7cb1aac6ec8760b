#!/usr/bin/env bash
# Compile the tc redirector (bpf/redirect.c) into the object the loader ships as package data.
#
# Runs at install/build time (scripts/setup -> scripts/build), never at run time: the shim and
# its loader only load the finished object through libbpf. Idempotent: does nothing when the
# object is newer than the source and this script. Needs clang and libbpf-dev (bpf_helpers.h);
# -I/usr/include/<multiarch> is needed for asm/types.h under -target bpf.
#
#   plugins/ebpf_redirect/build.sh            build if out of date
#   plugins/ebpf_redirect/build.sh --force    always rebuild
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC="$HERE/bpf/redirect.c"
OUT="$HERE/src/zeropod_ebpf_redirect/redirect.bpf.o"
CLANG=${CLANG:-clang}

log() { printf '[ebpf_redirect build] %s\n' "$*" >&2; }

if [ "${1:-}" != "--force" ] && [ -f "$OUT" ] && [ "$OUT" -nt "$SRC" ] && [ "$OUT" -nt "$0" ]; then
  log "up to date: $OUT"
  exit 0
fi
command -v "$CLANG" >/dev/null || { log "ERROR: $CLANG not found (apt-get install clang)"; exit 1; }
[ -r /usr/include/bpf/bpf_helpers.h ] || { log "ERROR: bpf/bpf_helpers.h missing (apt-get install libbpf-dev)"; exit 1; }
multiarch=$("$CLANG" -print-multiarch 2>/dev/null || true)
[ -n "$multiarch" ] && [ -d "/usr/include/$multiarch/asm" ] || multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$CLANG" -O2 -g -Wall -Werror -target bpf -I"/usr/include/$multiarch" -c "$SRC" -o "$tmp"
mv -f "$tmp" "$OUT"   # atomic: a concurrent loader never sees a half-written object
log "built $OUT ($(stat -c %s "$OUT") bytes)"
