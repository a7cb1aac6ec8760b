"""The Kubernetes manifests in ``deploy/``, rendered by the real kustomize (``kubectl kustomize``).

The hook for tests against a Kubernetes API server: :func:`render` returns every object of a
kustomization as a dict, ready to apply. ``deploy/`` is written for kustomize v2.0.3 (kubectl
1.20) and newer, so whichever kubectl is on PATH renders the same objects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[4]
DEPLOY = REPO / "deploy"
OVERLAYS = ("base", "overlays/lab", "overlays/uninstall")


class RenderError(RuntimeError):
    """kubectl kustomize failed or printed something that is not a list of objects."""


def kustomization(name: str = "base") -> Path:
    """The folder of ``deploy/<name>`` (``base``, ``overlays/lab``...)."""
    folder = DEPLOY / name
    if not (folder / "kustomization.yaml").is_file():
        raise RenderError(f"no kustomization at {folder} (deploy/ is in the source checkout)")
    return folder


def render(name: str | Path = "base") -> list[dict[str, Any]]:
    """Every object ``kubectl kustomize`` renders from ``deploy/<name>`` (or a folder)."""
    import yaml

    folder = Path(name) if isinstance(name, Path) else kustomization(name)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not on PATH: run scripts/setup")
    proc = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {folder} exited {proc.returncode}: "
                          f"{proc.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]
    if not all(isinstance(doc, dict) for doc in objects):
        raise RenderError(f"kubectl kustomize {folder} printed something other than objects")
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` called ``name``."""
    found = [o for o in objects if o.get("kind") == kind
             and o.get("metadata", {}).get("name") == name]
    if len(found) != 1:
        raise KeyError(f"{len(found)} objects {kind}/{name} in the rendered manifests")
    return found[0]


# apiVersion of every kind deploy/ may use (the Kubernetes 1.20 lab serves all of them)
API_VERSIONS = {"Namespace": "v1", "ServiceAccount": "v1", "DaemonSet": "apps/v1",
                "ClusterRole": "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
                "Role": "rbac.authorization.k8s.io/v1",
                "RoleBinding": "rbac.authorization.k8s.io/v1",
                "RuntimeClass": "node.k8s.io/v1",
                "CustomResourceDefinition": "apiextensions.k8s.io/v1"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass",
                  "CustomResourceDefinition"}


def validate(obj: dict[str, Any]) -> None:
    """Check an object against the Kubernetes API's schema as the official Python client
    models it: known apiVersion and kind, no unknown field at any depth, the right JSON types,
    required fields present. Raises :class:`RenderError` naming the field."""
    kind = obj.get("kind")
    name = f"{kind}/{obj.get('metadata', {}).get('name')}"
    if kind not in API_VERSIONS or obj.get("apiVersion") != API_VERSIONS[kind]:
        raise RenderError(f"{name}: unexpected apiVersion/kind {obj.get('apiVersion')}/{kind}")
    _check(obj, "V1" + str(kind), name)


def _check(value: Any, type_name: str, where: str) -> None:
    import kubernetes.client

    scalars: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,),
                                             "float": (int, float), "object": (object,),
                                             "datetime": (str,), "date": (str,)}
    if type_name in scalars:
        if not isinstance(value, scalars[type_name]) or (
                type_name == "int" and isinstance(value, bool)):
            raise RenderError(f"{where}: expected {type_name}, got {value!r}")
        return
    if type_name.startswith("List["):
        if not isinstance(value, list):
            raise RenderError(f"{where}: expected a list, got {value!r}")
        for index, item in enumerate(value):
            _check(item, type_name[5:-1], f"{where}[{index}]")
        return
    if type_name.startswith("Dict[str, "):
        if not isinstance(value, dict):
            raise RenderError(f"{where}: expected a map, got {value!r}")
        for key, item in value.items():
            _check(item, type_name[len("Dict[str, "):-1], f"{where}.{key}")
        return
    model = getattr(kubernetes.client, type_name, None)
    if model is None:
        raise RenderError(f"{where}: the client has no model {type_name}")
    if not isinstance(value, dict):
        raise RenderError(f"{where}: expected an object ({type_name}), got {value!r}")
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            raise RenderError(f"{where}: unknown field {key!r} in {type_name}")
        _check(item, model.openapi_types[fields[key]], f"{where}.{key}")
    try:  # the model's own checks: required fields, enums
        model(**{fields[key]: item for key, item in value.items()})
    except ValueError as exc:
        raise RenderError(f"{where}: {exc}") from exc
