"""deploy/: rendered by the real kustomize, every object checked against the API's schema, the
DaemonSet's privileges are the documented minimal set, and that set suffices for the manager."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from zeropod_core.installer.main import build_parser
from zeropod_core.lab import manifests

NAMESPACE = "zeropod-system"
NODE_LABEL = {"zeropod.ctrox.dev/node": "true"}


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
    namespaces, two host paths each used by one container, one capability each."""
    objects = manifests.render()
    pod = _pod_spec(objects)
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host_paths == {"host-root": "/", "zeropod-run": "/run/zeropod"}
    expected = {"installer": (["SYS_CHROOT"], {"host-root": "/host"}),
                "manager": (["SYS_ADMIN"], {"zeropod-run": "/run/zeropod"})}
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
