"""Identities for programs the lab runs outside its pods (the zeropod manager, say)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from .cluster import KubeCluster


def service_account_kubeconfig(cluster: KubeCluster, folder: Path) -> Path:
    """A kubeconfig with the token of zeropod-system/zeropod-node (1.20: a token secret)."""
    api = cluster.api()

    def token() -> str | None:
        account = api.get_or_none("/api/v1/namespaces/zeropod-system/serviceaccounts/"
                                  "zeropod-node") or {}
        for ref in account.get("secrets", []):
            secret = api.get(f"/api/v1/namespaces/zeropod-system/secrets/{ref['name']}")
            if secret.get("type") == "kubernetes.io/service-account-token":
                return base64.b64decode(secret["data"]["token"]).decode()
        return None
    deadline = time.monotonic() + 30
    while (value := token()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no token for the manager's service account")
        time.sleep(0.2)
    path = folder / "zeropod-node.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {
            "server": cluster.plane.server,
            "certificate-authority": str(cluster.pki.ca.cert)}}],
        "users": [{"name": "zeropod-node", "user": {"token": value}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "zeropod-node"}}]}))
    return path
