"""The core's own annotations, registered through the same hook plugins use."""

from __future__ import annotations

from collections.abc import Callable

from zeropod_core import config, hookimpl


@hookimpl
def zeropod_register_annotations(
    register: Callable[[str, config.Parser, str | None, str], None],
) -> None:
    register(config.SCALEDOWN_DURATION, config.parse_duration, "1m",
             "idle time (Go duration) after the last TCP activity before the container is "
             "checkpointed; 0 disables scaling down")
    register(config.PORTS_MAP, config.parse_ports_map, None,
             "container=80,81;other=8080: the ports that wake each container (default: the "
             "ports its processes listen on)")
    register(config.CONTAINER_NAMES, config.parse_names, None,
             "comma-separated names of the pod's containers zeropod manages (default: all)")
    register(config.DISABLE_CHECKPOINTING, config.parse_bool, "false",
             "true: kill the container on scale-down and cold-start it on wake-up")
    register(config.DISABLE_PROBE_DETECTION, config.parse_bool, "false",
             "true: kubelet probes wake the container like any connection")
    register(config.PROBE_BUFFER_SIZE, config.parse_positive_int, "1024",
             "bytes of a connection read to recognise an HTTP kubelet probe")
    register(config.CONNECT_TIMEOUT, config.parse_duration, "5s",
             "how long the activator retries connecting to the restored app")
    register(config.PROXY_TIMEOUT, config.parse_duration, "0",
             "longest life of a connection proxied by the activator (0: until it closes)")
