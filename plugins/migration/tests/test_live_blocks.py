"""Live migration's building blocks with real runc and CRIU (``live_bench.py``'s round): a
lazy dump whose pages stay behind CRIU's page server, the memory-less image over the image
service, ``criu lazy-pages`` fetching every page through the mutual-TLS proxies, and a lazy
restore on another runc root. The round itself checks that the counter continues and that
all the memory arrived intact (``/crc``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from zeropod_migration.tls import ClusterCA

pytestmark = pytest.mark.containerd


def _live_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "live_bench.py"
    spec = importlib.util.spec_from_file_location("zeropod_migration_live_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, CRIU, namespaces)")
@pytest.mark.skipif(not Path("/proc/sys/vm/unprivileged_userfaultfd").exists(),
                    reason="the kernel has no userfaultfd (CONFIG_USERFAULTFD): no lazy pages")
async def test_a_running_app_moves_live_with_all_its_memory() -> None:
    if any(shutil.which(tool) is None for tool in ("runc", "criu", "ip")):
        pytest.skip("missing runc, criu or ip: run scripts/setup")
    bench = _live_bench()
    work = Path(tempfile.mkdtemp(prefix="zeropod-live-test-"))
    old = bench.raise_pipe_max_size()
    try:
        result = await bench.one_round(work, bench._rootfs(work), 32, ClusterCA.create())
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if old is not None:
            bench.PIPE_MAX_SIZE.write_text(str(old))
    assert result.pages_bytes > 32 << 20  # every page of the ballast crossed the proxies
    assert result.image_bytes < 8 << 20  # the image itself travelled without the memory
