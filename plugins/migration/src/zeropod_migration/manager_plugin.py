"""Manager side of ``zeropod-migration`` (entry point group ``zeropod.manager``).

Provides the node-to-node image service (:class:`~.service.ImageServer`) through
``zeropod_make_migration_service`` and says in ``/healthz`` whether this node can serve and
pull images, and whether live migration can work here, with the reason when not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from zeropod_core import hookimpl

from .capabilities import live_migration_support
from .service import ImageServer
from .settings import MigrationSettings
from .tls import TlsSetupError, node_credentials

log = logging.getLogger("zeropod.migration")

_status: dict[str, object] = {"migration_service": "not configured"}


@hookimpl
def zeropod_make_migration_service(settings: Mapping[str, str]) -> ImageServer | None:
    """The image service, or None (logged, shown in /healthz) when it cannot run."""
    try:
        config = MigrationSettings.from_mapping(settings)
        creds = node_credentials(config.tls_dir, config.node_name, config.addresses)
    except (ValueError, TlsSetupError) as exc:
        log.error("migration service off", extra={"error": str(exc)})
        _status["migration_service"] = f"off: {exc}"
        return None
    _status["migration_service"] = f"serving on {config.listen}"
    return ImageServer(config.image_root, creds, config.listen)


@hookimpl
def zeropod_node_capabilities() -> Mapping[str, object]:
    """Whether the image service runs (cold migration) and live migration can work here."""
    return {**_status, "live_migration": live_migration_support()}
