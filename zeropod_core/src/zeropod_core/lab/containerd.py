"""A private containerd for the lab: own root, state, sockets and opt folder in a temp dir.

Nothing goes under ``/run/containerd`` or ``/var/lib/containerd`` (except the socket folder that
containerd 1.6's stock runc shim hard-codes, ``/run/containerd/s``, removed again if the lab
created it). The daemon is started in the background, waited for, and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zeropod_core.shim.template import TEMPLATE_PIDFILE

log = logging.getLogger("zeropod.lab.containerd")

RUNC_RUNTIME = "io.containerd.runc.v2"
ZEROPOD_RUNTIME = "io.containerd.zeropod.v2"
SHIM_BINARY = "containerd-shim-zeropod-v2"

_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  level = "{level}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


class CtrError(RuntimeError):
    """A ``ctr`` command failed; the message carries its stderr."""


@dataclass
class LabContainer:
    """A container started through ``ctr run -d``; :meth:`remove` deletes it completely."""

    containerd: PrivateContainerd
    id: str
    runtime: str

    def task_pid(self) -> int:
        """The host PID containerd reports for the task's init process."""
        out = self.containerd.ctr("task", "ls").stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == self.id:
                return int(parts[1])
        raise CtrError(f"task {self.id} not found in `ctr task ls`:\n{out}")

    def status(self) -> str:
        for line in self.containerd.ctr("task", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == self.id:
                return parts[2]
        return "ABSENT"

    def remove(self) -> None:
        """Kill the task, delete it and the container; ignore what is already gone."""
        ctr = self.containerd.ctr
        if self.status() not in ("ABSENT", "STOPPED"):
            ctr("task", "kill", "-s", "SIGKILL", self.id, check=False)
            deadline = time.monotonic() + 10
            while self.status() not in ("ABSENT", "STOPPED") and time.monotonic() < deadline:
                time.sleep(0.02)
        ctr("task", "delete", "--force", self.id, check=False)
        ctr("container", "delete", self.id, check=False)


@dataclass
class PrivateContainerd:
    """A containerd daemon of our own, rooted at ``base``."""

    base: Path
    namespace: str = "zeropod-lab"
    process: subprocess.Popen[bytes] | None = None
    cgroup_parent: str = field(default_factory=lambda: f"zeropod-lab-{secrets.token_hex(3)}")
    env: dict[str, str] = field(default_factory=dict)
    _containers: list[LabContainer] = field(default_factory=list)
    _created_run_containerd: bool = False

    @property
    def address(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def ttrpc_address(self) -> Path:
        return self.base / "containerd.sock.ttrpc"

    @property
    def opt_bin(self) -> Path:
        """containerd prepends this to its PATH: shim binaries placed here are found first."""
        return self.base / "opt" / "bin"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    @property
    def major_version(self) -> int:
        """The daemon's major version (1 for 1.6/1.7, 2 for 2.x): clients of each send
        different option types, and tests send what the daemon's own client would."""
        out = self.ctr("version").stdout
        server = out.split("Server:", 1)[-1]
        for line in server.splitlines():
            if line.strip().startswith("Version:"):
                return int(line.split(":", 1)[1].strip().lstrip("v").split(".")[0])
        raise CtrError(f"no server version in `ctr version`:\n{out}")

    def bundle(self, container_id: str) -> Path:
        """The task's bundle folder (config.json, rootfs, the shim's ``address`` file)."""
        return self.base / "state" / "io.containerd.runtime.v2.task" / self.namespace / \
            container_id

    def shim_address(self, container_id: str) -> str:
        """The socket path of the shim serving ``container_id`` (its ``address`` file; shims
        of containerd 2.x write ``bootstrap.json`` instead)."""
        bundle = self.bundle(container_id)
        try:
            address = (bundle / "address").read_text()
        except FileNotFoundError:
            address = json.loads((bundle / "bootstrap.json").read_text())["address"]
        return str(address).removeprefix("unix://")

    @property
    def node_socket_dir(self) -> Path:
        """Where the shims' node API sockets appear (``ZEROPOD_SOCKET_DIR``)."""
        return Path(self.env["ZEROPOD_SOCKET_DIR"])

    @property
    def image_root(self) -> Path:
        """Where zeropod's shims keep checkpoint images (``ZEROPOD_IMAGE_ROOT``)."""
        return Path(self.env["ZEROPOD_IMAGE_ROOT"])

    @classmethod
    def start(
        cls, base: Path, *, debug: bool = False, shim: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PrivateContainerd:
        """Write the config, start the daemon and wait until it answers.

        :param shim: the ``containerd-shim-zeropod-v2`` binary to offer (linked into opt/bin).
        :param env: extra environment for containerd, which its shims inherit (``ZEROPOD_*``).
        """
        daemon = cls(base=base, env={**shim_env(base), **(env or {})})
        for sub in ("root", "state", "opt/bin", "fifo", "runc"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        shim = shim or Path(sys.executable).with_name(SHIM_BINARY)
        if shim.exists():
            (daemon.opt_bin / SHIM_BINARY).symlink_to(shim)
        (base / "config.toml").write_text(
            _CONFIG.format(base=base, level="debug" if debug else "info"))
        daemon._created_run_containerd = not Path("/run/containerd").exists()
        daemon._launch()
        return daemon

    def _launch(self) -> None:
        log_file = open(self.base / "containerd.log", "ab")  # noqa: SIM115 - closed below
        self.process = subprocess.Popen(
            ["containerd", "--config", str(self.base / "config.toml")],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
            env={**os.environ, **self.env})
        log_file.close()
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.process.returncode}: "
                                   + (self.base / "containerd.log").read_text()[-2000:])
            if self.address.exists() and self.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("containerd did not answer within 20 s")
            time.sleep(0.01)
        log.info("containerd started", extra={"pid": self.process.pid, "base": str(self.base)})

    def restart(self) -> None:
        """Stop the daemon (SIGTERM, by PID) and start it again; containers and shims stay."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self._launch()

    def ctr(self, *args: str, check: bool = True, timeout: float = 120,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this daemon and namespace."""
        argv = ["ctr", "--address", str(self.address), "--namespace", self.namespace, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input.decode() if input is not None else None)
        if check and proc.returncode != 0:
            raise CtrError(f"{' '.join(argv[5:])} exited {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def run_args(self, image: str, container_id: str, *, runtime: str = RUNC_RUNTIME,
                 netns: Path | None = None, annotations: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, detach: bool = True, tty: bool = False,
                 remove: bool = False, command: Sequence[str] = ()) -> list[str]:
        """The ``ctr run`` arguments for a container of this lab (without ``ctr`` itself)."""
        args = ["run", "--runtime", runtime, "--fifo-dir", str(self.base / "fifo"),
                "--cgroup", f"/{self.cgroup_parent}/{container_id}"]
        if runtime == RUNC_RUNTIME:
            args += ["--runc-root", str(self.runc_root)]
        if detach:
            args.append("-d")
        if tty:
            args.append("-t")
        if remove:
            args.append("--rm")
        if netns is not None:
            args += ["--with-ns", f"network:{netns}"]
        for key, value in (annotations or {}).items():
            args += ["--annotation", f"{key}={value}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, image, container_id, *command]

    def run(self, image: str, container_id: str | None = None, **kwargs: object) -> LabContainer:
        """``ctr run -d`` a container and remember it for :meth:`stop`."""
        container_id = container_id or f"lab-{secrets.token_hex(4)}"
        runtime = str(kwargs.get("runtime", RUNC_RUNTIME))
        container = LabContainer(self, container_id, runtime)
        self._containers.append(container)
        self.ctr(*self.run_args(image, container_id, **kwargs))  # type: ignore[arg-type]
        return container

    def stop(self) -> None:
        """Remove the lab's containers, stop the daemon by PID, unmount and delete leftovers."""
        if self.process and self.process.poll() is None:
            for container in reversed(self._containers):
                try:
                    container.remove()
                except Exception:
                    log.exception("removing container failed", extra={"id": container.id})
            terminate(self.process)
        self._stop_shim_template()
        self._unmount_below(self.base)
        self._remove_cgroup_parent()
        if self._created_run_containerd:
            _remove_empty_tree(Path("/run/containerd"))
        log.info("containerd stopped", extra={"base": str(self.base)})

    def _stop_shim_template(self) -> None:
        """The zeropod shim template started on this daemon's behalf exits once containerd's
        socket is gone; end it now, by the PID it recorded, rather than a second later."""
        pidfile = self.base / "s" / TEMPLATE_PIDFILE
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    @staticmethod
    def _unmount_below(base: Path) -> None:
        prefix = str(base.resolve()) + "/"
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def _remove_cgroup_parent(self) -> None:
        remove_cgroup_tree(self.cgroup_parent)


def remove_cgroup_tree(name: str) -> None:
    """Remove the cgroup ``/<name>`` and everything below it, in every hierarchy."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        target = hierarchy / name
        for directory in sorted(target.glob("**/"), key=lambda p: len(str(p)), reverse=True):
            with contextlib.suppress(OSError):  # not empty or already gone
                directory.rmdir()


def shim_env(base: Path) -> dict[str, str]:
    """The shims inherit containerd's environment: keep their state inside the lab too."""
    return {"ZEROPOD_IMAGE_ROOT": str(base / "images"),
            "ZEROPOD_BPF_ROOT": str(base / "bpf"),
            "ZEROPOD_SOCKET_DIR": str(base / "zs")}


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process the lab started: SIGTERM by PID, SIGKILL if it outlives ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _remove_empty_tree(root: Path) -> None:
    """Delete ``root`` if it holds nothing but empty folders."""
    if not root.is_dir() or any(p.is_file() or p.is_socket() for p in root.rglob("*")):
        return
    shutil.rmtree(root, ignore_errors=True)


def lab_base(prefix: str = "zeropod-lab") -> Path:
    """A fresh, private temp folder for one lab (mode 0700)."""
    base = Path(os.environ.get("ZEROPOD_LAB_TMP", "/tmp")) / f"{prefix}-{secrets.token_hex(4)}"
    base.mkdir(mode=0o700, parents=True)
    return base
