#!/usr/bin/env python3
"""Benchmark of the eBPF redirector's control path (needs root; run with the project venv).

    .venv/bin/python plugins/ebpf_redirect/bench.py [--runs 10]

Prints, as medians (min-max) over ``--runs``:

* loader helper wall time per fresh process: first load into an empty pin directory, a
  re-attach that reuses the pins, and a detach; plus the loader's own timings and peak RSS;
* in-process load time: libbpf open + load of the object (what the helper spends in libbpf);
* shim side: opening a pod's pinned maps, and the latency of single map operations through
  the ctypes ``bpf(2)`` wrapper; the wall time of importing the shim plugin.

Everything runs in namespaces and a bpffs that the benchmark creates and removes (the test
lab in ``tests/zpebpf_lab.py``); the only traffic is none.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "tests"))

from zpebpf_lab import MISSING, Lab  # noqa: E402

from zeropod_core.model import ContainerInfo  # noqa: E402
from zeropod_ebpf_redirect import bpffs  # noqa: E402
from zeropod_ebpf_redirect.libbpf import BpfObject  # noqa: E402
from zeropod_ebpf_redirect.loader import DEFAULT_OBJECT  # noqa: E402
from zeropod_ebpf_redirect.maps import PodMaps  # noqa: E402
from zeropod_ebpf_redirect.pod import Pod  # noqa: E402
from zeropod_ebpf_redirect.settings import PluginSettings, TrackerFilter  # noqa: E402
from zeropod_ebpf_redirect.tracker import EbpfActivityTracker  # noqa: E402


def _fmt(values: list[float], unit: str) -> str:
    return (f"{statistics.median(values):8.3f} {unit}  ({min(values):.3f}-{max(values):.3f}, "
            f"n={len(values)})")


def _row(name: str, values: list[float], unit: str) -> None:
    print(f"  {name:<44} {_fmt(values, unit)}")


def _timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return (time.perf_counter() - start) * 1e3


def _per_op_us(func: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        func()
    return (time.perf_counter() - start) / ops * 1e6


def bench_loader(lab: Lab, runs: int) -> None:
    print("loader helper (python -m zeropod_ebpf_redirect.loader), fresh process each run")
    fresh_wall, reuse_wall, detach_wall = [], [], []
    internal: dict[str, list[float]] = {}
    for i in range(runs):
        pin = lab.pin_dir(f"bench{i}")
        start = time.perf_counter()
        result = lab.loader(pin_dir=pin)
        fresh_wall.append((time.perf_counter() - start) * 1e3)
        for key, value in result["timings_ms"].items():
            internal.setdefault(key, []).append(float(value))
        reuse_wall.append(_timed(functools.partial(lab.loader, pin_dir=pin)))
        detach_wall.append(_timed(functools.partial(lab.loader, "--detach", pin_dir=pin)))
    _row("attach, first load (wall)", fresh_wall, "ms")
    for key in ("load", "import_pyroute2", "attach", "pin", "total"):
        if key in internal:
            _row(f"  inside the helper: {key}", internal[key], "ms")
    _row("attach, pins reused (wall)", reuse_wall, "ms")
    _row("detach (wall)", detach_wall, "ms")
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  {'peak RSS of a helper process':<44} {rss_mb:8.1f} MB")


def _load_in_process(pin: Path) -> None:
    with BpfObject(DEFAULT_OBJECT, pin_root=pin) as obj:
        obj.load()


def bench_in_process(lab: Lab, runs: int) -> None:
    print("in-process libbpf load (bpf_object__open_file + bpf_object__load, maps pinned)")
    values = []
    for i in range(runs):
        pin = lab.pin_dir(f"inproc{i}")
        pin.mkdir()
        values.append(_timed(functools.partial(_load_in_process, pin)))
        bpffs.remove_pins(pin)
    _row("open + load", values, "ms")


def bench_shim_side(lab: Lab, runs: int) -> None:
    print("shim side (ctypes bpf(2) on the pinned maps)")
    lab.loader()
    opens = []
    for _ in range(max(runs, 20)):
        start = time.perf_counter()
        maps = PodMaps.open(lab.pin_dir())
        opens.append((time.perf_counter() - start) * 1e6)
        maps.close()
    _row("open all 7 pinned maps", opens, "us")
    ops = 2000
    with PodMaps.open(lab.pin_dir()) as maps:
        maps.activity.update(8080, 0)
        rows: dict[str, list[float]] = {}
        for _ in range(runs):
            for name, func in (
                ("redirects.update (on)", lambda: maps.redirects.update(8080, 32080)),
                ("redirects.lookup", lambda: maps.redirects.lookup(8080)),
                ("redirects.delete (off)", lambda: maps.redirects.delete(8080)),
                ("activity.lookup", lambda: maps.activity.lookup(8080)),
                ("stats (per-CPU) lookup", lambda: maps.stats.lookup(0)),
            ):
                rows.setdefault(name, []).append(_per_op_us(func, ops))
        for name, values in rows.items():
            _row(f"{name}, per op", values, "us")

    pod = Pod("bench-pod", lab.pod_path, PluginSettings(bpf_root=lab.bpffs))
    tracker = EbpfActivityTracker(pod, ContainerInfo(id="bench", bundle="/", namespace="bench",
                                                     netns_path=lab.pod_path), TrackerFilter())
    try:
        asyncio.run(tracker.track([8080, 8081, 8443]))
        _row("tracker.last_activity() (3 ports)",
             [_per_op_us(tracker.last_activity, ops) for _ in range(runs)], "us")
    finally:
        if pod.maps is not None:
            pod.maps.close()
            pod.maps = None

    # What the plugin adds to a shim, which imports asyncio and zeropod_core anyway.
    shim_base = "import asyncio, logging, zeropod_core.plugins, zeropod_core.providers"
    walls, base = [], []
    for _ in range(runs):
        base.append(_timed(functools.partial(
            subprocess.run, [sys.executable, "-c", shim_base], check=True)))
        walls.append(_timed(functools.partial(subprocess.run, [
            sys.executable, "-c", shim_base + "; import zeropod_ebpf_redirect.shim_plugin"],
            check=True)))
    _row("shim baseline: asyncio + zeropod_core (wall)", base, "ms")
    _row("  + import the plugin's shim module (wall)", walls, "ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if MISSING:
        print(f"skipped: {MISSING}", file=sys.stderr)
        return 2
    print(f"object {DEFAULT_OBJECT} ({DEFAULT_OBJECT.stat().st_size} bytes), "
          f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="zpebpf-bench-") as tmp:
        lab = Lab.create(Path(tmp))
        try:
            bench_loader(lab, args.runs)
            bench_in_process(lab, args.runs)
            bench_shim_side(lab, args.runs)
        finally:
            lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
