"""The masked-directory source is checked at its path, not by a line in the mount table.

Runs in a private mount namespace (``unshare --mount``), so nothing is mounted on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import ctypes, json, os, sys
from pathlib import Path
from zeropod_criu.masked import ensure_source, is_mounted_source

base = Path(sys.argv[1])
source = base / "images" / ".masked"
seen = {}
ensure_source(source)
seen["after_mount"] = is_mounted_source(source)
libc = ctypes.CDLL(None, use_errno=True)
# a later mount over a parent folder hides ours; the mount table still lists it
assert libc.mount(b"shadow", os.fsencode(base / "images"), b"tmpfs", 0, b"size=64k") == 0
seen["listed"] = any(line.split()[4] == str(source) for line in open("/proc/self/mountinfo"))
seen["shadowed"] = is_mounted_source(source)
source.mkdir()
seen["plain_folder"] = is_mounted_source(source)
ensure_source(source)
seen["remounted"] = is_mounted_source(source)
seen["read_only"] = not os.access(source, os.W_OK)
print(json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare (private mount namespace)")
def test_a_shadowed_source_is_mounted_again(tmp_path: Path) -> None:
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SCRIPT,
         str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"after_mount": True, "listed": True, "shadowed": False,
                    "plain_folder": False, "remounted": True, "read_only": True}
