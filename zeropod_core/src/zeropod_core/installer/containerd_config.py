"""containerd's configuration as containerd itself reads it, and the installer's edits to it.

containerd reads its main file, then the files its ``imports`` name (breadth first, globs
sorted), merging each into the result. What matters for the installer differs by major version
(checked with ``containerd config dump`` of 1.6.20 and 2.1.9, and in containerd's source):

* **1.6 / 1.7**: an imported file that has a plugin's section *replaces* that whole section
  (the CRI plugin's runtimes included). A drop-in defining only the zeropod runtime would
  therefore drop every other CRI setting (``runc``, ``SystemdCgroup``, ``sandbox_image``...).
  So on 1.x the runtime goes, as a marked block, into the file whose CRI section containerd
  uses: the last one in load order that has one. The merged file version is the last non-zero
  ``version`` (absent = 1): version 1 names plugins ``cri``/``opt``, version 2 by their URIs.
* **2.x**: sections are merged key by key, so a drop-in file is safe and the user's file only
  gains an ``imports`` entry (or nothing, when an existing ``imports`` glob already covers the
  drop-in's folder). The drop-in must carry the *merged* version: plugin settings are migrated
  once, after merging, according to it, so a ``version = 3`` drop-in next to a version 2 main
  file would silently switch off the migration of the main file's CRI settings (seen in
  ``config dump``: ``runc``'s ``SystemdCgroup = true`` reverted to false). Version 3 keeps
  runtimes in ``io.containerd.cri.v1.runtime``, version 2 in ``io.containerd.grpc.v1.cri``.

Every edit is made of marked text (:mod:`.tomltext`), so uninstalling gives back the original
bytes. Paths are containerd's (absolute, on the node); ``root`` maps them to where the node's
filesystem is mounted (``/`` on the node itself, e.g. ``/host`` in the DaemonSet).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tomltext

RUNC_V2 = "io.containerd.runc.v2"
CRI_V1, CRI_V2, CRI_V3_RUNTIME = "cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"
OPT_V1, OPT = "opt", "io.containerd.internal.v1.opt"
DEFAULT_OPT_PATH = "/opt/containerd"
RUNTIME_NAME = "zeropod"
DROPIN_NAME = "zeropod.toml"
DROPIN_HEADER = "# Written by zeropod-installer: containerd's runtime \"zeropod\".\n"
# containerd copies only the pod annotations listed here (glob patterns, Go's filepath.Match)
# into the OCI spec the shim reads. The glob covers every zeropod.ctrox.dev/ annotation, those of
# plugins included; the group annotation lets pods share one shim, as with runc.v2.
POD_ANNOTATIONS = ("zeropod.ctrox.dev/*", "io.containerd.runc.v2.group")


class ConfigError(ValueError):
    """containerd's configuration cannot be read or edited; the message names the file."""


@dataclass(frozen=True)
class RuntimeSpec:
    """What the zeropod runtime entry says."""

    shim: str
    criu: str
    systemd_cgroup: bool
    pod_annotations: tuple[str, ...] = POD_ANNOTATIONS

    def toml(self, cri_key: str) -> str:
        table = f'[plugins.{tomltext.toml_string(cri_key)}.containerd.runtimes.{RUNTIME_NAME}]'
        return (f"{table}\n"
                f"  runtime_type = {tomltext.toml_string(RUNC_V2)}\n"
                f"  runtime_path = {tomltext.toml_string(self.shim)}\n"
                f"  pod_annotations = {tomltext.toml_array(self.pod_annotations)}\n"
                f"\n"
                f"  [plugins.{tomltext.toml_string(cri_key)}.containerd.runtimes."
                f"{RUNTIME_NAME}.options]\n"
                f"    SystemdCgroup = {'true' if self.systemd_cgroup else 'false'}\n"
                f"    CriuPath = {tomltext.toml_string(self.criu)}\n")

    def matches(self, runtime: Mapping[str, Any]) -> bool:
        """Whether a parsed runtime table says what :meth:`toml` writes."""
        options = runtime.get("options", {})
        return (runtime.get("runtime_type") == RUNC_V2 and runtime.get("runtime_path") == self.shim
                and tuple(runtime.get("pod_annotations", ())) == self.pod_annotations
                and options.get("SystemdCgroup") is self.systemd_cgroup
                and options.get("CriuPath") == self.criu)


@dataclass(frozen=True)
class ConfigFile:
    path: str  # as containerd sees it
    text: str | None  # None: the file does not exist
    data: dict[str, Any]

    @property
    def ours(self) -> bool:
        """A drop-in written by the installer."""
        return self.text is not None and self.text.startswith(DROPIN_HEADER)


