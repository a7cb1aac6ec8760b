"""The manager's access to the Kubernetes API: settings, connection and the few calls it makes.

A DaemonSet pod finds the API through its service account (in-cluster configuration) and its
node through ``NODE_NAME`` from the downward API; outside a cluster ``--kubeconfig`` and
``--node-name`` say the same. The official ``kubernetes`` client is imported only here and
only when a Kubernetes switch is on: it is a dependency of the manager plugins that need it,
never of the shim. Objects go in and come out as plain JSON dicts, so plugins do not depend
on the client's generated model classes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from zeropod_core.config import switch_setting

log = logging.getLogger("zeropod.manager.kube")

REQUEST_TIMEOUT_S = 5.0
STATUS_LABELS, STATUS_EVENTS, IN_PLACE_SCALING, MIGRATION = (
    "ZEROPOD_STATUS_LABELS", "ZEROPOD_STATUS_EVENTS", "ZEROPOD_IN_PLACE_SCALING",
    "ZEROPOD_MIGRATION_CONTROLLER")
# A watch asks the server to end it after this long (it is then started again), so a worker
# thread blocked in it returns in bounded time.
WATCH_TIMEOUT_S = 20


class KubeUnavailable(RuntimeError):
    """The manager cannot talk to Kubernetes (no client installed, no configuration)."""


class KubeError(RuntimeError):
    """The API answered with an error (or not at all: ``status`` 0).

    :ivar status: the HTTP status (0 = no answer: connection refused, timeout).
    :ivar reason: the ``Status`` reason, e.g. ``Conflict``, ``Invalid``, ``Forbidden``.
    :ivar details: the ``Status`` details (``name``, ``kind``, ``causes``).
    """

    def __init__(self, status: int, reason: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else message)
        self.status, self.reason, self.message = status, reason, message
        self.details = dict(details or {})

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def unreachable(self) -> bool:
        """The API is down or overloaded: worth a retry later."""
        return self.status == 0 or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class KubeSettings:
    """What the manager does with Kubernetes (upstream's switch names) and how it gets there.

    :ivar kubeconfig: a kubeconfig file; "" = the in-cluster service account.
    :ivar node_name: this node's name (events' source host); "" = the host name.
    """

    kubeconfig: str = ""
    node_name: str = ""
    status_labels: bool = False
    status_events: bool = False
    in_place_scaling: bool = False
    migration: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KubeSettings:
        """Defaults from the environment (``ZEROPOD_KUBECONFIG``, ``NODE_NAME``, switches)."""
        return cls(kubeconfig=env.get("ZEROPOD_KUBECONFIG", ""),
                   node_name=env.get("NODE_NAME", ""),
                   status_labels=switch_setting(env, STATUS_LABELS, False),
                   status_events=switch_setting(env, STATUS_EVENTS, False),
                   in_place_scaling=switch_setting(env, IN_PLACE_SCALING, False),
                   migration=switch_setting(env, MIGRATION, False))

    @property
    def wanted(self) -> bool:
        """Whether any switch needs the API."""
        return (self.status_labels or self.status_events or self.in_place_scaling
                or self.migration)

    def as_settings(self) -> dict[str, str]:
        """The switches as ``ZEROPOD_*`` settings for ``zeropod_manager_configure``."""
        return {STATUS_LABELS: str(self.status_labels).lower(),
                STATUS_EVENTS: str(self.status_events).lower(),
                IN_PLACE_SCALING: str(self.in_place_scaling).lower(),
                MIGRATION: str(self.migration).lower()}


def _error(exc: Exception) -> KubeError:
    """The client's exception as a :class:`KubeError` (the API's ``Status`` when it sent one)."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or not status:
        return KubeError(0, "Unreachable", f"Kubernetes API unreachable: {exc}")
    body = getattr(exc, "body", None) or getattr(exc, "data", None) or ""
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    return KubeError(status, str(parsed.get("reason") or getattr(exc, "reason", "")),
                     str(parsed.get("message") or body or exc), parsed.get("details"))


@dataclass
class _RawAnswer(Exception):
    """An error answer the client returned instead of raising."""

    status: int
    body: bytes


