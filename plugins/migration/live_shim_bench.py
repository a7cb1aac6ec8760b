"""Live migration through the shims between two lab containerds: freeze, total, bytes moved.

Run as root from the repository root::

    .venv/bin/python plugins/migration/live_shim_bench.py [--mib 256] [--rounds 3]

Two "nodes" on this machine, each a private containerd with the zeropod runtime (its own
shims, image root and node API sockets) and a zeropod-manager serving the mutual-TLS image
service. The counter app (``APP_ALLOC_MIB`` of random memory it can verify, a counter, and a
file it wrote into its own filesystem) starts on node A and moves A -> B -> A -> ... once
per round; this process stands in for the two managers' orchestration
(:mod:`zeropod_migration.live`). Per round:

1. both page-server proxies start (source: mutual TLS -> CRIU's page server port; target:
   loopback for ``criu lazy-pages``);
2. the last answer from the source (the counter);
3. ``LiveMigrate`` on the source shim's node API: lazy dump, READY;
   (before (2), the target container is created with ``zeropod.ctrox.dev/live-migrate``, as
   the kubelet creates the replacement pod's: its shim waits in ``Create`` for the image);
4. the target pulls the memory-less image (and the app's files) into the announced folder:
   the waiting shim takes it and restores at once, the pages stream in through the proxies;
5. the first answer from the target (the counter must continue), then DONE from the source
   (every page left), then ``/crc`` (all memory intact) and the file;
6. the source container is deleted: nothing of it may be left on its node.

"freeze" is (2) -> (5)'s first answer; "total" runs from (3) to DONE. The nodes run with
the criu plugin's defaults (the mounts the dump declared external travel in the image's
``zeropod-dump.json``). ``fs.pipe-max-size`` is raised to 4 MiB for the run (CRIU's page
server pipes) and put back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zeropod_core.lab import images
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, LabContainer, PrivateContainerd, lab_base
from zeropod_core.lab.http import HttpError, http_get
from zeropod_core.lab.manager import LabManager
from zeropod_core.lab.netns import PodNetwork
from zeropod_core.lab.pipes import pipe_max_size_for_criu
from zeropod_migration.live import (
    SourceHandOver,
    TargetArrival,
    find_shim_socket,
    free_loopback_port,
)
from zeropod_migration.tls import ClusterCA, NodeCredentials

LIVE_MIGRATE = "zeropod.ctrox.dev/live-migrate"
PORT = 8080
NOTE = "/live-note.txt"


@dataclass
class Node:
    name: str
    containerd: PrivateContainerd
    manager: LabManager
    creds: NodeCredentials
    port: int
    net: PodNetwork

    @property
    def image_address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def two_nodes(prefix: str = "zeropod-live") -> Iterator[tuple[Node, Node]]:
    """Two lab nodes (containerd + manager + a pod network each), one cluster CA."""
    ca = ClusterCA.create()
    started: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            base = lab_base(f"{prefix}-{name}")
            containerd = PrivateContainerd.start(base)
            net = PodNetwork.create("zplv")
            node = Node(name, containerd, None, ca.issue(name, ["127.0.0.1"]),  # type: ignore[arg-type]
                        free_loopback_port(), net)
            started.append(node)
            containerd.import_image(images.build(images.counter_app_spec()))
            containerd.node_socket_dir.mkdir(parents=True, exist_ok=True)
            node.creds.save(base / "tls")
            node.manager = LabManager.start(containerd.node_socket_dir, base, env={
                "ZEROPOD_MIGRATION_LISTEN": node.image_address,
                "ZEROPOD_MIGRATION_TLS_DIR": str(base / "tls"), "ZEROPOD_NODE_NAME": name,
                "ZEROPOD_IMAGE_ROOT": str(containerd.image_root),
                "ZEROPOD_HOUSEKEEPING_INTERVAL": "3600"})
        yield started[0], started[1]
    finally:
        for node in started:
            if node.manager is not None:
                node.manager.stop()
            node.containerd.stop()
            node.net.delete()
            keep = os.environ.get("ZEROPOD_LIVE_KEEP_LOGS")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for log in node.containerd.base.glob("*.log"):
                    shutil.copy(log, Path(keep) / f"{node.name}-{log.name}")
            shutil.rmtree(node.containerd.base, ignore_errors=True)


def run_counter(node: Node, container_id: str, mib: int) -> LabContainer:
    """The counter app on ``node``, listed in the live-migrate annotation (never scaled
    down during a round: a long scale-down duration)."""
    return node.containerd.run(
        images.COUNTER_APP, container_id, runtime=ZEROPOD_RUNTIME, netns=node.net.pod_path,
        annotations={"zeropod.ctrox.dev/scaledown-duration": "3600s",
                     LIVE_MIGRATE: container_id},
        env={"APP_ALLOC_MIB": str(mib)})


def get(node: Node, path: str = "/", deadline_s: float = 60.0) -> dict[str, object]:
    end = time.monotonic() + deadline_s
    while True:
        try:
            body: dict[str, object] = http_get(node.net.client_path, node.net.pod_ip, PORT,
                                               path, timeout=120).json()
            return body
        except HttpError:
            if time.monotonic() > end:
                raise
            time.sleep(0.001)


def exec_in(node: Node, container_id: str, code: str) -> str:
    return node.containerd.ctr("task", "exec", "--exec-id", f"x{secrets.token_hex(4)}",
                               container_id, "/usr/bin/python3", "-c", code).stdout


@dataclass
class Round:
    freeze_s: float
    total_s: float
    paused_to_ready_s: float
    pull_s: float
    create_s: float
    image_bytes: int
    pages_bytes: int
    count: int
    note: str
    crc: dict[str, object]
    paused_at: float
    restored_at: float
    # with check_listen: the addresses CRIU's page server listened on at READY
    page_server_listen: list[str]


def listening_on(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6"),
                 ) -> list[str]:
    """The local addresses (this network namespace) with a TCP socket listening on ``port``."""
    found = []
    for table in tables:
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(words)))
    return found


async def move(src: Node, dst: Node, src_id: str, dst_id: str, mib: int, *,
               check_listen: bool = False) -> Round:
    """One live migration of the running ``src_id`` on ``src`` to ``dst_id`` on ``dst``;
    ``check_listen``: note where CRIU's page server listens (outside the timed steps' way,
    but between READY and the pull: a test, not the benchmark)."""
    shim = await find_shim_socket(src.containerd.node_socket_dir, src_id)
    source = SourceHandOver(src.creds, shim, src_id, listen=("127.0.0.1", 0))
    proxy_port = await source.prepare()
    target = TargetArrival(dst.creds, ("127.0.0.1", proxy_port))
    create: asyncio.Future[LabContainer] | None = None
    try:
        await target.prepare(src.image_address)
        # the target container first, as the kubelet creates the replacement pod's: its
        # shim waits in Create for the image
        target.expect(dst.containerd.image_root, dst_id)
        t_create = time.monotonic()
        create = asyncio.ensure_future(asyncio.to_thread(run_counter, dst, dst_id, mib))
        await asyncio.to_thread(_wait_creating, dst, dst_id, create)
        t_waiting = time.monotonic()
        last = await asyncio.to_thread(get, src)
        t_last = time.monotonic()
        paused = await source.dump()
        t_ready = time.monotonic()
        listen = listening_on(source.criu_port) if check_listen else []
        received = await target.receive(src_id, source_label=f"{src.name}/{src_id}")
        t_pulled = time.monotonic()
        first = await asyncio.to_thread(get, dst)
        t_first = time.monotonic()
        if os.environ.get("ZEROPOD_LIVE_TRACE"):
            now_wall = time.time() - t_first
            print("trace", {k: round(now_wall + v, 3) for k, v in (
                ("last", t_last), ("ready", t_ready), ("pulled", t_pulled),
                ("first", t_first))})
        await create
        restored_at = await target.wait_restored(
            await find_shim_socket(dst.containerd.node_socket_dir, dst_id), dst_id)
        await source.finished()
        t_done = time.monotonic()
        await asyncio.to_thread(_keep_criu_logs, dst, dst_id, ("lazy-pages.log", "restore.log"))
        await asyncio.to_thread(_keep_criu_logs, src, src_id, ("dump.log",))
        crc = await asyncio.to_thread(get, dst, "/crc")
        note = await asyncio.to_thread(exec_in, dst, dst_id,
                                       f"print(open({NOTE!r}).read(), end='')")
        if first["count"] != int(str(last["count"])) + 1:
            raise AssertionError(f"counter {first['count']} after {last['count']}: state lost")
        return Round(freeze_s=t_first - t_last, total_s=t_done - t_ready + paused.ready_at
                     - paused.paused_at, paused_to_ready_s=paused.ready_at - paused.paused_at,
                     pull_s=t_pulled - t_ready, create_s=t_waiting - t_create,
                     image_bytes=received.pull.raw_bytes if received.pull else 0,
                     pages_bytes=source.bytes_moved, count=int(str(first["count"])),
                     note=note, crc=crc, paused_at=paused.paused_at, restored_at=restored_at,
                     page_server_listen=listen)
    finally:
        await target.close()
        await source.close()
        if create is not None:
            with contextlib.suppress(Exception):
                await create


def _keep_criu_logs(node: Node, container_id: str, names: tuple[str, ...]) -> None:
    """With ZEROPOD_LIVE_KEEP_LOGS: CRIU's logs ``names`` of ``container_id`` (the source's
    dump, the target's restore), for where time goes."""
    keep = os.environ.get("ZEROPOD_LIVE_KEEP_LOGS")
    if not keep:
        return
    Path(keep).mkdir(parents=True, exist_ok=True)
    for name in names:
        with contextlib.suppress(OSError):
            shutil.copy(node.containerd.image_root / container_id / "work" / name,
                        Path(keep) / f"{container_id}-{name}")