@dataclass(frozen=True)
class FileChange:
    path: str
    old: str | None
    new: str | None  # None: delete the file


@dataclass(frozen=True)
class Effective:
    """The merged view of the settings the installer needs."""

    major: int
    version: int
    cri_key: str  # where a runtime table goes for this version
    cri_file: str | None  # 1.x: the file whose CRI section containerd uses
    runtimes: dict[str, Any]
    default_runtime: str
    opt_path: str
    runtime_files: dict[str, str]  # runtime name -> last file that defines it

    def runc_systemd_cgroup(self) -> bool:
        """``SystemdCgroup`` of the node's runc runtime: the default one if it is runc.v2, else
        the one named ``runc``; containerd's default (false) when neither says."""
        for name in (self.default_runtime, "runc"):
            runtime = self.runtimes.get(name)
            if isinstance(runtime, dict) and runtime.get("runtime_type", RUNC_V2) == RUNC_V2:
                return runtime.get("options", {}).get("SystemdCgroup", False) is True
        return False


class ContainerdConfig:
    """The files of one containerd configuration, read under ``root``."""

    def __init__(self, root: Path, main: str, major: int,
                 overlay: Mapping[str, str | None] | None = None) -> None:
        if major not in (1, 2):
            raise ConfigError(f"containerd {major}.x is not supported (1.6, 1.7 and 2.x are)")
        if not posixpath.isabs(main):
            raise ConfigError(f"the containerd config path must be absolute: {main!r}")
        self.root, self.main, self.major = root, posixpath.normpath(main), major
        self.overlay = dict(overlay or {})

    # --- reading ---------------------------------------------------------------------------

    def host_path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read_text(self, path: str) -> str | None:
        if path in self.overlay:
            return self.overlay[path]
        try:
            return self.host_path(path).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc

    def _parse(self, path: str, text: str) -> dict[str, Any]:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc

    def _resolve_imports(self, parent: str, imports: object) -> list[str]:
        if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
            raise ConfigError(f"{parent}: imports must be a list of paths")
        resolved = []
        for entry in imports:
            path = posixpath.normpath(entry if posixpath.isabs(entry)
                                      else posixpath.join(posixpath.dirname(parent), entry))
            if glob.has_magic(path):
                prefix = str(self.root).rstrip("/")
                matches = {"/" + m[len(prefix):].lstrip("/")
                           for m in glob.glob(str(self.host_path(path)))}
                for planned, text in self.overlay.items():  # files not written yet, or deleted
                    if _glob_match(planned, path):
                        (matches.add if text is not None else matches.discard)(planned)
                resolved += sorted(matches)
            else:
                resolved.append(path)
        return resolved

    def files(self, *, clean: bool = False) -> list[ConfigFile]:
        """The files in containerd's load order.

        :param clean: as if zeropod were not installed: the installer's blocks, imports lines
            and drop-ins are left out (an import of a missing file is then an error, as it is
            for containerd; otherwise it is skipped).
        """
        loaded: list[ConfigFile] = []
        pending, seen = [self.main], set()
        while pending:
            path = pending.pop(0)
            if path in seen:
                continue
            seen.add(path)
            text = self.read_text(path)
            if text is None:
                if path != self.main and clean:
                    raise ConfigError(f"{self.main} imports {path}, which does not exist")
                loaded.append(ConfigFile(path, None, {}))
                continue
            file = ConfigFile(path, text, {})
            if clean:
                if file.ours:
                    continue
                text = tomltext.remove_import_edits(tomltext.strip_blocks(text))
            data = self._parse(path, text)
            loaded.append(ConfigFile(path, text, data))
            pending += self._resolve_imports(path, data.get("imports", []))
        return loaded

    def effective(self, files: Sequence[ConfigFile]) -> Effective:
        if self.major == 1:
            return _effective_v1(files)
        return _effective_v2(files)

    # --- planning --------------------------------------------------------------------------

    def dropin_path(self, main_imports: Sequence[str]) -> tuple[str, bool]:
        """Where the 2.x drop-in goes, and whether an existing ``imports`` glob covers it."""
        for entry in main_imports:
            path = entry if posixpath.isabs(entry) else posixpath.join(
                posixpath.dirname(self.main), entry)
            folder, pattern = posixpath.split(posixpath.normpath(path))
            if glob.has_magic(pattern) and not glob.has_magic(folder) \
                    and fnmatch.fnmatchcase(DROPIN_NAME, pattern):
                return posixpath.join(folder, DROPIN_NAME), True
        return posixpath.join(posixpath.dirname(self.main), DROPIN_NAME), False

    def plan(self, runtime: RuntimeSpec | None) -> list[FileChange]:
        """The file changes that leave the zeropod runtime configured as ``runtime`` (or, with
        None, not configured at all). Empty when everything is already so."""
        clean_files = self.files(clean=True)
        desired: dict[str, str | None] = {}
        for file in self.files():
            if file.text is None:
                continue
            desired[file.path] = None if file.ours else tomltext.remove_import_edits(
                tomltext.strip_blocks(file.text))
        beside_main = posixpath.join(posixpath.dirname(self.main), DROPIN_NAME)
        if beside_main not in desired and (self.read_text(beside_main) or "").startswith(
                DROPIN_HEADER):
            desired[beside_main] = None  # a drop-in no file imports any more
        effective: Effective | None = None
        if runtime is not None:
            effective = self.effective(clean_files)
            if RUNTIME_NAME in effective.runtimes:
                raise ConfigError(
                    f"{effective.runtime_files.get(RUNTIME_NAME, self.main)} already defines a "
                    f"containerd runtime {RUNTIME_NAME!r} that zeropod-installer did not write: "
                    "remove it, then run the installer again")
            if self.major == 1:
                self._plan_v1(clean_files, effective, runtime, desired)
            else:
                self._plan_v2(clean_files, effective, runtime, desired)
        changes = []
        for path, new in desired.items():
            old = self.read_text(path)
            if new is not None and not new.strip() and old is not None \
                    and (tomltext.has_block(old) or tomltext.has_import_edits(old)) \
                    and not tomltext.strip_blocks(tomltext.remove_import_edits(old)):
                new = None  # the installer created this file; uninstalling removes it
            if new != old:
                changes.append(FileChange(path, old, new))
        if runtime is not None and effective is not None:
            self._verify(changes, runtime, effective)
        # new and changed files first, then the main file, then deletions: at no point does
        # the main file import a file that is not there
        return sorted(changes, key=lambda c: 1 if c.path == self.main else
                      0 if c.new is not None else 2)

    def _plan_v1(self, files: Sequence[ConfigFile], effective: Effective, runtime: RuntimeSpec,
                 desired: dict[str, str | None]) -> None:
        target = effective.cri_file or self.main
        base = desired.get(target) or ""
        key, header = effective.cri_key, ""
        if all(not (f.text or "").strip() for f in files):
            key, header = CRI_V2, "version = 2\n\n"  # an empty config reads as version 1
        body = runtime.toml(key)
        if not effective.runtimes:
            # containerd 1.x replaces its default runtimes (runc) by the ones a file lists
            body = _default_runc_v1(key) + "\n" + body
        desired[target] = tomltext.append_block(base, header + body)

    def _plan_v2(self, files: Sequence[ConfigFile], effective: Effective, runtime: RuntimeSpec,
                 desired: dict[str, str | None]) -> None:
        main_imports = files[0].data.get("imports", []) if files else []
        dropin, covered = self.dropin_path(main_imports)
        desired[dropin] = (DROPIN_HEADER
                           + "# zeropod-installer --uninstall removes it"
                           + ("" if covered else f" and its line in {self.main}") + ".\n"
                           + f"version = {effective.version}\n\n"
                           + runtime.toml(effective.cri_key))
        if not covered and dropin not in self._resolve_imports(self.main, main_imports):
            desired[self.main] = tomltext.add_import(desired.get(self.main) or "",
                                                     main_imports, dropin)

    def _verify(self, changes: Sequence[FileChange], runtime: RuntimeSpec,
                before: Effective) -> None:
        """Read the planned result back: valid TOML, the runtime containerd would see is
        exactly ``runtime`` and the other runtimes are the same (catches a layout the edits did
        not foresee)."""
        after = ContainerdConfig(self.root, self.main, self.major,
                                 {**self.overlay, **{c.path: c.new for c in changes}})
        effective = after.effective(after.files())
        found = effective.runtimes.get(RUNTIME_NAME)
        others = set(effective.runtimes) - {RUNTIME_NAME}
        if not isinstance(found, dict) or not runtime.matches(found) or \
                others != (set(before.runtimes) or ({"runc"} if self.major == 1 else set())):
            raise ConfigError(f"after the edit containerd would not see the runtimes as intended "
                              f"(zeropod: {found!r}, others: {sorted(others)}); the layout of "
                              f"{self.main} or its imports is not supported, please report it")


