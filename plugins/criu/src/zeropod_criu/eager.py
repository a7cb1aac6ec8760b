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
PE_PRESENT = 1 << 2
PAGE_SIZE = os.sysconf("SC_PAGESIZE")
# pagemap_entry: vaddr = 1, compat_nr_pages = 2 (the count in older images), flags = 4,
# nr_pages = 5 (the count in CRIU >= 3.16)
_VADDR, _COMPAT_NR_PAGES, _FLAGS, _NR_PAGES = 1, 2, 4, 5
_Message = list[tuple[int, int | bytes]]


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


def _lazy_runs(images: Path, pattern: str = "pagemap-*.img",
               ) -> tuple[dict[Path, tuple[bytes, list[_Message]]], list[_Run]]:
    """Every pagemap image of ``images`` (``pattern``) parsed, and its runs of lazy entries."""
    parsed: dict[Path, tuple[bytes, list[_Message]]] = {}
    runs: list[_Run] = []
    for image in sorted(images.glob(pattern)):
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
    return parsed, runs


def _smallest(runs: list[_Run], budget_bytes: int) -> tuple[dict[Path, set[int]], int]:
    """The entries of the smallest runs within ``budget_bytes`` per image, and their pages."""
    budget_pages = budget_bytes // PAGE_SIZE
    chosen: dict[Path, set[int]] = {}
    total = 0
    for run in sorted(runs, key=lambda r: r.pages):
        if total + run.pages > budget_pages:
            break
        total += run.pages
        chosen.setdefault(run.image, set()).update(run.indices)
    return chosen, total


def _eager(message: _Message) -> _Message:
    """``message`` without ``PE_LAZY``, with ``PE_PRESENT`` (its pages are in the image)."""
    return [(n, (v & ~PE_LAZY) | PE_PRESENT if n == _FLAGS and isinstance(v, int) else v)
            for n, v in message]


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def make_small_runs_eager(images: Path, budget_bytes: int) -> int:
    """Clear ``PE_LAZY`` on the smallest lazy runs of the dump in ``images`` within
    ``budget_bytes``; returns the bytes that will now be restored eagerly.

    Each changed ``pagemap-*.img`` is replaced atomically. Raises OSError or ValueError when an
    image cannot be read or written; the images are then as they were or fully rewritten
    (never half of one file), and either way a valid dump.
    """
    if budget_bytes <= 0:
        return 0
    parsed, runs = _lazy_runs(images)
    chosen, total = _smallest(runs, budget_bytes)
    for image, indices in chosen.items():
        raw, messages = parsed[image]
        _replace(image, protowire.image(raw, [
            protowire.encode(_eager(m) if i in indices else m) for i, m in enumerate(messages)]))
    _logged(images, "small lazy runs made eager", total, chosen, runs)
    return total * PAGE_SIZE


def fetch_small_runs(images: Path, budget_bytes: int, pid: int) -> int:
    """Copy the smallest lazy runs of a *live* dump in ``images`` (within ``budget_bytes``)
    from the memory of the dumped, still frozen process ``pid`` into the image.

    A lazy dump with a page server (:mod:`.live`) writes no data for lazy pages (``PE_LAZY``
    without ``PE_PRESENT``): the target fetches each of them from the source. Its app's first
    request then waits for a few hundred page faults, one round trip each through both
    page-server proxies (~0.5 s here). The small runs (the interpreter's heap and arenas, a
    few MiB) travel with the image instead: their pages are inserted into ``pages-<id>.img``
    in pagemap order and their entries become ``PE_PRESENT`` without ``PE_LAZY``; CRIU
    restores them before the app runs, and the target's daemon fetches only what stays lazy.
    The process is frozen, so its memory is what CRIU's page server holds. Only ``pid``'s
    own memory is copied (other processes of the container stay lazy). Returns the bytes
    copied. Raises OSError or ValueError; the images are then as they were unless the final
    renames failed half-way (a pages image replaced, its pagemap not: the restore fails and
    the target starts fresh).
    """
    if budget_bytes <= 0:
        return 0
    # only the process's own pagemap (named by its pid in its own pid namespace); the
    # memory of other processes of the container stays lazy
    parsed, runs = _lazy_runs(images, f"pagemap-{namespaced_pid(pid)}.img")
    chosen, total = _smallest(runs, budget_bytes)
    if not total:
        return 0
    replaced: list[tuple[Path, Path]] = []  # (written, to replace)
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            for image, indices in chosen.items():
                replaced += _copy_runs(image, parsed[image], indices, memory.fileno(), pid)
    except BaseException:
        for tmp, _ in replaced:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in replaced:  # a pages image first, then its pagemap
        tmp.replace(final)
    _logged(images, "small lazy runs copied into the live image", total, chosen, runs)
    return total * PAGE_SIZE


def namespaced_pid(pid: int) -> int:
    """``pid`` as its own (innermost) pid namespace sees it: CRIU names its images so."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


def _copy_runs(image: Path, parsed: tuple[bytes, list[_Message]], indices: set[int],
               memory: int, pid: int) -> list[tuple[Path, Path]]:
    """Write the new pages image and pagemap of one ``pagemap-*.img`` next to them (see
    :func:`fetch_small_runs`); returns ``(written, to replace)`` pairs, pages first."""
    raw, messages = parsed
    pages_id = dict(messages[0]).get(1)  # pagemap_head.pages_id
    if not isinstance(pages_id, int):
        raise ValueError(f"{image}: no pages_id in its pagemap_head")
    pages = image.with_name(f"pages-{pages_id}.img")
    tmp_pages = pages.with_name(f".{pages.name}.tmp")
    tmp_map = image.with_name(f".{image.name}.tmp")
    written = [(tmp_pages, pages)]
    try:
        encoded = [protowire.encode(messages[0])]
        with open(pages, "rb") as old, open(tmp_pages, "wb") as new:
            for index, message in enumerate(messages[1:], start=1):
                size = _pages(message) * PAGE_SIZE
                if index in indices:
                    data = os.pread(memory, size, _vaddr(message))
                    if len(data) != size:
                        raise OSError(f"short read of {size} bytes at {_vaddr(message):#x} "
                                      f"from process {pid}")
                    message = _eager(message)
                elif _flags(message) & PE_PRESENT or _FLAGS not in dict(message):
                    data = old.read(size)
                    if len(data) != size:
                        raise ValueError(f"{pages} is shorter than its pagemap says")
                else:
                    data = b""
                new.write(data)
                encoded.append(protowire.encode(message))
        written.append((tmp_map, image))
        tmp_map.write_bytes(protowire.image(raw, encoded))
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    return written


def _logged(images: Path, message: str, total: int, chosen: dict[Path, set[int]],
            runs: list[_Run]) -> None:
    if total:
        log.info(message, extra={
            "images": str(images), "eager_bytes": total * PAGE_SIZE,
            "entries": sum(len(i) for i in chosen.values()),
            "lazy_entries_left": sum(len(r.indices) for r in runs) -
            sum(len(i) for i in chosen.values())})
