"""The plugin's pieces without runc or CRIU: settings, files, freezer paths, call sequences."""

from __future__ import annotations

import asyncio
import json
import os
import select
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zeropod_core.model import ContainerInfo
from zeropod_core.providers import Checkpointer, RuncResult, StdioPipes
from zeropod_criu import features as features_mod
from zeropod_criu import kdat, runcstate
from zeropod_criu.checkpointer import CriuCheckpointer, CriuRestoreError
from zeropod_criu.criuconf import (
    CRIU_CONFIG_ANNOTATION,
    CriuConfig,
    name_config_in_spec,
    write_config,
)
from zeropod_criu.criulog import log_tail, read_stats
from zeropod_criu.features import CriuFeatures, detect_features
from zeropod_criu.freezer import FreezeError, Freezer
from zeropod_criu.node import NodeKey
from zeropod_criu.paths import ImagePaths, check_container_id, tree_size
from zeropod_criu.settings import (
    PRE_DUMP_ANNOTATION,
    CriuSettings,
    wants_pre_dump,
)

# --- settings ---------------------------------------------------------------------------


def test_settings_defaults_and_overrides() -> None:
    assert CriuSettings.from_mapping({}) == CriuSettings()
    assert CriuSettings().criu_config == Path("/var/lib/zeropod/i/criu.conf")
    custom = CriuSettings.from_mapping({
        "ZEROPOD_IMAGE_ROOT": "/srv/images", "ZEROPOD_CRIU_PREFREEZE": "false",
        "ZEROPOD_CRIU_KDAT": "0", "ZEROPOD_CRIU_NETWORK_LOCK": "NFTables",
        "ZEROPOD_CRIU_FILE_LOCKS": "no", "ZEROPOD_CRIU_EXT_UNIX_SK": "off"})
    assert custom == CriuSettings(Path("/srv/images"), False, False, "nftables", False, False)


@pytest.mark.parametrize(("key", "value"), [("ZEROPOD_IMAGE_ROOT", "relative/path"),
                                            ("ZEROPOD_CRIU_NETWORK_LOCK", "none"),
                                            ("ZEROPOD_CRIU_PREFREEZE", "sometimes")])
