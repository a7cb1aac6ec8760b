"""Checkpoint and restore timings of the criu plugin, with and without each of its knobs.

Run as root from the repository root::

    .venv/bin/python plugins/criu/bench.py [--cycles 10] [--image busybox|counter] [--json F]

Configurations (one container each, in its own pod/client namespaces, run round-robin so that
machine noise hits them alike):

* ``zeropod``: the plugin's defaults: cgroup pre-freeze, ``network-lock skip``, kdat cache;
* ``no-prefreeze``, ``nft-lock`` (``network-lock nftables``), ``no-kdat``: one knob off;
* ``none``: all three off.

"checkpoint" is :meth:`CriuCheckpointer.checkpoint`'s wall time ("CRIU freezing" the part CRIU
spent freezing, from its stats); "restore→HTTP" runs from the
start of :meth:`CriuCheckpointer.restore` until a complete HTTP response reached a client in
the pod's client namespace (non-blocking connects: refused ones retried after 0.2 ms, dropped
SYNs after 2 ms); "runc restore" is the restore call itself. Medians (min-max).

Without kdat, the bench moves ``/run/criu.kdat`` aside and puts a directory at
``/run/criu.kdat.tmp`` (so CRIU can neither load nor save a cache), and puts both back after
every such cycle and at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

from zpcriu_lab import MISSING, Lab, LabContainer, Prober, remove_rootfs_cache

from zeropod_criu.checkpointer import CriuCheckpointer
from zeropod_criu.criuconf import CriuConfig, name_config_in_spec, write_config
from zeropod_criu.kdat import RUN_DIR, ensure_kdat_cache
from zeropod_criu.node import NodeKey, find_criu
from zeropod_criu.settings import CriuSettings


@dataclass(frozen=True)
class Config:
    name: str
    prefreeze: bool = True
    network_lock: str = "skip"
    kdat: bool = True


CONFIGS = [
    Config("zeropod"),
    Config("no-prefreeze", prefreeze=False),
    Config("nft-lock", network_lock="nftables"),
    Config("no-kdat", kdat=False),
    Config("none", prefreeze=False, network_lock="nftables", kdat=False),
]


@dataclass
class Samples:
    checkpoint: list[float] = field(default_factory=list)
    restore_http: list[float] = field(default_factory=list)
    runc_restore: list[float] = field(default_factory=list)
    freezing_time: list[float] = field(default_factory=list)


@contextlib.contextmanager
def kdat_cache(enabled: bool) -> Iterator[None]:
    """With ``enabled`` False, hide CRIU's cache and block it from saving a new one."""
    if enabled:
        yield
        return
    cache, aside = RUN_DIR / "criu.kdat", RUN_DIR / "criu.kdat.zeropod-bench"
    blocker = RUN_DIR / "criu.kdat.tmp"
    moved = made_blocker = False
    try:
        if cache.exists():
            cache.rename(aside)
            moved = True
        if not blocker.exists():
            blocker.mkdir()
            made_blocker = True
        yield
    finally:
        if made_blocker:
            with contextlib.suppress(OSError):
                blocker.rmdir()
        if moved:
            aside.rename(cache)


def _fmt(values: list[float], scale: float = 1e3) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values) * scale:6.1f} "
            f"({min(values) * scale:.0f}-{max(values) * scale:.0f})")


async def _cycle(lab: Lab, container: LabContainer, checkpointer: CriuCheckpointer,
                 samples: Samples) -> None:
    outcome = await checkpointer.checkpoint()
    if not outcome.ok:
        raise RuntimeError(f"checkpoint failed: {outcome.error}\n{outcome.log_tail}")
    samples.checkpoint.append(outcome.duration_s)
    samples.freezing_time.append(outcome.stats.get("freezing_time", 0) / 1e6)
    await asyncio.sleep(0.05)  # let the reaper collect the dumped init, as in real life
    prober = Prober(container)
    prober.start()
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    samples.restore_http.append(await prober.wait())
    samples.runc_restore.append(restored.outcome.duration_s)
    await asyncio.sleep(0.05)


async def run(cycles: int, image: str) -> dict[str, Samples]:
    criu = find_criu()
    ensure_kdat_cache(criu, NodeKey.current(criu))
    tmp = Path(tempfile.mkdtemp(prefix="zpcriu-bench-"))
    lab = Lab.create(tmp)
    results = {c.name: Samples() for c in CONFIGS}
    try:
        setups = []
        for config in CONFIGS:
            settings = CriuSettings(image_root=tmp / config.name / "images",
                                    prefreeze=config.prefreeze, kdat_cache=False,
                                    network_lock=config.network_lock)
            write_config(settings.criu_config, CriuConfig(network_lock=config.network_lock))
            container = await lab.start(image, modify_spec=lambda info, spec, s=settings:
                                        name_config_in_spec(spec, s.criu_config,
                                                            container_id=info.id))
            await container.wait_http()
            setups.append((config, container,
                           CriuCheckpointer(container.info, container.runtime, {},
                                            settings=settings)))
        # One warm-up cycle each (page cache, first cgroup creation), not counted.
        for config, container, checkpointer in setups:
            with kdat_cache(config.kdat):
                await _cycle(lab, container, checkpointer, Samples())
        for i in range(cycles):
            for config, container, checkpointer in setups:
                with kdat_cache(config.kdat):
                    await _cycle(lab, container, checkpointer, results[config.name])
            print(f"cycle {i + 1}/{cycles} done, loadavg {os.getloadavg()[0]:.2f}",
                  file=sys.stderr)
    finally:
        await lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
        remove_rootfs_cache()
    print(f"\n{image}: medians of {cycles} cycles in ms (min-max), "
          f"loadavg {os.getloadavg()[0]:.2f}")
    print(f"{'config':14} {'prefreeze':>9} {'lock':>8} {'kdat':>5} | {'checkpoint':>16} "
          f"{'CRIU freezing':>16} | {'restore→HTTP':>16} {'runc restore':>16}")
    for config in CONFIGS:
        s = results[config.name]
        print(f"{config.name:14} {config.prefreeze!s:>9} {config.network_lock:>8} "
              f"{config.kdat!s:>5} | {_fmt(s.checkpoint):>16} {_fmt(s.freezing_time):>16} | "
              f"{_fmt(s.restore_http):>16} {_fmt(s.runc_restore):>16}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--image", choices=("busybox", "counter"), default="busybox")
    parser.add_argument("--json", type=Path, default=None, help="write the raw samples here")
    args = parser.parse_args()
    if MISSING:
        print(f"cannot run: {MISSING}", file=sys.stderr)
        return 2
    results = asyncio.run(run(args.cycles, args.image))
    if args.json is not None:
        args.json.write_text(json.dumps({name: vars(s) for name, s in results.items()},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
