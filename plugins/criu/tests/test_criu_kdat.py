"""CRIU's kdat cache on this host: generated, installed and really loaded (root only)."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import pytest
from zpcriu_lab import MISSING, Lab

from zeropod_criu import kdat
from zeropod_criu.checkpointer import CriuCheckpointer
from zeropod_criu.criuconf import CriuConfig, name_config_in_spec, write_config
from zeropod_criu.node import NodeKey, find_criu
from zeropod_criu.settings import CriuSettings

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# `criu check` with CRIU's cache out of reach: a private tmpfs on /run, and a directory where
# CRIU would create its temporary file, so it cannot save one either (full probe every time).
_NO_CACHE = ('mount -t tmpfs -o size=1m zp-nocache /run && mkdir /run/criu.kdat.tmp && '
             'exec "$1" check -v4 --log-file "$2"')
# The same wrapper without the mount: CRIU sees the host's /run/criu.kdat.
_HOST_CACHE = 'exec "$1" check -v4 --log-file "$2"'


def _criu_check(script: str, log: Path) -> float:
    start = time.monotonic()
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                    "zp-kdat-test", find_criu(), str(log)],
                   check=True, capture_output=True, timeout=60)
    return time.monotonic() - start


def test_generated_cache_is_what_criu_saves_on_a_tmpfs() -> None:
    data = kdat.generate_kdat(find_criu())
    assert len(data) > 64
    again = kdat.generate_kdat(find_criu())
    assert len(again) == len(data)


def test_host_cache_is_installed_and_loaded(tmp_path: Path) -> None:
    criu = find_criu()
    result = kdat.ensure_kdat_cache(criu, NodeKey.current(criu))
    assert result.action in ("generated", "current", "tmpfs"), result
    assert not (kdat.RUN_DIR / "criu.kdat.tmp").is_file() or \
        time.time() - (kdat.RUN_DIR / "criu.kdat.tmp").stat().st_mtime < kdat.STALE_TMP_AGE_S
    if result.action != "tmpfs":
        stamp = kdat.STAMP.read_text()
        assert NodeKey.current(criu).boot_id in stamp and "criu_version" in stamp
    with_cache, without = [], []
    for i in range(5):
        without.append(_criu_check(_NO_CACHE, tmp_path / f"nocache-{i}.log"))
        with_cache.append(_criu_check(_HOST_CACHE, tmp_path / f"cache-{i}.log"))
    loaded = (tmp_path / "cache-0.log").read_text()
    assert "Loaded kdat cache from /run/criu.kdat" in loaded
    assert "Loaded kdat cache" not in (tmp_path / "nocache-0.log").read_text()
    gain = statistics.median(without) - statistics.median(with_cache)
    print(f"\ncriu check: no cache {statistics.median(without) * 1e3:.1f} ms, "
          f"kdat cache {statistics.median(with_cache) * 1e3:.1f} ms (-{gain * 1e3:.1f} ms)")
    assert gain > 0.005, (without, with_cache)


def test_loading_the_cache_leaves_it_in_place() -> None:
    """CRIU 4.2 rewrites (and on a non-tmpfs /run: unlinks) the cache only after a full probe;
    a run that loaded it must leave both the cache and no temporary file behind."""
    criu = find_criu()
    assert kdat.ensure_kdat_cache(criu, NodeKey.current(criu)).cache_available or \
        kdat.is_tmpfs(kdat.RUN_DIR)
    before = (kdat.RUN_DIR / "criu.kdat").stat()
    subprocess.run([criu, "check"], check=True, capture_output=True, timeout=60)
    after = (kdat.RUN_DIR / "criu.kdat").stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    tmp = kdat.RUN_DIR / "criu.kdat.tmp"
    assert not tmp.exists() or tmp.stat().st_mtime < time.time() - 1


@pytest.mark.slow
async def test_runc_dumps_and_restores_with_the_cache(lab: Lab, settings: CriuSettings) -> None:
    """The CRIU that runc starts (dump and restore) loads the cache too."""
    criu = find_criu()
    assert kdat.ensure_kdat_cache(criu, NodeKey.current(criu)).action != "failed"
    write_config(settings.criu_config, CriuConfig())
    container = await lab.start(modify_spec=lambda info, spec: name_config_in_spec(
        spec, settings.criu_config, container_id=info.id))
    await container.wait_http()
    checkpointer = CriuCheckpointer(container.info, container.runtime, {}, settings=settings)
    assert (await checkpointer.checkpoint()).ok
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    for name in ("dump.log", "restore.log"):
        text = (checkpointer.paths.work / name).read_text()
        assert "Loaded kdat cache from /run/criu.kdat" in text, name