def test_settings_reject(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        CriuSettings.from_mapping({key: value})


def test_wants_pre_dump() -> None:
    assert wants_pre_dump({}) is False
    assert wants_pre_dump({PRE_DUMP_ANNOTATION: True}) is True
    assert wants_pre_dump({PRE_DUMP_ANNOTATION: "true"}) is True
    assert wants_pre_dump({PRE_DUMP_ANNOTATION: False}) is False


# --- the CRIU config file ---------------------------------------------------------------


def test_config_uses_criu_option_syntax() -> None:
    lines = [line for line in CriuConfig().render().splitlines() if not line.startswith("#")]
    assert lines == ["network-lock skip", "manage-cgroups=ignore", "tcp-close",
                     "skip-in-flight"]
    strict = CriuConfig(network_lock="nftables", tcp_close=False, skip_in_flight=False)
    assert "tcp-close" not in strict.render() and "network-lock nftables" in strict.render()


def test_write_config_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "root" / "criu.conf"
    assert write_config(path, CriuConfig()) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    mtime = path.stat().st_mtime_ns
    assert write_config(path, CriuConfig()) is False
    assert path.stat().st_mtime_ns == mtime
    assert write_config(path, CriuConfig(network_lock="nftables")) is True
    assert list(path.parent.iterdir()) == [path], "no temporary file left behind"


def test_spec_gets_the_config_annotation(tmp_path: Path) -> None:
    spec: dict[str, object] = {"ociVersion": "1.0.2"}
    assert name_config_in_spec(spec, tmp_path / "criu.conf", container_id="c1") is True
    assert spec["annotations"] == {CRIU_CONFIG_ANNOTATION: str(tmp_path / "criu.conf")}
    assert name_config_in_spec(spec, tmp_path / "criu.conf", container_id="c1") is False


def test_spec_keeps_the_users_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = {"annotations": {CRIU_CONFIG_ANNOTATION: "/etc/mine.conf"}}
    assert name_config_in_spec(spec, tmp_path / "criu.conf", container_id="c1") is False
    assert spec["annotations"][CRIU_CONFIG_ANNOTATION] == "/etc/mine.conf"
    assert "zeropod's CRIU defaults" in caplog.text
    record = next(r for r in caplog.records if r.name == "zeropod.criu.config")
    assert record.__dict__["container"] == "c1"


# --- image paths, logs, stats -------------------------------------------------------------


@pytest.mark.parametrize("cid", ["", ".", "..", "a/b", "../x", "a\0b"])
def test_container_ids_that_escape_are_refused(cid: str) -> None:
    with pytest.raises(ValueError):
        check_container_id(cid)


def test_image_paths_are_private(tmp_path: Path) -> None:
    paths = ImagePaths(tmp_path / "i", "c1")
    old = os.umask(0)
    try:
        paths.prepare_checkpoint(pre_dump=True)
    finally:
        os.umask(old)
    for directory in (paths.base, paths.snapshot, paths.work, paths.pre, paths.pre_work):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert paths.parent_link == "../pre"
    (paths.snapshot / "pages-1.img").write_bytes(b"x" * 10)
    (paths.work / "dump.log").write_text("log")
    paths.prepare_checkpoint(pre_dump=False)
    assert list(paths.snapshot.iterdir()) == [] and not paths.pre.exists()
    # the last logs stay until CRIU rewrites them (it truncates each log it opens)
    assert [p.name for p in paths.work.iterdir()] == ["dump.log"]
    (paths.snapshot / "inventory.img").write_bytes(b"inv")
    (paths.work / "restore.log").write_text("log")
    assert paths.has_image()
    paths.remove_images()
    assert not paths.snapshot.exists() and (paths.work / "restore.log").exists()
    paths.remove_all()
    assert not paths.base.exists() and (tmp_path / "i").exists()


def test_tree_size_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 20)
    big = tmp_path.parent / f"{tmp_path.name}-big"
    big.write_bytes(b"z" * 5000)
    try:
        (tmp_path / "link").symlink_to(big)
        assert tree_size(tmp_path) == 120
        assert tree_size(tmp_path / "missing") == 0
    finally:
        big.unlink()


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = log_tail(log)
    assert tail.splitlines() == [f"line {i}" for i in range(80, 100)]
    assert log_tail(tmp_path / "missing.log") == ""


def test_read_stats(tmp_path: Path) -> None:
    images = pytest.importorskip("pycriu.images", reason="pycriu is installed by scripts/setup")
    path = tmp_path / "stats-dump"
    with open(path, "wb") as f:
        images.dump({"magic": "STATS", "entries": [{"dump": {
            "freezing_time": 140, "frozen_time": 17051, "memdump_time": 585,
            "memwrite_time": 136, "pages_scanned": 58, "pages_skipped_parent": 0,
            "pages_written": 30, "irmap_resolve": 0, "pages_lazy": 0}}]}, f)
    stats = read_stats([tmp_path / "missing", path])
    assert stats["frozen_time"] == 17051 and stats["pages_written"] == 30
    (tmp_path / "garbage").write_bytes(b"not an image")
    assert read_stats([tmp_path / "garbage"]) == {}
    assert read_stats([]) == {}


