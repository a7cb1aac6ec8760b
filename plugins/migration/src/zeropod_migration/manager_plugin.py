"""Manager side of ``zeropod-migration`` (entry point group ``zeropod.manager``).

Provides the node-to-node image service (:class:`~.service.ImageServer`) through
``zeropod_make_migration_service``, the Kubernetes-driven cold migration
(:class:`~.controller.MigrationController`) through ``zeropod_make_migration_controller``
when the manager runs with ``--migration-controller``, and says in ``/healthz`` whether this
node can serve and pull images, where its CA comes from, and whether live migration can work
here, with the reason when not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from zeropod_core import hookimpl
from zeropod_core.manager.kube import KubeApi
from zeropod_core.providers import MigrationService, NodeView

from .capabilities import live_migration_support
from .cluster_ca import SECRET_NAME, cluster_ca
from .controller import MigrationController
from .service import ImageServer
from .settings import MigrationSettings
from .tls import TlsSetupError, node_credentials

log = logging.getLogger("zeropod.migration")

_status: dict[str, object] = {"migration_service": "not configured"}


@hookimpl
def zeropod_make_migration_service(settings: Mapping[str, str],
                                   kube: KubeApi | None) -> ImageServer | None:
    """The image service, or None (logged, shown in /healthz) when it cannot run.

    With Kubernetes (``--migration-controller``) the CA comes from the Secret
    ``<ZEROPOD_MIGRATION_NAMESPACE>/zeropod-migration-ca`` (created if missing) and the
    node's certificate is issued in memory; otherwise from ``ZEROPOD_MIGRATION_TLS_DIR``.
    """
    try:
        config = MigrationSettings.from_mapping(settings)
        if kube is not None:
            ca, what = cluster_ca(kube, config.namespace)
            creds = ca.issue(config.node_name, config.addresses)
            _status["ca"] = f"Secret {config.namespace}/{SECRET_NAME} ({what})"
        else:
            creds = node_credentials(config.tls_dir, config.node_name, config.addresses)
            _status["ca"] = f"files in {config.tls_dir}"
    except (ValueError, TlsSetupError) as exc:
        log.error("migration service off", extra={"error": str(exc)})
        _status["migration_service"] = f"off: {exc}"
        return None
    _status["migration_service"] = f"serving on {config.listen}"
    return ImageServer(config.image_root, creds, config.listen)


@hookimpl
def zeropod_make_migration_controller(kube: KubeApi, node: NodeView,
                                      service: MigrationService | None,
                                      settings: Mapping[str, str]
                                      ) -> MigrationController | None:
    """The Kubernetes side of cold migration (pod and Migration watches, claims, pulls)."""
    try:
        config = MigrationSettings.from_mapping(settings)
    except ValueError as exc:
        log.error("migration controller off", extra={"error": str(exc)})
        return None
    server = service if isinstance(service, ImageServer) else None
    creds = server.creds if server is not None else None
    return MigrationController(kube, node, config, creds,
                               port=lambda: server.port if server is not None else 0,
                               ca=str(_status.get("ca", "none")),
                               gates=server.gates if server is not None else None)


@hookimpl
def zeropod_node_capabilities() -> Mapping[str, object]:
    """Whether the image service runs (cold migration) and live migration can work here."""
    return {**_status, "live_migration": live_migration_support()}
