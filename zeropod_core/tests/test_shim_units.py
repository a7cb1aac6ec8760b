"""Unit tests of the shim's small parts: flags, mount options, stats, template messages,
and the reaper (real processes, no mocks)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from zeropod_core import config
from zeropod_core.shim import mounts, template
from zeropod_core.shim.flags import ShimFlags, UsageError, parse
from zeropod_core.shim.reaper import Reaper
from zeropod_core.shim.stats import metrics_from_runc_stats


def test_flags_as_containerd_sends_them() -> None:
    flags = parse(["-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock",
                   "-publish-binary", "/usr/bin/containerd", "-id", "abc", "-debug", "start"])
    assert (flags.namespace, flags.id, flags.debug, flags.action) == ("k8s.io", "abc", True,
                                                                      "start")
    assert parse(["--id=x", "-bundle", "/b", "delete"]).bundle == "/b"
    assert parse(["-v"]).version
    with pytest.raises(UsageError, match="not defined: -bogus"):
        parse(["-bogus", "1"])
    with pytest.raises(UsageError, match="needs an argument"):
        parse(["-id"])
    with pytest.raises(UsageError, match="unexpected argument"):
        parse(["start", "extra"])


def test_mount_options_split_into_flags_and_data() -> None:
    flags, propagation, data = mounts.parse_options(
        ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l", "ro", "nosuid", "rprivate"])
    assert flags == mounts.MS_RDONLY | mounts.MS_NOSUID
    assert propagation == mounts.MS_PRIVATE | mounts.MS_REC
    assert data == "index=off,workdir=/w,upperdir=/u,lowerdir=/l"
    assert mounts.parse_options(["rbind", "rw"])[0] == mounts.MS_BIND | mounts.MS_REC


def test_stats_from_runc_events() -> None:
    metrics = metrics_from_runc_stats({
        "cpu": {"usage": {"total": 100, "percpu": [60, 40], "kernel": 10, "user": 90},
                "throttling": {"periods": 1, "throttledPeriods": 2, "throttledTime": 3}},
        "memory": {"usage": {"limit": 1000, "usage": 500, "max": 600, "failcnt": 0},
                   "raw": {"cache": 7, "pgfault": 8, "swap": 9, "unknown_key": 1}},
        "pids": {"current": 2, "limit": 100},
    })
    assert metrics.cpu.usage.total == 100 and list(metrics.cpu.usage.per_cpu) == [60, 40]
    assert metrics.cpu.throttling.throttled_periods == 2
    assert metrics.memory.usage.usage == 500 and metrics.memory.cache == 7
    assert metrics.memory.pg_fault == 8
    assert metrics.pids.current == 2


def test_template_request_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZP_ODD_VALUE", "a=b\tc")
    flags = ShimFlags(namespace="ns", address="/a/containerd.sock", id="c1", socket="/a/s/x",
                      debug=True)
    identity, bundle, decoded, env = template._decode(template._encode(flags, "/bundle"))
    assert identity == template.code_identity() and bundle == "/bundle"
    assert repr(decoded) == repr(flags)
    assert env["ZP_ODD_VALUE"] == "a=b\tc"


async def test_reaper_delivers_every_exit_once() -> None:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    try:
        quick = reaper.spawn(["sh", "-c", "exit 3"])
        killed = reaper.spawn(["sleep", "30"])
        os.kill(killed, signal.SIGKILL)
        assert (await reaper.wait(quick)).status == 3
        assert (await reaper.wait(killed)).status == 137
        # an exit that happens before anyone watches is kept until claimed
        early = reaper.spawn(["true"])
        deadline = time.monotonic() + 5
        while early not in reaper._unclaimed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        seen: list[int] = []
        reaper.watch(early, lambda exited: seen.append(exited.status))
        assert seen == [0]
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)


# --- the shared on/off parser of plugin settings -----------------------------------------


@pytest.mark.parametrize(("text", "value"), [("true", True), (" TRUE ", True), ("1", True),
                                             ("yes", True), ("on", True), ("off", False),
                                             ("false", False), ("0", False), ("No", False)])
def test_parse_switch(text: str, value: bool) -> None:
    assert config.parse_switch(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "truee"])
def test_parse_switch_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        config.parse_switch(text)


def test_switch_setting_names_the_key_and_keeps_defaults() -> None:
    assert config.switch_setting({}, "ZEROPOD_X", True) is True
    assert config.switch_setting({"ZEROPOD_X": " "}, "ZEROPOD_X", False) is False
    assert config.switch_setting({"ZEROPOD_X": "off"}, "ZEROPOD_X", True) is False
    with pytest.raises(ValueError, match="ZEROPOD_X"):
        config.switch_setting({"ZEROPOD_X": "maybe"}, "ZEROPOD_X", True)


# --- every command's --help reads well to a person ---------------------------------------


@pytest.mark.parametrize("argv", [["zeropod-manager"], ["zeropod"], ["zeropod", "plugins"],
                                  ["zeropod", "status"], ["zeropod", "demo"]])
def test_help_is_plain_text_with_help_for_every_option(argv: list[str]) -> None:
    import subprocess
    import sys
    binary = os.path.join(os.path.dirname(sys.executable), argv[0])
    out = subprocess.run([binary, *argv[1:], "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "``" not in out and ":param" not in out, out  # no raw reStructuredText
    options = out.split("options:", 1)[1]
    lines = [line for line in options.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        flag_only = line.strip().startswith("-") and "  " not in line.strip()
        next_is_help = index + 1 < len(lines) and not lines[index + 1].strip().startswith("-")
        assert not flag_only or next_is_help, f"option without help text: {line.strip()}"


def test_node_socket_path_fits_a_unix_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from zeropod_core.shim.node_api import node_socket_path

    shim = "/run/containerd/s/zeropod-" + "a" * 40
    monkeypatch.setenv("ZEROPOD_SOCKET_DIR", "/run/zeropod/s")
    assert node_socket_path(shim) == "/run/zeropod/s/zeropod-" + "a" * 40 + ".sock"
    deep = "/tmp/zeropod-k8s-ed4b3dbf/nodes/lab-520a39-0/containerd/zs"
    monkeypatch.setenv("ZEROPOD_SOCKET_DIR", deep)
    path = node_socket_path(shim)
    assert path.startswith(deep + "/zp-") and path.endswith(".sock") and len(path) <= 100
    assert path == node_socket_path(shim) != node_socket_path(shim + "b")
