"""Live migration's building blocks with real runc and CRIU, and the app's freeze time.

Run as root from the repository root::

    .venv/bin/python plugins/migration/live_bench.py [--mib 256] [--rounds 3]

No containerd and no shim (the criu plugin does not dump lazily yet): two runc roots stand
for two nodes, each container in its own pod/client namespaces. Per round:

1. source: the counter app with ``--mib`` MiB of random memory answers a few requests;
2. ``runc checkpoint --lazy-pages --page-server 127.0.0.1:PS``: CRIU dumps everything but
   the memory, signals on the status fd and waits with the pages in the frozen process;
3. the memory-less image is pulled over the mutual-TLS image service;
4. target: ``criu lazy-pages`` fetches pages through :class:`TargetProxy` (plain, loopback)
   -> :class:`SourceProxy` (mutual TLS 1.3) -> CRIU's page server, and ``runc restore
   --lazy-pages`` starts the app while pages stream in;
5. the first request on the target must continue the counter, ``/crc`` must check all the
   memory (every page crossed the proxies), and the source's checkpoint must have ended.

"freeze" runs from the start of the dump to the first response on the target (the app
answers nobody in between); "total" until the source has handed over every page.

CRIU's page server sizes its pipes up to 4 MiB: the script raises
``/proc/sys/fs/pipe-max-size`` to that for its run when it is lower (root without
CAP_SYS_RESOURCE cannot exceed it; CRIU then fails with ``page-pipe: tee: 65536: Operation
not permitted``) and puts the old value back. ``--direct`` leaves the proxies out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeropod_core.lab.http import HttpError, http_get
from zeropod_core.lab.images import counter_app_spec, layer_tar
from zeropod_core.lab.netns import PodNetwork
from zeropod_migration.pageproxy import SourceProxy, TargetProxy
from zeropod_migration.service import ImageServer, pull_image
from zeropod_migration.tls import ClusterCA

CRIU_CONFIG = "network-lock skip\nmanage-cgroups=ignore\ntcp-close\nskip-in-flight\n"
PORT = 8080


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rootfs(work: Path) -> Path:
    root = work / "rootfs"
    root.mkdir()
    with tarfile.open(fileobj=io.BytesIO(layer_tar(counter_app_spec()))) as tar:
        tar.extractall(root)  # our own image, built by the project
    return root


def _bundle(folder: Path, rootfs: Path, net: PodNetwork, mib: int) -> Path:
    bundle = folder / "bundle"
    bundle.mkdir(parents=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    image = counter_app_spec()
    spec["process"].update(terminal=False, args=image.cmd, cwd="/",
                           env=[*image.env, f"APP_ALLOC_MIB={mib}"])
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["linux"]["cgroupsPath"] = f"/zplive-{folder.name}-{secrets.token_hex(3)}"
    spec["linux"]["namespaces"] = [
        {"type": "network", "path": str(net.pod_path)} if ns["type"] == "network" else ns
        for ns in spec["linux"]["namespaces"]]
    (folder / "criu.conf").write_text(CRIU_CONFIG)
    spec["annotations"] = {"org.criu.config": str(folder / "criu.conf")}
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _pipes() -> tuple[list[int], list[int]]:
    """(the process's ends, ours) of stdin/stdout/stderr pipes (CRIU wants pipes)."""
    pairs = [os.pipe() for _ in range(3)]
    theirs = [pairs[0][0], pairs[1][1], pairs[2][1]]
    ours = [pairs[0][1], pairs[1][0], pairs[2][0]]
    for fd in ours[1:]:
        os.set_blocking(fd, False)
    return theirs, ours


def _runc(root: Path, *args: str, fds: list[int] | None = None,
          pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    stdio: dict[str, Any] = {}
    if fds is not None:
        stdio = {"stdin": fds[0], "stdout": fds[1], "stderr": fds[2]}
    return subprocess.Popen(["runc", "--root", str(root), *args], pass_fds=pass_fds, **stdio)


def _wait_http(net: PodNetwork, path: str = "/", deadline_s: float = 30.0) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while True:
        try:
            body: dict[str, Any] = http_get(net.client_path, net.pod_ip, PORT, path,
                                            timeout=60).json()
            return body
        except HttpError:
            if time.monotonic() > end:
                raise
            time.sleep(0.002)


@dataclass
class Round:
    freeze_s: float
    total_s: float
    dump_ready_s: float
    pull_s: float
    restore_s: float
    image_bytes: int
    pages_bytes: int


async def one_round(work: Path, rootfs: Path, mib: int, ca: ClusterCA, *,
                    direct: bool = False) -> Round:
    cid = f"zplive-{secrets.token_hex(3)}"
    src_dir, dst_dir = work / "a", work / "b"
    nets = [PodNetwork.create("zpla"), PodNetwork.create("zplb")]
    procs: list[subprocess.Popen[bytes]] = []
    roots = [src_dir / "runc", dst_dir / "runc"]
    try:
        bundle_a = _bundle(src_dir, rootfs, nets[0], mib)
        bundle_b = _bundle(dst_dir, rootfs, nets[1], mib)
        theirs, _ours_a = _pipes()
        run = _runc(roots[0], "run", "--detach", "--bundle", str(bundle_a), cid, fds=theirs)
        run.wait()
        for fd in theirs:
            os.close(fd)
        count = 0
        for _ in range(3):
            count = int(await asyncio.to_thread(lambda: _wait_http(nets[0])["count"]))

        # source: lazy dump, pages stay in the frozen process behind CRIU's page server
        image_a, work_a = src_dir / "i" / cid / "snapshot", src_dir / "work"
        image_a.mkdir(parents=True)
        ps_port = _free_port()
        status_r, status_w = os.pipe()
        started = time.monotonic()
        dump = _runc(roots[0], "checkpoint", "--lazy-pages", "--page-server",
                     f"127.0.0.1:{ps_port}", "--status-fd", str(status_w), "--image-path",
                     str(image_a), "--work-path", str(work_a), cid, pass_fds=(status_w,))
        procs.append(dump)
        os.close(status_w)
        ready = await asyncio.to_thread(os.read, status_r, 1)
        os.close(status_r)
        if ready != b"\0":
            raise RuntimeError(f"lazy dump failed: {dump.wait()}; see {work_a}/dump.log")
        dump_ready = time.monotonic()

        # the memory-less image travels over the image service, the pages over the proxies
        node_a, node_b = ca.issue("node-a", ["127.0.0.1"]), ca.issue("node-b", ["127.0.0.1"])
        server = ImageServer(src_dir / "i", node_a, "127.0.0.1:0")
        await server.start()
        image_b = dst_dir / "i" / cid / "snapshot"
        pulled = await pull_image(f"127.0.0.1:{server.port}", node_b, cid, image_b,
                                  compression="none")
        await server.stop(None)
        pull_done = time.monotonic()
        source_proxy = SourceProxy(node_a, upstream=("127.0.0.1", ps_port),
                                   listen=("127.0.0.1", 0))
        await source_proxy.start()
        target_proxy = TargetProxy(node_b, remote=("127.0.0.1", source_proxy.listen_port))
        tp_port = await target_proxy.start()
        work_b = dst_dir / "work"
        work_b.mkdir()
        lazy = subprocess.Popen(  # noqa: ASYNC220 - started, never waited for here
            ["criu", "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port",
             str(ps_port if direct else tp_port), "--images-dir", str(image_b),
             "--work-dir", str(work_b), "-o", "lazy-pages.log", "-v4"])
        procs.append(lazy)
        while not (work_b / "lazy-pages.socket").exists():
            if lazy.poll() is not None:
                raise RuntimeError(f"criu lazy-pages exited {lazy.returncode}")
            await asyncio.sleep(0.001)
        theirs, _ours_b = _pipes()
        restore = _runc(roots[1], "restore", "--detach", "--lazy-pages", "--image-path",
                        str(image_b), "--work-path", str(work_b), "--bundle", str(bundle_b),
                        cid, fds=theirs)
        code = await asyncio.to_thread(restore.wait)
        for fd in theirs:
            os.close(fd)
        if code != 0:
            tail = "".join((work_b / "restore.log").read_text().splitlines(True)[-6:])
            tail += "".join((work_b / "lazy-pages.log").read_text().splitlines(True)[-5:])
            tail += "".join(line for line in (work_a / "dump.log").read_text().splitlines(True)
                            if "page" in line.lower() or "rror" in line)[-3000:]
            raise RuntimeError(f"runc restore --lazy-pages exited {code}:\n{tail}")
        restored = time.monotonic()
        first = await asyncio.to_thread(lambda: _wait_http(nets[1]))
        answered = time.monotonic()
        if first["count"] != count + 1:
            raise AssertionError(f"counter {first['count']} after {count}: state lost")
        crc = await asyncio.to_thread(lambda: _wait_http(nets[1], "/crc"))
        if crc != {"crc_ok": True, "mib": mib}:
            raise AssertionError(f"memory differs after the migration: {crc}")
        code = await asyncio.to_thread(dump.wait, 120)
        done = time.monotonic()
        if code != 0:
            raise RuntimeError(f"the lazy dump ended with {code}")
        await asyncio.to_thread(lazy.wait, 60)
        await target_proxy.close()
        await source_proxy.close()
        return Round(freeze_s=answered - started, total_s=done - started,
                     dump_ready_s=dump_ready - started, pull_s=pull_done - dump_ready,
                     restore_s=restored - pull_done, image_bytes=pulled.raw_bytes,
                     pages_bytes=source_proxy.bytes_down)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for root in roots:
            subprocess.run(  # noqa: ASYNC221 - clean-up, short
                ["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
        for net in nets:
            net.delete()
        shutil.rmtree(src_dir, ignore_errors=True)
        shutil.rmtree(dst_dir, ignore_errors=True)


PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
CRIU_PIPE_BYTES = 4 << 20  # CRIU's page server sizes its pipes up to 1024 pages


def raise_pipe_max_size() -> int | None:
    """CRIU's lazy page server needs pipes of 4 MiB; above ``pipe-max-size`` (1 MiB by
    default) only CAP_SYS_RESOURCE may make them, which root lacks on these VMs. Returns the
    old value to put back, None when nothing changed."""
    old = int(PIPE_MAX_SIZE.read_text())
    if old >= CRIU_PIPE_BYTES:
        return None
    PIPE_MAX_SIZE.write_text(str(CRIU_PIPE_BYTES))
    print(f"raised {PIPE_MAX_SIZE} from {old} to {CRIU_PIPE_BYTES} for this run")
    return old


async def run(mib: int, rounds: int, direct: bool = False) -> list[Round]:
    work = Path(tempfile.mkdtemp(prefix="zeropod-live-"))
    try:
        rootfs = _rootfs(work)
        ca = ClusterCA.create()
        return [await one_round(work, rootfs, mib, ca, direct=direct) for _ in range(rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--direct", action="store_true",
                        help="criu lazy-pages talks to the page server directly (no proxies)")
    args = parser.parse_args()
    old_pipe_max = raise_pipe_max_size()
    try:
        results = asyncio.run(run(args.mib, args.rounds, args.direct))
    finally:
        if old_pipe_max is not None:
            PIPE_MAX_SIZE.write_text(str(old_pipe_max))
    print(f"live migration, {args.mib} MiB, {len(results)} rounds (median, min-max)")
    for name in ("freeze_s", "total_s", "dump_ready_s", "pull_s", "restore_s"):
        values = [getattr(r, name) * 1000 for r in results]
        print(f"  {name[:-2]:12} {statistics.median(values):8.1f} ms "
              f"({min(values):.1f}-{max(values):.1f})")
    print(f"  image (no memory) {results[0].image_bytes / 1e6:.2f} MB, "
          f"pages through the proxies {results[0].pages_bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