def _wait_creating(node: Node, container_id: str, create: asyncio.Future[LabContainer],
                   timeout_s: float = 60.0) -> None:
    """Until the target shim is in ``Create`` (the criu plugin made the image folder)."""
    deadline = time.monotonic() + timeout_s
    while not (node.containerd.image_root / container_id).is_dir():
        if create.done() or time.monotonic() > deadline:
            raise RuntimeError(f"{container_id} was not created on {node.name}")
        time.sleep(0.005)
    time.sleep(0.05)  # its rootfs mount, then the wait for the image


def leftovers(node: Node, container_id: str) -> list[str]:
    """What is left of a removed container on its node: task, image folder, CRIU."""
    found = []
    if LabContainer(node.containerd, container_id, ZEROPOD_RUNTIME).status() != "ABSENT":
        found.append(f"task {container_id}")
    folder = node.containerd.image_root / container_id
    if folder.exists():
        found.append(f"{folder}: {sorted(p.name for p in folder.rglob('*'))}")
    criu = subprocess.run(["pgrep", "-af", f"criu.*{folder}"], capture_output=True, text=True)
    found += [line for line in criu.stdout.splitlines() if line]
    return found


def start_app(node: Node, container_id: str, mib: int) -> int:
    """The counter app on ``node``, answering, with :data:`NOTE` written; its last count."""
    run_counter(node, container_id, mib)
    get(node, deadline_s=120)
    exec_in(node, container_id, f"open({NOTE!r}, 'w').write('round 0\\n')")
    return int(str(get(node)["count"]))


