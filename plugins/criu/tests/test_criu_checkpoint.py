"""Checkpoint and restore of real runc containers with CRIU 4.2 (root only)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from zpcriu_lab import APP_PORT, Lab, LabContainer, Prober

from zeropod_core.lab.netns import socket_in
from zeropod_core.model import Outcome
from zeropod_core.procfs import is_alive
from zeropod_criu.checkpointer import CriuCheckpointer, CriuRestoreError
from zeropod_criu.criuconf import (
    CRIU_CONFIG_ANNOTATION,
    CriuConfig,
    name_config_in_spec,
    write_config,
)
from zeropod_criu.freezer import Freezer
from zeropod_criu.paths import tree_size
from zeropod_criu.settings import CriuSettings

pytestmark = pytest.mark.slow


async def _start(lab: Lab, settings: CriuSettings, image: str = "busybox", *,
                 env: Sequence[str] = ()) -> LabContainer:
    """A container whose spec names the plugin's CRIU config, as zeropod_modify_spec does."""
    write_config(settings.criu_config, CriuConfig())
    return await lab.start(image, env=env, modify_spec=lambda info, spec: name_config_in_spec(
        spec, settings.criu_config, container_id=info.id))


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("PPid:", 1)[1].split()[0])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _restore(lab: Lab, container: LabContainer, checkpointer: CriuCheckpointer) -> float:
    """Restore as the shim would; returns restore → first HTTP response in seconds."""
    prober = Prober(container)
    prober.start()
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    assert restored.outcome.ok
    return await prober.wait()


async def test_checkpoint_stops_the_app_and_writes_a_private_image(
        lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings)
    await container.wait_http()
    pid = container.pid
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)

    outcome = await checkpointer.checkpoint()

    assert outcome.ok, (outcome.error, outcome.log_tail)
    assert not is_alive(pid), "the dump must kill the container's processes"
    state = await container.state()
    if settings.mode == "runc":
        assert state is None, "runc forgets a checkpointed container"
    else:
        assert state is not None and state["status"] == "stopped", "runc's record stays"
    paths = checkpointer.paths
    assert paths.has_image()
    for directory in (paths.base, paths.snapshot, paths.work):
        assert _mode(directory) == 0o700, directory
    assert outcome.image_bytes == tree_size(paths.snapshot) > 0
    assert outcome.stats["pages_written"] > 0
    assert {"freezing_time", "frozen_time", "memdump_time", "memwrite_time"} <= set(outcome.stats)
    # Frozen before CRIU looked: no 100 ms sleep in CRIU's freezer loop (its first sleep
    # alone would take 100 ms; the margin below that is for a loaded machine).
    assert outcome.stats["freezing_time"] < 100_000, outcome.stats
    assert 0 < outcome.stats["prefreeze_us"] < 100_000
    dump_log = (paths.work / "dump.log").read_text()
    assert "Will skip in-flight TCP connections" in dump_log  # our config file was used
    print(f"\ncheckpoint {outcome.duration_s * 1e3:.1f} ms, image {outcome.image_bytes} B, "
          f"CRIU frozen_time {outcome.stats['frozen_time'] / 1e3:.1f} ms")


async def test_restore_serves_again_with_its_memory(lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings, "counter")
    first = (await container.wait_http()).json()
    assert (await container.get()).json()["count"] == first["count"] + 1
    old_pid = container.pid
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok

    first_response_s = await _restore(lab, container, checkpointer)

    body = (await container.get()).json()
    assert body["count"] > first["count"] + 1, "the counter lives in memory: it must go on"
    assert body["started"] == first["started"]
    assert container.pid != old_pid and is_alive(container.pid)
    assert body["pid"] == 1  # PID 1 in the container's namespace, new on the host
    assert _parent(container.pid) == os.getpid(), "the restored init is the subreaper's child"
    state = await container.state()
    assert state is not None and state["status"] == "running" and state["pid"] == container.pid
    await checkpointer._settle()  # direct mode tidies up after the wake-up, off its path
    assert not checkpointer.paths.snapshot.exists(), "images are removed after a restore"
    assert (checkpointer.paths.work / "restore.log").exists(), "logs stay for diagnosis"
    print(f"\nrestore -> first HTTP response {first_response_s * 1e3:.1f} ms")


async def test_repeated_cycles(lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings, "counter")
    count = (await container.wait_http()).json()["count"]
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    pids = {container.pid}
    for cycle in range(3):
        outcome = await checkpointer.checkpoint()
        assert outcome.ok, (cycle, outcome.error, outcome.log_tail)
        await _restore(lab, container, checkpointer)
        pids.add(container.pid)
        body = (await container.get()).json()
        assert body["count"] > count, (cycle, body)
        count = body["count"]
    assert len(pids) == 4
    # The shim sees each dumped init exit (SIGKILL) and must swallow it.
    assert all(e.status == 137 for e in container.exits.values()) and len(container.exits) == 3