@pytest.mark.parametrize("section", ["dump", "restore"])
def test_stats_decoder_agrees_with_pycriu(tmp_path: Path, section: str) -> None:
    """The shim decodes stats itself (pycriu's image modules cost 2.5 MiB per shim): every
    field pycriu knows must come out the same."""
    images = pytest.importorskip("pycriu.images", reason="pycriu is installed by scripts/setup")
    from pycriu.images import stats_pb2

    message = stats_pb2.stats_entry().DESCRIPTOR.fields_by_name[section].message_type
    values = {field.name: 1000 + i * 37 for i, field in enumerate(message.fields)}
    path = tmp_path / f"stats-{section}"
    with open(path, "wb") as f:
        images.dump({"magic": "STATS", "entries": [{section: values}]}, f)
    assert read_stats([path]) == values
    with open(path, "rb") as f:
        assert images.load(f)["entries"][0][section] == values


# --- freezer ------------------------------------------------------------------------------


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / "42" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return proc


def test_freezer_v1_on_a_hybrid_host(tmp_path: Path) -> None:
    fs = tmp_path / "cg"
    (fs / "freezer" / "pod" / "c1").mkdir(parents=True)
    (fs / "freezer" / "pod" / "c1" / "freezer.state").write_text("THAWED\n")
    proc = _fake_proc(
        tmp_path, "6:freezer:/pod/c1\n1:cpu,cpuacct:/pod/c1\n0::/pod/c1\n",
        f"30 25 0:26 / {fs}/freezer rw,nosuid shared:9 - cgroup cgroup rw,freezer\n"
        f"31 25 0:27 / {fs}/unified rw shared:10 - cgroup2 cgroup2 rw\n")
    freezer = Freezer.for_pid(42, proc=proc)
    assert freezer == Freezer("v1", fs / "freezer" / "pod" / "c1")


