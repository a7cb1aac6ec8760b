"""The shim template: a warm process per containerd that forks ready-to-serve shims.

A Python shim spends most of its start-up importing (asyncio, protobuf, the Task service,
plugins): ~150 ms on these machines, paid on every container start while containerd waits.
The template pays it once. ``start`` hands it the new shim's listening socket (SCM_RIGHTS)
with the flags, bundle and environment, and the template forks a child that detaches and
serves; the fork takes a few milliseconds. Forked shims also share the template's pages, so
their proportional memory (PSS) is lower than that of a freshly started interpreter.

Safety rules:

* A template only runs the code that is installed: before each fork it checks that no module
  file it loaded has changed since (an upgrade, an edit in a development checkout), and that
  the caller runs the same interpreter and package; otherwise it refuses and exits, and
  ``start`` takes the cold path.
* The template exits when its containerd's socket is gone, or on SIGTERM.
* Without a template (first container, or ``ZEROPOD_SHIM_TEMPLATE=0``), ``start`` forks a
  server itself (the cold path) and starts a template in the background for the next one.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import sys

from .flags import FIELDS, ShimFlags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

TEMPLATE_SOCKET = "zeropod-template.sock"
TEMPLATE_PIDFILE = "zeropod-template.pid"
_IDLE_CHECK_S = 1.0
_MAX_REQUEST = 1 << 20


def socket_path(flags: ShimFlags) -> str:
    return os.path.join(os.path.dirname(flags.address), "s", TEMPLATE_SOCKET)


def enabled() -> bool:
    return os.environ.get("ZEROPOD_SHIM_TEMPLATE", "1") != "0"


def code_identity() -> str:
    """Which interpreter and package a process runs (the cheap half of the staleness check)."""
    return f"{sys.executable}|{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"


def _encode(flags: ShimFlags, bundle: str) -> bytes:
    """NUL-separated fields: identity, bundle, debug, the flag values, then env pairs.

    Not JSON: importing json (and with it re) would cost ``start`` a few milliseconds.
    """
    fields = [code_identity(), bundle, "1" if flags.debug else "0",
              *(getattr(flags, name) for name in FIELDS)]
    for key, value in os.environ.items():
        fields += [key, value]
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def _decode(body: bytes) -> tuple[str, str, ShimFlags, dict[str, str]]:
    parts = body.decode("utf-8", "surrogateescape").split("\0")
    head, env_pairs = parts[: 3 + len(FIELDS)], parts[3 + len(FIELDS):]
    if len(head) != 3 + len(FIELDS) or len(env_pairs) % 2:
        raise ValueError("malformed template request")
    identity, bundle, debug, *values = head
    named = dict(zip(FIELDS, values, strict=True))
    flags = ShimFlags(namespace=named["namespace"], address=named["address"],
                      publish_binary=named["publish_binary"], id=named["id"],
                      bundle=named["bundle"], socket=named["socket"], debug=debug == "1")
    return identity, bundle, flags, dict(zip(env_pairs[::2], env_pairs[1::2], strict=True))


# --- client side, in `start` -----------------------------------------------------------------


def request_shim(flags: ShimFlags, listener: socket.socket, bundle: str) -> bool:
    """Ask a running template to fork the shim for ``listener``; False if there is none."""
    request = _encode(flags, bundle)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        try:
            conn.connect(socket_path(flags))
            conn.sendmsg([len(request).to_bytes(4, "big"), request],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           array.array("i", [listener.fileno()]))])
            reply = conn.recv(64)
        except OSError:
            return False
    return reply.startswith(b"ok")


def spawn_template(flags: ShimFlags) -> None:
    """Start a template in the background (double fork: it is nobody's child)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        if os.fork() == 0:
            detach()
            code = 1
            try:
                code = serve_template(flags)
            finally:
                os._exit(code)
    finally:
        os._exit(0)


def detach() -> None:
    """Leave containerd's session and its pipe (``start``'s stdout) in a forked child."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# --- the template process --------------------------------------------------------------------


def _recv_request(conn: socket.socket) -> tuple[bytes, int]:
    fds = array.array("i")
    header, ancdata, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    length = int.from_bytes(header, "big")
    if not fds or not 0 < length <= _MAX_REQUEST:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed template request")
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("truncated template request")
        body += chunk
    return body, fds[0]


def _loaded_files() -> dict[str, int]:
    """Modification times of every module file this process imported outside the stdlib."""
    stdlib = os.path.dirname(os.__file__)
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and not path.startswith(stdlib):
            with contextlib.suppress(OSError):
                files[path] = os.stat(path).st_mtime_ns
    return files


def _unchanged(files: dict[str, int]) -> bool:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _fork_shim(bundle: str, flags: ShimFlags, env: dict[str, str], listen_fd: int,
               template: socket.socket,
               run: Callable[[ShimFlags, socket.socket], int]) -> None:
    """Double fork; the grandchild becomes the shim for the request's container."""
    pid = os.fork()
    if pid:
        os.close(listen_fd)
        os.waitpid(pid, 0)
        return
    try:
        if os.fork() == 0:
            template.close()
            detach()
            os.chdir(bundle)
            os.environ.clear()
            os.environ.update(env)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                code = run(flags, socket.socket(fileno=listen_fd))
            finally:
                os._exit(code)
    finally:
        os._exit(0)


def serve_template(flags: ShimFlags) -> int:
    """Import everything a shim needs, then fork shims on request until no longer needed."""
    path = socket_path(flags)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError:  # another template won the race
        return 0
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.settimeout(_IDLE_CHECK_S)
    pidfile = os.path.join(os.path.dirname(path), TEMPLATE_PIDFILE)
    with open(pidfile, "w") as out:
        out.write(str(os.getpid()))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    identity = code_identity()
    from .server import prepare, run  # the expensive part, paid once

    prepare()
    files = _loaded_files()
    try:
        while not stopping and os.path.exists(flags.address) and _unchanged(files):
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            with conn:
                conn.settimeout(5.0)
                try:
                    body, listen_fd = _recv_request(conn)
                    caller, bundle, request_flags, env = _decode(body)
                except (OSError, ValueError):
                    continue
                if caller != identity or not _unchanged(files):
                    os.close(listen_fd)
                    with contextlib.suppress(OSError):
                        conn.sendall(b"stale")
                    break
                # Answer first: containerd's requests wait in the listener's backlog, so
                # `start` need not wait for the forks.
                with contextlib.suppress(OSError):
                    conn.sendall(b"ok")
                _fork_shim(bundle, request_flags, env, listen_fd, listener, run)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
    return 0