def _glob_match(path: str, pattern: str) -> bool:
    """Go's filepath.Match: wildcards never match a ``/``."""
    parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern_parts,
                                                                   strict=True))


def _default_runc_v1(cri_key: str) -> str:
    """containerd 1.6/1.7's default ``runc`` runtime, as their ``config default`` shows it."""
    table = f"[plugins.{tomltext.toml_string(cri_key)}.containerd.runtimes.runc]"
    options = "".join(f"    {key} = {value}\n" for key, value in (
        ("BinaryName", '""'), ("CriuImagePath", '""'), ("CriuPath", '""'),
        ("CriuWorkPath", '""'), ("IoGid", "0"), ("IoUid", "0"), ("NoNewKeyring", "false"),
        ("NoPivotRoot", "false"), ("Root", '""'), ("ShimCgroup", '""'),
        ("SystemdCgroup", "false")))
    return (f"# containerd's default runtime, restated: containerd 1.x drops it when a file\n"
            f"# lists any runtime (1.6 ignores sandbox_mode, 1.7 has it)\n"
            f"{table}\n  runtime_type = {tomltext.toml_string(RUNC_V2)}\n"
            f"  sandbox_mode = \"podsandbox\"\n\n"
            f"  [plugins.{tomltext.toml_string(cri_key)}.containerd.runtimes.runc.options]\n"
            f"{options}\n")


