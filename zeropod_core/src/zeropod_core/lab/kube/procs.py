"""The cluster's daemons as processes: started with a log file, watched, stopped by PID.

Every component is a plain child process of the test session (no systemd, no static pods), so
a failed start is reported with the tail of that component's own log, and stopping means
SIGTERM to a known PID (SIGKILL after a grace time), never a search by name.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..containerd import terminate

log = logging.getLogger("zeropod.lab.kube")

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The lab cluster could not be started or a component died; says which and why."""


@dataclass
class LabProcess:
    """One daemon of the cluster with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], log_path: Path,
              env: Mapping[str, str] | None = None) -> LabProcess:
        """Start ``argv`` in its own session with stdout and stderr going to ``log_path``."""
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, env={**os.environ, **(env or {})})
        log.info("started", extra={"component": name, "pid": process.pid})
        return cls(name, process, log_path, tuple(argv), env)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the process (by PID) and start it again the same way (a daemon restart)."""
        self.stop(timeout)
        self.process = LabProcess.spawn(self.name, self.argv, self.log_path, self.env).process

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise :class:`ClusterError` with the log's tail if the process has exited."""
        if self.process.poll() is not None:
            raise ClusterError(f"{self.name} exited with {self.process.returncode}; "
                               f"end of {self.log_path}:\n{self.log_tail()}")

    def rss_kib(self) -> int:
        """Resident memory of the process now (0 once it has exited)."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; a no-op once it has exited."""
        terminate(self.process, timeout)


def wait_until(what: str, probe: Callable[[], T | None], *, timeout: float,
               watch: Sequence[LabProcess] = (), interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something other than None (or False) and return it.

    Fails early with the component's log when one of ``watch`` exits, and with ``what`` in
    the message when ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        for proc in watch:
            proc.check_alive()
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
