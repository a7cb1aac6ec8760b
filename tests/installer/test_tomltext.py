"""The installer's text edits: valid TOML with the intended value, and exactly reversible."""

from __future__ import annotations

import tomllib

import pytest

from zeropod_core.installer import tomltext

DROPIN = "/etc/containerd/zeropod.toml"

IMPORT_LAYOUTS = {
    "no imports, no version": "[plugins]\n",
    "no imports": "version = 3\n\n[plugins.x]\n  a = 1\n",
    "empty file": "",
    "no trailing newline": "version = 2",
    "empty imports": "imports = []\nversion = 2\n",
    "one import, comment": 'version = 3\nimports = ["/a.toml"]  # site\n[b]\n',
    "literal strings": "version = 3\nimports = ['/a.toml', '/b/*.toml']\n",
    "multi-line with brackets in strings and comments": (
        'version = 3\nimports = [\n  "/etc/[odd]/a.toml",  # a ] in a comment\n'
        "  '/b.toml',\n]\n[plugins.\"x\"]\n  imports = 1\n"),
    "quoted key": '"imports" = ["/a.toml"]\n',
    "escaped quote": 'imports = ["/a\\".toml"]\nversion = 3\n',
    "imports inside a table only": "version = 3\n[t]\nimports = ['x']\n",
    "imports on the last line, no newline": 'version = 3\nimports = ["/a.toml"]',
}


@pytest.mark.parametrize("text", IMPORT_LAYOUTS.values(), ids=IMPORT_LAYOUTS.keys())
def test_add_import_round_trip(text: str) -> None:
    before = tomllib.loads(text)
    current = before.get("imports", [])
    edited = tomltext.add_import(text, current, DROPIN)
    after = tomllib.loads(edited)
    assert after["imports"] == [*current, DROPIN]
    assert {k: v for k, v in after.items() if k != "imports"} == \
        {k: v for k, v in before.items() if k != "imports"}
    assert tomltext.has_import_edits(edited)
    restored = tomltext.remove_import_edits(edited)
    if text.endswith("\n") or not current:
        assert restored == text
    else:  # a commented last line without newline gets one
        assert restored == text + "\n"
    assert tomltext.remove_import_edits(restored) == restored
    assert not tomltext.has_import_edits(restored)


def test_unclosed_imports_is_an_error() -> None:
    with pytest.raises(tomltext.TomlEditError, match="not closed"):
        tomltext.add_import('imports = ["/a.toml",\n', [], DROPIN)


BLOCK_LAYOUTS = ["", "version = 2\n", "version = 2", "a = 1\n\n\n", "# only a comment"]


@pytest.mark.parametrize("text", BLOCK_LAYOUTS)
def test_block_round_trip(text: str) -> None:
    body = '[plugins."x".containerd.runtimes.zeropod]\n  runtime_type = "t"\n'
    edited = tomltext.append_block(text, body)
    assert tomllib.loads(edited)["plugins"]["x"]["containerd"]["runtimes"]["zeropod"] == \
        {"runtime_type": "t"}
    assert tomltext.block_body(edited) == body
    assert tomltext.strip_blocks(edited) == text
    assert tomltext.strip_blocks(tomltext.append_block(edited, body)) == text


def test_unterminated_block_is_an_error() -> None:
    with pytest.raises(tomltext.TomlEditError, match="has no"):
        tomltext.strip_blocks("a = 1\n" + tomltext.BLOCK_BEGIN + "\nb = 2\n")