class KubeApi:
    """The calls the manager and its plugins make, dict in, dict out.

    Calls block (the client is synchronous): make them from a worker thread, as the pod
    updater does. Each call raises :class:`KubeError` on any failure.
    """

    def __init__(self, settings: KubeSettings, api_client: Any, server: str) -> None:
        self.settings, self.api_client, self.server = settings, api_client, server
        self.node_name = settings.node_name or socket.gethostname()
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._version = client.VersionApi(api_client)

    @classmethod
    def connect(cls, settings: KubeSettings) -> KubeApi:
        """Load the configuration (kubeconfig or in-cluster); does not call the API yet.

        :raises KubeUnavailable: no ``kubernetes`` client, or no configuration to use.
        """
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise KubeUnavailable(f"the kubernetes client is not installed ({exc}); install "
                                  "zeropod-kube-status or zeropod-resize") from exc
        configuration = client.Configuration()
        try:
            if settings.kubeconfig:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=settings.kubeconfig, client_configuration=configuration)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
            else:
                raise KubeUnavailable("no Kubernetes configuration: not in a cluster "
                                      "(KUBERNETES_SERVICE_HOST unset) and no --kubeconfig")
        except (OSError, config.ConfigException) as exc:
            source = settings.kubeconfig or "the in-cluster service account"
            raise KubeUnavailable(f"loading the Kubernetes configuration from {source} "
                                  f"failed: {exc}") from exc
        # no silent retries inside the client: the pod updater retries, and logs it
        configuration.retries = 0
        return cls(settings, client.ApiClient(configuration), str(configuration.host))

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = method(*args, _preload_content=False,
                              _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except Exception as exc:  # ApiException, urllib3's and OS errors alike
            raise _error(exc) from exc
        data = response.data if hasattr(response, "data") else response.read()
        status = int(getattr(response, "status", 200))
        if status >= 300:  # clients that do not raise for raw (not preloaded) answers
            raise _error(_RawAnswer(status, data))
        return json.loads(data) if data else None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self._call(self._core.read_namespaced_pod, name, namespace)
        return pod

    def replace_pod(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole pod (fails with a conflict if its resourceVersion is stale)."""
        meta = pod["metadata"]
        result: dict[str, Any] = self._call(self._core.replace_namespaced_pod, meta["name"],
                                            meta["namespace"], body=dict(pod))
        return result

    def resize_pod(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the pod through the ``pods/resize`` subresource (Kubernetes >= 1.32)."""
        meta = pod["metadata"]
        result: dict[str, Any] = self._call(self._core.replace_namespaced_pod_resize,
                                            meta["name"], meta["namespace"], body=dict(pod))
        return result

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._core.create_namespaced_event, namespace,
                                            body=dict(event))
        return result

    def list_pods(self, *, field_selector: str = "") -> dict[str, Any]:
        """Pods of every namespace (a ``PodList``), e.g. ``spec.nodeName=<node>``."""
        result: dict[str, Any] = self._call(self._core.list_pod_for_all_namespaces,
                                            field_selector=field_selector)
        return result

    def watch_pods(self, resource_version: str, *,
                   field_selector: str = "") -> Iterator[dict[str, Any]]:
        """Pod watch events (``{"type", "object"}``) after ``resource_version``; blocks, so
        iterate it in a worker thread. Ends after :data:`WATCH_TIMEOUT_S`; raises
        :class:`KubeError` (status 410 ``Expired``: list again)."""
        return self._watch(self._core.list_pod_for_all_namespaces, resource_version,
                           field_selector=field_selector)

    def _watch(self, method: Any, resource_version: str, *args: Any,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
        from kubernetes import watch

        try:
            for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
                    method, *args, resource_version=resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S, _request_timeout=WATCH_TIMEOUT_S + 10,
                    allow_watch_bookmarks=False, **kwargs):
                kind, obj = event.get("type"), event.get("raw_object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code") or 500), str(obj.get("reason", "")),
                                    str(obj.get("message", "")))
                yield {"type": kind, "object": obj}
        except KubeError:
            raise
        except Exception as exc:
            raise _error(exc) from exc

    # custom objects (the migration plugin's Migration resource), cluster-wide lists

    def list_custom(self, group: str, version: str, plural: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._custom.list_cluster_custom_object, group,
                                            version, plural)
        return result

    def watch_custom(self, group: str, version: str, plural: str,
                     resource_version: str) -> Iterator[dict[str, Any]]:
        """Watch events of a custom resource in every namespace (see :meth:`watch_pods`)."""
        return self._watch(self._custom.list_cluster_custom_object, resource_version, group,
                           version, plural)

    def get_custom(self, group: str, version: str, plural: str, namespace: str,
                   name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._custom.get_namespaced_custom_object, group,
                                            version, namespace, plural, name)
        return result

    def create_custom(self, group: str, version: str, plural: str,
                      body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._custom.create_namespaced_custom_object,
                                            group, version, body["metadata"]["namespace"],
                                            plural, dict(body))
        return result

    def replace_custom(self, group: str, version: str, plural: str,
                       body: Mapping[str, Any], *, status: bool = False) -> dict[str, Any]:
        """PUT the object (or its ``status`` subresource); a conflict on a stale version."""
        meta = body["metadata"]
        method = (self._custom.replace_namespaced_custom_object_status if status
                  else self._custom.replace_namespaced_custom_object)
        result: dict[str, Any] = self._call(method, group, version, meta["namespace"], plural,
                                            meta["name"], dict(body))
        return result

    def delete_custom(self, group: str, version: str, plural: str, namespace: str,
                      name: str) -> None:
        self._call(self._custom.delete_namespaced_custom_object, group, version, namespace,
                   plural, name)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._core.read_namespaced_secret, name, namespace)
        return result

    def create_secret(self, namespace: str, secret: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._core.create_namespaced_secret, namespace,
                                            body=dict(secret))
        return result

    def check(self) -> dict[str, Any]:
        """Whether the API answers (its version) - for ``/healthz``; never raises."""
        report: dict[str, Any] = {"server": self.server, "node_name": self.node_name,
                                  **asdict(self.settings)}
        try:
            version = self._call(self._version.get_code)
        except KubeError as exc:
            return report | {"reachable": False, "error": str(exc)}
        return report | {"reachable": True, "version": (version or {}).get("gitVersion", "")}