def _plugins(file: ConfigFile) -> dict[str, Any]:
    plugins = file.data.get("plugins", {})
    if not isinstance(plugins, dict):
        raise ConfigError(f"{file.path}: plugins must be a table")
    return plugins


def _version(file: ConfigFile) -> int:
    version = file.data.get("version", 0)
    if not isinstance(version, int) or not 0 <= version <= 3:
        raise ConfigError(f"{file.path}: version must be 1, 2 or 3, not {version!r}")
    return version


def _containerd_table(cri: Any, where: str) -> dict[str, Any]:
    table = cri.get("containerd", {}) if isinstance(cri, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: the CRI plugin's containerd entry must be a table")
    return table


def _effective_v1(files: Sequence[ConfigFile]) -> Effective:
    version = 1
    for file in files:
        version = _version(file) or version
    cri_key, opt_key = (CRI_V1, OPT_V1) if version == 1 else (CRI_V2, OPT)
    cri: dict[str, Any] = {}
    cri_file: str | None = None
    opt_path = DEFAULT_OPT_PATH
    for file in files:  # a later file's section replaces an earlier one entirely
        plugins = _plugins(file)
        if cri_key in plugins:
            cri, cri_file = plugins[cri_key], file.path
        if opt_key in plugins:
            opt_path = plugins[opt_key].get("path", DEFAULT_OPT_PATH)
    containerd = _containerd_table(cri, cri_file or "config")
    runtimes = containerd.get("runtimes", {})
    return Effective(1, version, cri_key, cri_file, runtimes,
                     containerd.get("default_runtime_name", "runc"), opt_path,
                     dict.fromkeys(runtimes, cri_file or ""))


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _effective_v2(files: Sequence[ConfigFile]) -> Effective:
    version = 3  # containerd 2's default; files of version 0/1 are migrated to the current one
    merged: dict[str, Any] = {}
    runtime_files: dict[str, str] = {}
    for file in files:
        if _version(file) >= 2:
            version = _version(file)
        plugins = dict(_plugins(file))
        if _version(file) < 2:  # version 1 names plugins by id
            for old, new in ((CRI_V1, CRI_V2), (OPT_V1, OPT)):
                if old in plugins:
                    plugins[new] = plugins.pop(old)
        for key in (CRI_V2, CRI_V3_RUNTIME):
            for name in _containerd_table(plugins.get(key), file.path).get("runtimes", {}):
                runtime_files[name] = file.path
        _deep_merge(merged, plugins)
    containerd: dict[str, Any] = {}
    # version 2: the CRI plugin's settings are migrated into the v3 runtime plugin after merging
    for key in ((CRI_V2, CRI_V3_RUNTIME) if version == 2 else (CRI_V3_RUNTIME,)):
        _deep_merge(containerd, _containerd_table(merged.get(key), key))
    opt = merged.get(OPT, {})
    runtimes = containerd.get("runtimes", {})
    return Effective(2, version, CRI_V3_RUNTIME if version == 3 else CRI_V2, None, runtimes,
                     containerd.get("default_runtime_name", "runc"),
                     opt.get("path", DEFAULT_OPT_PATH) if isinstance(opt, dict)
                     else DEFAULT_OPT_PATH,
                     {n: runtime_files.get(n, "") for n in runtimes})


def apply(root: Path, changes: Sequence[FileChange]) -> None:
    """Write the changes, each file atomically (temp file + rename, mode kept)."""
    for change in changes:
        target = root / change.path.lstrip("/")
        if change.new is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
        tmp = target.with_name(f".{target.name}.zeropod-installer.tmp")
        tmp.write_text(change.new)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
