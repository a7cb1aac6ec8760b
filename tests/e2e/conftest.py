"""The end-to-end suite runs once per restore path of the criu plugin.

``lab_containerd`` is overridden here with one private containerd per mode: its shims inherit
``ZEROPOD_CRIU_MODE``, so every test of this folder runs against the direct path (CRIU's RPC
from the shim, the default) and against the runc fallback (``runc checkpoint``/``restore``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from zeropod_core.lab.containerd import PrivateContainerd, lab_base

CRIU_MODES = ("direct", "runc")


def _stack_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, runc and network namespaces)"
    missing = [tool for tool in ("containerd", "ctr", "runc", "ip") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}: run scripts/setup" if missing else None


@pytest.fixture(scope="session", params=CRIU_MODES)
def lab_containerd(request: pytest.FixtureRequest) -> Iterator[PrivateContainerd]:
    reason = _stack_missing()
    if reason:
        pytest.skip(reason)
    daemon = PrivateContainerd.start(lab_base(f"zeropod-test-{request.param}"),
                                     env={"ZEROPOD_CRIU_MODE": request.param})
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.base, ignore_errors=True)
