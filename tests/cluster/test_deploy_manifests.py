"""deploy/ against the lab's real kube-apiserver 1.20 (RBAC on): every object of the base and
the overlays passes the server's own validation and admission (``kubectl apply
--dry-run=server``), and the base (the Migration CRD included) really applies and is removed
again."""

from __future__ import annotations

import json

import pytest

from zeropod_core.lab import manifests
from zeropod_core.lab.kube import KubeCluster
from zeropod_core.lab.kube.migration import wait_for

CRD = ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
       "migrations.runtime.zeropod.ctrox.dev")

pytestmark = pytest.mark.cluster


def _apply(cluster: KubeCluster, objects: list[dict[str, object]], *extra: str,
           action: str = "apply") -> str:
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    return cluster.kubectl(action, "-f", "-", *extra, input=document).stdout


@pytest.mark.parametrize("kustomization", ["base", "overlays/lab", "overlays/uninstall"])
def test_manifests_pass_the_servers_validation(kube_cluster: KubeCluster,
                                               kustomization: str) -> None:
    objects = manifests.render(kustomization)
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    # a dry run cannot create the namespace the namespaced objects need: create it first
    if namespaces:
        _apply(kube_cluster, namespaces)
    out = _apply(kube_cluster, objects, "--dry-run=server")
    assert out.count("(server dry run)") == len(objects), out


def test_the_base_applies_and_is_removed(kube_cluster: KubeCluster) -> None:
    """The base applies as it is, the Migration CRD with it (the API then serves
    Migrations), and the stored DaemonSet runs the manager with the migration controller."""
    objects = [o for o in manifests.render("base") if o["kind"] != "RuntimeClass"]
    # the lab cluster already has a RuntimeClass named zeropod (its own runtime handler)
    api = kube_cluster.api()
    had_crd = api.get_or_none(CRD) is not None
    _apply(kube_cluster, objects)
    try:
        daemonset = json.loads(kube_cluster.kubectl(
            "get", "daemonset", "-n", "zeropod-system", "-o", "json").stdout)["items"]
        assert [d["metadata"]["name"] for d in daemonset] == ["zeropod-node"]
        manager = next(c for c in daemonset[0]["spec"]["template"]["spec"]["containers"]
                       if c["name"] == "manager")
        assert "--migration-controller" in manager["args"]
        env = {e["name"]: e for e in manager["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["ZEROPOD_MIGRATION_ADVERTISE"]["value"] == "$(POD_IP)"
        wait_for("the API serving Migrations", lambda: api.get_or_none(
            "/apis/runtime.zeropod.ctrox.dev/v1/namespaces/default/migrations"), 30, 0.2)
    finally:
        if had_crd:  # another test's: leave it
            objects = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
        _apply(kube_cluster, objects, "--wait=true", action="delete")
