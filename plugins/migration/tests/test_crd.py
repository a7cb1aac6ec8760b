"""The Migration CRD is a valid apiextensions/v1 object, and the Python types write objects
its schema accepts (and read them back unchanged)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from zeropod_core.lab import manifests
from zeropod_migration.crd import (
    API_VERSION,
    CLEANUP_FINALIZER,
    GROUP,
    PLURAL,
    ContainerMigrationStatus,
    Migration,
    MigrationContainer,
    MigrationSpec,
    Phase,
    Server,
    go_duration,
)

CRD_FILE = manifests.DEPLOY / "crds" / "migrations.runtime.zeropod.ctrox.dev.yaml"


def _crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return data


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,),
                                       "object": (dict,), "array": (list,)}
_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def conform(value: Any, schema: dict[str, Any], where: str = "") -> None:
    """The checks of a structural schema the API server applies: types, required fields,
    enums, date-times, unique list-map keys, and no fields the schema does not know (the
    server would prune them silently, so writing one is a bug)."""
    kind = schema.get("type")
    if kind:
        assert isinstance(value, _TYPES[kind]) and not (
            kind == "integer" and isinstance(value, bool)), f"{where}: not {kind}: {value!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if schema.get("format") == "date-time":
        assert _DATE_TIME.fullmatch(value), f"{where}: not a date-time: {value!r}"
    if kind == "object" and "properties" in schema:
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing required {name}"
        for key, item in value.items():
            assert key in schema["properties"], f"{where}: unknown field {key}"
            conform(item, schema["properties"][key], f"{where}.{key}")
    if kind == "array":
        for index, item in enumerate(value):
            conform(item, schema["items"], f"{where}[{index}]")
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys:
            seen = [tuple(item[k] for k in keys) for item in value]
            assert len(seen) == len(set(seen)), f"{where}: duplicate list-map keys {seen}"


def _example() -> Migration:
    paused = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
    return Migration(
        name="web-7d4b9c-abcde", namespace="default",
        spec=MigrationSpec(
            source_node="node-a", pod_template_hash="7d4b9c", target_node="node-b",
            source_pod="web-7d4b9c-abcde", target_pod="web-7d4b9c-fghij", restore_ready=True,
            containers=(MigrationContainer(name="web", id="a" * 64,
                                           image_server=Server("10.0.0.1", 8090),
                                           ports=(8080,)),
                        MigrationContainer(name="sidecar", id="b" * 64))),
        status=(ContainerMigrationStatus("web", Phase.COMPLETED, paused_at=paused,
                                         restored_at=paused + datetime.timedelta(
                                             seconds=1, milliseconds=234)),
                ContainerMigrationStatus("sidecar", Phase.FAILED,
                                         reason="the container was running")),
        owner_references=({"apiVersion": "v1", "kind": "Pod", "name": "web-7d4b9c-fghij",
                           "uid": "1234"},))


def test_the_crd_is_a_valid_apiextensions_v1_object() -> None:
    crd = _crd()
    manifests.validate(crd)  # against the kubernetes client's models, strictly
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (GROUP, "Namespaced",
                                                                      "Migration")
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Live", "Duration", "Age"]
    phases = (_schema()["properties"]["status"]["properties"]["containers"]["items"]
              ["properties"]["condition"]["properties"]["phase"]["enum"])
    assert phases == [p.value for p in Phase]


def test_the_crd_is_structural() -> None:
    """Every object and array in the schema says its type (apiextensions/v1 requires it)."""
    def walk(schema: dict[str, Any], where: str) -> None:
        assert "type" in schema, f"{where}: no type"
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{where}.{name}")
        if "items" in schema:
            walk(schema["items"], f"{where}[]")
    walk(_schema(), "openAPIV3Schema")


def test_a_migration_written_by_the_types_conforms_and_reads_back() -> None:
    migration = _example()
    data = migration.to_json()
    conform(data, _schema())
    assert data["apiVersion"] == API_VERSION
    assert data["metadata"]["finalizers"] == [CLEANUP_FINALIZER]
    assert data["status"]["containers"][0]["migrationDuration"] == "1.234s"
    assert Migration.from_json(data) == migration
    assert migration.claimed


def test_the_schema_check_catches_mistakes() -> None:
    data = _example().to_json()
    data["status"]["containers"][0]["condition"]["phase"] = "Done"
    with pytest.raises(AssertionError, match="not in"):
        conform(data, _schema())
    data = _example().to_json()
    data["spec"]["targetnode"] = "typo"
    with pytest.raises(AssertionError, match="unknown field targetnode"):
        conform(data, _schema())
    data = _example().to_json()
    del data["spec"]["podTemplateHash"]
    with pytest.raises(AssertionError, match="missing required podTemplateHash"):
        conform(data, _schema())


def test_claims_and_phases() -> None:
    spec = MigrationSpec(source_node="a", pod_template_hash="h",
                         containers=(MigrationContainer("web", "x"),))
    fresh = Migration("m", "default", spec)
    assert not fresh.claimed
    unclaimed = fresh.with_phase("web", Phase.UNCLAIMED, "nobody claimed it within 10s")
    assert unclaimed.claimed and unclaimed.status[0].phase.final
    assert unclaimed.to_json()["status"]["containers"][0]["condition"] == {
        "phase": "Unclaimed", "reason": "nobody claimed it within 10s"}
    assert not Phase.RUNNING.final
    with pytest.raises(ValueError, match=r"not a runtime\.zeropod\.ctrox\.dev/v1 Migration"):
        Migration.from_json({"apiVersion": "v1", "kind": "Pod"})


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (1.234, "1.234s"),
                                               (123.5, "2m3.5s")])
def test_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_crd_file_is_in_the_checkout() -> None:
    assert isinstance(CRD_FILE, Path) and CRD_FILE.is_file()
