"""containerd's config for a Kubernetes node: the CRI plugin on, extra runtimes registered.

The CRI plugin is what the kubelet talks to. Settings that matter on these machines:
``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, and the sandbox's default
``oom_score_adj=-998`` makes runc fail every RunPodSandbox), a random stream server port on
127.0.0.1 (``kubectl exec/logs`` go apiserver -> kubelet -> this port), and CNI config/IPAM in the
node's own folder. Each :class:`CriRuntime` becomes a handler a RuntimeClass can name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..containerd import SHIM_BINARY, ZEROPOD_RUNTIME

ZEROPOD_ANNOTATIONS = ("zeropod.ctrox.dev/*",)


@dataclass(frozen=True)
class CriRuntime:
    """A runtime handler of the CRI plugin (``[...containerd.runtimes.<name>]``).

    :ivar pod_annotations: glob patterns of pod annotations passed into the OCI spec of the
        sandbox and its containers (all others are filtered out by containerd).
    :ivar binary: a shim binary to link into containerd's opt ``bin/`` folder, which containerd
        puts first on its PATH (where ``runtime_type`` is looked up).
    """

    name: str
    runtime_type: str
    pod_annotations: tuple[str, ...] = ()
    container_annotations: tuple[str, ...] = ()
    options: Mapping[str, str | bool | int] = field(default_factory=dict)
    binary: Path | None = None


def zeropod_runtime(shim: Path, name: str = "zeropod") -> CriRuntime:
    """The ``zeropod`` handler: the zeropod shim with its annotations let through."""
    if shim.name != SHIM_BINARY:
        raise ValueError(f"the zeropod shim binary must be named {SHIM_BINARY}, not {shim}")
    return CriRuntime(name=name, runtime_type=ZEROPOD_RUNTIME,
                      pod_annotations=ZEROPOD_ANNOTATIONS, binary=shim)


def _toml(value: str | bool | int | Sequence[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value if isinstance(value, str) else list(value))  # basic strings/arrays


def containerd_config(base: Path, *, sandbox_image: str, cni_conf_dir: Path,
                      cni_bin_dir: Path, runtimes: Sequence[CriRuntime] = (),
                      debug: bool = False) -> str:
    """The config.toml of a node's containerd rooted at ``base``."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_toml(str(base / 'root'))}",
        f"state = {_toml(str(base / 'state'))}",
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", '
        '"io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", '
        '"io.containerd.tracing.processor.v1.otlp"]',
        "[grpc]",
        f"  address = {_toml(str(base / 'containerd.sock'))}",
        "[ttrpc]",
        f"  address = {_toml(str(base / 'containerd.sock.ttrpc'))}",
        "[debug]",
        f"  level = {_toml('debug' if debug else 'info')}",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_toml(str(base / 'opt'))}",
        f"[{cri}]",
        f"  sandbox_image = {_toml(sandbox_image)}",
        "  restrict_oom_score_adj = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        f"  Root = {_toml(str(base / 'runc'))}",
        "  SystemdCgroup = false",
    ]
    for runtime in runtimes:
        if runtime.name == "runc":
            raise ValueError("the runtime name 'runc' is the node's default; pick another")
        section = f"{cri}.containerd.runtimes.{json.dumps(runtime.name)}"
        lines += [f"[{section}]", f"  runtime_type = {_toml(runtime.runtime_type)}"]
        if runtime.pod_annotations:
            lines.append(f"  pod_annotations = {_toml(runtime.pod_annotations)}")
        if runtime.container_annotations:
            lines.append(f"  container_annotations = {_toml(runtime.container_annotations)}")
        if runtime.options:
            lines.append(f"[{section}.options]")
            lines += [f"  {key} = {_toml(value)}" for key, value in runtime.options.items()]
    lines += [
        f"[{cri}.cni]",
        f"  bin_dir = {_toml(str(cni_bin_dir))}",
        f"  conf_dir = {_toml(str(cni_conf_dir))}",
        "  max_conf_num = 1",
    ]
    return "\n".join(lines) + "\n"
