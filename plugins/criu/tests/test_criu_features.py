"""CRIU's feature check through pycriu, and pre-dumps where the kernel allows them."""

from __future__ import annotations

import pytest
from zpcriu_lab import MISSING, Lab

from zeropod_criu.checkpointer import CriuCheckpointer
from zeropod_criu.criuconf import CriuConfig, name_config_in_spec, write_config
from zeropod_criu.features import CriuFeatures, check_features
from zeropod_criu.node import find_criu
from zeropod_criu.settings import PRE_DUMP_ANNOTATION, CriuSettings

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def features() -> CriuFeatures:
    pytest.importorskip("pycriu", reason="pycriu is installed by scripts/setup")
    return check_features(find_criu())


def test_feature_check_answers(features: CriuFeatures) -> None:
    assert features.error == ""
    assert features.lazy_pages, "userfaultfd works on the project's kernels"
    if not features.mem_track:
        assert "CONFIG_MEM_SOFT_DIRTY" in features.pre_dump_unavailable


@pytest.mark.slow
async def test_pre_dump_cycle(features: CriuFeatures, lab: Lab, settings: CriuSettings) -> None:
    if not features.mem_track:
        pytest.skip(f"pre-dump unavailable: {features.pre_dump_unavailable}")
    write_config(settings.criu_config, CriuConfig())
    container = await lab.start("counter", modify_spec=lambda info, spec: name_config_in_spec(
        spec, settings.criu_config, container_id=info.id))
    count = (await container.wait_http()).json()["count"]
    checkpointer = CriuCheckpointer(container.info, container.runtime,
                                    {PRE_DUMP_ANNOTATION: True}, settings=settings,
                                    mem_track=True)
    outcome = await checkpointer.checkpoint()
    assert outcome.ok, (outcome.error, outcome.log_tail)
    assert any("--pre-dump" in call for call in container.runtime.calls)
    assert outcome.stats.get("pages_skipped_parent", 0) > 0
    restored = await checkpointer.restore()
    lab.restored(container, restored.pid)
    assert (await container.wait_http()).json()["count"] > count
