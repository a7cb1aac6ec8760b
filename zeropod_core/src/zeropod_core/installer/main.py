"""``zeropod-installer``: make a node ready for zeropod, or undo it (``--uninstall``).

Steps, each idempotent (a second run changes nothing and restarts nothing):

1. with ``--payload``, copies that folder (shim, CRIU, Python) from the installer's image to
   the same path on the node (see :mod:`.payload`); links
   ``<opt>/bin/containerd-shim-zeropod-v2`` and ``<opt>/bin/criu`` (see :mod:`.links`);
2. configures containerd's runtime ``zeropod`` (see :mod:`.containerd_config`): runc.v2's
   options with ``runtime_path`` = the shim, ``CriuPath`` = the CRIU link, the node's runc
   cgroup driver (``SystemdCgroup``) and ``pod_annotations`` for zeropod's annotations;
3. restarts containerd if a configuration file changed: with systemd when the node runs it,
   otherwise it says what to do.

Prints a JSON summary on stdout; logs are JSON lines on stderr. Imports only the standard
library and this package: it runs as an init container and must stay quick.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import containerd_config as cc
from . import host, links, payload

log = logging.getLogger("zeropod.installer")

DEFAULT_CONFIG = "/etc/containerd/config.toml"
DEFAULT_OPT = "/opt/zeropod"
RESTART_HINT = ("containerd's configuration changed: restart containerd for it to take effect "
                "(systemctl restart containerd, or how your init system restarts it)")


class InstallError(RuntimeError):
    """Bad input or a node the installer cannot handle; the message names the thing."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeropod-installer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the runtime, the drop-in and the links again")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"containerd's main configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--opt", default=DEFAULT_OPT,
                        help=f"zeropod's folder on the node (default {DEFAULT_OPT})")
    parser.add_argument("--host-root", default="/", type=Path,
                        help="where the node's filesystem is mounted (default /; /host in the "
                             "DaemonSet); every other path is a path on the node")
    parser.add_argument("--payload", help="a folder of this container to copy to the same path "
                                          "on the node first (the DaemonSet's node image)")
    parser.add_argument("--shim", help="the containerd-shim-zeropod-v2 to link (default: the "
                                       "one installed next to this Python)")
    parser.add_argument("--criu", help="the criu to link (default: criu on PATH, resolved)")
    parser.add_argument("--containerd-version",
                        help="containerd's version (default: ask `containerd --version`)")
    parser.add_argument("--containerd-bin", default="containerd",
                        help="the node's containerd binary (default: containerd on PATH)")
    parser.add_argument("--cgroup-driver", choices=("auto", "systemd", "cgroupfs"),
                        default="auto", help="auto: the same as the node's runc runtime")
    parser.add_argument("--restart", choices=("auto", "never"), default="auto",
                        help="auto: restart containerd with systemd if it changed and the node "
                             "runs systemd; never: only say that it is needed")
    parser.add_argument("--containerd-unit", default="containerd.service",
                        help="containerd's systemd unit (default containerd.service)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change (a diff on stderr), change nothing")
    return parser


def _version(args: argparse.Namespace, *, required: bool) -> host.Version | None:
    try:
        if args.containerd_version:
            version = host.Version.parse(args.containerd_version)
        else:
            version = host.containerd_version(args.host_root, args.containerd_bin)
    except (ValueError, host.HostError) as exc:
        if required:
            raise InstallError(str(exc)) from exc
        log.warning("containerd's version is unknown; undoing both layouts",
                    extra={"error": str(exc)})
        return None
    if (version.major, version.minor) < (1, 6) or version.major > 2:
        raise InstallError(f"containerd {version.text} is not supported (1.6, 1.7 and 2.x are)")
    return version


def _sources(args: argparse.Namespace) -> tuple[str, str]:
    """The shim and CRIU to link, as paths on the node."""
    on_node = str(args.host_root) == "/"
    shim = args.shim or (str(Path(sys.executable).with_name(links.SHIM_BINARY))
                         if on_node else None)
    criu = args.criu or (os.path.realpath(found) if on_node and (found := shutil.which("criu"))
                         else None)
    if shim is None or criu is None:
        raise InstallError("with --host-root, give --shim and --criu as paths on the node"
                           if not on_node else "criu is not on PATH: install CRIU or pass --criu")
    for name, path in (("--shim", shim), ("--criu", criu)):
        target = args.host_root / path.lstrip("/")
        if args.dry_run and args.payload and path.startswith(args.payload.rstrip("/") + "/"):
            target = Path(path)  # not copied yet: look in the payload itself
        if not os.path.isabs(path) or not target.is_file() or not os.access(target, os.X_OK):
            raise InstallError(f"{name} {path}: not an executable file on the node")
    return shim, criu


