"""Throughput of the node-to-node image service: one pull over loopback with mutual TLS.

Run from the repository root (no root needed)::

    .venv/bin/python plugins/migration/bench.py [--mib 256] [--rounds 3] [--json F]

Two kinds of image of ``--mib`` MiB, like CRIU page images: ``random`` (memory full of random
bytes: zstd cannot shrink it, so ``auto`` must send it raw) and ``sparse`` (pages that are
mostly zero with some text, as an idle runtime's heap often is). Each is pulled with
compression ``auto``, ``zstd`` (forced) and ``none``; the table shows the median over the
rounds of MB/s of image bytes (uncompressed, MB = 10^6 bytes), the bytes on the wire, and the
wall time from the call to the verified image in place. Server and client share the machine's
2 cores, so this is a lower bound for two real nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from zeropod_migration.service import ImageServer, pull_image
from zeropod_migration.tls import ClusterCA


def _make(root: Path, kind: str, mib: int) -> None:
    snapshot = root / kind / "snapshot"
    snapshot.mkdir(parents=True)
    with open(snapshot / "pages-1.img", "wb") as out:
        for _ in range(mib):
            if kind == "random":
                out.write(os.urandom(1 << 20))
            else:
                page = bytearray(4096)
                page[:64] = b"heap object with a little text in an otherwise zeroed page."[:64]
                out.write(bytes(page) * 256)
    (snapshot / "core-1.img").write_bytes(b"\x01" * 20_000)


async def _run(mib: int, rounds: int) -> list[dict[str, object]]:
    ca = ClusterCA.create()
    source, target = ca.issue("source", ["127.0.0.1"]), ca.issue("target", ["127.0.0.1"])
    work = Path(tempfile.mkdtemp(prefix="zeropod-migration-bench-"))
    rows: list[dict[str, object]] = []
    try:
        for kind in ("random", "sparse"):
            _make(work / "src", kind, mib)
        server = ImageServer(work / "src", source, "127.0.0.1:0")
        await server.start()
        try:
            for kind in ("random", "sparse"):
                for compression in ("auto", "zstd", "none"):
                    speeds, seconds, wire = [], [], 0
                    for i in range(rounds):
                        dest = work / "dst" / f"{kind}-{compression}-{i}" / "snapshot"
                        result = await pull_image(f"127.0.0.1:{server.port}", target, kind,
                                                  dest, compression=compression)
                        speeds.append(result.mb_per_s)
                        seconds.append(result.seconds)
                        wire = result.wire_bytes
                        shutil.rmtree(dest.parent)
                    rows.append({"image": kind, "compression": compression, "mib": mib,
                                 "mb_per_s": round(statistics.median(speeds), 1),
                                 "seconds": round(statistics.median(seconds), 3),
                                 "wire_mib": round(wire / (1 << 20), 1)})
        finally:
            await server.stop(None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="image size (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="pulls per row (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = asyncio.run(_run(args.mib, args.rounds))
    print(f"{'image':8} {'compression':11} {'MiB':>5} {'MB/s':>8} {'seconds':>8} {'wire MiB':>9}")
    for row in rows:
        print(f"{row['image']:8} {row['compression']:11} {row['mib']:>5} {row['mb_per_s']:>8} "
              f"{row['seconds']:>8} {row['wire_mib']:>9}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
