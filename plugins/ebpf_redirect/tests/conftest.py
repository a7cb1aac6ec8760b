"""Fixtures of the eBPF redirector tests (helpers live in ``zpebpf_lab``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from zpebpf_lab import MISSING, Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Fresh pod/client namespaces and a private bpffs, removed after the test."""
    if MISSING:
        pytest.skip(MISSING)
    lab = Lab.create(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
