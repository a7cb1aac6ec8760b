#!/usr/bin/env bash
# Build the shim's start launcher (launcher.c) into the venv as containerd-shim-zeropod-v2,
# in place of pip's console script (the launcher execs `python -m zeropod_core.shim.main` for
# everything but the fast path of `start`). Run by scripts/build after the venv is installed;
# rebuilds only when the source, this script or the baked-in paths changed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${ZEROPOD_VENV:-$(cd "$HERE/../.." && pwd)/.venv}
PY="$VENV/bin/python"
OUT="$VENV/bin/containerd-shim-zeropod-v2"
CC=${CC:-$(command -v cc || command -v gcc || command -v clang)}
[ -x "$PY" ] || { echo "[launcher build] no venv at $VENV" >&2; exit 1; }
IDENTITY=$("$PY" -c 'from zeropod_core.shim.template import code_identity; print(code_identity())')
PYTHON=$("$PY" -c 'import sys; print(sys.executable)')
stamp="$OUT.build-stamp"
want=$(printf '%s\n%s\n' "$IDENTITY" "$PYTHON" | cat - "$HERE/launcher.c" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$OUT" ]; then
  echo "[launcher build] up to date: $OUT" >&2
  exit 0
fi
"$CC" -O2 -Wall -Wextra -Werror -o "$OUT.tmp" "$HERE/launcher.c" \
  -DPYTHON="\"$PYTHON\"" -DIDENTITY="\"$IDENTITY\""
mv "$OUT.tmp" "$OUT"
echo "$want" > "$stamp"
echo "[launcher build] built $OUT" >&2
