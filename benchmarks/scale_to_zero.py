"""Benchmark: checkpoint, wake-up and cold start through zeropod, against plain runc restore.

For the busybox httpd and for the Python counter app holding 100 MiB and 1 GiB, in one run:

* **checkpoint**: the duration the shim logs for each scale-down (freeze + dump);
* **wake**: client connect -> full HTTP response of the first request to the sleeping
  container, through containerd, the eBPF redirect, the activator and the criu plugin;
* **wake path breakdown** (from the shim's log of each wake): activator accept -> request
  read (``peek``), the criu plugin's restore, the rest of the scaler's restore (new PID
  adopted, redirect switched off), the activator's connect to the app (retries while it is
  refused), and what is left of the client's time (SYN/accept, proxying the answer);
* **memory check**: after every wake of the Python apps, ``GET /crc`` checksums all their
  memory (it must match the checksum taken at start); their scale-down durations are 2 s and
  5 s, longer than that request (which sends no packets while it runs) takes;
* **baseline**: the same app checkpointed and restored by plain ``runc checkpoint`` /
  ``runc restore -d`` with CRIU's default options (only ``network-lock nftables``, since there
  is no iptables; no pre-freeze, no kdat cache), timed from the restore's start to the first
  full HTTP response;
* **cold start**: zeropod with ``disable-checkpointing`` on an app that needs 2 s to start:
  client connect -> full response;
* **image size** and the **shim's RSS** while running and while scaled down.

Medians and p95. The criu plugin's mode comes from ``ZEROPOD_CRIU_MODE`` (default
``direct``; ``runc`` measures the fallback). Needs root and the stack from scripts/setup::

    .venv/bin/python benchmarks/scale_to_zero.py [--cycles 10] [--cold-cycles 3]
        [--workloads busybox,100,1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "criu"))
sys.path.insert(0, str(REPO / "plugins" / "criu" / "tests"))

from bench import kdat_cache  # type: ignore[import-not-found]  # noqa: E402
from zpcriu_lab import (  # type: ignore[import-not-found]  # noqa: E402
    Lab,
    Prober,
    remove_rootfs_cache,
)

from zeropod_core.lab import images  # noqa: E402
from zeropod_core.lab.containerd import (  # noqa: E402
    ZEROPOD_RUNTIME,
    PrivateContainerd,
    lab_base,
)
from zeropod_core.lab.http import HttpError, http_get, wait_for_http  # noqa: E402
from zeropod_core.lab.netns import PodNetwork, parent_pid  # noqa: E402


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    image: str  # lab image name
    lab_image: str  # zpcriu_lab image key
    env: dict[str, str]
    slow_start_command: list[str] | None  # None: APP_START_DELAY
    verify_memory: bool = False  # GET /crc after every wake
    # idle time before a scale-down: longer than the /crc request takes, which sends no
    # packets while it checksums (a scale-down in the middle would cut it off)
    scaledown: str = "1s"
    # the cold start of the 1 GiB app is not "2 s": filling and checksumming 1 GiB takes
    # seconds more, past the activator's 5 s connect timeout on a loaded machine
    cold_start: bool = True


WORKLOADS = [
    Workload("busybox", "busybox httpd", images.BUSYBOX_HTTPD, "busybox", {},
             ["sh", "-c", "sleep 2; exec /bin/httpd -f -p 8080 -h /www"]),
    Workload("100", "python 100 MiB", images.COUNTER_APP, "counter", {"APP_ALLOC_MIB": "100"},
             None, verify_memory=True, scaledown="2s"),
    Workload("1024", "python 1 GiB", images.COUNTER_APP, "counter", {"APP_ALLOC_MIB": "1024"},
             None, verify_memory=True, scaledown="5s", cold_start=False),
]
BREAKDOWN = ("peek", "restore", "adopt+redirect off", "connect", "rest")
# the direct dump's phases the criu plugin logs, then the scaler's own part of the scale-down
CHECKPOINT_BREAKDOWN = ("prepare", "freeze", "mounts", "criu", "stats", "scaler")


@dataclass
class Results:
    checkpoint_s: list[float] = field(default_factory=list)
    wake_s: list[float] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)
    image_bytes: list[int] = field(default_factory=list)
    rss_running_kib: list[int] = field(default_factory=list)
    rss_asleep_kib: list[int] = field(default_factory=list)
    breakdown_s: dict[str, list[float]] = field(
        default_factory=lambda: {part: [] for part in BREAKDOWN})
    checkpoint_breakdown_s: dict[str, list[float]] = field(
        default_factory=lambda: {part: [] for part in CHECKPOINT_BREAKDOWN})
    memory_checks: int = 0
    memory_failures: int = 0
    lazy_restores: int = 0
    restore_paths: set[str] = field(default_factory=set)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _events(log: Path, msg: str, logger: str | None = None,
            container_id: str | None = None) -> list[dict[str, Any]]:
    """The shims' JSON log lines with ``msg`` (and ``logger``, ``container``), in order."""
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{msg}"' in line:
            entry = json.loads(line)
            if entry.get("msg") != msg or (logger and entry.get("logger") != logger):
                continue
            if container_id is None or entry.get("container") == container_id:
                events.append(entry)
    return events


