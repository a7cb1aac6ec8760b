"""Drives the ``runc`` command line, through the shim's reaper.

runc's own messages go to a JSON log file per bundle (``--log log.json --log-format json``, as
containerd's runc shim does) because for ``create``, ``exec`` and ``restore`` runc's stdio is
the container's stdio. When a command fails, the error lines it logged during that call become
the exception's message, so what containerd shows the user is runc's own reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reaper import Reaper

DEFAULT_RUNC = "runc"


def kills_all_on_exit(spec: dict[str, Any]) -> bool:
    """Whether the container's other processes must be killed when its init exits.

    Only a container with a PID namespace of its own (no ``path``) has them killed by the
    kernel; one that shares a namespace (the host's, a pod's) keeps them otherwise. The same
    rule as containerd's ``ShouldKillAllOnExit``.
    """
    for namespace in spec.get("linux", {}).get("namespaces", []) or []:
        if namespace.get("type") == "pid" and not namespace.get("path"):
            return False
    return True


class RuncError(Exception):
    """A runc command failed; ``str()`` is runc's error message."""

    def __init__(self, command: str, returncode: int, message: str) -> None:
        super().__init__(f"runc {command} failed (exit {returncode}): {message}")
        self.command, self.returncode, self.message = command, returncode, message


@dataclass(frozen=True)
class RuncOutput:
    """Exit code and captured output of one runc call."""

    returncode: int
    stdout: bytes
    stderr: str


async def _read_to_eof(fd: int) -> bytes:
    """Read a pipe until EOF on the running loop (runc's stdout, e.g. ``runc ps``)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


class Runc:
    """One runc root (``--root``) and one log file; every call is spawned by the reaper."""

    def __init__(self, reaper: Reaper, root: Path, log_path: Path, *,
                 binary: str = DEFAULT_RUNC, criu: str | None = None,
                 systemd_cgroup: bool = False) -> None:
        self.reaper, self.root, self.log_path = reaper, root, log_path
        self.binary, self.criu, self.systemd_cgroup = binary, criu, systemd_cgroup

    def argv(self, *args: str) -> list[str]:
        base = [self.binary, "--root", str(self.root), "--log", str(self.log_path),
                "--log-format", "json"]
        if self.systemd_cgroup:
            base.append("--systemd-cgroup")
        if self.criu:
            base += ["--criu", self.criu]
        return [*base, *args]

    async def run(self, *args: str, stdio: Sequence[int | None] = (None, None, None),
                  input: bytes | None = None, capture: bool = False,
                  check: bool = True, timeout_s: float | None = None,
                  netns: str | None = None) -> RuncOutput:
        """Run ``runc <args>``; raise :class:`RuncError` on failure when ``check``.

        :param stdio: fds for the command's stdin/stdout/stderr (container stdio for create,
            exec, restore); ignored where ``input``/``capture`` need the slot.
        :param input: bytes to feed on stdin (must fit a pipe buffer: ``runc update``).
        :param capture: collect stdout (``runc ps``, ``runc events``).
        :param timeout_s: kill runc and its helpers (CRIU) after this long; a restore from a
            damaged image can otherwise hang in CRIU forever.
        :param netns: start runc inside the network namespace at this path.
        """
        stdin, stdout, stderr = stdio
        close_after: list[int] = []
        out_r = err_r = None
        if input is not None:
            in_r, in_w = os.pipe()
            os.write(in_w, input)
            os.close(in_w)
            stdin = in_r
            close_after.append(in_r)
        if capture:
            out_r, out_w = os.pipe()
            stdout = out_w
            close_after.append(out_w)
        if stderr is None:
            err_r, err_w = os.pipe()
            stderr = err_w
            close_after.append(err_w)
        log_offset = self._log_size()
        try:
            pid = self.reaper.spawn(self.argv(*args), stdin=stdin, stdout=stdout, stderr=stderr,
                                    own_group=timeout_s is not None, netns=netns)
        finally:
            for fd in close_after:
                os.close(fd)
        reads = [_read_to_eof(fd) for fd in (out_r, err_r) if fd is not None]
        try:
            async with asyncio.timeout(timeout_s):
                outputs = await asyncio.gather(*reads)
                exited = await self.reaper.wait(pid)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            await self.reaper.wait(pid)
            raise RuncError(args[0], -signal.SIGKILL,
                            f"timed out after {timeout_s} s and was killed: "
                            f"{self._errors_since(log_offset) or 'no error logged'}") from None
        captured = outputs[0] if out_r is not None else b""
        err_text = outputs[-1].decode(errors="replace") if err_r is not None else ""
        if check and exited.status != 0:
            message = self._errors_since(log_offset) or err_text.strip() or "no error logged"
            raise RuncError(args[0], exited.status, message)
        return RuncOutput(exited.status, captured, err_text)

    async def json(self, *args: str) -> Any:
        """Run a runc command that prints JSON (``state``, ``ps --format json``)."""
        return json.loads((await self.run(*args, capture=True)).stdout or b"null")

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _errors_since(self, offset: int) -> str:
        """The error messages runc logged after ``offset`` in its JSON log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        messages = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "fatal"):
                messages.append(str(entry.get("msg", "")))
        return "; ".join(messages)
