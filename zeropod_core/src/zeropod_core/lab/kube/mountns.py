"""A node's private mount namespace (and, for a lab node, its own network namespace).

kubelet 1.20 and containerd 1.6 write to host paths whatever their flags say:
``/var/lib/kubelet/device-plugins``, ``/var/log/pods``, ``/var/log/containers``,
``/run/containerd/{s,runc}``, ``/var/run/netns``, ``/var/lib/cni``. On a shared machine (other
containerd tests, another lab node) those must not be touched. A holder process (``sleep``)
owns a mount namespace with private propagation in which ``/run``, ``/var/lib`` and
``/var/log`` are overlays: the host's files show through, everything written lands in the
node's own folder, and nothing is created on the host, not even a mount point. containerd and
the kubelet join it with ``nsenter --mount``; so do the shims and runc they start, and pod
mounts and network-namespace files exist only in there. When the last process in it is gone
the kernel drops every mount made inside. Copies of other labs' mounts (made when the namespace
is created) are unmounted in it at once, so the node never pins them.

With ``network=True`` the holder also owns a new network namespace (the node's, wired up by
:mod:`.network`), and ``/sys`` in there is a fresh sysfs that shows that namespace's links
(``/sys/class/net``), with the host's mounts below ``/sys`` (cgroups, bpffs, ...) bound back
in, as a container runtime does for a container. When the holder and every process started
inside are gone, both namespaces go, and with them the node's links.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import ClusterError, LabProcess, wait_until

OVERLAID = ("/run", "/var/lib", "/var/log")

_HOLDER = """\
set -e
base=$1
# Drop this namespace's copies of other labs' mounts (container rootfs, netns files): none is
# needed here, and a copy would keep their overlays busy after the host unmounted them.
awk '{{print $5}}' /proc/self/mountinfo | grep -E '^/(tmp|run|var/lib|var/log)/' | sort -r \
  | while read -r point; do umount -l "$point" 2>/dev/null || true; done
if [ "$2" = net ]; then
  # sysfs shows the network namespace of whoever mounted it: mount one for this namespace
  # and bind the host's mounts below /sys (cgroups, bpffs, tracing...) back into it.
  mkdir -p "$base/sys"
  mount --rbind /sys "$base/sys"
  mount -t sysfs zeropod-lab-sysfs /sys
  last=-
  awk '{{print $5}}' /proc/self/mountinfo | grep "^$base/sys/" | sort | while read -r point; do
    case "$point" in "$last"/*) continue ;; esac
    last=$point
    inner=/sys/${{point#"$base/sys/"}}
    if [ -d "$inner" ]; then mount --rbind "$point" "$inner"; fi
  done
  umount -l "$base/sys"
fi
for dir in {dirs}; do
  name=$(echo "$dir" | tr / _)
  mkdir -p "$base/$name/upper" "$base/$name/work"
  layers="lowerdir=$dir,upperdir=$base/$name/upper,workdir=$base/$name/work"
  mount -t overlay "zeropod-lab$name" -o "$layers" "$dir"
done
touch "$base/ready"
exec sleep infinity
"""


@dataclass
class PrivateMounts:
    """The holder of a node's mount namespace; its upper layers live under ``base``."""

    base: Path
    holder: LabProcess
    network: bool = False

    @classmethod
    def create(cls, base: Path, *, network: bool = False) -> PrivateMounts:
        """Start the holder; with ``network`` it owns a new network namespace too."""
        base.mkdir(parents=True, exist_ok=True)
        script = _HOLDER.format(dirs=" ".join(OVERLAID))
        holder = LabProcess.spawn(
            "namespace holder",
            ["unshare", "--mount", *(["--net"] if network else []), "--propagation", "private",
             "sh", "-c", script, "sh", str(base), "net" if network else "-"],
            base / "holder.log")
        mounts = cls(base, holder, network)
        try:
            wait_until("the private mount namespace", lambda: (base / "ready").exists(),
                       timeout=10, watch=[holder], interval=0.01)
        except BaseException:
            holder.stop(timeout=2)
            raise
        return mounts

    @property
    def ns_path(self) -> str:
        return f"/proc/{self.holder.pid}/ns/mnt"

    @property
    def net_path(self) -> str:
        """The holder's network namespace (the lab's own unless created with ``network``)."""
        return f"/proc/{self.holder.pid}/ns/net"

    def enter(self) -> list[str]:
        """The argv prefix that runs a program inside this mount (and network) namespace."""
        self.holder.check_alive()
        net = [f"--net={self.net_path}"] if self.network else []
        return ["nsenter", f"--mount={self.ns_path}", *net, "--"]

    def namespace_id(self) -> str:
        return os.readlink(self.ns_path)

    def pids_inside(self) -> list[int]:
        """PIDs of every process in this mount namespace except the holder (containerd, the
        kubelet, shims, runc): all started on the node's behalf."""
        try:
            ns = self.namespace_id()
        except OSError:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.holder.pid:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """SIGKILL what is left inside (by PID), then end the holder: the mounts go with it."""
        for _ in range(50):
            pids = self.pids_inside()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        else:
            raise ClusterError(f"processes {self.pids_inside()} survive in {self.base}'s "
                               "mount namespace")
        self.holder.stop(timeout=5)


def run_inside(mounts: PrivateMounts, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a short command in the node's mount namespace (e.g. to look at pod mounts)."""
    return subprocess.run([*mounts.enter(), *argv], capture_output=True, text=True, timeout=30)