def _breakdown(log: Path, container_id: str, wakes: list[float], results: Results) -> None:
    """Split each counted wake into the parts the shim logged (see the module doc)."""
    waking = _events(log, "proxying a waking connection", "zeropod.activator")[1:]
    restores = _events(log, "restored", "zeropod.criu.checkpointer", container_id)[1:]
    for wake, proxy, restore in zip(wakes, waking, restores, strict=False):
        plugin = float(restore["duration_ms"]) / 1e3
        peek, waited = float(proxy["peek_ms"]) / 1e3, float(proxy["restore_wait_ms"]) / 1e3
        connect = float(proxy["connect_ms"]) / 1e3
        parts = {"peek": peek, "restore": plugin, "adopt+redirect off": max(0.0, waited - plugin),
                 "connect": connect, "rest": max(0.0, wake - peek - waited - connect)}
        for part, value in parts.items():
            results.breakdown_s[part].append(value)
        results.restore_paths.add(str(restore.get("path")))
        results.lazy_restores += bool(restore.get("lazy"))


def _checkpoint_breakdown(log: Path, container_id: str, results: Results) -> None:
    """Split each counted scale-down into the criu plugin's logged phases and the rest."""
    dumps = _events(log, "checkpointed", "zeropod.criu.checkpointer", container_id)[1:]
    scaled = _events(log, "scaled down", container_id=container_id)[1:]
    for dump, scale_down in zip(dumps, scaled, strict=False):
        phases = {k: float(v) / 1e3 for k, v in (dump.get("phases_ms") or {}).items()}
        plugin = float(dump["duration_ms"]) / 1e3
        for part in CHECKPOINT_BREAKDOWN[:-2]:
            if part in phases:
                results.checkpoint_breakdown_s[part].append(phases[part])
        if phases:
            results.checkpoint_breakdown_s["stats"].append(max(0.0, plugin - sum(phases.values())))
        results.checkpoint_breakdown_s["scaler"].append(
            max(0.0, float(scale_down["duration_s"]) - plugin))


def zeropod_cycles(workload: Workload, cycles: int, cold_cycles: int) -> Results:
    results = Results()
    daemon = PrivateContainerd.start(lab_base("zeropod-bench"))
    net = PodNetwork.create("zpbench")
    try:
        daemon.import_image(images.build(images.busybox_httpd_spec()))
        daemon.import_image(images.build(images.counter_app_spec()))
        container = daemon.run(workload.image, "bench-wake", runtime=ZEROPOD_RUNTIME,
                               netns=net.pod_path, env=workload.env,
                               annotations={"zeropod.ctrox.dev/scaledown-duration":
                                            workload.scaledown})
        wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
        for cycle in range(cycles + 1):  # the first cycle warms caches and is not counted
            shim = parent_pid(net.pod_pids()[0])
            running_rss = _rss_kib(shim)
            net.wait_asleep(60.0)
            time.sleep(0.2)
            asleep_rss = _rss_kib(shim)
            woken = http_get(net.client_path, net.pod_ip, 8080, timeout=30)
            if workload.verify_memory:
                results.memory_checks += 1
                try:
                    crc = http_get(net.client_path, net.pod_ip, 8080, "/crc", timeout=60).json()
                except HttpError as exc:
                    print(f"memory check after wake {cycle} failed: {exc}", file=sys.stderr)
                    crc = {}
                results.memory_failures += crc.get("crc_ok") is not True
            if cycle:
                results.wake_s.append(woken.elapsed_s)
                results.rss_running_kib.append(running_rss)
                results.rss_asleep_kib.append(asleep_rss)
        log = daemon.base / "containerd.log"
        for event in _events(log, "scaled down", container_id="bench-wake")[1:]:
            results.checkpoint_s.append(float(event["duration_s"]))
            results.image_bytes.append(int(event["image_bytes"]))
        _breakdown(log, "bench-wake", results.wake_s, results)
        _checkpoint_breakdown(log, "bench-wake", results)
        container.remove()
        if workload.cold_start:
            env = dict(workload.env)
            command: list[str] = workload.slow_start_command or []
            if not command:
                env["APP_START_DELAY"] = "2"
            cold = daemon.run(workload.image, "bench-cold", runtime=ZEROPOD_RUNTIME,
                              netns=net.pod_path, env=env, command=command,
                              annotations={"zeropod.ctrox.dev/scaledown-duration": "1s",
                                           "zeropod.ctrox.dev/disable-checkpointing": "true"})
            wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
            for _ in range(cold_cycles):
                net.wait_asleep(60.0)
                try:
                    results.cold_s.append(
                        http_get(net.client_path, net.pod_ip, 8080, timeout=30).elapsed_s)
                except HttpError as exc:
                    print(f"cold start failed: {exc}", file=sys.stderr)
            cold.remove()
    finally:
        daemon.stop()
        net.delete()
        shutil.rmtree(daemon.base, ignore_errors=True)
    return results


