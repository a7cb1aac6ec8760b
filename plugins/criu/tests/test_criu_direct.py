"""The direct path (CRIU's RPC from the shim) against real runc containers (root only).

What only this path has to guarantee: runc's view of the container stays true without runc
taking part, a prepared ``criu swrk`` that cannot do the restore hands over to ``runc
restore`` (the app comes back with its memory, not cold), and a failed direct restore leaves
nothing half-restored behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_criu_checkpoint import _restore
from zpcriu_lab import Lab, LabContainer

from zeropod_core.model import ContainerInfo
from zeropod_core.procfs import is_alive
from zeropod_criu.checkpointer import CriuCheckpointer
from zeropod_criu.criuconf import CriuConfig, name_config_in_spec, write_config
from zeropod_criu.dumprecord import DumpRecord
from zeropod_criu.eager import PE_LAZY
from zeropod_criu.lazy import LazyDaemon
from zeropod_criu.paths import ImagePaths, make_private_dir
from zeropod_criu.settings import CriuSettings
from zeropod_criu.tmpfs import unmount_all

pytestmark = pytest.mark.slow


async def _start(lab: Lab, settings: CriuSettings, image: str = "busybox", *,
                 env: Sequence[str] = ()) -> LabContainer:
    """A container with its own CRIU config named in the spec, as the shim's
    ``zeropod_modify_spec`` does (masked directories and tmpfs mounts as externals)."""
    def modify(info: ContainerInfo, spec: dict[str, Any]) -> None:
        paths = ImagePaths(settings.image_root, info.id)
        make_private_dir(paths.base)
        write_config(paths.criu_config, CriuConfig(network_lock=settings.network_lock))
        name_config_in_spec(spec, paths.criu_config, container_id=info.id)
    return await lab.start(image, env=env, modify_spec=modify)


@pytest.fixture
def direct_settings(tmp_path: Path) -> Iterator[CriuSettings]:
    # debug logs: some tests read what CRIU did
    settings = CriuSettings(image_root=tmp_path / "images", kdat_cache=False, mode="direct",
                            log_level=4)
    yield settings
    unmount_all(settings.image_root)  # the masked directories' source (see .masked)


def _read(path: str) -> str:
    return Path(path).read_text()


def _assert_cgroups_empty(directories: Sequence[Path]) -> None:
    """Nothing of the container runs any more (its cgroups may be gone too)."""
    for directory in directories:
        procs = directory / "cgroup.procs"
        assert not procs.exists() or procs.read_text().strip() == "", directory


def _runc(container_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runc", "--root", str(container_root), *args],
                          capture_output=True, text=True, timeout=30)


async def test_runc_keeps_working_after_direct_restores(
        lab: Lab, direct_settings: CriuSettings) -> None:
    container = await _start(lab, direct_settings, "counter")
    count = (await container.wait_http()).json()["count"]
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    for _ in range(2):
        assert (await checkpointer.checkpoint()).ok
        await _restore(lab, container, checkpointer)
        body = (await container.get()).json()
        assert body["count"] > count
        count = body["count"]
    assert container.runtime.calls == [], "no runc call on the direct path"
    root = container.runc.root
    state = await container.state()
    assert state is not None and state["status"] == "running"
    assert state["pid"] == container.pid
    cgroups = _read(f"/proc/{container.pid}/cgroup")
    assert all(line.endswith(container.id) for line in cgroups.splitlines()), cgroups
    out = _runc(root, "exec", container.id, "/usr/bin/python3", "-c", "print('exec-ok')")
    assert (out.returncode, out.stdout) == (0, "exec-ok\n"), out.stderr
    # runc's own checkpoint of a directly restored container works, and so does its restore
    runc_mode = CriuCheckpointer(container.info, container.runtime, {},
                                 settings=dataclasses.replace(direct_settings, mode="runc"))
    assert (await runc_mode.checkpoint()).ok
    await _restore(lab, container, runc_mode)
    assert (await container.get()).json()["count"] > count
    pid = container.pid
    assert _runc(root, "kill", container.id, "KILL").returncode == 0
    await _gone(pid)
    assert _runc(root, "delete", container.id).returncode == 0
    assert await container.state() is None


async def test_a_dead_prepared_criu_hands_over_to_runc_restore(
        lab: Lab, direct_settings: CriuSettings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zeropod.criu")
    container = await _start(lab, direct_settings, "counter")
    first = (await container.wait_http()).json()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    assert (await checkpointer.checkpoint()).ok
    image = checkpointer._direct
    assert image is not None and image.preparing is not None
    await image.preparing
    assert image.prepared is not None and image.prepared.swrk.alive
    os.kill(image.prepared.swrk.pid, 9)  # the prepared CRIU dies while the app sleeps

    await _restore(lab, container, checkpointer)

    assert "direct restore failed, restoring through runc" in caplog.text
    assert any(call[0] == "restore" for call in container.runtime.calls)
    body = (await container.get()).json()
    assert body["started"] == first["started"], "restored with its memory, not cold-started"
    assert body["count"] > first["count"]
    state = await container.state()
    assert state is not None and state["status"] == "running"
    assert state["pid"] == container.pid
    # the next cycle is direct again
    container.runtime.calls.clear()
    assert (await checkpointer.checkpoint()).ok
    await _restore(lab, container, checkpointer)
    assert container.runtime.calls == []


async def test_a_failed_direct_restore_leaves_nothing_half_restored(
        lab: Lab, direct_settings: CriuSettings) -> None:
    """A lost pages file: CRIU fails half-way; what it started must be gone, runc fails too
    (same images), and runc's record is cleared so the core can cold-start."""
    container = await _start(lab, direct_settings)
    await container.wait_http()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    assert (await checkpointer.checkpoint()).ok
    image = checkpointer._direct
    assert image is not None and image.preparing is not None
    await image.preparing
    assert image.prepared is not None
    cgroup_dirs = image.state.cgroup_dirs
    swrk_pid = image.prepared.swrk.pid
    for pages in checkpointer.paths.snapshot.glob("pages-*.img"):
        pages.unlink()

    with pytest.raises(Exception, match="runc restore"):
        await checkpointer.restore()

    assert not is_alive(swrk_pid)
    _assert_cgroups_empty(cgroup_dirs)
    assert container.net.pod_pids() == []
    assert await container.state() is None


