"""Fixtures of the criu plugin tests (helpers live in ``zpcriu_lab``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from zpcriu_lab import MISSING, Lab, remove_rootfs_cache

from zeropod_criu.settings import CriuSettings


@pytest.fixture(scope="session", autouse=True)
def _rootfs_cache() -> Iterator[None]:
    """Root filesystems are extracted once per session and removed at its end."""
    yield
    remove_rootfs_cache()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    """A reaper on the test's loop, and every container and namespace removed afterwards."""
    if MISSING:
        pytest.skip(MISSING)
    lab = Lab.create(tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


@pytest.fixture(params=["direct", "runc"])
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> CriuSettings:
    """Plugin settings with a private image root (kdat handling is tested on its own), once
    per mode: CRIU's RPC from the shim (``direct``) and ``runc checkpoint``/``restore``."""
    # debug logs (level 4): several tests read what CRIU did in dump.log / restore.log
    return CriuSettings(image_root=tmp_path / "images", kdat_cache=False, mode=request.param,
                        log_level=4)
