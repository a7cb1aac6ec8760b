"""The node image (docker.io/zeropod/node:dev), built offline and run by the lab's containerd the
way the DaemonSet runs it: the installer with only its capabilities copies the payload to a node
folder and configures containerd there, the copied payload runs with all plugins, and the
manager with only its capabilities passes its node checks."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.lab import manifests, node_image
from zeropod_core.lab.containerd import PrivateContainerd

from .conftest import Containerd, Node

pytestmark = pytest.mark.slow

# ctr run's default capabilities (containerd's default spec); ctr cannot drop "ALL"
CTR_DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


@pytest.fixture(scope="module")
def image(lab_containerd: PrivateContainerd) -> str:
    lab_containerd.import_image(node_image.build())
    return node_image.NODE_IMAGE


def _container(name: str) -> dict[str, Any]:
    pod = manifests.find(manifests.render(), "DaemonSet", "zeropod-node")["spec"]["template"][
        "spec"]
    found: dict[str, Any] = next(c for c in pod["initContainers"] + pod["containers"]
                                 if c["name"] == name)
    return found


def _only(capabilities: list[str]) -> list[str]:
    """ctr flags for exactly ``capabilities`` (the manifest's names, without CAP_)."""
    wanted = {f"CAP_{c}" for c in capabilities}
    flags = []
    for cap in CTR_DEFAULT_CAPS:
        if cap not in wanted:
            flags += ["--cap-drop", cap]
    for cap in sorted(wanted - set(CTR_DEFAULT_CAPS)):
        flags += ["--cap-add", cap]
    return flags


def _run(lab: PrivateContainerd, image: str, command: list[str],
         extra: list[str]) -> subprocess.CompletedProcess[str]:
    """``ctr run --rm`` a container of the image with extra ``ctr run`` flags; waits for it."""
    args = lab.run_args(image, f"zp-node-{secrets.token_hex(3)}", detach=False, remove=True,
                        command=command)
    position = args.index(image)
    args[position:position] = extra
    return lab.ctr(*args, check=False, timeout=300)


def test_installer_from_the_image(image: str, lab_containerd: PrivateContainerd,
                                  make_node: Callable[[Containerd], Node],
                                  containerd1: Containerd) -> None:
    installer = _container("installer")
    node = make_node(containerd1)
    node.write("/etc/containerd/config.toml", containerd1.default_config())
    mount = ["--mount", f"type=bind,src={node.root},dst=/host,options=rbind:rw"]
    caps = _only(installer["securityContext"]["capabilities"]["add"])
    argv = [*installer["command"], *installer["args"],
            f"--containerd-version={containerd1.version}"]
    proc = _run(lab_containerd, image, argv, mount + caps)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["payload_copied"] is True
    assert summary["changed_files"] == ["/etc/containerd/config.toml"]
    assert node.path("/opt/zeropod/node/bin/zeropod-manager").is_file()
    assert "runtimes.zeropod" in node.path("/etc/containerd/config.toml").read_text()
    again = _run(lab_containerd, image, argv, mount + caps)
    assert json.loads(again.stdout)["payload_copied"] is False

    # the copied payload, where the node has it: every plugin of the shim loads
    script = ('mount --bind "$1/opt/zeropod/node" /opt/zeropod/node && '
              'PATH=/opt/zeropod/node/bin:/usr/sbin:/usr/bin:/sbin:/bin '
              'exec /opt/zeropod/node/bin/zeropod plugins --role shim')
    plugins = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              script, "sh", str(node.root)],
                             capture_output=True, text=True, timeout=60)
    assert plugins.returncode == 0, plugins.stderr
    statuses = {p["name"]: p["status"] for p in json.loads(plugins.stdout)}
    assert {"criu", "ebpf_redirect", "metrics"} <= set(statuses)
    assert set(statuses.values()) == {"loaded"}, statuses

    # ... and scales a container to zero and back with its state, as a node's containerd
    # would run it (its shim and CRIU only from the payload)
    helper = Path(__file__).with_name("payload_scale_to_zero.py")
    script = ('mount --bind "$1/opt/zeropod/node" /opt/zeropod/node && exec "$2" "$3"')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", str(node.root), sys.executable, str(helper)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["shim_cmdline"][0].startswith("/opt/zeropod/node/venv/bin/python"), result
    assert result["checkpointed"] is True
    assert result["after_wake"] == result["first"] + 1  # the in-memory count survived

    removed = _run(lab_containerd, image, [*argv, "--uninstall"], mount + caps)
    assert json.loads(removed.stdout)["payload_removed"] is True
    assert not node.path("/opt/zeropod/node").exists()
    assert "zeropod" not in node.path("/etc/containerd/config.toml").read_text()


def test_manager_from_the_image(image: str, lab_containerd: PrivateContainerd,
                                tmp_path: Path) -> None:
    manager = _container("manager")
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    extra = ["--net-host", "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw",
             "--mount", f"type=bind,src={out / 'run'},dst=/run/zeropod,options=rbind:rw",
             *_only(manager["securityContext"]["capabilities"]["add"])]
    container_id = f"zp-manager-{secrets.token_hex(3)}"
    args = lab_containerd.run_args(image, container_id, command=[
        *manager["command"], "--listen=127.0.0.1:0", "--ready-file=/out/ready",
        "--socket-dir=/out/s"])
    position = args.index(image)
    args[position:position] = extra
    lab_containerd.ctr(*args)
    try:
        deadline = time.monotonic() + 60
        while not (out / "ready").exists():
            assert time.monotonic() < deadline, "the manager did not start within 60 s"
            time.sleep(0.1)
        address = (out / "ready").read_text().strip()
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=30) as response:
            healthz = json.load(response)["capabilities"]
    finally:
        lab_containerd.ctr("task", "kill", "-s", "SIGKILL", container_id, check=False)
        time.sleep(0.2)
        lab_containerd.ctr("task", "delete", "--force", container_id, check=False)
        lab_containerd.ctr("container", "delete", container_id, check=False)
    assert healthz["criu"] == {"available": True, "version": "4.2.1",
                               "path": "/opt/zeropod/node/bin/criu"}
    assert "error" not in healthz["criu_features"], healthz["criu_features"]
    assert healthz["redirector"]["loads"] is True, healthz["redirector"]
    assert {p["name"]: p["status"] for p in healthz["plugins"]} == {
        "criu": "loaded", "ebpf_redirect": "loaded", "metrics": "loaded",
        "migration": "loaded", "kube_status": "loaded", "resize": "loaded"}
