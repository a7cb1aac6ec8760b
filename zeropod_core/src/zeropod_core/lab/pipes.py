"""``fs.pipe-max-size`` for CRIU's page server, raised for a run and put back.

CRIU's lazy page server sizes its pipes up to 4 MiB; above ``pipe-max-size`` (1 MiB by
default) only CAP_SYS_RESOURCE may make them, which root lacks on these VMs. The managers
check the same (``/healthz``) and refuse a live migration while it is too small.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
CRIU_PIPE_BYTES = 4 << 20


@contextmanager
def pipe_max_size_for_criu() -> Iterator[None]:
    """Raise ``fs.pipe-max-size`` to CRIU's 4 MiB page-server pipes and put it back."""
    old = int(PIPE_MAX_SIZE.read_text())
    if old < CRIU_PIPE_BYTES:
        PIPE_MAX_SIZE.write_text(str(CRIU_PIPE_BYTES))
    try:
        yield
    finally:
        if old < CRIU_PIPE_BYTES:
            PIPE_MAX_SIZE.write_text(str(old))