def _show(changes: Sequence[cc.FileChange]) -> None:
    for change in changes:
        sys.stderr.writelines(difflib.unified_diff(
            (change.old or "").splitlines(keepends=True),
            (change.new or "").splitlines(keepends=True),
            fromfile=change.path if change.old is not None else "/dev/null",
            tofile=change.path if change.new is not None else "/dev/null"))


def _restart(args: argparse.Namespace, changed: bool) -> str:
    if not changed:
        return "not needed"
    if args.dry_run:
        return "would be needed"
    if args.restart == "auto" and host.has_systemd(args.host_root):
        try:
            host.restart_containerd(args.host_root, args.containerd_unit)
        except host.HostError as exc:
            raise InstallError(f"the configuration was written but {exc}") from exc
        log.info("restarted containerd", extra={"unit": args.containerd_unit})
        return "restarted"
    log.warning(RESTART_HINT)
    return "needed"


def install(args: argparse.Namespace) -> dict[str, Any]:
    version = _version(args, required=True)
    assert version is not None
    config = cc.ContainerdConfig(args.host_root, args.config, version.major)
    effective = config.effective(config.files(clean=True))
    systemd = (effective.runc_systemd_cgroup() if args.cgroup_driver == "auto"
               else args.cgroup_driver == "systemd")
    opt = os.path.normpath(args.opt)
    runtime = cc.RuntimeSpec(shim=f"{opt}/bin/{links.SHIM_BINARY}", criu=f"{opt}/bin/criu",
                             systemd_cgroup=systemd)
    changes = config.plan(runtime)  # a configuration it cannot handle stops it here
    copied = bool(args.payload) and payload.sync(args.host_root, args.payload,
                                                 dry_run=args.dry_run)
    shim, criu = _sources(args)
    linked = [link.path for link in links.opt_links(opt, shim, criu, effective.opt_path)
              if links.ensure(args.host_root, link, dry_run=args.dry_run)]
    if args.dry_run:
        _show(changes)
    else:
        cc.apply(args.host_root, changes)
    for change in changes:
        log.info("configured containerd" if change.new is not None else "removed",
                 extra={"path": change.path})
    return {"action": "install", "containerd": version.text, "config_version": effective.version,
            "systemd_cgroup": systemd, "runtime_path": runtime.shim,
            "changed_files": [c.path for c in changes], "changed_links": linked,
            "payload_copied": copied, "restart": _restart(args, bool(changes))}


def uninstall(args: argparse.Namespace) -> dict[str, Any]:
    version = _version(args, required=False)
    majors = [version.major] if version else [1, 2]
    config = cc.ContainerdConfig(args.host_root, args.config, majors[0])
    changes = config.plan(None)
    opt = os.path.normpath(args.opt)
    removed: list[str] = []
    opt_paths = {cc.ContainerdConfig(args.host_root, args.config, major).effective(
        config.files(clean=True)).opt_path for major in majors}
    for opt_path in sorted(opt_paths):
        for link in links.opt_links(opt, "", "", opt_path):
            if link.path not in removed and links.remove(args.host_root, link,
                                                         dry_run=args.dry_run):
                removed.append(link.path)
    if args.dry_run:
        _show(changes)
    else:
        cc.apply(args.host_root, changes)
    removed_payload = bool(args.payload) and payload.remove(args.host_root, args.payload,
                                                            dry_run=args.dry_run)
    return {"action": "uninstall", "containerd": version.text if version else None,
            "changed_files": [c.path for c in changes], "changed_links": removed,
            "payload_removed": removed_payload, "restart": _restart(args, bool(changes))}


def main(argv: Sequence[str] | None = None) -> int:
    from zeropod_core import logs

    args = build_parser().parse_args(argv)
    logs.configure(level=logging.INFO)
    if not args.host_root.is_dir():
        print(f"zeropod-installer: --host-root {args.host_root} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = uninstall(args) if args.uninstall else install(args)
    except (InstallError, cc.ConfigError, payload.PayloadError, ValueError, OSError) as exc:
        log.error("failed", extra={"error": str(exc)})
        print(f"zeropod-installer: {exc}", file=sys.stderr)
        return 1
    if summary["restart"] == "needed":
        summary["hint"] = RESTART_HINT
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
