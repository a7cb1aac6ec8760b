"""pytest fixtures for tests against the real stack (registered through the pytest11 entry point).

Fixtures:

* ``lab_containerd`` (session): a :class:`PrivateContainerd` with the lab images imported.
* ``lab_images`` (session): names of the imported images (``busybox``, ``counter``).
* ``pod_network``: a fresh pod/client namespace pair, deleted after the test.
* ``run_container``: ``run_container(image, runtime=..., annotations=..., env=...)`` starts a
  container in ``pod_network`` and removes it after the test.
* ``kube_cluster`` (session): a :class:`~zeropod_core.lab.kube.KubeCluster` (Kubernetes 1.20,
  one node) with the lab images, the CRI runtime ``zeropod`` and its RuntimeClass. Missing
  Kubernetes binaries fail the tests that use it (run scripts/setup), they are not skipped.
* ``kube_cluster_two_nodes`` (session): the same with two nodes (``cluster.nodes``), each in
  its own network and mount namespaces; started once per session at most, and only when a test
  asks for it.
* every test: the ``ctrd-checkpoint*`` folders containerd leaves in ``$TMPDIR`` after a
  restore through its API are removed.

Tests that need them are skipped with the reason when not run as root or when containerd,
runc or ip are missing; on CI they run as root, so a skip there is visible in the summary.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import images
from .containerd import LabContainer, PrivateContainerd, lab_base
from .netns import PodNetwork

if TYPE_CHECKING:
    from .kube import KubeCluster


def _stack_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, runc and network namespaces)"
    missing = [tool for tool in ("containerd", "ctr", "runc", "ip") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}: run scripts/setup" if missing else None


@dataclass(frozen=True)
class LabImages:
    busybox: str
    counter: str


@pytest.fixture(autouse=True)
def _containerd_checkpoint_dirs() -> Iterator[None]:
    """Remove the ``ctrd-checkpoint*`` folders a test made containerd leave behind.

    containerd (1.6 and 2.x, for runc.v2 as for zeropod) unpacks the checkpoint a task is
    created from into ``$TMPDIR/ctrd-checkpoint<random>`` and never removes it; a test that
    restores through containerd's API would leave one per restore.
    """
    folder = Path(tempfile.gettempdir())
    before = set(folder.glob("ctrd-checkpoint*"))
    yield
    for path in set(folder.glob("ctrd-checkpoint*")) - before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_containerd() -> Iterator[PrivateContainerd]:
    reason = _stack_missing()
    if reason:
        pytest.skip(reason)
    daemon = PrivateContainerd.start(lab_base("zeropod-test"))
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.base, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_images(lab_containerd: PrivateContainerd) -> LabImages:
    for spec in (images.busybox_httpd_spec(), images.counter_app_spec()):
        lab_containerd.import_image(images.build(spec))
    return LabImages(busybox=images.BUSYBOX_HTTPD, counter=images.COUNTER_APP)


@pytest.fixture
def pod_network() -> Iterator[PodNetwork]:
    reason = _stack_missing()
    if reason:
        pytest.skip(reason)
    net = PodNetwork.create("zpt")
    try:
        yield net
    finally:
        net.delete()


@pytest.fixture
def run_container(
    lab_containerd: PrivateContainerd, pod_network: PodNetwork
) -> Iterator[Callable[..., LabContainer]]:
    started: list[LabContainer] = []

    def run(image: str, **kwargs: Any) -> LabContainer:
        kwargs.setdefault("netns", pod_network.pod_path)
        container = lab_containerd.run(image, **kwargs)
        started.append(container)
        return container

    yield run
    for container in reversed(started):
        container.remove()


def _kube_cluster(nodes: int) -> Iterator[KubeCluster]:
    """A lab cluster with ``nodes`` nodes, the zeropod runtime and its RuntimeClass."""
    if os.geteuid() != 0:
        pytest.skip("needs root (kubelet, containerd, bridges, cgroups)")
    from .containerd import SHIM_BINARY
    from .kube import KubeCluster, missing_binaries, zeropod_runtime

    missing = missing_binaries()
    if missing:  # CI runs scripts/setup first: a missing build is an error, not a skip
        pytest.fail(f"the Kubernetes lab needs {', '.join(missing)}: run scripts/setup",
                    pytrace=False)
    shim = Path(sys.executable).with_name(SHIM_BINARY)
    cluster = KubeCluster.start(nodes=nodes,
                                runtimes=[zeropod_runtime(shim)] if shim.exists() else [])
    try:
        if shim.exists():
            cluster.create_runtime_class("zeropod")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    yield from _kube_cluster(nodes=1)


@pytest.fixture(scope="session")
def kube_cluster_two_nodes() -> Iterator[KubeCluster]:
    yield from _kube_cluster(nodes=2)
