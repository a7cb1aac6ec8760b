"""The runc options containerd sends with ``Create`` and ``Checkpoint``, in either typing.

containerd 1.6's client picks the options type by the runtime's *name*: for
``io.containerd.runc.*`` it sends ``containerd.runc.v1.Options`` / ``CheckpointOptions``, for
any other name (``io.containerd.zeropod.v2`` included) the older ``containerd.linux.runc``
``CreateOptions`` / ``CheckpointOptions``. Both carry the same settings under other field
numbers; this module reads either into one plain value, so nothing a client asked for is
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zeropod_core.api import linux_runc, runc_options, typeurl
from zeropod_core.providers import CheckpointRequest


class UnsupportedOptions(ValueError):
    """The options hold a type this shim does not know."""


@dataclass(frozen=True)
class CreateSettings:
    """What a ``Create`` may ask of runc and of the shim's stdio."""

    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    binary_name: str = ""
    root: str = ""
    criu_path: str = ""
    systemd_cgroup: bool = False
    criu_image_path: str = ""
    criu_work_path: str = ""


def _has(packed: Any) -> bool:
    return packed is not None and bool(packed.type_url)


def create_settings(packed: Any) -> CreateSettings:
    """Settings from a ``CreateTaskRequest.options`` Any (empty Any = defaults)."""
    if not _has(packed):
        return CreateSettings()
    if typeurl.is_type(packed, runc_options.Options):
        v2 = typeurl.unpack(packed, runc_options.Options)
        return CreateSettings(
            no_pivot_root=v2.no_pivot_root, no_new_keyring=v2.no_new_keyring,
            shim_cgroup=v2.shim_cgroup, io_uid=v2.io_uid, io_gid=v2.io_gid,
            binary_name=v2.binary_name, root=v2.root, criu_path=v2.criu_path,
            systemd_cgroup=v2.systemd_cgroup, criu_image_path=v2.criu_image_path,
            criu_work_path=v2.criu_work_path)
    if typeurl.is_type(packed, linux_runc.CreateOptions):
        v1 = typeurl.unpack(packed, linux_runc.CreateOptions)
        return CreateSettings(
            no_pivot_root=v1.no_pivot_root, no_new_keyring=v1.no_new_keyring,
            shim_cgroup=v1.shim_cgroup, io_uid=v1.io_uid, io_gid=v1.io_gid,
            criu_image_path=v1.criu_image_path, criu_work_path=v1.criu_work_path)
    raise UnsupportedOptions(
        f"create options of type {packed.type_url!r} are not supported (expected "
        f"{typeurl.type_url(runc_options.Options)} or "
        f"{typeurl.type_url(linux_runc.CreateOptions)})")


def checkpoint_settings(packed: Any) -> CheckpointRequest:
    """Settings from a ``CheckpointTaskRequest.options`` Any (empty Any = defaults)."""
    if not _has(packed):
        return CheckpointRequest()
    message_types: tuple[Any, ...] = (runc_options.CheckpointOptions,
                                      linux_runc.CheckpointOptions)
    for message_type in message_types:
        if typeurl.is_type(packed, message_type):
            opts: Any = typeurl.unpack(packed, message_type)
            return CheckpointRequest(
                exit=opts.exit, open_tcp=opts.open_tcp,
                external_unix_sockets=opts.external_unix_sockets, terminal=opts.terminal,
                file_locks=opts.file_locks, empty_namespaces=tuple(opts.empty_namespaces),
                cgroups_mode=opts.cgroups_mode, image_path=opts.image_path,
                work_path=opts.work_path)
    raise UnsupportedOptions(
        f"checkpoint options of type {packed.type_url!r} are not supported (expected "
        f"{typeurl.type_url(runc_options.CheckpointOptions)} or "
        f"{typeurl.type_url(linux_runc.CheckpointOptions)})")
