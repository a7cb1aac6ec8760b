"""Kubelet probe detection: answer health checks without waking a sleeping container.

A kubelet HTTP probe carries ``User-Agent: kube-probe/<version>``; waking the app for it would
keep every probed pod awake forever (upstream issue #34). A TCP probe connects and closes
without sending anything, which the activator sees as an empty peek.
"""

from __future__ import annotations

from zeropod_core import hookimpl
from zeropod_core.model import ContainerInfo

PROBE = "probe"
WAKE = "wake"
_KUBE_PROBE_AGENT = b"user-agent: kube-probe/"


def is_kube_probe(peek: bytes) -> bool:
    """True when ``peek`` holds a whole HTTP request head sent by the kubelet.

    The head must end within the peeked bytes (``probe-buffer-size``): a request whose
    headers do not fit is not recognised and wakes the app, as upstream parses the request
    from a buffer of that size. Users raise the size for probes with large headers.
    """
    head, complete, _ = peek.partition(b"\r\n\r\n")
    if not complete:
        return False
    return any(line.lower().startswith(_KUBE_PROBE_AGENT) for line in head.split(b"\r\n")[1:])


@hookimpl(trylast=True)
def zeropod_classify_connection(container: ContainerInfo, peek: bytes) -> str:
    """Probe when the client sent nothing (TCP probe) or a kube-probe request; else wake."""
    del container
    if not peek or is_kube_probe(peek):
        return PROBE
    return WAKE
