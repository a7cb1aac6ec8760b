"""A STAND-IN for the pod parts of a kube-apiserver, for what the lab's Kubernetes 1.20 lacks.

The lab's real cluster is 1.20, which has no in-place pod resize. This in-process HTTP server
answers the few calls the manager makes (pods get/update, ``pods/resize``, events create,
``/version``) following the rules of the Kubernetes version it plays:

* ``"1.33"``: ``pods/resize`` exists; through it container requests are mutable, the QoS
  class is not, a request or limit may be neither added nor removed, a memory limit may not
  shrink. A plain pod update may not change resources (``Invalid``, as a real 1.33).
* ``"1.31"``: no ``pods/resize`` (404); a plain update may change resources under the same
  rules (the InPlacePodVerticalScaling feature gate of 1.27-1.31).
* ``"1.20"``: no ``pods/resize``; a plain update that changes resources is ``Invalid``
  ("pod updates may not change fields other than ..."), as the real 1.20 answers.

Updates check ``metadata.resourceVersion`` (409 ``Conflict`` when stale). Every request is
recorded (``calls``), and faults can be injected: answer the next N requests with an error
(``fail_next``: the API down), forbid a verb on a resource (missing RBAC), or change the
pod behind the client's back (a conflict). It is a test double for the API's *rules*, not a
Kubernetes: no watch, no admission, no kubelet.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)(/resize)?$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
VERSIONS = ("1.20", "1.31", "1.33")


def qos_class(pod: dict[str, Any]) -> str:
    """Kubernetes' QoS class of a pod spec (Guaranteed, Burstable, BestEffort)."""
    containers = pod["spec"].get("containers", [])
    any_set, guaranteed = False, True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        any_set = any_set or bool(requests) or bool(limits)
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _memory_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


class Invalid(Exception):
    """A 422 with the message a real apiserver would give."""


def _resize_errors(old: dict[str, Any], new: dict[str, Any]) -> None:
    """The resize rules of 1.33 (requests mutable, QoS and the set of resources fixed)."""
    olds = {c["name"]: c for c in old["spec"]["containers"]}
    for container in new["spec"]["containers"]:
        before = (olds.get(container["name"]) or {}).get("resources") or {}
        after = container.get("resources") or {}
        for kind in ("requests", "limits"):
            if set(before.get(kind) or {}) != set(after.get(kind) or {}):
                raise Invalid(f"spec.containers[{container['name']}].resources.{kind}: "
                              "Forbidden: resource may not be added or removed")
        old_limit = (before.get("limits") or {}).get("memory")
        new_limit = (after.get("limits") or {}).get("memory")
        if old_limit and new_limit and _memory_bytes(new_limit) < _memory_bytes(old_limit):
            raise Invalid(f"spec.containers[{container['name']}].resources.limits.memory: "
                          "Forbidden: memory limits cannot be decreased")
    if qos_class(old) != qos_class(new):
        raise Invalid("spec: Invalid value: \"" + qos_class(new) + "\": Pod QoS is immutable")


def _without_resources(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "resources"} for c in pod["spec"]["containers"]]