def test_freezer_v2_only(tmp_path: Path) -> None:
    fs = tmp_path / "cg"
    (fs / "pod" / "c1").mkdir(parents=True)
    (fs / "pod" / "c1" / "cgroup.freeze").write_text("0\n")
    (fs / "pod" / "c1" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    proc = _fake_proc(tmp_path, "0::/pod/c1\n",
                      f"30 25 0:26 / {fs} rw - cgroup2 cgroup2 rw,nsdelegate\n")
    freezer = Freezer.for_pid(42, proc=proc)
    assert freezer == Freezer("v2", fs / "pod" / "c1")
    assert freezer.state() == "THAWED"


def test_no_freezer(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "1:cpu:/x\n", "")
    assert Freezer.for_pid(42, proc=proc) is None
    assert Freezer.for_pid(43, proc=proc) is None


async def test_freeze_and_thaw_v1(tmp_path: Path) -> None:
    state = tmp_path / "freezer.state"
    state.write_text("THAWED\n")
    freezer = Freezer("v1", tmp_path)
    assert await freezer.freeze() >= 0
    assert state.read_text() == "FROZEN"
    assert freezer.thaw() is True and state.read_text() == "THAWED"


async def test_freeze_timeout_thaws_again(tmp_path: Path) -> None:
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("frozen 0\n")  # never becomes frozen
    freezer = Freezer("v2", tmp_path)
    with pytest.raises(FreezeError, match="not frozen"):
        await freezer.freeze(timeout_s=0.05)
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


# --- kdat cache logic (generation faked) --------------------------------------------------

KEY = NodeKey("boot-1", "Version: 4.2.1")


@pytest.fixture
def fake_generate(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def generate(criu: str) -> bytes:
        calls.append(1)
        return b"k" * 912

    monkeypatch.setattr(kdat, "generate_kdat", generate)
    monkeypatch.setattr(kdat, "is_tmpfs", lambda path: False)
    return calls


def test_kdat_generated_once_per_boot_and_criu(tmp_path: Path, fake_generate: list[int]) -> None:
    stamp = tmp_path / "zeropod" / "criu-kdat.stamp"
    first = kdat.ensure_kdat_cache("criu", KEY, run_dir=tmp_path, stamp=stamp)
    assert first.action == "generated" and first.cache_available
    assert (tmp_path / "criu.kdat").read_bytes() == b"k" * 912
    assert stat.S_IMODE((tmp_path / "criu.kdat").stat().st_mode) == 0o600
    assert kdat.ensure_kdat_cache("criu", KEY, run_dir=tmp_path, stamp=stamp).action == "current"
    assert len(fake_generate) == 1
    rebooted = NodeKey("boot-2", KEY.criu_version)
    assert kdat.ensure_kdat_cache("criu", rebooted, run_dir=tmp_path,
                                  stamp=stamp).action == "generated"
    upgraded = NodeKey("boot-2", "Version: 4.3")
    assert kdat.ensure_kdat_cache("criu", upgraded, run_dir=tmp_path,
                                  stamp=stamp).action == "generated"
    (tmp_path / "criu.kdat").unlink()  # CRIU unlinks a cache it finds stale
    assert kdat.ensure_kdat_cache("criu", upgraded, run_dir=tmp_path,
                                  stamp=stamp).action == "generated"
    assert len(fake_generate) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["criu.kdat", "zeropod"]


def test_kdat_failure_is_reported_not_raised(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(criu: str) -> bytes:
        raise RuntimeError("no unshare here")

    monkeypatch.setattr(kdat, "generate_kdat", fail)
    monkeypatch.setattr(kdat, "is_tmpfs", lambda path: False)
    result = kdat.ensure_kdat_cache("criu", KEY, run_dir=tmp_path, stamp=tmp_path / "s")
    assert result.action == "failed" and "no unshare" in result.detail
    assert not result.cache_available and not (tmp_path / "criu.kdat").exists()


def _aged(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


@pytest.mark.parametrize("tmpfs", [True, False])
def test_stale_kdat_tmp_is_removed(tmp_path: Path, fake_generate: list[int],
                                   monkeypatch: pytest.MonkeyPatch, tmpfs: bool) -> None:
    monkeypatch.setattr(kdat, "is_tmpfs", lambda path: tmpfs)
    stale = tmp_path / "criu.kdat.tmp"
    stale.touch()
    _aged(stale, 3600)
    result = kdat.ensure_kdat_cache("criu", KEY, run_dir=tmp_path, stamp=tmp_path / "s")
    assert result.removed_stale_tmp and not stale.exists()
    assert result.action == ("tmpfs" if tmpfs else "generated")
    assert len(fake_generate) == (0 if tmpfs else 1)


def test_young_or_directory_kdat_tmp_stays(tmp_path: Path) -> None:
    tmp = tmp_path / "criu.kdat.tmp"
    tmp.touch()
    assert kdat.remove_stale_tmp(tmp_path) is False and tmp.exists()  # a CRIU saving now
    tmp.unlink()
    tmp.mkdir()  # a benchmark blocking CRIU's saves on purpose
    _aged(tmp, 3600)
    assert kdat.remove_stale_tmp(tmp_path) is False and tmp.is_dir()


def test_is_tmpfs() -> None:
    assert kdat.is_tmpfs(Path("/dev/shm")) is True
    assert kdat.is_tmpfs(Path("/proc")) is False
    with pytest.raises(OSError):
        kdat.is_tmpfs(Path("/nonexistent/zeropod"))


# --- feature cache (check faked) ----------------------------------------------------------


def test_features_cached_per_boot_and_criu(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [CriuFeatures(mem_track=False, lazy_pages=True)]

    def check(criu: str) -> CriuFeatures:
        return answers.pop()

    monkeypatch.setattr(features_mod, "check_features", check)
    cache = tmp_path / "criu-features.json"
    assert detect_features("criu", KEY, cache=cache) == CriuFeatures(False, True)
    assert detect_features("criu", KEY, cache=cache) == CriuFeatures(False, True)  # no 2nd call
    answers.append(CriuFeatures(error="boom"))
    failed = detect_features("criu", NodeKey("boot-2", "v"), cache=cache)
    assert failed.error == "boom" and "feature check failed" in failed.pre_dump_unavailable
    answers.append(CriuFeatures(mem_track=True))
    assert detect_features("criu", NodeKey("boot-2", "v"), cache=cache).mem_track


def test_pre_dump_reasons() -> None:
    assert CriuFeatures(mem_track=True).pre_dump_unavailable == ""
    assert "soft-dirty" in CriuFeatures().pre_dump_unavailable


# --- checkpointer call sequences with a fake runtime --------------------------------------


GONE = 2**22 + 12345  # above pid_max: no such process (e.g. a dumped init already reaped)


class FakeRuntime:
    """A RuntimeHandle whose runc calls are scripted: ``results[command]`` -> RuncResult."""

    def __init__(self, tmp: Path, *, pid: int | None = None) -> None:
        self._container = ContainerInfo(id="c1", bundle=str(tmp / "bundle"), namespace="t")
        self.pid = os.getpid() if pid is None else pid
        self.calls: list[tuple[str, ...]] = []
        self.results: dict[str, RuncResult] = {}
        self.effects: dict[str, Callable[[tuple[str, ...]], None]] = {}
        self.stdio: list[StdioPipes] = []

    @property
    def container(self) -> ContainerInfo:
        return self._container

    @property
    def bundle(self) -> Path:
        return Path(self._container.bundle)

    @property
    def runc_root(self) -> Path:
        return Path("/nonexistent")

    @property
    def init_pid(self) -> int:
        return self.pid

    async def runc(self, *args: str, stdio: StdioPipes | None = None,
                   timeout_s: float | None = None, netns: str | None = None) -> RuncResult:
        self.calls.append(args)
        key = "pre-dump" if "--pre-dump" in args else args[0]
        if key in self.effects:
            self.effects[key](args)
        return self.results.get(key, RuncResult(0, ""))

    def new_stdio(self) -> StdioPipes:
        pipes = [os.pipe() for _ in range(3)]
        for r, w in pipes:  # keep only the process's ends, as the shim does
            os.close(w if r == pipes[0][0] else r)
        stdio = StdioPipes(pipes[0][0], pipes[1][1], pipes[2][1])
        self.stdio.append(stdio)
        return stdio


def _arg(args: tuple[str, ...], flag: str) -> Path:
    return Path(args[args.index(flag) + 1])


def _dump_writes_images(args: tuple[str, ...]) -> None:
    images = _arg(args, "--image-path")
    (images / "inventory.img").write_bytes(b"i" * 10)
    (images / "pages-1.img").write_bytes(b"p" * 4096)


@pytest.fixture
def quiet_settings(tmp_path: Path) -> CriuSettings:
    return CriuSettings(image_root=tmp_path / "i", prefreeze=False, kdat_cache=False)


def _checkpointer(runtime: FakeRuntime, settings: CriuSettings, *, pre_dump: bool = False,
                  mem_track: bool | None = None) -> CriuCheckpointer:
    return CriuCheckpointer(runtime.container, runtime, {PRE_DUMP_ANNOTATION: pre_dump},
                            settings=settings, mem_track=mem_track)


async def test_checkpoint_calls_runc_once(tmp_path: Path, quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)
    runtime.effects["checkpoint"] = _dump_writes_images
    checkpointer = _checkpointer(runtime, quiet_settings)
    assert isinstance(checkpointer, Checkpointer)
    outcome = await checkpointer.checkpoint()
    paths = checkpointer.paths
    record = (paths.snapshot / "zeropod-dump.json").stat().st_size  # what a restore declares
    assert outcome.ok and outcome.image_bytes == 4106 + record
    assert outcome.stats == {"prefreeze_us": 0}
    assert runtime.calls == [("checkpoint", "--image-path", str(paths.snapshot), "--work-path",
                              str(paths.work), "--file-locks", "--ext-unix-sk", "c1")]


@pytest.mark.parametrize("mem_track", [False, None])
async def test_pre_dump_needs_memory_tracking(tmp_path: Path, quiet_settings: CriuSettings,
                                              mem_track: bool | None) -> None:
    runtime = FakeRuntime(tmp_path)
    checkpointer = _checkpointer(runtime, quiet_settings, pre_dump=True, mem_track=mem_track)
    assert checkpointer.pre_dump is False
    await checkpointer.checkpoint()
    assert [c[0] for c in runtime.calls] == ["checkpoint"]
    assert not any("--pre-dump" in c or "--parent-path" in c for c in runtime.calls)


async def test_pre_dump_then_incremental_dump(tmp_path: Path,
                                              quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)
    checkpointer = _checkpointer(runtime, quiet_settings, pre_dump=True, mem_track=True)
    await checkpointer.checkpoint()
    paths = checkpointer.paths
    pre, final = runtime.calls
    assert pre[:6] == ("checkpoint", "--pre-dump", "--image-path", str(paths.pre),
                       "--work-path", str(paths.pre_work))
    assert final[-3:] == ("--parent-path", "../pre", "c1")


async def test_failed_pre_dump_falls_back_to_one_dump(tmp_path: Path,
                                                      quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)
    runtime.results["pre-dump"] = RuncResult(1, "CRIU is missing features")
    checkpointer = _checkpointer(runtime, quiet_settings, pre_dump=True, mem_track=True)
    assert (await checkpointer.checkpoint()).ok
    assert "--parent-path" not in runtime.calls[-1]


async def test_failed_checkpoint_reports_log_tail(tmp_path: Path,
                                                  quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)

    def fail(args: tuple[str, ...]) -> None:
        log = _arg(args, "--work-path") / "dump.log"
        log.write_text("".join(f"({i:02d}) step\n" for i in range(30)) + "Dumping FAILED.\n")

    runtime.effects["checkpoint"] = fail
    runtime.results["checkpoint"] = RuncResult(1, "criu failed: type NOTIFY errno 0")
    checkpointer = _checkpointer(runtime, quiet_settings)
    outcome = await checkpointer.checkpoint()
    assert not outcome.ok and outcome.error == "criu failed: type NOTIFY errno 0"
    assert not checkpointer.paths.snapshot.exists(), "no partial image stays behind"
    assert (checkpointer.paths.work / "dump.log").exists()
    tail = outcome.log_tail.splitlines()
    assert len(tail) == 20 and tail[-1] == "Dumping FAILED."


async def test_failed_checkpoint_says_when_the_app_is_gone(tmp_path: Path,
                                                           quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path, pid=GONE)
    runtime.results["checkpoint"] = RuncResult(1, "boom")
    outcome = await _checkpointer(runtime, quiet_settings).checkpoint()
    assert not outcome.ok and "not running" in outcome.error


def _closed(stdio: StdioPipes) -> bool:
    for fd in (stdio.stdin, stdio.stdout, stdio.stderr):
        try:
            os.fstat(fd)
        except OSError:
            continue
        return False
    return True


async def test_restore_reads_the_pid_and_removes_the_images(
        tmp_path: Path, quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path, pid=GONE)
    runtime.effects["checkpoint"] = _dump_writes_images

    def write_pid(args: tuple[str, ...]) -> None:
        _arg(args, "--pid-file").write_text("4242\n")

    runtime.effects["restore"] = write_pid
    checkpointer = _checkpointer(runtime, quiet_settings)
    await checkpointer.checkpoint()
    restored = await checkpointer.restore()
    assert restored.pid == 4242 and restored.outcome.ok
    paths = checkpointer.paths
    assert runtime.calls[-1] == (
        "restore", "--detach", "--image-path", str(paths.snapshot), "--work-path",
        str(paths.work), "--bundle", str(runtime.bundle), "--pid-file", str(paths.pid_file),
        "--file-locks", "--ext-unix-sk", "c1")
    assert not paths.snapshot.exists() and not paths.pid_file.exists()
    assert _closed(runtime.stdio[0]), "the restored process holds the pipes, not the shim"


async def test_failed_restore_raises_and_keeps_the_images(
        tmp_path: Path, quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path, pid=GONE)
    runtime.effects["checkpoint"] = _dump_writes_images

    def fail(args: tuple[str, ...]) -> None:
        (_arg(args, "--work-path") / "restore.log").write_text("x\nError: Restoring FAILED.\n")

    runtime.effects["restore"] = fail
    runtime.results["restore"] = RuncResult(1, "criu failed: type NOTIFY errno 0")
    checkpointer = _checkpointer(runtime, quiet_settings)
    await checkpointer.checkpoint()
    with pytest.raises(CriuRestoreError, match="Restoring FAILED") as info:
        await checkpointer.restore()
    assert info.value.runc_error == "criu failed: type NOTIFY errno 0"
    assert checkpointer.paths.has_image()
    assert _closed(runtime.stdio[0])


async def test_restore_without_image(tmp_path: Path, quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)
    with pytest.raises(CriuRestoreError, match="no checkpoint image"):
        await _checkpointer(runtime, quiet_settings).restore()
    assert runtime.calls == [] and runtime.stdio == []


async def test_an_arrival_that_never_starts_leaves_no_lazy_pages_daemon(
        tmp_path: Path, quiet_settings: CriuSettings) -> None:
    """A live image in place at Create starts its lazy-pages daemon at once (from a thread);
    when the container is deleted before Start, discard() ends it (a stand-in CRIU that
    never gets ready: only the daemon's lifetime is under test here)."""
    criu = tmp_path / "criu"
    criu.write_text("#!/bin/sh\nexec sleep 60\n")
    criu.chmod(0o755)
    runtime = FakeRuntime(tmp_path)
    checkpointer = CriuCheckpointer(runtime.container, runtime, {}, settings=quiet_settings,
                                    criu=str(criu))
    checkpointer.paths.snapshot.mkdir(parents=True)
    (checkpointer.paths.snapshot / "zeropod-live.json").write_text(
        json.dumps({"page_server": ["127.0.0.1", 9]}))
    checkpointer.prepare_arrival()
    starting = checkpointer._arrival_daemon
    assert starting is not None
    daemon = await starting  # (it stays the checkpointer's)
    assert daemon is not None and daemon.running
    pidfd = os.pidfd_open(daemon.pid)
    try:
        await checkpointer.discard()
        exited, _, _ = await asyncio.to_thread(select.select, [pidfd], [], [], 10.0)
        assert exited, "the lazy-pages daemon survived discard()"
    finally:
        os.close(pidfd)
    await asyncio.to_thread(os.waitpid, daemon.pid, 0)  # our child: reap it


async def test_a_container_without_a_live_image_starts_no_daemon(
        tmp_path: Path, quiet_settings: CriuSettings) -> None:
    runtime = FakeRuntime(tmp_path)
    checkpointer = _checkpointer(runtime, quiet_settings)
    checkpointer.prepare_arrival()
    assert checkpointer._arrival_daemon is None


async def test_runc_pause_when_there_is_no_cgroup_freezer(tmp_path: Path) -> None:
    runtime = FakeRuntime(tmp_path, pid=GONE)  # no /proc entry: no freezer found
    runtime.results["checkpoint"] = RuncResult(1, "boom")
    settings = CriuSettings(image_root=tmp_path / "i", kdat_cache=False)
    outcome = await _checkpointer(runtime, settings).checkpoint()
    assert [c[0] for c in runtime.calls] == ["pause", "checkpoint", "resume"]
    assert not outcome.ok


async def test_failed_pause_still_dumps(tmp_path: Path) -> None:
    runtime = FakeRuntime(tmp_path, pid=GONE)
    runtime.results["pause"] = RuncResult(1, "cannot pause")
    runtime.effects["checkpoint"] = _dump_writes_images
    settings = CriuSettings(image_root=tmp_path / "i", kdat_cache=False)
    outcome = await _checkpointer(runtime, settings).checkpoint()
    assert outcome.ok and [c[0] for c in runtime.calls] == ["pause", "checkpoint"]


# --- orphaned checkpoint folders ----------------------------------------------------------


def test_find_orphans_touches_only_what_nothing_alive_owns(tmp_path: Path) -> None:
    import subprocess

    from zeropod_criu.orphans import UNOWNED_GRACE_S, find_orphans, write_owner

    finished = subprocess.Popen(["true"])  # its PID names a process that is gone
    finished.wait()
    folders = {name: tmp_path / name for name in
               ("listed", "owned-alive", "owned-dead", "unowned-new", "unowned-old", ".masked")}
    for folder in folders.values():
        folder.mkdir()
    write_owner(folders["owned-alive"])  # this process
    write_owner(folders["owned-dead"], pid=finished.pid)
    write_owner(folders["listed"], pid=finished.pid)  # dead owner, but a shim reports it
    old = time.time() - UNOWNED_GRACE_S - 10
    os.utime(folders["unowned-old"], (old, old))
    assert find_orphans(tmp_path, ["listed"]) == [folders["owned-dead"], folders["unowned-old"]]


def test_runc_state_after_a_restore_changes_only_the_five_fields(tmp_path: Path) -> None:
    data = {"id": "c1", "init_process_pid": 1, "init_process_start": 5, "created": "then",
            "config": {"rootfs": "/r", "labels": ["org.criu.config=/x.conf"],
                       "namespaces": [{"type": "NEWNET", "path": "/run/netns/p"}]},
            "namespace_paths": {"NEWNET": "/proc/1/ns/net", "NEWPID": "/proc/1/ns/pid"},
            "external_descriptors": ["pipe:[1]"], "cgroup_paths": {}, "rootless": False}
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.json").write_text(json.dumps(data))
    state = runcstate.load(tmp_path, "c1")
    assert state.criu_config == "/x.conf" and state.netns_path == "/run/netns/p"
    pid = os.getpid()
    state.record_restored(pid, state.unchanged_json())
    after = json.loads((tmp_path / "c1" / "state.json").read_text())
    assert after["init_process_pid"] == pid
    assert after["init_process_start"] == runcstate.process_start(pid)
    assert after["namespace_paths"] == {"NEWNET": f"/proc/{pid}/ns/net",
                                        "NEWPID": f"/proc/{pid}/ns/pid"}
    assert after["external_descriptors"] == [os.readlink(f"/proc/{pid}/fd/{fd}")
                                             for fd in range(3)]
    assert after["created"].endswith("Z") and after["created"] != "then"
    unchanged = {k for k in data if k not in runcstate._CHANGED_BY_RESTORE}
    assert {k: after[k] for k in unchanged} == {k: data[k] for k in unchanged}


def test_runc_state_with_hooks_or_unknown_fields_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "state.json").write_text(json.dumps({"id": "a", "config": {}}))
    with pytest.raises(runcstate.UnsupportedState, match="lacks init_process_pid"):
        runcstate.load(tmp_path, "a")
    full = {"init_process_pid": 1, "init_process_start": 1, "created": "x",
            "namespace_paths": {}, "external_descriptors": [], "cgroup_paths": {},
            "config": {"rootfs": "/r", "Hooks": {"prestart": [{"path": "/bin/true"}]}}}
    (tmp_path / "a" / "state.json").write_text(json.dumps(full))
    with pytest.raises(runcstate.UnsupportedState, match="OCI hooks"):
        runcstate.load(tmp_path, "a")
    with pytest.raises(runcstate.UnsupportedState, match="no runc state"):
        runcstate.load(tmp_path, "missing")
