"""Entry point of ``containerd-shim-zeropod-v2``: dispatch on containerd's action."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .flags import parse


def main(argv: Sequence[str] | None = None) -> int:
    flags = parse(sys.argv[1:] if argv is None else argv)
    if flags.action == "start":
        from .bootstrap import start

        return start(flags)
    if flags.action == "delete":
        from .bootstrap import delete

        return delete(flags)
    from .server import run

    return run(flags)


if __name__ == "__main__":
    sys.exit(main())
