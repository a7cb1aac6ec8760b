"""containerd's command line for shims: Go-style single-dash flags, then an action.

``containerd-shim-zeropod-v2 -namespace NS -address A -publish-binary B -id ID [-debug]
[-bundle DIR] start|delete``. The long-lived server is forked by ``start`` (or by the shim
template), never started from a command line of its own. Parsed by hand and kept free of
``argparse``, ``dataclasses`` and ``typing``: importing those costs more than the rest of
``start``, which containerd runs on every container start.
"""

from __future__ import annotations

SHIM_NAME = "containerd-shim-zeropod-v2"
ACTIONS = ("start", "delete", "")
FIELDS = ("namespace", "address", "publish_binary", "id", "bundle", "socket")
_BOOL_FLAGS = ("debug", "v")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class UsageError(Exception):
    """The command line is not one containerd would send."""


class ShimFlags:
    """The parsed command line (immutable by convention)."""

    __slots__ = ("action", "address", "bundle", "debug", "id", "namespace", "publish_binary",
                 "socket", "version")

    def __init__(self, *, namespace: str = "", address: str = "", publish_binary: str = "",
                 id: str = "", bundle: str = "", socket: str = "", debug: bool = False,
                 version: bool = False, action: str = "") -> None:
        self.namespace, self.address, self.publish_binary = namespace, address, publish_binary
        self.id, self.bundle, self.socket = id, bundle, socket
        self.debug, self.version, self.action = debug, version, action

    def with_socket(self, socket: str) -> ShimFlags:
        values = {name: getattr(self, name) for name in self.__slots__}
        values["socket"] = socket
        return ShimFlags(**values)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ShimFlags({fields})"


def parse(argv: Sequence[str]) -> ShimFlags:
    """Parse ``-flag value``, ``-flag=value``, ``--flag value`` and a trailing action."""
    values: dict[str, str] = {}
    switches: dict[str, bool] = {}
    action = ""
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            if arg not in ACTIONS or args:
                raise UsageError(f"unexpected argument {arg!r}")
            action = arg
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        key = name.replace("-", "_")
        if name in _BOOL_FLAGS:
            switches[name] = value.lower() not in ("false", "0") if has_value else True
        elif key in FIELDS:
            if not has_value:
                if not args:
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args.pop(0)
            values[key] = value
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
    return ShimFlags(action=action, debug=switches.get("debug", False),
                     version=switches.get("v", False), **values)
