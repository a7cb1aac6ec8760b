"""Finds installed distributions' entry points and versions without ``importlib.metadata``.

``importlib.metadata`` pulls in the email parser, zipfile and friends (about 50 ms and several
MB here), and the per-pod shim looks entry points up on every container start. Entry points
live in plain ``entry_points.txt`` files in ``*.dist-info`` (and legacy ``*.egg-info``)
folders on ``sys.path``; reading those directly is all the shim needs.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

_INFO_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(-py[\d.]+)?\.(dist|egg)-info$")


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = module[:attr]`` line of an entry point group."""

    name: str
    value: str
    group: str
    distribution: str
    version: str

    def load(self) -> object:
        module_name, _, attr = self.value.partition(":")
        module: ModuleType = importlib.import_module(module_name.strip())
        obj: object = module
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _metadata_name(info_dir: str, fallback: str) -> str:
    """The distribution's real name (``Name:`` in METADATA/PKG-INFO); dashes preserved."""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info_dir, filename), encoding="utf-8") as metadata:
                for line in metadata:
                    if line.startswith("Name:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return fallback


def _info_dirs() -> Iterator[tuple[str, str, str]]:
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in sorted(names):
            match = _INFO_DIR.match(name)
            if not match:
                continue
            key = match["name"].lower().replace("_", "-")
            if key in seen:  # the first one on sys.path wins, as for imports
                continue
            seen.add(key)
            yield os.path.join(entry or ".", name), match["name"], match["version"]


def entry_points(group: str) -> list[EntryPoint]:
    """Entry points of ``group`` from every distribution on ``sys.path``."""
    found = []
    for info_dir, dir_name, version in _info_dirs():
        try:
            with open(os.path.join(info_dir, "entry_points.txt"), encoding="utf-8") as text:
                lines = text.read().splitlines()
        except OSError:
            continue
        current = None
        distribution = None
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                continue
            if current == group and "=" in line:
                name, value = (part.strip() for part in line.split("=", 1))
                distribution = distribution or _metadata_name(info_dir, dir_name)
                found.append(EntryPoint(name, value, group, distribution, version))
    return found


def own_version(distribution: str = "zeropod-core") -> str:
    """The installed version of ``distribution`` ("0+unknown" when not installed)."""
    wanted = distribution.lower().replace("_", "-")
    for _, dir_name, version in _info_dirs():
        if dir_name.lower().replace("_", "-") == wanted:
            return version
    return "0+unknown"
