"""Short-lived helper process: load, pin and attach one pod's redirector, or take it away.

::

    python -m zeropod_ebpf_redirect.loader --netns /var/run/netns/X --pin-dir DIR [--ifaces lo,eth0]
    python -m zeropod_ebpf_redirect.loader --netns /var/run/netns/X --pin-dir DIR --detach

Why a separate process: loading needs libbpf and attaching needs pyroute2 (about 150 ms of
imports and 30 MB), and the shim lives as long as its pod, one per pod. The programs and maps
outlive this process (the filters and pins hold them), so the shim only opens the pins.

Attach, in order (the pin directory's parent must be on a bpffs):

1. join the pod's network namespace (this process is single-threaded, so it just moves);
2. if every pin exists and the netns cookie recorded in the ``settings`` map is this
   namespace's, reuse the pinned programs (a re-attach keeps all state); otherwise load the
   object through libbpf: maps are pinned by name under ``--pin-dir`` (kept across
   ``--reload`` when compatible, wiped when they belong to a namespace that is gone);
3. ``replace-filter`` at fixed prio/handle on each interface's clsact ingress and egress;
4. pin the programs and record the netns cookie last: pins that look complete were attached.

Detach removes the filters (if the namespace still exists and the pins are its own) and every
pin. Both print one JSON line on stdout (``"ok"``, timings in ms); the caller relies on that
line, not on the exit status, since a subreaping shim may reap this process before it can.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import bpffs, bpfsys, maps, netns
from .libbpf import BpfObject, LibbpfError

DEFAULT_OBJECT = Path(__file__).with_name("redirect.bpf.o")
DEFAULT_IFACES = ("lo", "eth0")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 3)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zeropod_ebpf_redirect.loader",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--netns", required=True, help="path of the pod's network namespace")
    parser.add_argument("--pin-dir", required=True, type=Path,
                        help="this pod's pin directory (its parent must be on a bpffs)")
    parser.add_argument("--ifaces", default=",".join(DEFAULT_IFACES),
                        help="comma-separated interfaces inside the namespace (default lo,eth0)")
    parser.add_argument("--object", type=Path, default=DEFAULT_OBJECT,
                        help="compiled redirector object (default: the packaged one)")
    parser.add_argument("--reload", action="store_true",
                        help="load the object again even if pins can be reused (upgrades)")
    parser.add_argument("--detach", action="store_true",
                        help="remove the filters and every pin instead of attaching")
    return parser.parse_args(argv)


def _check_pin_dir(pin_dir: Path) -> None:
    where = pin_dir if pin_dir.exists() else pin_dir.parent
    if not bpffs.is_bpffs(where):
        raise RuntimeError(f"{where} is not on a bpf filesystem (mount -t bpf bpf <root>)")


def _load(args: argparse.Namespace, cookie: int, result: dict[str, Any]) -> BpfObject:
    """Open and load the object, reusing compatible maps pinned for this same namespace."""
    pin_dir: Path = args.pin_dir
    recorded = maps.netns_cookie_of_pins(pin_dir)
    if pin_dir.exists() and recorded != cookie:
        # Pins of a namespace that is gone (or of a loader that died half-way): never mix
        # their state (redirects of another pod!) into this one.
        result["stale_pins_removed"] = bpffs.remove_pins(pin_dir)
    for name in maps.PROG_NAMES:  # programs are always replaced by a fresh load
        (pin_dir / name).unlink(missing_ok=True)
    pin_dir.mkdir(mode=0o700, exist_ok=True)
    obj = BpfObject(args.object, pin_root=pin_dir)
    try:
        obj.load()
    except LibbpfError:
        obj.close()
        if not any(pin_dir.iterdir()):
            raise
        # Pinned maps of an incompatible version: start over without them.
        result["incompatible_pins_removed"] = bpffs.remove_pins(pin_dir)
        pin_dir.mkdir(mode=0o700, exist_ok=True)
        obj = BpfObject(args.object, pin_root=pin_dir)
        obj.load()
    return obj


def attach(args: argparse.Namespace) -> dict[str, Any]:
    """Make sure the pod's programs are loaded, pinned and attached; see the module doc."""
    started = time.perf_counter()
    pin_dir: Path = args.pin_dir
    ifaces = [name for name in args.ifaces.split(",") if name]
    result: dict[str, Any] = {"action": "attach", "netns": args.netns, "pin_dir": str(pin_dir),
                              "ifaces": ifaces}
    timings: dict[str, float] = {}
    _check_pin_dir(pin_dir)
    if netns.is_host_netns(args.netns):
        raise RuntimeError(f"{args.netns} is the host network namespace: refusing to attach")
    fd = netns.open_netns(args.netns)
    try:
        netns.enter(fd)
    finally:
        os.close(fd)
    cookie = netns.current_cookie()

    step = time.perf_counter()
    obj: BpfObject | None = None
    owned_fds: list[int] = []
    reuse = (not args.reload and bpffs.pins_complete(pin_dir)
             and maps.netns_cookie_of_pins(pin_dir) == cookie)
    try:
        if reuse:
            prog_fds = {name: bpfsys.obj_get(pin_dir / name) for name in maps.PROG_NAMES}
            owned_fds.extend(prog_fds.values())
        else:
            obj = _load(args, cookie, result)
            prog_fds = {name: obj.program_fd(name) for name in maps.PROG_NAMES}
        timings["load"] = _ms(step)

        step = time.perf_counter()
        from . import tcattach  # pyroute2: the expensive import, only here

        timings["import_pyroute2"] = _ms(step)
        step = time.perf_counter()
        with tcattach.open_route() as ipr:
            for iface in ifaces:
                tcattach.attach(ipr, iface,
                                ingress=(prog_fds[maps.PROG_INGRESS], maps.PROG_INGRESS),
                                egress=(prog_fds[maps.PROG_EGRESS], maps.PROG_EGRESS))
        timings["attach"] = _ms(step)

        step = time.perf_counter()
        if obj is not None:
            for name in maps.PROG_NAMES:
                (pin_dir / name).unlink(missing_ok=True)
                obj.pin_program(name, pin_dir / name)
            with bpfsys.Map.open(pin_dir / "settings", bpfsys.U32, bpfsys.U64) as settings:
                settings.update(maps.SETTING_NETNS_COOKIE, cookie)
        timings["pin"] = _ms(step)
        result["prog_ids"] = {name: bpfsys.prog_info(fd).id for name, fd in prog_fds.items()}
    finally:
        for owned in owned_fds:
            os.close(owned)
        if obj is not None:
            obj.close()
    result["loaded"] = not reuse
    result["netns_cookie"] = cookie
    timings["total"] = _ms(started)
    result["timings_ms"] = timings
    return result