@pytest.fixture
def lazy_settings(direct_settings: CriuSettings) -> CriuSettings:
    return dataclasses.replace(direct_settings, lazy_threshold_mib=64)


async def _lazy_cycle(lab: Lab, settings: CriuSettings, mib: int) -> tuple[
        LabContainer, CriuCheckpointer, dict[str, object]]:
    container = await _start(lab, settings, "counter", env=[f"APP_ALLOC_MIB={mib}"])
    first = (await container.wait_http(deadline_s=30)).json()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok
    image = checkpointer._direct
    assert image is not None and image.preparing is not None
    await image.preparing
    assert image.prepared is not None and image.prepared.lazy is not None
    return container, checkpointer, first


def _prepared_lazy(checkpointer: CriuCheckpointer) -> tuple[Any, LazyDaemon]:
    """The direct dump's leftovers and the lazy-pages daemon prepared for the restore."""
    image = checkpointer._direct
    assert image is not None and image.prepared is not None
    assert image.prepared.lazy is not None
    return image, image.prepared.lazy


async def test_a_wake_during_the_background_copy_sees_all_memory(
        lab: Lab, lazy_settings: CriuSettings) -> None:
    container, checkpointer, first = await _lazy_cycle(lab, lazy_settings, 200)
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    assert restored.outcome.stats.get("lazy") == 1
    copy = checkpointer._lazy_copy
    assert copy is not None and not copy.done(), "the daemon is still copying"
    # the first request faults its pages in; /crc then reads all 200 MiB during the copy
    assert (await container.get()).json()["started"] == first["started"]
    assert (await container.get("/crc", timeout=30)).json() == {"crc_ok": True, "mib": 200}
    await asyncio.wait_for(asyncio.shield(copy), 60)
    status = (checkpointer.paths.work / "lazy-pages.status").read_text().strip()
    assert status == "0"
    assert not checkpointer.paths.snapshot.exists(), "images go once all memory is back"
    assert (await container.get("/crc", timeout=30)).json()["crc_ok"] is True
    # and the next cycle works (it waits for the copy before dumping)
    assert (await checkpointer.checkpoint()).ok
    await _restore(lab, container, checkpointer)
    assert (await container.get("/crc", timeout=30)).json()["crc_ok"] is True


