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

from zeropod_core.lab import images
from zeropod_core.lab.containerd import PrivateContainerd, lab_base
from zeropod_core.lab.pytest_plugin import LabImages

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
        # imported here, not in a session fixture of its own: pytest may set this fixture up
        # again for a mode it already had, and a cached image list would then lie
        for spec in (images.busybox_httpd_spec(), images.counter_app_spec()):
            daemon.import_image(images.build(spec))
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.base, ignore_errors=True)


@pytest.fixture
def lab_images(lab_containerd: PrivateContainerd) -> LabImages:
    """The images ``lab_containerd`` imported."""
    return LabImages(busybox=images.BUSYBOX_HTTPD, counter=images.COUNTER_APP)
