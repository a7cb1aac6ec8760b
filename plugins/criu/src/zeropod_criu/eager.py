"""Lazy restores fetch only the big memory areas lazily; the small ones are restored at once.

CRIU marks every page of the anonymous private memory *lazy* in the dump (``PE_LAZY`` in
``pagemap-<pid>.img``), and a lazy restore leaves all of it to the ``criu lazy-pages`` daemon.
For an app holding a large buffer, that buffer is the bulk, but the app's first request
touches the *other* lazy pages: the interpreter's heap and arenas, a few MiB in a few hundred
runs of pages. Each first touch is a page fault answered by the daemon over userfaultfd while
the daemon also copies the rest in the background, and a Python app's first answer took
~30 ms of faults that way (the counter app holding 100 MiB: ~1200 lazy pages of heap, ~1200
of arenas, 25600 of buffer). Restoring those small runs eagerly costs a few milliseconds of
copying inside CRIU's restore.

So before a lazy restore, the smallest runs of lazy pages (address-contiguous pagemap entries)
lose their ``PE_LAZY`` flag, smallest first, as long as their total stays within a budget
(``ZEROPOD_CRIU_LAZY_EAGER_MIB``). CRIU's restore reads such an entry's pages from
``pages-*.img`` like any other non-lazy one (it already mixes both kinds within one area: stack
pages are never lazy), and the daemon serves only what is still marked lazy. Only the flags
change; the page data is untouched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import protowire

log = logging.getLogger("zeropod.criu.eager")

PE_LAZY = 1 << 1
PAGE_SIZE = os.sysconf("SC_PAGESIZE")
# pagemap_entry: vaddr = 1, compat_nr_pages = 2 (the count in older images), flags = 4,
# nr_pages = 5 (the count in CRIU >= 3.16)
_VADDR, _COMPAT_NR_PAGES, _FLAGS, _NR_PAGES = 1, 2, 4, 5


@dataclass
class _Run:
    """Address-contiguous lazy pagemap entries of one image (CRIU writes at most a page
    pipe's worth per entry, so one big buffer is many entries)."""

    image: Path
    indices: list[int]
    pages: int
    end: int  # address after the last page


def _pages(message: list[tuple[int, int | bytes]]) -> int:
    values = dict(message)
    count = values.get(_NR_PAGES) or values.get(_COMPAT_NR_PAGES) or 0
    return count if isinstance(count, int) else 0


def _vaddr(message: list[tuple[int, int | bytes]]) -> int:
    vaddr = dict(message).get(_VADDR, 0)
    return vaddr if isinstance(vaddr, int) else 0


def _flags(message: list[tuple[int, int | bytes]]) -> int:
    flags = dict(message).get(_FLAGS, 0)
    return flags if isinstance(flags, int) else 0


def make_small_runs_eager(images: Path, budget_bytes: int) -> int:
    """Clear ``PE_LAZY`` on the smallest lazy runs of the dump in ``images`` within
    ``budget_bytes``; returns the bytes that will now be restored eagerly.

    Each changed ``pagemap-*.img`` is replaced atomically. Raises OSError or ValueError when an
    image cannot be read or written; the images are then as they were or fully rewritten
    (never half of one file), and either way a valid dump.
    """
    if budget_bytes <= 0:
        return 0
    parsed: dict[Path, tuple[bytes, list[list[tuple[int, int | bytes]]]]] = {}
    runs: list[_Run] = []
    for image in sorted(images.glob("pagemap-*.img")):
        raw = image.read_bytes()
        messages = [list(protowire.fields(m)) for m in protowire.entries(raw)]
        parsed[image] = (raw, messages)
        run: _Run | None = None
        for index, message in enumerate(messages[1:], start=1):  # 0 is the pagemap_head
            if not _flags(message) & PE_LAZY:
                run = None
                continue
            start, pages = _vaddr(message), _pages(message)
            if run is not None and run.end == start:
                run.indices.append(index)
                run.pages += pages
                run.end += pages * PAGE_SIZE
            else:
                run = _Run(image, [index], pages, start + pages * PAGE_SIZE)
                runs.append(run)
    budget_pages = budget_bytes // PAGE_SIZE
    chosen: dict[Path, set[int]] = {}
    total = 0
    for run in sorted(runs, key=lambda r: r.pages):
        if total + run.pages > budget_pages:
            break
        total += run.pages
        chosen.setdefault(run.image, set()).update(run.indices)
    for image, indices in chosen.items():
        raw, messages = parsed[image]
        encoded = []
        for index, message in enumerate(messages):
            if index in indices:
                message = [(n, v & ~PE_LAZY if n == _FLAGS and isinstance(v, int) else v)
                           for n, v in message]
            encoded.append(protowire.encode(message))
        tmp = image.with_name(f".{image.name}.tmp")
        tmp.write_bytes(protowire.image(raw, encoded))
        tmp.replace(image)
    if total:
        log.info("small lazy runs made eager", extra={
            "images": str(images), "eager_bytes": total * PAGE_SIZE,
            "entries": sum(len(i) for i in chosen.values()),
            "lazy_entries_left": sum(len(r.indices) for r in runs) -
            sum(len(i) for i in chosen.values())})
    return total * PAGE_SIZE
