"""Every hookspec has a heading in docs/plugin-hooks.md that is its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

from zeropod_core import manager_hookspecs, shim_hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin-hooks.md"


def _hookspecs(module: ModuleType) -> list[tuple[str, list[str]]]:
    return [
        (name, list(inspect.signature(func).parameters))
        for name, func in vars(module).items()
        if name.startswith("zeropod_") and callable(func)
    ]


def _documented() -> dict[str, list[str]]:
    headings = re.findall(r"^### (zeropod_\w+)\(([^)]*)\)\s*$", DOC.read_text(), re.MULTILINE)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in headings}


@pytest.mark.parametrize(
    ("name", "params"), _hookspecs(shim_hookspecs) + _hookspecs(manager_hookspecs)
)
def test_hook_is_documented_with_its_signature(name: str, params: list[str]) -> None:
    documented = _documented()
    assert name in documented, f"{name} has no '### {name}(...)' heading in {DOC.name}"
    assert documented[name] == params, f"{name}: the doc says {documented[name]}, spec {params}"


def test_doc_lists_no_hook_that_does_not_exist() -> None:
    real = {name for name, _ in _hookspecs(shim_hookspecs) + _hookspecs(manager_hookspecs)}
    assert set(_documented()) - real == set()


def test_spec_modules_declare_hooks() -> None:
    # guards the parametrization above against silently collecting nothing
    assert len(_hookspecs(shim_hookspecs)) >= 10 and len(_hookspecs(manager_hookspecs)) >= 5
