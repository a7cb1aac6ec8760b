"""The conformance suite runs every scenario against both runtimes; results must agree."""

from __future__ import annotations

import pytest

from zeropod_core.lab.containerd import RUNC_RUNTIME, ZEROPOD_RUNTIME


@pytest.fixture(params=[RUNC_RUNTIME, ZEROPOD_RUNTIME], ids=["runc.v2", "zeropod.v2"])
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)