async def test_a_dying_lazy_daemon_takes_the_app_down_not_half_restored(
        lab: Lab, lazy_settings: CriuSettings) -> None:
    """Pages the daemon never delivered would read as zeros: the app must be killed."""
    container, checkpointer, _ = await _lazy_cycle(lab, lazy_settings, 200)
    image, daemon = _prepared_lazy(checkpointer)
    cgroup_dirs = image.state.cgroup_dirs
    sh = daemon.pid
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    criu_daemon = [int(p) for p in _read(f"/proc/{sh}/task/{sh}/children").split()]
    assert len(criu_daemon) == 1 and _read(f"/proc/{criu_daemon[0]}/comm").strip() == "criu"
    os.kill(criu_daemon[0], 9)  # mid-copy

    copy = checkpointer._lazy_copy
    assert copy is not None
    await asyncio.wait_for(asyncio.shield(copy), 30)

    assert not is_alive(restored.pid), "the app must not run on with missing memory"
    _assert_cgroups_empty(cgroup_dirs)
    assert checkpointer.paths.has_image(), "images are kept for inspection"
    # the core sees the container exit: killed by us (137), or by the kernel first when it
    # touched a page that can no longer be delivered (SIGSEGV/SIGBUS)
    assert container.exits[restored.pid].status in (137, 139, 135)


async def test_a_dead_lazy_daemon_before_the_wake_means_an_eager_restore(
        lab: Lab, lazy_settings: CriuSettings) -> None:
    container, checkpointer, first = await _lazy_cycle(lab, lazy_settings, 80)
    _, daemon = _prepared_lazy(checkpointer)
    daemon.kill()

    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)

    assert "lazy" not in restored.outcome.stats
    assert checkpointer._lazy_copy is None
    assert (await container.get("/crc", timeout=30)).json() == {"crc_ok": True, "mib": 80}
    assert (await container.get()).json()["started"] == first["started"]