async def test_held_connection_is_closed_with_tcp_close(lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings)
    await container.wait_http()
    held = socket_in(container.net.client_path)
    held.settimeout(5)
    try:
        held.connect((container.net.pod_ip, APP_PORT))
        checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                        settings=settings)
        outcome = await checkpointer.checkpoint()
        assert outcome.ok, (outcome.error, outcome.log_tail)
        await _restore(lab, container, checkpointer)
        assert (await container.get()).status == 200
        with pytest.raises(OSError):  # restored closed: reset on use
            held.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if not held.recv(100):
                raise ConnectionResetError("closed")
    finally:
        held.close()


async def test_failed_checkpoint_keeps_the_app_running(
        lab: Lab, settings: CriuSettings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A user-provided CRIU config without tcp-close: a held connection makes CRIU refuse."""
    strict = tmp_path / "strict-criu.conf"
    write_config(strict, CriuConfig(tcp_close=False))
    write_config(settings.criu_config, CriuConfig())
    caplog.set_level(logging.WARNING, logger="zeropod.criu")
    container = await lab.start(
        "busybox", annotations={CRIU_CONFIG_ANNOTATION: str(strict)},
        modify_spec=lambda info, spec: name_config_in_spec(
            spec, settings.criu_config, container_id=info.id))
    assert "zeropod's CRIU defaults" in caplog.text
    spec_annotations = container.info.annotations
    assert spec_annotations[CRIU_CONFIG_ANNOTATION] == str(strict)
    await container.wait_http()
    pid = container.pid
    held = socket_in(container.net.client_path)
    held.settimeout(5)
    try:
        held.connect((container.net.pod_ip, APP_PORT))
        checkpointer = CriuCheckpointer(container.info, container.runtime, {},
                                        settings=settings)
        outcome: Outcome = await checkpointer.checkpoint()

        assert not outcome.ok
        assert "criu failed" in outcome.error
        assert len(outcome.log_tail.splitlines()) == 20
        assert "Dumping FAILED" in outcome.log_tail
        # the reason is in CRIU's log; how far above the tail's last 20 lines depends on
        # whether busybox had forked a handler for the held connection (more to unseize)
        assert "--tcp-established" in (checkpointer.paths.work / "dump.log").read_text()
        assert is_alive(pid) and container.pid == pid
        freezer = Freezer.for_pid(pid)
        assert freezer is not None and freezer.state() == "THAWED"
        state = await container.state()
        assert state is not None and state["status"] == "running"
        assert (await container.get()).status == 200, "new connections are served"
        held.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert held.recv(100).startswith(b"HTTP/1."), "the held connection is served too"
    finally:
        held.close()
    # Nothing is left broken: with the connection gone the same checkpointer works.
    assert (await checkpointer.checkpoint()).ok


async def test_failed_restore_raises_with_the_log_tail_and_keeps_the_images(
        lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings)
    await container.wait_http()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok
    # A lost pages file (a truncated one makes CRIU 4.2's restorer spin forever instead).
    for pages in checkpointer.paths.snapshot.glob("pages-*.img"):
        pages.unlink()

    with pytest.raises(CriuRestoreError) as info:
        await checkpointer.restore()

    error = info.value
    assert "runc restore" in str(error) and "criu failed" in error.runc_error
    # the cause; under load CRIU's cgroup helper may log a few lines after it, past the tail
    restore_log = (checkpointer.paths.work / "restore.log").read_text()
    assert "Can't read pages data" in restore_log and "restore.log" in str(error)
    assert "Restoring FAILED" in error.log_tail or "Can't read pages data" in error.log_tail
    assert len(error.log_tail.splitlines()) == 20
    assert checkpointer.paths.has_image(), "images are kept for inspection"
    assert await container.state() is None, "runc leaves nothing behind: a cold start can follow"


async def test_discard_removes_everything(lab: Lab, settings: CriuSettings) -> None:
    container = await _start(lab, settings)
    await container.wait_http()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok
    await checkpointer.discard()
    assert not checkpointer.paths.base.exists()
    assert settings.criu_config.exists(), "the shared CRIU config stays"
    with pytest.raises(CriuRestoreError, match="no checkpoint image"):
        await checkpointer.restore()


async def test_restore_waits_for_the_dumped_init_to_be_reaped(
        lab: Lab, settings: CriuSettings) -> None:
    """Restoring right after the dump, before the loop ran the reaper, still works."""
    container = await _start(lab, settings, "counter")
    await container.wait_http()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok
    restored = await checkpointer.restore()  # no await in between that lets the reaper run
    lab.restored(container, restored.pid)
    assert (await container.wait_http()).status == 200
    assert is_alive(restored.pid)