async def baseline_cycles(workload: Workload, cycles: int) -> list[float]:
    """Plain runc checkpoint/restore with CRIU's defaults (only the nftables lock)."""
    tmp = Path(tempfile.mkdtemp(prefix="zeropod-bench-baseline-"))
    lab = Lab.create(tmp)
    samples = []
    try:
        config = tmp / "criu-default.conf"
        config.write_text("network-lock nftables\n")
        container = await lab.start(workload.lab_image, env=[f"{k}={v}" for k, v in
                                                             workload.env.items()],
                                    annotations={"org.criu.config": str(config)})
        await container.wait_http(deadline_s=30)
        runtime = container.runtime
        for cycle in range(cycles + 1):
            image, work = tmp / f"img-{cycle}", tmp / f"work-{cycle}"
            image.mkdir()
            work.mkdir()
            with kdat_cache(False):
                dumped = await runtime.runc("checkpoint", "--image-path", str(image),
                                            "--work-path", str(work), container.id)
                if dumped.returncode:
                    raise RuntimeError(f"baseline checkpoint failed: {dumped.error}")
                await asyncio.sleep(0.05)  # the dumped init is reaped, as in real life
                pid_file = tmp / f"pid-{cycle}"
                prober = Prober(container)
                prober.start()
                stdio = runtime.new_stdio()
                try:
                    restored = await runtime.runc(
                        "restore", "--detach", "--image-path", str(image), "--work-path",
                        str(work), "--bundle", str(container.bundle), "--pid-file",
                        str(pid_file), container.id, stdio=stdio)
                finally:
                    stdio.close()
                if restored.returncode:
                    raise RuntimeError(f"baseline restore failed: {restored.error}")
                lab.restored(container, int(pid_file.read_text()))
                elapsed = await prober.wait()
            if cycle:
                samples.append(elapsed)
            shutil.rmtree(image)
            await asyncio.sleep(0.1)
    finally:
        await lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
        remove_rootfs_cache()
    return samples


def _stats(values: list[float], scale: float = 1e3) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(values) * scale:8.1f} {p95 * scale:8.1f}"


def _median_p95(values: list[float]) -> str:
    """``median (p95)`` in ms, or ``-`` without values."""
    if not values:
        return "-"
    median, p95 = _stats(values).split()
    return f"{median} ({p95})"


def _ratio(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{p95 / statistics.median(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--cold-cycles", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS),
                        help="comma-separated: " + ", ".join(w.key for w in WORKLOADS))
    args = parser.parse_args()
    wanted = args.workloads.split(",")
    unknown = set(wanted) - {w.key for w in WORKLOADS}
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    table = []
    for workload in (w for w in WORKLOADS if w.key in wanted):
        results = zeropod_cycles(workload, args.cycles, args.cold_cycles)
        results.baseline_s = asyncio.run(baseline_cycles(workload, args.cycles))
        table.append((workload, results))
    mode = os.environ.get("ZEROPOD_CRIU_MODE", "direct") or "direct"
    print(f"\ncriu mode {mode}; median and p95 in ms over {args.cycles} cycles "
          f"({args.cold_cycles} for the cold start); RSS in MiB")
    print(f"{'workload':<16} {'checkpoint':>17} {'wake':>17} {'baseline restore':>17} "
          f"{'cold start 2 s':>17} {'image MiB':>9} {'shim RSS run/asleep':>20}")
    for workload, r in table:
        print(f"{workload.name:<16} {_stats(r.checkpoint_s):>17} {_stats(r.wake_s):>17} "
              f"{_stats(r.baseline_s):>17} {_stats(r.cold_s):>17} "
              f"{statistics.median(r.image_bytes) / 2**20 if r.image_bytes else 0:>9.1f} "
              f"{statistics.median(r.rss_running_kib) / 1024:>9.1f} / "
              f"{statistics.median(r.rss_asleep_kib) / 1024:<8.1f}")
    for title, parts, attribute in (("wake path", BREAKDOWN, "breakdown_s"),
                                    ("checkpoint", CHECKPOINT_BREAKDOWN,
                                     "checkpoint_breakdown_s")):
        print(f"\n{title}, median (p95) in ms: " + " | ".join(parts))
        for workload, r in table:
            print(f"{workload.name:<16} " + " | ".join(
                _median_p95(getattr(r, attribute)[part]) for part in parts))
    print()
    for workload, r in table:
        wake, base = statistics.median(r.wake_s), statistics.median(r.baseline_s)
        cold = f"{statistics.median(r.cold_s) / wake:.0f}x" if r.cold_s else "-"
        memory = (f", memory verified after {r.memory_checks} wakes, "
                  f"{r.memory_failures} failed" if workload.verify_memory else "")
        print(f"{workload.name}: wake / baseline = {wake / base:.2f}, "
              f"cold start / wake = {cold}, p95/median: checkpoint "
              f"{_ratio(r.checkpoint_s)}, wake {_ratio(r.wake_s)}; restore path "
              f"{'/'.join(sorted(r.restore_paths)) or '?'}, lazy {r.lazy_restores}/"
              f"{len(r.breakdown_s['restore'])}{memory}")
    return 0 if all(r.memory_failures == 0 for _, r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