def _tmpfs_view(pid: int) -> dict[str, object]:
    """Each tmpfs mount of ``pid``: its options and what is in it (name, type, mode, rdev)."""
    view: dict[str, object] = {}
    for line in _read(f"/proc/{pid}/mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] != "tmpfs" or fields[3] != "/":
            continue
        root = Path(f"/proc/{pid}/root{fields[4]}")
        content = sorted((str(p.relative_to(root)), p.lstat().st_mode, p.lstat().st_rdev)
                         for p in root.rglob("*") if p.lstat().st_dev == root.stat().st_dev)
        view[fields[4]] = (fields[5], fields[sep + 3], content)
    return view


async def test_structure_only_tmpfs_is_recreated_not_archived(
        lab: Lab, direct_settings: CriuSettings) -> None:
    container = await _start(lab, direct_settings)
    await container.wait_http()
    before = _tmpfs_view(container.pid)
    assert "/dev" in before and "/dev/shm" in before
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    assert (await checkpointer.checkpoint()).ok
    recreated = {t.path for t in checkpointer._tmpfs}
    assert {"/dev", "/dev/shm"} <= recreated
    dump_log = _read(str(checkpointer.paths.work / "dump.log"))
    assert "tmpfs-dev" not in dump_log

    await _restore(lab, container, checkpointer)

    after = _tmpfs_view(container.pid)
    assert {p: after[p] for p in recreated} == {p: before[p] for p in recreated}
    await checkpointer._settle()
    assert not list(checkpointer.paths.tmpfs.glob("*")), "host-side mounts are gone"
    out = _runc(container.runc.root, "exec", container.id, "sh", "-c",
                "echo x > /dev/null && echo y > /dev/shm/f && cat /dev/shm/f")
    assert (out.returncode, out.stdout) == (0, "y\n"), out.stderr
    # now /dev/shm holds data: the next dump leaves it to CRIU, and it survives
    assert (await checkpointer.checkpoint()).ok
    assert "/dev/shm" not in {t.path for t in checkpointer._tmpfs}
    await _restore(lab, container, checkpointer)
    assert _read(f"/proc/{container.pid}/root/dev/shm/f") == "y\n"


async def test_a_dump_restores_from_its_record_alone_as_another_node_would(
        lab: Lab, direct_settings: CriuSettings) -> None:
    """CRIU dumps from inside the pod's network namespace, and the image says so, with the
    external mounts it declared (``zeropod-dump.json``): a checkpointer that did not make the
    dump (another shim, another node) restores it through runc into the pod's namespace."""
    container = await _start(lab, direct_settings, "counter")
    first = (await container.wait_http()).json()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    assert (await checkpointer.checkpoint()).ok
    dump_log = _read(str(checkpointer.paths.work / "dump.log"))
    assert "Dump NET namespace" not in dump_log and "nf_conntrack" not in dump_log
    record = DumpRecord.read(checkpointer.paths.snapshot)
    assert record is not None and record.netns_joined
    assert record.masked == checkpointer._masked and record.masked, "runc masks /proc/acpi..."
    assert {t.path for t in record.tmpfs} >= {"/dev", "/dev/shm"}
    # the first checkpointer goes away (its prepared CRIU and mounts with it), and so does
    # runc's record of the container, which a node receiving the image would not have
    await checkpointer._drop_direct()
    unmount_all(checkpointer.paths.tmpfs)
    assert _runc(container.runc.root, "delete", container.id).returncode == 0

    other = CriuCheckpointer(container.info, container.runtime, {}, settings=direct_settings)
    await _restore(lab, container, other)

    assert any(call[0] == "restore" for call in container.runtime.calls)
    body = (await container.get()).json()  # from the client namespace: the pod's IP answers
    assert body["started"] == first["started"] and body["count"] > first["count"]
    pod_netns = os.stat(container.net.pod_path).st_ino
    assert os.stat(f"/proc/{container.pid}/ns/net").st_ino == pod_netns


async def test_a_lazy_restore_leaves_only_the_large_areas_lazy(
        lab: Lab, lazy_settings: CriuSettings) -> None:
    """The small runs of pages (the interpreter's heap and arenas) are restored at once, up to
    ``lazy_eager_mib``; the app's big buffer stays lazy, and all of its memory checks out."""
    pagemap = pytest.importorskip("pycriu.images", reason="pycriu is installed by scripts/setup")
    container, checkpointer, first = await _lazy_cycle(lab, lazy_settings, 80)
    lazy_pages = 0
    for image in checkpointer.paths.snapshot.glob("pagemap-*.img"):
        with image.open("rb") as f:
            entries = pagemap.load(f)["entries"][1:]
        for entry in entries:
            flags = entry.get("flags", 0)
            flags = flags if isinstance(flags, int) else 0
            if flags & PE_LAZY:
                lazy_pages += entry["nr_pages"]
    page = os.sysconf("SC_PAGESIZE")
    budget = lazy_settings.lazy_eager_mib << 20
    assert lazy_pages * page >= (80 << 20) - budget, "the 80 MiB buffer stays lazy"
    assert lazy_pages * page <= (80 << 20) + (1 << 20), "hardly anything else stays lazy"

    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    assert restored.outcome.stats.get("lazy") == 1
    body = (await container.get()).json()
    assert body["started"] == first["started"]
    assert (await container.get("/crc", timeout=30)).json() == {"crc_ok": True, "mib": 80}
    copy = checkpointer._lazy_copy
    assert copy is not None
    await asyncio.wait_for(asyncio.shield(copy), 60)  # the daemon ends: nothing left running
    assert (checkpointer.paths.work / "lazy-pages.status").read_text().strip() == "0"


async def test_the_next_dump_uses_a_criu_started_ahead_and_discard_ends_it(
        lab: Lab, direct_settings: CriuSettings) -> None:
    container = await _start(lab, direct_settings, "counter")
    first = (await container.wait_http()).json()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                    settings=direct_settings)
    assert (await checkpointer.checkpoint()).ok
    await _restore(lab, container, checkpointer)
    assert checkpointer._sparing is not None
    await checkpointer._sparing
    assert checkpointer._spare is not None
    netns, spare = checkpointer._spare
    spare_pid = spare.pid
    assert spare.alive and netns == str(container.net.pod_path)
    pod_netns = os.stat(container.net.pod_path).st_ino
    assert os.stat(f"/proc/{spare.pid}/ns/net").st_ino == pod_netns, "it dumps from inside"

    assert (await checkpointer.checkpoint()).ok
    assert spare.pidfd == -1, "the dump used it up"
    await _gone(spare_pid)
    await _restore(lab, container, checkpointer)
    assert (await container.get()).json()["started"] == first["started"]
    assert checkpointer._sparing is not None
    await checkpointer._sparing
    assert checkpointer._spare is not None
    unused = checkpointer._spare[1]
    unused_pid = unused.pid

    await checkpointer.discard()

    assert getattr(checkpointer, "_spare") is None  # noqa: B009 - mypy narrowed it above
    await _gone(unused_pid)


async def _gone(pid: int) -> None:
    for _ in range(200):
        if not is_alive(pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} still runs")