def detach(args: argparse.Namespace) -> dict[str, Any]:
    """Remove the pod's filters (if its namespace is still there) and all its pins."""
    started = time.perf_counter()
    pin_dir: Path = args.pin_dir
    ifaces = [name for name in args.ifaces.split(",") if name]
    result: dict[str, Any] = {"action": "detach", "netns": args.netns, "pin_dir": str(pin_dir),
                              "filters_removed": 0}
    try:
        fd = netns.open_netns(args.netns)
    except OSError:
        fd = -1
    result["netns_present"] = fd >= 0
    if fd >= 0:
        try:
            netns.enter(fd)
        finally:
            os.close(fd)
        recorded = maps.netns_cookie_of_pins(pin_dir)
        if recorded is not None and recorded != netns.current_cookie():
            # The path names another namespace now: its filters are not ours to remove.
            result["netns_reused"] = True
        else:
            from . import tcattach

            with tcattach.open_route() as ipr:
                for iface in ifaces:
                    result["filters_removed"] += tcattach.detach(ipr, iface)
    result["pins_removed"] = bpffs.remove_pins(pin_dir)
    result["timings_ms"] = {"total": _ms(started)}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run one attach or detach and print its JSON result line; exit 1 on failure."""
    args = _parse(argv)
    action = "detach" if args.detach else "attach"
    try:
        result = detach(args) if args.detach else attach(args)
        result["ok"] = True
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported as JSON to the shim, traceback on stderr
        traceback.print_exc()
        result = {"ok": False, "action": action, "netns": args.netns,
                  "pin_dir": str(args.pin_dir), "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
