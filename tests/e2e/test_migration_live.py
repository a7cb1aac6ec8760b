"""Live migration through the shims between two lab containerds on this machine.

Each "node" is a private containerd with the zeropod runtime (its own shims, image root and
node API sockets) and a zeropod-manager serving the mutual-TLS image service; this test
process stands in for the two managers' orchestration (``zeropod_migration.live``). The
counter app holds ``APP_ALLOC_MIB`` of random memory it can verify, a counter, and a file it
wrote into its own filesystem; it moves A -> B -> A -> B while running (lazy dump on the
source, the memory-less image pulled, the pages fetched through the page-server proxies),
and after every round the counter continues, ``/crc`` checks all the memory, the file
(appended to in every round) is there, and nothing of the source is left on its node (no
task, image folder or CRIU process). The rounds are ``plugins/migration/live_shim_bench.py``'s,
which also prints the freeze times.

The nodes run with the criu plugin's defaults; ``fs.pipe-max-size`` is raised to CRIU's
4 MiB page-server pipes for the module and put back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.containerd

BENCH = Path(__file__).resolve().parents[2] / "plugins" / "migration" / "live_shim_bench.py"


def _stack_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, runc, CRIU and network namespaces)"
    missing = [t for t in ("containerd", "ctr", "runc", "ip", "criu") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/setup"
    if not Path("/proc/sys/vm/unprivileged_userfaultfd").exists():
        return "the kernel has no userfaultfd (CONFIG_USERFAULTFD): no lazy pages"
    return None


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zeropod_live_shim_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    reason = _stack_missing()
    if reason:
        pytest.skip(reason)
    return _bench()


@pytest.fixture(scope="module")
def nodes(bench: ModuleType) -> Iterator[Any]:
    with bench.pipe_max_size_for_criu(), bench.two_nodes("zeropod-livetest") as pair:
        yield pair


@pytest.mark.timeout(1800)  # 1 GiB through Python proxies, three times, on a busy VM
@pytest.mark.parametrize("mib", [256, 1024])
def test_a_running_app_moves_live_back_and_forth(bench: ModuleType, nodes: Any,
                                                 mib: int) -> None:
    """Three rounds A -> B -> A -> B; ``rounds`` checks the counter, ``/crc``, the file
    and that the source left nothing after each one. The app's big buffer crosses the
    page-server proxies; the image carries at most its small runs of pages (the criu
    plugin's ``lazy_eager_mib``, 16 MiB); CRIU's page server listened on loopback only."""
    results = bench.rounds(nodes, mib, 3, check_listen=True)
    assert len(results) == 3
    for result in results:
        assert result.pages_bytes > mib << 20  # the buffer crossed the proxies
        assert result.image_bytes < (8 + 16) << 20  # the image travelled without it
        assert result.page_server_listen == ["127.0.0.1"]
        assert result.paused_at < result.restored_at


def test_a_container_that_is_not_running_is_not_handed_over(bench: ModuleType,
                                                            nodes: Any) -> None:
    """The source shim refuses a live migration of a sleeping container (FAILED, with the
    reason), and the container stays as it was."""
    from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer
    from zeropod_core.lab.images import COUNTER_APP
    from zeropod_migration.live import LiveMigrationFailed, SourceHandOver, find_shim_socket

    node = nodes[0]
    container_id = "live-asleep"
    node.containerd.run(COUNTER_APP, container_id, runtime=ZEROPOD_RUNTIME,
                        netns=node.net.pod_path,
                        annotations={"zeropod.ctrox.dev/scaledown-duration": "1s",
                                     bench.LIVE_MIGRATE: container_id})
    try:
        bench.get(node, deadline_s=120)
        node.net.wait_asleep(timeout=30)

        async def attempt() -> str:
            shim = await find_shim_socket(node.containerd.node_socket_dir, container_id)
            source = SourceHandOver(node.creds, shim, container_id, listen=("127.0.0.1", 0))
            await source.prepare()
            try:
                with pytest.raises(LiveMigrationFailed) as failed:
                    await source.dump()
                return str(failed.value)
            finally:
                await source.close()

        assert "is SCALED_DOWN, not running" in asyncio.run(attempt())
        assert int(str(bench.get(node)["count"])) >= 1  # it still wakes and answers here
    finally:
        LabContainer(node.containerd, container_id, ZEROPOD_RUNTIME).remove()


def test_a_called_off_arrival_starts_fresh(bench: ModuleType, nodes: Any) -> None:
    """The target container waits in Create for an announced live arrival; when the target
    manager calls it off (a failed pull, the source refused), it starts as a new app."""
    from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer
    from zeropod_migration.live import TargetArrival

    node = nodes[1]
    container_id = "live-called-off"

    async def call_off() -> None:
        arrival = TargetArrival(node.creds, ("127.0.0.1", 9))
        arrival.expect(node.containerd.image_root, container_id)
        create = asyncio.ensure_future(asyncio.to_thread(bench.run_counter, node,
                                                         container_id, 8))
        await asyncio.sleep(1.0)
        assert not create.done()  # waiting for the image
        await arrival.close()
        await create

    try:
        asyncio.run(call_off())
        assert bench.get(node, deadline_s=120)["count"] == 1  # a fresh app
    finally:
        LabContainer(node.containerd, container_id, ZEROPOD_RUNTIME).remove()
    assert not (node.containerd.image_root / container_id).exists()
