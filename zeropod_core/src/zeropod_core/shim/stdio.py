"""Moves bytes between containerd's FIFOs and a container's stdio, on the event loop.

The container always gets **pipes** (or a pty), never the FIFOs themselves: CRIU can dump a
process whose stdio are pipes, and a restore can hand the restored process fresh pipes that
this module then wires to the same FIFOs. FIFOs are opened read-write, as containerd's own
shim does, so opening never blocks on a missing peer and writes never raise EPIPE when ctr
has gone away (``ctr run -d``).

Copying is done by :class:`Pump` objects on the asyncio loop (non-blocking fds, reader/writer
callbacks), not by threads: one shim may serve many processes, and a pump can be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("zeropod.shim.stdio")

_CHUNK = 64 * 1024
_MAX_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class StdioPaths:
    """The FIFO paths containerd gave for a process ("" = not connected)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def _nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


def open_fifo(path: str) -> int | None:
    """Open a containerd FIFO read-write and non-blocking; None for an empty path."""
    if not path:
        return None
    return _nonblocking(os.open(path, os.O_RDWR | os.O_CLOEXEC))


class Pump:
    """Copies ``src`` to ``dst`` on the loop until ``src`` reaches EOF or :meth:`stop`.

    If ``dst`` fails (or is None) the data is dropped but ``src`` is still drained, so a writer
    in the container never blocks because nobody reads its output.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, src: int, dst: int | None, *,
                 close_src: bool = True, close_dst: bool = False,
                 on_eof: Callable[[], None] | None = None) -> None:
        self._loop, self._src, self._dst = loop, _nonblocking(src), dst
        self._close_src, self._close_dst, self._on_eof = close_src, close_dst, on_eof
        self._buffer = bytearray()
        self._stopped = False
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(src, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._src, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO on a pty master whose slave side is gone
            if exc.errno != errno.EIO:
                log.debug("stdio read failed", extra={"fd": self._src, "error": str(exc)})
            data = b""
        if not data:
            self._finish()
            return
        if self._dst is None:
            return
        self._buffer += data
        self._flush()
        if self._buffer:
            if len(self._buffer) >= _MAX_BUFFER:
                self._loop.remove_reader(self._src)  # back-pressure until the reader catches up
            self._loop.add_writer(self._dst, self._flush)

    def _flush(self) -> None:
        assert self._dst is not None
        try:
            while self._buffer:
                written = os.write(self._dst, self._buffer)
                del self._buffer[:written]
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("stdio write failed, dropping output", extra={"error": str(exc)})
            self._buffer.clear()
            self._loop.remove_writer(self._dst)
            self._dst = None
        if not self._buffer and self._dst is not None:
            self._loop.remove_writer(self._dst)
            if not self._stopped:
                self._loop.add_reader(self._src, self._on_readable)

    def _finish(self) -> None:
        self.stop()
        if self._on_eof is not None:
            self._on_eof()

    def stop(self) -> None:
        """Stop copying and release the fds this pump owns (pending output is flushed)."""
        if self._stopped:
            return
        self._stopped = True
        self._loop.remove_reader(self._src)
        if self._dst is not None and self._buffer:
            with contextlib.suppress(OSError):
                os.set_blocking(self._dst, True)
                os.write(self._dst, self._buffer)
                os.set_blocking(self._dst, False)
        if self._dst is not None:
            self._loop.remove_writer(self._dst)
        if self._close_src:
            os.close(self._src)
        if self._close_dst and self._dst is not None:
            os.close(self._dst)
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class ProcessIO:
    """A process's stdio: the fds runc hands the process, and the pumps to the FIFOs.

    Create with :meth:`pipes` (no terminal) or :meth:`console` (pty). After the process was
    started, :meth:`start_copying` wires everything and closes the process's ends in the shim.
    """

    paths: StdioPaths
    child_fds: tuple[int | None, int | None, int | None] = (None, None, None)
    _stdin_w: int | None = None
    _stdout_r: int | None = None
    _stderr_r: int | None = None
    _console_dir: str | None = None
    console_socket_path: str = ""
    _console_listener: socket.socket | None = None
    master: int | None = None
    _fifos: tuple[int | None, int | None, int | None] = (None, None, None)
    # output pumps with the slot of the FIFO they write to (1 = stdout, 2 = stderr)
    _pumps: list[tuple[int, Pump]] = field(default_factory=list)
    _stdin_pump: Pump | None = None
    _finished: bool = False

    @classmethod
    def pipes(cls, paths: StdioPaths, uid: int = 0, gid: int = 0) -> ProcessIO:
        """Three new pipes; the process gets the read end of stdin and write ends of the rest.

        The process's ends are owned by ``uid``/``gid`` (containerd's ``io_uid``/``io_gid``)
        so that a container running as another user can reopen ``/dev/stdout``.
        """
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        if uid or gid:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.fchown(fd, uid, gid)
        return cls(paths, (stdin_r, stdout_w, stderr_w), stdin_w, stdout_r, stderr_r)

    @classmethod
    def console(cls, paths: StdioPaths) -> ProcessIO:
        """A console socket runc sends the pty master to (``--console-socket``)."""
        import tempfile  # only terminals need it; keeps it out of most shims

        directory = tempfile.mkdtemp(prefix="zeropod-pty")
        path = os.path.join(directory, "pty.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        return cls(paths, _console_dir=directory, console_socket_path=path,
                   _console_listener=listener)

    async def receive_console(self, timeout: float = 10.0) -> None:
        """Accept runc's connection on the console socket and keep the pty master it sends."""
        assert self._console_listener is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            conn, _ = await loop.sock_accept(self._console_listener)
        with conn:
            conn.setblocking(True)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise RuntimeError("runc sent no pty master over the console socket")
        self.master = fds[0]
        self._close_console_socket()

    def _close_console_socket(self) -> None:
        if self._console_listener is not None:
            self._console_listener.close()
            self._console_listener = None
        if self._console_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._console_dir, "pty.sock"))
                os.rmdir(self._console_dir)
            self._console_dir = None

    def close_child_ends(self) -> None:
        """Close the process's ends in the shim (runc has passed them on)."""
        for fd in self.child_fds:
            if fd is not None:
                os.close(fd)
        self.child_fds = (None, None, None)

    def start_copying(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the FIFOs and start the pumps.

        A terminal has no stderr (the pty carries both streams), and clients make no stderr
        FIFO for it: its path is ignored, as containerd's runc shim does.
        """
        stdin_fifo = open_fifo(self.paths.stdin)
        stdout_fifo = open_fifo(self.paths.stdout)
        stderr_fifo = None if self.paths.terminal else open_fifo(self.paths.stderr)
        self._fifos = (stdin_fifo, stdout_fifo, stderr_fifo)
        if self.master is not None:
            master_out = os.dup(self.master)
            self._pumps.append((1, Pump(loop, master_out, stdout_fifo)))
            if stdin_fifo is not None:
                self._stdin_pump = Pump(loop, stdin_fifo, _nonblocking(os.dup(self.master)),
                                        close_src=False, close_dst=True)
            return
        assert self._stdout_r is not None and self._stderr_r is not None
        self._pumps.append((1, Pump(loop, self._stdout_r, stdout_fifo)))
        self._pumps.append((2, Pump(loop, self._stderr_r, stderr_fifo)))
        self._stdout_r = self._stderr_r = None
        if stdin_fifo is not None and self._stdin_w is not None:
            self._stdin_pump = Pump(loop, stdin_fifo, _nonblocking(self._stdin_w),
                                    close_src=False, close_dst=True)
            self._stdin_w = None
        else:
            self.close_stdin()

    def replace_pipes(self, loop: asyncio.AbstractEventLoop) -> tuple[int, int, int]:
        """New pipes for a restored process, pumped to the same FIFOs; returns its ends.

        The old output pumps drain what is left in the old pipes and end on their EOF.
        """
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        stdin_fifo, stdout_fifo, stderr_fifo = self._fifos
        self._pumps = [(slot, p) for slot, p in self._pumps if not p.done.done()]
        self._pumps.append((1, Pump(loop, stdout_r, stdout_fifo)))
        self._pumps.append((2, Pump(loop, stderr_r, stderr_fifo)))
        if self._stdin_pump is not None and stdin_fifo is not None:
            self._stdin_pump.stop()
            self._stdin_pump = Pump(loop, stdin_fifo, _nonblocking(stdin_w), close_src=False,
                                    close_dst=True)
        else:
            os.close(stdin_w)
        return stdin_r, stdout_w, stderr_w

    def close_stdin(self) -> None:
        """The client is done sending: the process reads EOF."""
        if self._stdin_pump is not None:
            self._stdin_pump.stop()
            self._stdin_pump = None
        if self._stdin_w is not None:
            os.close(self._stdin_w)
            self._stdin_w = None

    def resize(self, width: int, height: int) -> None:
        """Set the pty's window size (ResizePty)."""
        if self.master is None:
            raise ValueError("the process has no terminal")
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def drained(self, timeout: float) -> None:
        """Wait until the output pumps reached EOF (all output forwarded), at most ``timeout``."""
        pending = [p.done for _, p in self._pumps if not p.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def finish_output(self) -> None:
        """The process has exited for good: end its output streams once they are drained.

        Each output FIFO is closed as soon as every pump writing to it has reached EOF (now,
        or later if a grandchild still holds the pipe), so a client reading it gets EOF
        before anyone calls Delete. containerd's CRI plugin waits for exactly that EOF after
        an exec's exit before it answers ``kubectl exec``. Not called for a checkpointed
        process: its FIFOs stay open for the restored one.
        """
        self._finished = True
        for _, pump in self._pumps:
            pump.done.add_done_callback(lambda _: self._close_drained_outputs())
        self._close_drained_outputs()

    def _close_drained_outputs(self) -> None:
        if not self._finished:
            return
        fifos = list(self._fifos)
        for slot in (1, 2):
            busy = any(s == slot and not p.done.done() for s, p in self._pumps)
            if fifos[slot] is not None and not busy:
                with contextlib.suppress(OSError):
                    os.close(fifos[slot])  # type: ignore[arg-type]
                fifos[slot] = None
        self._fifos = (fifos[0], fifos[1], fifos[2])

    def close(self) -> None:
        """Stop everything and close every fd still held."""
        self.close_stdin()
        for _, pump in self._pumps:
            pump.stop()
        for fd in (*self.child_fds, self._stdout_r, self._stderr_r, self.master, *self._fifos):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.child_fds, self._stdout_r, self._stderr_r, self.master = (None,) * 3, None, None, None
        self._fifos = (None, None, None)
        self._close_console_socket()
