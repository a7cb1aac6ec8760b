"""Run a client that insists on a terminal (``ctr -t``, ``kubectl exec -it``) with a pty."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence


def run_in_pty(argv: Sequence[str], timeout: float = 30) -> tuple[int, str]:
    """Run ``argv`` with a new pty as its stdin, stdout and stderr; return its exit code and
    everything it wrote (until every end of the pty closed, or ``timeout``)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every slave fd closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    try:
        return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
