"""deploy/: rendered by the real kustomize, every object checked against the API's schema, the
DaemonSet's privileges are the documented minimal set, and that set suffices for the manager."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.config import manager_socket_path
from zeropod_core.installer.main import build_parser
from zeropod_core.lab import manifests
from zeropod_migration.handover import handover_root
from zeropod_migration.settings import MigrationSettings

NAMESPACE = "zeropod-system"
NODE_LABEL = {"zeropod.ctrox.dev/node": "true"}
MANAGER_CAPABILITIES = ["SYS_ADMIN", "CHOWN", "DAC_OVERRIDE", "FOWNER"]


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests.find(objects, "DaemonSet", "zeropod-node")["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    pod = _pod_spec(objects)
    found = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_every_object_is_valid(overlay: str) -> None:
    objects = manifests.render(overlay)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "zeropod:event-creator"), ("ClusterRole", "zeropod:migration-manager"),
        ("ClusterRole", "zeropod:pod-reader"), ("ClusterRole", "zeropod:pod-updater"),
        ("ClusterRoleBinding", "zeropod:event-creator"),
        ("ClusterRoleBinding", "zeropod:migration-manager"),
        ("ClusterRoleBinding", "zeropod:pod-reader"), ("ClusterRoleBinding", "zeropod:pod-updater"),
        ("CustomResourceDefinition", "migrations.runtime.zeropod.ctrox.dev"),
        ("DaemonSet", "zeropod-node"), ("Namespace", NAMESPACE),
        ("Role", "zeropod:secret-creator"), ("RoleBinding", "zeropod:secret-creator"),
        ("RuntimeClass", "zeropod"), ("ServiceAccount", "zeropod-node")]
    for obj in objects:
        manifests.validate(obj)
        namespace = obj["metadata"].get("namespace")
        assert namespace == (None if obj["kind"] in manifests.CLUSTER_SCOPED else NAMESPACE), obj


def test_validate_rejects_mistakes() -> None:
    """The schema check is strict: a misspelt field, a wrong type, a missing name."""
    daemonset = manifests.find(manifests.render(), "DaemonSet", "zeropod-node")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    def misspelt(c: dict[str, Any]) -> None:
        c["imagePullpolicy"] = "Never"

    def string_port(c: dict[str, Any]) -> None:
        c["ports"][0]["containerPort"] = "8080"

    def no_name(c: dict[str, Any]) -> None:
        del c["name"]

    for mistake, message in ((misspelt, "unknown field"), (string_port, "expected int"),
                             (no_name, "name")):
        broken = json.loads(json.dumps(daemonset))
        mistake(broken["spec"]["template"]["spec"]["containers"][0])
        with pytest.raises(manifests.RenderError, match=message):
            manifests.validate(broken)
    assert container["name"] == "manager"


def test_runtime_class_and_scheduling() -> None:
    objects = manifests.render()
    runtime_class = manifests.find(objects, "RuntimeClass", "zeropod")
    assert runtime_class["handler"] == "zeropod"  # the runtime zeropod-installer configures
    assert runtime_class["scheduling"]["nodeSelector"] == NODE_LABEL
    assert _pod_spec(objects)["nodeSelector"] == NODE_LABEL


def test_daemonset_privileges_are_the_documented_minimum() -> None:
    """What docs/install.md lists, and nothing else: no privileged container, no host
    namespaces, three host paths each used by one container, the capabilities each needs."""
    objects = manifests.render()
    pod = _pod_spec(objects)
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host_paths == {"host-root": "/", "zeropod-run": "/run/zeropod",
                          "zeropod-images": "/var/lib/zeropod"}
    expected = {"installer": (["SYS_CHROOT"], {"host-root": "/host"}),
                "manager": (MANAGER_CAPABILITIES, {"zeropod-run": "/run/zeropod",
                                                   "zeropod-images": "/var/lib/zeropod"})}
    for name, (capabilities, mounts) in expected.items():
        container = _container(objects, name)
        security = container["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"], "add": capabilities}
        assert not security.get("privileged") and security["runAsUser"] == 0
        assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == mounts
        assert all("mountPropagation" not in m for m in container["volumeMounts"])


def test_rbac_is_read_pods_only() -> None:
    objects = manifests.render()
    role = manifests.find(objects, "ClusterRole", "zeropod:pod-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    binding = manifests.find(objects, "ClusterRoleBinding", "zeropod:pod-reader")
    assert binding["roleRef"]["name"] == "zeropod:pod-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "zeropod-node",
                                    "namespace": NAMESPACE}]
    assert _pod_spec(objects)["serviceAccountName"] == "zeropod-node"


def test_rbac_of_labels_events_and_resize_is_exactly_what_they_call() -> None:
    """The manager's one update per status event (GET + PUT of the pod), pods/resize and
    event creation; nothing to list, patch or delete."""
    objects = manifests.render()
    updater = manifests.find(objects, "ClusterRole", "zeropod:pod-updater")
    assert updater["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["update"]}]
    events = manifests.find(objects, "ClusterRole", "zeropod:event-creator")
    assert events["rules"] == [{"apiGroups": [""], "resources": ["events"],
                                "verbs": ["create"]}]
    for name in ("zeropod:pod-updater", "zeropod:event-creator"):
        binding = manifests.find(objects, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "zeropod-node",
                                        "namespace": NAMESPACE}]


def test_rbac_of_migration_is_exactly_what_the_controller_calls() -> None:
    """Migration objects (the source creates, watches and un-finalizes them; the target
    lists, claims and writes phases), and the CA Secret in zeropod-system (read, created by
    the first manager); pods are read through zeropod:pod-reader."""
    objects = manifests.render()
    role = manifests.find(objects, "ClusterRole", "zeropod:migration-manager")
    assert role["rules"] == [
        {"apiGroups": ["runtime.zeropod.ctrox.dev"], "resources": ["migrations"],
         "verbs": ["get", "list", "watch", "create", "update"]},
        {"apiGroups": ["runtime.zeropod.ctrox.dev"], "resources": ["migrations/status"],
         "verbs": ["get", "update"]}]
    secrets = manifests.find(objects, "Role", "zeropod:secret-creator")
    assert secrets["metadata"]["namespace"] == NAMESPACE
    assert secrets["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                 "verbs": ["get", "create"]}]
    for kind, name in (("ClusterRoleBinding", "zeropod:migration-manager"),
                       ("RoleBinding", "zeropod:secret-creator")):
        binding = manifests.find(objects, kind, name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "zeropod-node",
                                        "namespace": NAMESPACE}]


def _expanded_env(container: dict[str, Any], example: dict[str, str]) -> dict[str, str]:
    """The container's plain env values as the kubelet expands them: ``$(VAR)`` names a
    variable defined *before* it (downward-API ones get their values from ``example``)."""
    defined: list[str] = []
    values: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            refs = re.findall(r"\$\((\w+)\)", entry["value"])
            assert set(refs) <= set(defined), f"{entry['name']} uses a later variable"
            values[entry["name"]] = re.sub(r"\$\((\w+)\)",
                                           lambda m: values.get(m[1], example.get(m[1], "")),
                                           entry["value"])
        defined.append(entry["name"])
    return values


def test_the_manager_runs_the_migration_controller_reachable_from_other_nodes() -> None:
    """``--migration-controller``; the image service on a declared port of the pod's IP (no
    host network: pod IPs reach each other across nodes), advertised as that IP, which the
    node certificate names; the image root and its hand-over folder inside one host-path
    mount at the node's own path (adopting an image is a rename, the shims use the same
    paths); the node API socket where the shims look for it, in the /run/zeropod mount."""
    objects = manifests.render()
    manager = _container(objects, "manager")
    assert "--migration-controller" in manager["args"]
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
                for e in manager["env"] if "valueFrom" in e}
    assert downward == {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
    env = _expanded_env(manager, {"NODE_NAME": "node-a", "POD_IP": "10.244.1.7"})
    settings = MigrationSettings.from_mapping(env)
    assert settings.advertise == "10.244.1.7" and settings.node_name == "node-a"
    assert {"node-a", "10.244.1.7"} <= set(settings.addresses)
    host, _, port = settings.listen.rpartition(":")
    assert host == "0.0.0.0"
    assert {"name": "migration", "containerPort": int(port)} in manager["ports"]
    pod = _pod_spec(objects)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: host_paths[m["name"]] for m in manager["volumeMounts"]}
    assert all(inside == outside for inside, outside in mounts.items())
    folder = settings.image_root.parent
    assert str(folder) in mounts and handover_root(settings.image_root).parent == folder
    assert str(Path(manager_socket_path(env)).parent) in mounts


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_installer_arguments_parse(overlay: str) -> None:
    """The init container's arguments are ones zeropod-installer accepts."""
    installer = _container(manifests.render(overlay), "installer")
    assert installer["command"] == ["/opt/zeropod/node/bin/zeropod-installer"]
    args = build_parser().parse_args(installer["args"])
    assert str(args.host_root) == "/host" and args.payload == "/opt/zeropod/node"
    assert args.shim.startswith(args.payload + "/") and args.criu.startswith(args.payload + "/")
    assert args.uninstall is (overlay == "overlays/uninstall")
    if overlay == "overlays/lab":
        assert installer["imagePullPolicy"] == "Never"
        assert installer["image"] == "docker.io/zeropod/node:dev"


