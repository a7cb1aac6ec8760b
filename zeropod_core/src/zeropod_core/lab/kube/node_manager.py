"""A ``zeropod-manager`` per lab node, where a DaemonSet would run it: in the node's namespaces.

The manager runs in the node's network and mount namespaces (as a hostNetwork DaemonSet pod
shares a real node's network), watches that node's shim sockets, and knows its node by
``NODE_NAME`` (and ``ZEROPOD_NODE_NAME`` for the migration plugin). Its HTTP endpoints listen
on the node IP, so tests on the host and the other nodes' managers reach them; so does any
port a plugin opens there (the migration image service: ``ZEROPOD_MIGRATION_LISTEN``, by
default ``0.0.0.0:8090`` of the node's namespace, is ``<node IP>:8090`` for the other nodes;
``ZEROPOD_MIGRATION_ADDRESSES`` defaults to the node's name, its IP and 127.0.0.1, so a
certificate the plugin issues names the address the other node dials).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..containerd import shim_env
from ..manager import LabManager
from .node import KubeNode


def start_node_manager(node: KubeNode, workdir: Path, *, kubeconfig: Path | None = None,
                       env: Mapping[str, str] | None = None,
                       debug: bool = False) -> LabManager:
    """Start a manager for ``node``'s shims inside ``node``'s namespaces; its log and ready
    file go to ``workdir``. Stop it with :meth:`LabManager.stop` (the node's stop ends it too).

    :param kubeconfig: the identity it talks to the apiserver with (``ZEROPOD_KUBECONFIG``);
        without one it does not talk to Kubernetes.
    :param env: more ``ZEROPOD_*`` settings of the manager and its plugins (they win).
    """
    if node.mounts is None:
        raise RuntimeError(f"node {node.name} is stopped: no namespaces to run a manager in")
    workdir.mkdir(parents=True, exist_ok=True)
    shim = shim_env(node.containerd_base)
    settings = {"NODE_NAME": node.name, "ZEROPOD_NODE_NAME": node.name,
                "ZEROPOD_IMAGE_ROOT": shim["ZEROPOD_IMAGE_ROOT"],
                "ZEROPOD_MIGRATION_ADDRESSES": f"{node.name},{node.node_ip},127.0.0.1"}
    if kubeconfig is not None:
        settings["ZEROPOD_KUBECONFIG"] = str(kubeconfig)
    return LabManager.start(Path(shim["ZEROPOD_SOCKET_DIR"]), workdir, debug=debug,
                            env={**settings, **(env or {})}, listen=f"{node.node_ip}:0",
                            prefix=node.mounts.enter())