def rounds(nodes: tuple[Node, Node], mib: int, count: int, *,
           check_listen: bool = False) -> list[Round]:
    """``count`` live migrations A -> B -> A ..., each checked; the source removed and
    checked clean after each one (``check_listen``: see :func:`move`)."""
    tag = secrets.token_hex(2)
    ids = [f"live{tag}-{i}" for i in range(count + 1)]
    start_app(nodes[0], ids[0], mib)
    results = []
    for i in range(count):
        src, dst = nodes[i % 2], nodes[(i + 1) % 2]
        result = asyncio.run(move(src, dst, ids[i], ids[i + 1], mib,
                                  check_listen=check_listen))
        expected = "".join(f"round {n}\n" for n in range(i + 1))
        if result.crc != {"crc_ok": True, "mib": mib} or result.note != expected:
            raise AssertionError(f"round {i + 1}: crc {result.crc}, note {result.note!r}")
        exec_in(dst, ids[i + 1], f"open({NOTE!r}, 'a').write('round {i + 1}\\n')")
        LabContainer(src.containerd, ids[i], ZEROPOD_RUNTIME).remove()
        left = leftovers(src, ids[i])
        if left:
            raise AssertionError(f"round {i + 1}: left on {src.name}: {left}")
        results.append(result)
    LabContainer(nodes[count % 2].containerd, ids[count], ZEROPOD_RUNTIME).remove()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with pipe_max_size_for_criu(), two_nodes() as nodes:
        results = rounds(nodes, args.mib, args.rounds)
    print(f"live migration through the shims, {args.mib} MiB, {len(results)} rounds "
          "(median, min-max)")
    for name in ("freeze_s", "total_s", "paused_to_ready_s", "pull_s"):
        values = [getattr(r, name) * 1000 for r in results]
        print(f"  {name[:-2]:16} {statistics.median(values):8.1f} ms "
              f"({min(values):.1f}-{max(values):.1f})")
    print(f"  image (no memory) {statistics.median(r.image_bytes for r in results) / 1e6:.2f} MB,"
          f" pages through the proxies "
          f"{statistics.median(r.pages_bytes for r in results) / 1e6:.1f} MB per round")
    print(json.dumps({"paused_at": results[-1].paused_at,
                      "restored_at": results[-1].restored_at}))


if __name__ == "__main__":
    main()
