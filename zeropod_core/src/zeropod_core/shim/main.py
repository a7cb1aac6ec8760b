"""Entry point of ``containerd-shim-zeropod-v2``: dispatch on containerd's action.

Imports stay inside the branches: ``start`` and ``delete`` run once per container start and
stop, and must not pay for the server's modules.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .flags import SHIM_NAME, UsageError, parse


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{SHIM_NAME}: {exc}\n")
        return 2
    if flags.version:
        from zeropod_core import __version__

        sys.stdout.write(f"{SHIM_NAME}:\n  Version: {__version__}\n")
        return 0
    if flags.action == "start":
        from .bootstrap import start

        return start(flags)
    if flags.action == "delete":
        from .bootstrap import delete

        return delete(flags)
    # The server is never exec'd: start forks it (or the shim template does).
    sys.stderr.write(f"{SHIM_NAME}: missing action: start or delete\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