def _healthz_with_capabilities(capabilities: list[str], tmp_path: Path) -> dict[str, Any]:
    """Run the workspace's zeropod-manager as root with only ``capabilities`` (bounding set),
    in a private mount namespace with an empty /run/zeropod, and return its /healthz."""
    ready = tmp_path / f"ready-{len(capabilities)}"
    manager = Path(os.environ.get("VIRTUAL_ENV", manifests.REPO / ".venv")) / "bin" / \
        "zeropod-manager"
    bounding = "-all" + "".join(f",+{c.lower()}" for c in capabilities)
    script = ('mkdir -p /run/zeropod && mount -t tmpfs tmpfs /run/zeropod && '
              f'exec setpriv --bounding-set {bounding} -- "$0" --socket-dir "$1" '
              '--listen 127.0.0.1:0 --ready-file "$2"')
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(manager),
         str(tmp_path / "sockets"), str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the manager did not start within 30 s"
            time.sleep(0.05)
        address = ready.read_text().strip()
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=30) as response:
            return json.load(response)["capabilities"]  # type: ignore[no-any-return]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_manager_capabilities_suffice(tmp_path: Path) -> None:
    """The manager with exactly the DaemonSet's capabilities passes its own node checks; with
    none, the redirector check fails, so the one capability is needed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a private mount namespace, capabilities to drop)")
    capabilities = _container(manifests.render(), "manager")["securityContext"][
        "capabilities"]["add"]
    healthz = _healthz_with_capabilities(capabilities, tmp_path)
    assert healthz["redirector"]["loads"] is True, healthz["redirector"]
    assert healthz["criu"]["available"] is True
    assert "error" not in healthz["criu_features"], healthz["criu_features"]
    without = _healthz_with_capabilities([], tmp_path)
    assert without["redirector"]["loads"] is False
    assert "cannot mount bpffs: Operation not permitted" in without["redirector"]["error"]


_MOVE_IMAGE = """
import shutil, sys
from pathlib import Path
from zeropod_migration.imagefs import ImageReceiver, ImageSender
source, dest = Path(sys.argv[1]), Path(sys.argv[2])
receiver = ImageReceiver(dest)
try:
    for chunk in ImageSender(source).chunks():
        receiver.feed(chunk)
    receiver.finish()
