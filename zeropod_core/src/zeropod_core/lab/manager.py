"""A ``zeropod-manager`` process for the lab: started in the background, stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .containerd import terminate


@dataclass
class LabManager:
    """A running manager and the address of its HTTP endpoints."""

    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @classmethod
    def start(cls, socket_dir: Path, workdir: Path, *, debug: bool = False,
              env: Mapping[str, str] | None = None, listen: str = "127.0.0.1:0",
              prefix: Sequence[str] = ()) -> LabManager:
        """Start ``zeropod-manager`` for the shims in ``socket_dir``.

        :param env: extra environment (``ZEROPOD_*`` settings of the manager and its plugins).
        :param listen: where its HTTP endpoints listen (port 0: one the kernel picks).
        :param prefix: an argv prefix it runs under, e.g. ``nsenter`` into a lab node's
            namespaces (``nsenter`` execs it: the PID stays the manager's).
        """
        ready = workdir / "manager.addr"
        ready.unlink(missing_ok=True)
        log_path = workdir / "manager.log"
        binary = Path(sys.executable).with_name("zeropod-manager")
        argv = [*prefix, str(binary), "--socket-dir", str(socket_dir), "--listen", listen,
                "--ready-file", str(ready), *(["--debug"] if debug else [])]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("zeropod-manager did not start: "
                                   + log_path.read_text()[-2000:])
            time.sleep(0.01)
        return cls(process, ready.read_text().strip(), log_path)

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=timeout) as reply:
            body: bytes = reply.read()
            return body

    def stop(self) -> None:
        """SIGTERM by PID, then wait (SIGKILL after 10 s)."""
        terminate(self.process)
