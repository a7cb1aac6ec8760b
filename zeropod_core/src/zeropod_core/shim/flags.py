"""containerd's command line for shims: Go-style single-dash flags, then an action.

``containerd-shim-zeropod-v2 -namespace NS -address A -publish-binary B -id ID [-debug]
[-bundle DIR] start|delete`` — without an action the binary runs as the long-lived server
(that is how ``start`` re-executes it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

SHIM_NAME = "containerd-shim-zeropod-v2"


@dataclass(frozen=True)
class ShimFlags:
    namespace: str
    address: str
    publish_binary: str
    id: str
    bundle: str
    debug: bool
    action: str  # "start", "delete" or "" (serve)
    socket: str  # serve only: the socket path the server listens on (inherited as fd 3)


def parse(argv: Sequence[str]) -> ShimFlags:
    parser = argparse.ArgumentParser(prog=SHIM_NAME, allow_abbrev=False)
    parser.add_argument("-namespace", default="")
    parser.add_argument("-address", default="")
    parser.add_argument("-publish-binary", dest="publish_binary", default="")
    parser.add_argument("-id", default="")
    parser.add_argument("-bundle", default="")
    parser.add_argument("-socket", default="")
    parser.add_argument("-debug", action="store_true")
    parser.add_argument("-v", dest="version", action="store_true")
    parser.add_argument("action", nargs="?", default="", choices=["", "start", "delete"])
    args = parser.parse_args(list(argv))
    if args.version:
        from zeropod_core import __version__

        print(f"{SHIM_NAME}:\n  Version: {__version__}")
        raise SystemExit(0)
    return ShimFlags(args.namespace, args.address, args.publish_binary, args.id, args.bundle,
                     args.debug, args.action, args.socket)


def server_argv(flags: ShimFlags, socket_path: str) -> list[str]:
    """The flags the long-lived server is started with (no action)."""
    argv = ["-namespace", flags.namespace, "-address", flags.address,
            "-publish-binary", flags.publish_binary, "-id", flags.id, "-socket", socket_path]
    return [*argv, "-debug"] if flags.debug else argv