except BaseException:
    receiver.abort()
    raise
shutil.rmtree(source.parent)
"""


def _move_image_with(capabilities: list[str], tmp_path: Path, tag: str) -> tuple[
        subprocess.CompletedProcess[str], Path, Path]:
    """A handed-over image whose files the app wrote as uid 1000 (a 0700 folder, a 0600
    file), sent, received and then removed the way the manager's image service, receiver
    and clean-up do it, by a process as root with only ``capabilities``."""
    held = tmp_path / f"i-migrating-{tag}" / "c1" / "snapshot"
    home = held / "upper" / "home" / "app"
    home.mkdir(parents=True)
    (held / "pages-1.img").write_bytes(os.urandom(4096))
    (home / "notes.txt").write_text("written by the app")
    for path, mode in ((home / "notes.txt", 0o600), (home, 0o700)):
        os.chown(path, 1000, 1000)
        os.chmod(path, mode)
    dest = tmp_path / f"i-{tag}" / "c2" / "snapshot"
    bounding = "-all" + "".join(f",+{c.lower()}" for c in capabilities)
    done = subprocess.run(["setpriv", "--bounding-set", bounding, "--", sys.executable, "-c",
                           _MOVE_IMAGE, str(held), str(dest)],
                          capture_output=True, text=True, timeout=60)
    return done, held, dest


def test_manager_capabilities_suffice_for_migration_images(tmp_path: Path) -> None:
    """The manager's capabilities move an image whose files belong to the app's user (their
    owner and mode kept) and remove the handed-over copy; without any one of CHOWN,
    DAC_OVERRIDE and FOWNER that fails on the app's files."""
    if os.geteuid() != 0:
        pytest.skip("needs root (files of another owner, capabilities to drop)")
    capabilities = _container(manifests.render(), "manager")["securityContext"][
        "capabilities"]["add"]
    done, held, dest = _move_image_with(capabilities, tmp_path, "daemonset")
    assert done.returncode == 0, done.stderr
    notes = dest / "upper" / "home" / "app" / "notes.txt"
    assert notes.read_text() == "written by the app"
    for path, mode in ((notes, 0o600), (notes.parent, 0o700)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, mode)
    assert not held.parent.exists()
    for dropped in ("CHOWN", "DAC_OVERRIDE", "FOWNER"):  # each one is needed
        fewer = [c for c in capabilities if c != dropped]
        done, held, dest = _move_image_with(fewer, tmp_path, dropped.lower())
        assert done.returncode != 0 and "PermissionError" in done.stderr, (dropped, done.stderr)
        assert not (dest / "upper" / "home" / "app" / "notes.txt").exists()
