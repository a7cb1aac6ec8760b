"""The ``zeropod`` command for people: ``plugins``, ``demo``.

Subcommands import what they need lazily, so ``zeropod plugins`` stays quick and does not pull
in the lab (containerd, images) machinery.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .model import RoleName


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import make_plugin_manager

    roles = [RoleName(args.role)] if args.role != "all" else list(RoleName)
    rows: list[dict[str, Any]] = []
    for role in roles:
        pm = make_plugin_manager(role)
        rows.extend(record.as_json() for record in pm.records)
    if args.hook:
        rows = [row for row in rows if args.hook in row["hooks"]]
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import show_status

    return show_status(args.manager, as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.kubernetes:
        from .lab.demo_kube import run_kube_demo

        return run_kube_demo()
    from .lab.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeropod",
        description="zeropod scales idle containers to zero and back without losing their "
                    "state. This command lists the installed plugins, shows what the node's "
                    "manager sees, and runs the self-contained demo.",
        epilog="`zeropod <command> --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="list plugins and their status as JSON")
    plugins.add_argument("--role", choices=["all", *[r.value for r in RoleName]], default="all",
                         help="only the plugins of this process role (default: all)")
    plugins.add_argument("--hook", help="only plugins implementing this hook")
    plugins.set_defaults(func=_cmd_plugins)

    status = sub.add_parser("status", help="containers, phases and wake latencies from the "
                                           "node's zeropod-manager")
    status.add_argument("--manager", default=os.environ.get("ZEROPOD_MANAGER_ADDR",
                                                            "127.0.0.1:8080"),
                        help="the manager's host:port (default: $ZEROPOD_MANAGER_ADDR or "
                             "127.0.0.1:8080)")
    status.add_argument("--json", action="store_true", help="print the manager's JSON")
    status.set_defaults(func=_cmd_status)

    demo = sub.add_parser("demo", help="run the embedded default: a private containerd and an app",
                          description="Start a private containerd and the manager, run the "
                                      "counter app under zeropod and show it scale down and "
                                      "wake up with its state, with timings. Needs root.")
    demo.add_argument("--keep", action="store_true", help="leave everything running (debugging)")
    demo.add_argument("--kubernetes", action="store_true",
                      help="run the app as a pod in the lab's Kubernetes 1.20 cluster instead "
                           "(built by scripts/setup; about 20 s to start)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from . import logs

    args = build_parser().parse_args(argv)
    logs.configure(level="WARNING")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