@dataclass
class StandinApi:
    """The stand-in's state; ``serve()`` runs it on 127.0.0.1 with a kubeconfig for it."""

    version: str = "1.33"
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    _failures: list[int] = field(default_factory=list)
    _revision: int = 100
    _conflicts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"stand-in version must be one of {VERSIONS}, not {self.version!r}")

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        pod.setdefault("status", {})["qosClass"] = qos_class(pod)
        with self.lock:
            self._bump(pod)
            self.pods[(meta["namespace"], meta["name"])] = pod
        return copy.deepcopy(pod)

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.pods[(namespace, name)])

    def touch(self, name: str, namespace: str = "default") -> None:
        """Someone else updated the pod (its resourceVersion moves on): a conflict."""
        with self.lock:
            pod = self.pods[(namespace, name)]
            pod["metadata"].setdefault("labels", {})["touched"] = str(self._revision)
            self._bump(pod)

    def conflict_next(self, count: int) -> None:
        """The next ``count`` pod updates lose a race: someone else updated the pod first."""
        with self.lock:
            self._conflicts += count

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (the API down or overloaded)."""
        with self.lock:
            self._failures.extend([status] * count)

    def _bump(self, pod: dict[str, Any]) -> None:
        self._revision += 1
        pod["metadata"]["resourceVersion"] = str(self._revision)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.calls.append((method, path))
            if self._failures:
                status = self._failures.pop(0)
                return status, _status(status, "ServiceUnavailable", "the stand-in is down")
            if path.rstrip("/") == "/version":
                minor = self.version.split(".")[1]
                return 200, {"major": "1", "minor": minor,
                             "gitVersion": f"v{self.version}.0-standin"}
            if match := _EVENTS.match(path):
                return self._event(method, match.group(1), body)
            if match := _POD.match(path):
                return self._pod(method, match.group(1), match.group(2),
                                 bool(match.group(3)), body)
        return 404, _status(404, "NotFound", "the server could not find the requested resource")

    def _denied(self, verb: str, resource: str, namespace: str, name: str) -> tuple[int, Any]:
        what = f'{resource.split("/")[0]} "{name}"' if name else resource
        return 403, _status(
            403, "Forbidden",
            f'{what} is forbidden: User "system:serviceaccount:zeropod-system:zeropod-node" '
            f'cannot {verb} resource "{resource}" in API group "" in the namespace '
            f'"{namespace}"')

    def _event(self, method: str, namespace: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, {"kind": "EventList", "items": [
                e for e in self.events if e["metadata"]["namespace"] == namespace]}
        if method != "POST":
            return 405, _status(405, "MethodNotAllowed", method)
        if ("create", "events") in self.forbidden:
            return self._denied("create", "events", namespace, "")
        event = copy.deepcopy(body)
        meta = event.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name"):
            meta["name"] = meta.get("generateName", "event-") + uuid.uuid4().hex[:5]
        # JSON key -> the field the apiserver's message names (Go: ReportingController)
        required = {"involvedObject": "involvedObject", "reason": "reason"}
        if event.get("eventTime") and not re.search(r"T\d\d:\d\d:\d\d\.\d{6}",
                                                    event["eventTime"]):
            return 400, _status(400, "BadRequest", f'parsing time "{event["eventTime"]}": '
                                                   "MicroTime needs 6 fractional digits")
        if event.get("eventTime"):  # the apiserver's rules for events with an eventTime
            required |= {"reportingComponent": "reportingController",
                         "reportingInstance": "reportingInstance", "action": "action"}
            if len(event.get("message", "")) > 1024:
                return 422, _status(422, "Invalid", "message: Too long: must have at most "
                                                    "1024 bytes")
        for key, field_name in required.items():
            if not event.get(key):
                return 422, _status(422, "Invalid", f"{field_name}: Required value")
        if event["involvedObject"].get("namespace", namespace) != namespace:
            return 422, _status(422, "Invalid", "involvedObject.namespace: Invalid value: "
                                                "does not match event.namespace")
        self.events.append(event)
        return 201, event

    def _pod(self, method: str, namespace: str, name: str, resize: bool,
             body: Any) -> tuple[int, Any]:
        resource = "pods/resize" if resize else "pods"
        if resize and self.version != "1.33":
            return 404, _status(404, "NotFound",
                                "the server could not find the requested resource")
        current = self.pods.get((namespace, name))
        verb = {"GET": "get", "PUT": "update"}.get(method)
        if verb is None:
            return 405, _status(405, "MethodNotAllowed", method)
        if (verb, resource) in self.forbidden:
            return self._denied(verb, resource, namespace, name)
        if current is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found',
                                {"name": name, "kind": "pods"})
        if method == "GET":
            return 200, copy.deepcopy(current)
        if self._conflicts:
            self._conflicts -= 1
            self._bump(current)
        if body.get("metadata", {}).get("resourceVersion") != \
                current["metadata"]["resourceVersion"]:
            return 409, _status(409, "Conflict",
                                f'Operation cannot be fulfilled on pods "{name}": the object '
                                "has been modified; please apply your changes to the latest "
                                "version and try again", {"name": name, "kind": "pods"})
        if _without_resources(body) != _without_resources(current):
            return 422, _status(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: '
                                "only container resources may change here")
        try:
            self._check_resources(current, body, resize)
        except Invalid as exc:
            return 422, _status(422, "Invalid", f'Pod "{name}" is invalid: {exc}',
                                {"name": name, "kind": "Pod"})
        updated = copy.deepcopy(current)
        if resize:
            updated["spec"]["containers"] = copy.deepcopy(body["spec"]["containers"])
        else:
            updated["metadata"]["labels"] = copy.deepcopy(body["metadata"].get("labels") or {})
            updated["metadata"]["annotations"] = copy.deepcopy(
                body["metadata"].get("annotations") or {})
            updated["spec"] = copy.deepcopy(body["spec"])
        self._bump(updated)
        self.pods[(namespace, name)] = updated
        return 200, copy.deepcopy(updated)

    def _check_resources(self, current: dict[str, Any], body: dict[str, Any],
                         resize: bool) -> None:
        changed = [c.get("resources") for c in current["spec"]["containers"]] != \
            [c.get("resources") for c in body["spec"]["containers"]]
        if not changed:
            return
        if not resize and self.version != "1.31":
            raise Invalid("spec: Forbidden: pod updates may not change fields other than "
                          "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                          "`spec.activeDeadlineSeconds` or `spec.tolerations` (only "
                          "additions to existing tolerations)")
        _resize_errors(current, body)

    @contextmanager
    def serve(self, folder: Path) -> Iterator[Path]:
        """Serve on a free loopback port; yield a kubeconfig file for it (in ``folder``)."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, answer = api.handle(self.command, self.path.split("?", 1)[0], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="kube-standin",
                                  daemon=True)
        thread.start()
        kubeconfig = folder / "standin.kubeconfig"
        host, port = "127.0.0.1", server.server_address[1]
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": f"http://{host}:{port}"}}],
            "users": [{"name": "standin", "user": {"token": "standin"}}],
            "contexts": [{"name": "standin",
                          "context": {"cluster": "standin", "user": "standin"}}]}))
        try:
            yield kubeconfig
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def _status(code: int, reason: str, message: str,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "reason": reason, "code": code}
    if details:
        status["details"] = details
    return status
