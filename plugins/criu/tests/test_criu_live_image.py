"""The live dump's image changes, without CRIU: the small lazy runs copied from a real
process's memory (this one's) into the image, and the page server's loopback config."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

from zeropod_criu import protowire
from zeropod_criu.eager import PAGE_SIZE, PE_LAZY, PE_PRESENT, fetch_small_runs, namespaced_pid
from zeropod_criu.live import loopback_config

HEADER = (0x54564319).to_bytes(4, "little") + (0x56084025).to_bytes(4, "little")
PAGES_ID = 7
Message = list[tuple[int, int | bytes]]


def _head() -> Message:
    return [(1, PAGES_ID)]


def _entry(vaddr: int, pages: int, flags: int) -> Message:
    return [(1, vaddr), (4, flags), (5, pages)]


def _address(area: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(area))


def _entries(image: Path) -> list[dict[int, int | bytes]]:
    return [dict(protowire.fields(m)) for m in protowire.entries(image.read_bytes())]


def test_small_lazy_runs_are_copied_from_memory_in_pagemap_order(tmp_path: Path) -> None:
    small = mmap.mmap(-1, 2 * PAGE_SIZE)
    big = mmap.mmap(-1, 8 * PAGE_SIZE)
    small[:] = b"s" * PAGE_SIZE + b"t" * PAGE_SIZE
    big[:] = b"b" * len(big)
    pagemap = tmp_path / f"pagemap-{namespaced_pid(os.getpid())}.img"
    entries = [_head(),
               _entry(0x1000, 1, PE_PRESENT),                 # data in the pages image
               _entry(_address(small), 2, PE_LAZY),           # a small run: copied
               _entry(0x9000, 1, PE_PRESENT),
               _entry(_address(big), 8, PE_LAZY)]             # over the budget: stays lazy
    pagemap.write_bytes(protowire.image(HEADER, [protowire.encode(e) for e in entries]))
    pages = tmp_path / f"pages-{PAGES_ID}.img"
    pages.write_bytes(b"P" * PAGE_SIZE + b"Q" * PAGE_SIZE)
    # another process's pagemap (a different pid in the image) is left alone
    other = tmp_path / "pagemap-999999.img"
    other.write_bytes(pagemap.read_bytes())

    copied = fetch_small_runs(tmp_path, 3 * PAGE_SIZE, os.getpid())

    assert copied == 2 * PAGE_SIZE
    assert pages.read_bytes() == (b"P" * PAGE_SIZE + b"s" * PAGE_SIZE + b"t" * PAGE_SIZE +
                                  b"Q" * PAGE_SIZE)
    flags = [e.get(4) for e in _entries(pagemap)[1:]]
    assert flags == [PE_PRESENT, PE_PRESENT, PE_PRESENT, PE_LAZY]
    assert other.read_bytes() == protowire.image(HEADER, [protowire.encode(e)
                                                          for e in entries])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [pagemap.name, pages.name, other.name])  # no temporary files left


def test_a_short_pages_image_changes_nothing(tmp_path: Path) -> None:
    small = mmap.mmap(-1, PAGE_SIZE)
    pagemap = tmp_path / f"pagemap-{namespaced_pid(os.getpid())}.img"
    raw = protowire.image(HEADER, [protowire.encode(e) for e in (
        _head(), _entry(_address(small), 1, PE_LAZY), _entry(0x1000, 2, PE_PRESENT))])
    pagemap.write_bytes(raw)
    pages = tmp_path / f"pages-{PAGES_ID}.img"
    pages.write_bytes(b"P" * PAGE_SIZE)  # the pagemap says two pages
    try:
        fetch_small_runs(tmp_path, 16 * PAGE_SIZE, os.getpid())
    except ValueError as exc:
        assert "shorter than its pagemap" in str(exc)
    else:
        raise AssertionError("a pages image shorter than its pagemap was accepted")
    assert pagemap.read_bytes() == raw
    assert pages.read_bytes() == b"P" * PAGE_SIZE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pagemap.name, pages.name])


def test_the_live_dump_config_adds_the_loopback_address(tmp_path: Path) -> None:
    container = tmp_path / "criu.conf"
    container.write_text("network-lock skip\nexternal mnt[/x]:y\n")
    text = loopback_config(str(container), tmp_path).read_text()
    assert text == "network-lock skip\nexternal mnt[/x]:y\naddress 127.0.0.1\n"
    assert loopback_config(None, tmp_path).read_text() == "address 127.0.0.1\n"
    assert loopback_config(str(tmp_path / "gone.conf"), tmp_path).read_text() == \
        "address 127.0.0.1\n"
    assert (tmp_path / "live-dump.conf").stat().st_mode & 0o777 == 0o600
