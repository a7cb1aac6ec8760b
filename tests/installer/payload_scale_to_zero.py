"""Run by test_node_image in a private mount namespace where /opt/zeropod/node is the payload
the installer copied to a node: a containerd whose only zeropod shim and CRIU are the payload's
runs the counter app, which must scale to zero and wake with its state. Prints a JSON result.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from zeropod_core.lab import images
from zeropod_core.lab.containerd import ZEROPOD_RUNTIME, PrivateContainerd, lab_base
from zeropod_core.lab.http import http_get, wait_for_http
from zeropod_core.lab.netns import PodNetwork, parent_pid

NODE = Path("/opt/zeropod/node")


def main() -> int:
    base = lab_base("zeropod-payload")
    # the shims inherit containerd's PATH: the payload's criu comes first, as on a node
    env = {"PATH": f"{NODE}/bin:{os.environ['PATH']}"}
    daemon = PrivateContainerd.start(base, shim=NODE / "bin" / "containerd-shim-zeropod-v2",
                                     env=env)
    net = PodNetwork.create("zpp")
    try:
        daemon.import_image(images.build(images.counter_app_spec()))
        container = daemon.run(images.COUNTER_APP, runtime=ZEROPOD_RUNTIME, netns=net.pod_path,
                               annotations={"zeropod.ctrox.dev/scaledown-duration": "1s"})
        wait_for_http(net.client_path, net.pod_ip, 8080, deadline_s=30)
        shim = Path(f"/proc/{parent_pid(container.task_pid())}/cmdline").read_bytes()
        first = http_get(net.client_path, net.pod_ip, 8080).json()["count"]
        asleep_after = net.wait_asleep(timeout=30)
        woken = http_get(net.client_path, net.pod_ip, 8080, timeout=30).json()["count"]
        images_dir = daemon.image_root / container.id
        json.dump({"shim_cmdline": shim.decode(errors="replace").split("\0"),
                   "first": first, "after_wake": woken, "asleep_after_s": asleep_after,
                   "checkpointed": images_dir.is_dir()}, sys.stdout)
        return 0
    finally:
        net.delete()
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
