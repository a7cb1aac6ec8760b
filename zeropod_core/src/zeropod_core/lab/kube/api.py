"""A minimal client for the lab's apiserver: JSON over HTTPS with the admin's client cert.

The lab itself needs only a handful of calls (readyz, a node's conditions, create/get/delete
objects), and making them in-process keeps the cluster's start free of kubectl process
starts and of the ``kubernetes`` package (which tests use, through the kubeconfig).
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .pki import CertFiles


class ApiError(RuntimeError):
    """The apiserver answered with an error status; carries it and the response body."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class KubeApi:
    """Calls against ``server`` (``https://host:port``) as the holder of ``client``."""

    def __init__(self, server: str, ca: Path, client: CertFiles) -> None:
        url = urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self._context = ssl.create_default_context(cafile=str(ca))
        self._context.load_cert_chain(str(client.cert), str(client.key))

    def request(self, method: str, path: str, body: object = None,
                timeout: float = 10.0) -> tuple[int, str]:
        """Send one request; return the status and the response text."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._context,
                                           timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def call(self, method: str, path: str, body: object = None) -> Any:
        """A request that must succeed; returns the decoded JSON."""
        status, text = self.request(method, path, body)
        if status >= 300:
            raise ApiError(method, path, status, text)
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def get_or_none(self, path: str) -> Any:
        """GET, None when the object does not exist (404) or the apiserver is not up yet."""
        try:
            status, text = self.request("GET", path)
        except OSError:
            return None
        if status == 404:
            return None
        if status >= 300:
            raise ApiError("GET", path, status, text)
        return json.loads(text)

    def create(self, path: str, obj: object) -> Any:
        return self.call("POST", path, obj)

    def delete(self, path: str) -> None:
        """DELETE; an object that is already gone is fine."""
        status, text = self.request("DELETE", path)
        if status >= 300 and status != 404:
            raise ApiError("DELETE", path, status, text)

    def ready(self) -> bool:
        """``/readyz`` answers ok (False while the apiserver is still starting)."""
        try:
            status, text = self.request("GET", "/readyz", timeout=2)
        except OSError:
            return False
        return status == 200 and text.strip() == "ok"
