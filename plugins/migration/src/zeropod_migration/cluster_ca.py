"""The migration CA kept in a Kubernetes Secret, so every node's manager trusts the same CA.

The first manager that finds no Secret creates it (a new ECDSA P-256 CA); a manager that
loses that race reads the winner's. Each manager then issues its own node certificate in
memory at start: nothing of the CA is written to the node's disk.
"""

from __future__ import annotations

import base64
import logging

from zeropod_core.manager.kube import KubeApi, KubeError

from .tls import ClusterCA, TlsSetupError

log = logging.getLogger("zeropod.migration.ca")

SECRET_NAME = "zeropod-migration-ca"
CERT_KEY, KEY_KEY = "ca.crt", "ca.key"


def cluster_ca(kube: KubeApi, namespace: str, name: str = SECRET_NAME) -> tuple[ClusterCA, str]:
    """The CA from ``namespace/name`` (created when missing) and what happened
    (``loaded``/``created``).

    :raises TlsSetupError: the Secret cannot be read or made (RBAC, a malformed Secret).
    """
    created = False
    try:
        secret = kube.get_secret(namespace, name)
    except KubeError as exc:
        if exc.status != 404:
            raise TlsSetupError(f"reading the Secret {namespace}/{name} failed: {exc}") from exc
        ca = ClusterCA.create()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "zeropod"}},
                "data": {CERT_KEY: base64.b64encode(ca.cert_pem).decode(),
                         KEY_KEY: base64.b64encode(ca.key_pem).decode()}}
        try:
            secret = kube.create_secret(namespace, body)
            created = True
        except KubeError as create_exc:
            if create_exc.status != 409:  # 409: another node made it first: use theirs
                raise TlsSetupError(f"creating the Secret {namespace}/{name} failed: "
                                    f"{create_exc}") from create_exc
            try:
                secret = kube.get_secret(namespace, name)
            except KubeError as again:
                raise TlsSetupError(f"reading the Secret {namespace}/{name} failed: "
                                    f"{again}") from again
    data = secret.get("data") or {}
    try:
        ca = ClusterCA(base64.b64decode(data[CERT_KEY]), base64.b64decode(data[KEY_KEY]))
    except (KeyError, ValueError, TypeError) as exc:
        raise TlsSetupError(f"the Secret {namespace}/{name} lacks {CERT_KEY} and {KEY_KEY}") \
            from exc
    what = "created" if created else "loaded"
    log.info("migration CA %s", what, extra={"secret": f"{namespace}/{name}"})
    return ca, what
