"""``zeropod demo``: the embedded default, end to end on one machine, with timings.

Starts a private containerd, imports the lab images, makes a pod/client namespace pair and runs
the counter app, then shows it serving requests from the client namespace. Everything it
started is removed at the end (``--keep`` leaves it for a look around).
"""

from __future__ import annotations

import shutil
import sys
import time

from . import images
from .containerd import RUNC_RUNTIME, PrivateContainerd, lab_base
from .http import http_get, wait_for_http
from .netns import PodNetwork


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(*, keep: bool = False) -> int:
    """Run the demo; return the process exit code."""
    t0 = time.monotonic()
    daemon = PrivateContainerd.start(lab_base("zeropod-demo"))
    net: PodNetwork | None = None
    try:
        _say(f"containerd  started in {daemon.base} ({time.monotonic() - t0:.2f} s)")
        t = time.monotonic()
        for spec in (images.busybox_httpd_spec(), images.counter_app_spec()):
            daemon.import_image(images.build(spec))
        _say(f"images      built and imported ({time.monotonic() - t:.2f} s): "
             f"{images.BUSYBOX_HTTPD}, {images.COUNTER_APP}")
        net = PodNetwork.create("zpdemo")
        _say(f"network     pod {net.pod} ({net.pod_ip}) <-veth-> client {net.client}")
        t = time.monotonic()
        daemon.run(images.COUNTER_APP, "demo-app", runtime=RUNC_RUNTIME, netns=net.pod_path)
        first = wait_for_http(net.client_path, net.pod_ip, 8080)
        _say(f"run         {RUNC_RUNTIME}: ctr run -d -> first HTTP response "
             f"{(time.monotonic() - t) * 1000:.0f} ms: {first.body.decode()}")
        for _ in range(3):
            response = http_get(net.client_path, net.pod_ip, 8080)
            _say(f"request     {response.elapsed_s * 1000:5.1f} ms  {response.body.decode()}")
        _say("scale-to-zero: the zeropod shim (io.containerd.zeropod.v2) is not built yet; "
             "this demo runs the app under runc.v2 and will show it scaling down and waking "
             "up once it is.")
        if keep:
            _say(f"--keep: containerd pid {daemon.process.pid if daemon.process else '?'}, "
                 f"ctr --address {daemon.address} -n {daemon.namespace} ...")
            return 0
        return 0
    finally:
        if not keep:
            daemon.stop()
            shutil.rmtree(daemon.base, ignore_errors=True)
            if net is not None:
                net.delete()
            _say(f"cleanup     done; total {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    sys.exit(run_demo())
