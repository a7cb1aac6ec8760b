"""The CRIU configuration file for options runc 1.1.5 cannot pass, and its spec annotation.

runc reads the OCI annotation ``org.criu.config`` (at create and at restore) and hands the file
to CRIU as the RPC configuration file, which CRIU applies *after* runc's own RPC options, so
these settings win over runc's defaults. CRIU's syntax is one command-line option per line
without the leading ``--``. Two traps, both verified against CRIU 4.2.1:

* the option is ``manage-cgroups``, not runc's ``manage-cgroups-mode``: an unknown option makes
  every dump and restore fail;
* ``manage-cgroups`` takes an *optional* argument, and getopt does not consume a separate word
  for those: ``manage-cgroups ignore`` silently means the default ``soft``. Only
  ``manage-cgroups=ignore`` works (seen in the size of ``cgroup.img``). ``network-lock`` takes a
  required argument, so ``network-lock skip`` is fine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("zeropod.criu.config")

CRIU_CONFIG_ANNOTATION = "org.criu.config"


@dataclass(frozen=True)
class CriuConfig:
    """What zeropod asks of CRIU beyond runc's options.

    :ivar network_lock: ``skip``: no iptables/nftables lock (nothing to clean up after a dump,
        connects are refused at once and the redirector takes over).
    :ivar manage_cgroups: ``ignore``: runc has already put CRIU into the container's cgroups;
        CRIU's own cgroup handling costs 2-11 ms per restore.
    :ivar tcp_close: dump established TCP connections as closed instead of failing (the peer
        sees a reset after the restore, as upstream zeropod does).
    :ivar skip_in_flight: ignore connections still in the handshake (the client retries).
    :ivar externals: ``external`` options (see :mod:`.masked`); they differ between a dump
        and a restore, so a container's file is rewritten before each.
    """

    network_lock: str = "skip"
    manage_cgroups: str = "ignore"
    tcp_close: bool = True
    skip_in_flight: bool = True
    externals: tuple[str, ...] = ()

    def render(self) -> str:
        lines = ["# Written by zeropod-criu; runc passes it to CRIU (OCI annotation "
                 f"{CRIU_CONFIG_ANNOTATION}).",
                 f"network-lock {self.network_lock}",
                 f"manage-cgroups={self.manage_cgroups}"]
        if self.tcp_close:
            lines.append("tcp-close")
        if self.skip_in_flight:
            lines.append("skip-in-flight")
        lines.extend(f"external {value}" for value in self.externals)
        return "\n".join(lines) + "\n"


def write_config(path: Path, config: CriuConfig) -> bool:
    """Write ``config`` to ``path`` unless it already holds exactly that; True if written.

    Atomic (temporary file + rename), so a CRIU starting meanwhile reads the old or the new
    file, never half of one.
    """
    text = config.render()
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    log.info("wrote CRIU configuration", extra={"path": str(path), "options": text.count("\n")})
    return True


def name_config_in_spec(spec: dict[str, Any], path: Path, *, container_id: str) -> bool:
    """Put ``org.criu.config=<path>`` into the spec's annotations; True if the spec changed.

    A user who set the annotation keeps it (runc would use theirs at restore anyway); zeropod's
    CRIU defaults then do not apply, which is logged because it changes what a dump tolerates.
    """
    annotations = spec.setdefault("annotations", {})
    current = annotations.get(CRIU_CONFIG_ANNOTATION)
    if current is not None:
        if current != str(path):
            log.warning("the container names its own CRIU configuration; zeropod's CRIU "
                        "defaults (network-lock skip, tcp-close, ...) are not applied",
                        extra={"container": container_id, "criu_config": current})
        return False
    annotations[CRIU_CONFIG_ANNOTATION] = str(path)
    return True
