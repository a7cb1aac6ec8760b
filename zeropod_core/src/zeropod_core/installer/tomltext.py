"""Reversible text edits of containerd's TOML files, marked so that uninstalling undoes them.

The installer never re-serialises a user's file: it appends one marked block, or comments out
the ``imports`` line(s) and adds its own line below them. Removing the marked text gives back
the original bytes, comments and layout included, and leaves any other edit made since alone.
Reading is done with :mod:`tomllib`; only these few edits need to know TOML's syntax.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

BLOCK_BEGIN = "# >>> zeropod-installer: managed block (zeropod-installer --uninstall removes it)"
BLOCK_END = "# <<< zeropod-installer"
IMPORTS_MARK = "  # zeropod-installer"
COMMENTED = "#zeropod-installer# "

_OUR_IMPORTS_LINE = re.compile(r"^imports = \[.*\]" + re.escape(IMPORTS_MARK) + r"\n",
                               re.MULTILINE)
_IMPORTS_KEY = re.compile(r"""^\s*(?:imports|"imports"|'imports')\s*=""")


class TomlEditError(ValueError):
    """The file's layout does not allow the edit; the message says why."""


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def toml_array(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


# --- the managed block -----------------------------------------------------------------------

def append_block(text: str, body: str) -> str:
    """``text`` with ``body`` appended as the managed block (one separating newline)."""
    if not body.endswith("\n"):
        body += "\n"
    return text + ("\n" if text else "") + BLOCK_BEGIN + "\n" + body + BLOCK_END + "\n"


def has_block(text: str) -> bool:
    return BLOCK_BEGIN in text


def strip_blocks(text: str) -> str:
    """``text`` without any managed block: the inverse of :func:`append_block`."""
    while (begin := text.find(BLOCK_BEGIN)) >= 0:
        end = text.find(BLOCK_END, begin)
        if end < 0:
            raise TomlEditError(f"a line {BLOCK_BEGIN!r} has no {BLOCK_END!r} after it")
        end += len(BLOCK_END)
        if text[end:end + 1] == "\n":
            end += 1
        if begin > 0 and text[begin - 1] == "\n":
            begin -= 1  # the newline append_block put before the block
        text = text[:begin] + text[end:]
    return text


def block_body(text: str) -> str | None:
    """The body of the (first) managed block, or None."""
    begin = text.find(BLOCK_BEGIN)
    if begin < 0:
        return None
    start = begin + len(BLOCK_BEGIN) + 1
    end = text.find(BLOCK_END, start)
    return text[start:end] if end >= 0 else None


# --- imports ---------------------------------------------------------------------------------

class _Scanner:
    """Tracks strings and bracket depth across lines, enough to find a value's last line."""

    def __init__(self) -> None:
        self.depth = 0
        self.multiline: str | None = None  # '"""' or "'''" while inside one

    def feed(self, line: str) -> None:
        i = 0
        while i < len(line):
            if self.multiline is not None:
                end = line.find(self.multiline, i)
                while end > 0 and self.multiline == '"""' and _escaped(line, end):
                    end = line.find(self.multiline, end + 1)
                if end < 0:
                    return
                i = end + 3
                self.multiline = None
                continue
            char = line[i]
            if char == "#":
                return
            if line.startswith('"""', i) or line.startswith("'''", i):
                self.multiline = line[i:i + 3]
                i += 3
                continue
            if char in "\"'":
                end = line.find(char, i + 1)
                while end > 0 and char == '"' and _escaped(line, end):
                    end = line.find(char, end + 1)
                i = len(line) if end < 0 else end + 1
                continue
            if char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth -= 1
            i += 1

    @property
    def inside_value(self) -> bool:
        return self.depth > 0 or self.multiline is not None


def _escaped(line: str, index: int) -> bool:
    backslashes = 0
    while index - backslashes - 1 >= 0 and line[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _imports_span(lines: list[str]) -> tuple[int, int] | None:
    """First and last line index of the top-level ``imports = ...`` assignment, if any."""
    scanner = _Scanner()
    start: int | None = None
    for index, line in enumerate(lines):
        if not scanner.inside_value:
            if start is not None:
                return start, index - 1
            stripped = line.lstrip()
            if stripped.startswith("["):
                return None  # the first table: top-level keys end here
            if _IMPORTS_KEY.match(line):
                start = index
        scanner.feed(line)
    if start is not None:
        if scanner.inside_value:
            raise TomlEditError("the imports value is not closed before the end of the file")
        return start, len(lines) - 1
    return None


def add_import(text: str, current: Sequence[str], path: str) -> str:
    """``text`` whose top-level ``imports`` is ``current`` plus ``path``, reversibly.

    Without an ``imports`` key a line is added at the top of the file; with one, its line(s)
    are commented out and the extended array follows them.
    """
    ours = f"imports = {toml_array([*current, path])}{IMPORTS_MARK}\n"
    lines = text.splitlines(keepends=True)
    span = _imports_span(lines)
    if span is None:
        return ours + text
    first, last = span
    if not lines[last].endswith("\n"):
        lines[last] += "\n"  # the file's last line had no newline; uninstalling keeps this one
    commented = [COMMENTED + line for line in lines[first:last + 1]]
    return "".join(lines[:first] + commented + [ours] + lines[last + 1:])


def remove_import_edits(text: str) -> str:
    """The inverse of :func:`add_import` (a file it never touched comes back unchanged)."""
    text = _OUR_IMPORTS_LINE.sub("", text)
    return "".join(line.removeprefix(COMMENTED)
                   for line in text.splitlines(keepends=True))


def has_import_edits(text: str) -> bool:
    return bool(_OUR_IMPORTS_LINE.search(text)) or any(
        line.startswith(COMMENTED) for line in text.splitlines())
