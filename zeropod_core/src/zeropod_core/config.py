"""Per-container configuration from OCI annotations, with upstream zeropod's names.

Plugins declare the annotations they own through ``zeropod_register_annotations``; the core
registers its own the same way (:mod:`zeropod_core.builtin.annotations`). At ``Create`` every
registered annotation is parsed; a malformed value fails the creation with an error that names
the annotation and the value, before anything was mounted or started.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("zeropod.config")

PREFIX = "zeropod.ctrox.dev/"
SCALEDOWN_DURATION = PREFIX + "scaledown-duration"
PORTS_MAP = PREFIX + "ports-map"
CONTAINER_NAMES = PREFIX + "container-names"
DISABLE_CHECKPOINTING = PREFIX + "disable-checkpointing"
DISABLE_PROBE_DETECTION = PREFIX + "disable-probe-detection"
PROBE_BUFFER_SIZE = PREFIX + "probe-buffer-size"
CONNECT_TIMEOUT = PREFIX + "connect-timeout"
PROXY_TIMEOUT = PREFIX + "proxy-timeout"

Parser = Callable[[str], object]


class ConfigError(ValueError):
    """An annotation's value is malformed; the message names both."""

    def __init__(self, annotation: str, value: str, reason: str) -> None:
        super().__init__(f"invalid annotation {annotation}={value!r}: {reason}")
        self.annotation, self.value, self.reason = annotation, value, reason


@dataclass(frozen=True)
class Annotation:
    name: str
    parse: Parser
    default: str | None
    help: str


class AnnotationRegistry:
    """The annotations plugins registered, and how to parse a container's values."""

    def __init__(self) -> None:
        self.annotations: dict[str, Annotation] = {}

    def register(self, name: str, parse: Parser, default: str | None, help: str) -> None:
        """The ``register`` callback handed to ``zeropod_register_annotations``."""
        if name in self.annotations:
            log.warning("annotation registered twice, keeping the first", extra={"name": name})
            return
        if default is not None:
            parse(default)  # a plugin's own default must be valid
        self.annotations[name] = Annotation(name, parse, default, help)

    def parse(self, values: Mapping[str, str]) -> dict[str, object]:
        """Parsed value of every registered annotation (defaults applied, None if unset)."""
        parsed: dict[str, object] = {}
        for name, annotation in self.annotations.items():
            raw = values.get(name, annotation.default)
            if raw is None:
                parsed[name] = None
                continue
            try:
                parsed[name] = annotation.parse(raw.strip())
            except (ValueError, TypeError) as exc:
                raise ConfigError(name, raw, str(exc)) from exc
        return parsed


# --- parsers ---------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """A Go duration (``1m``, ``1m30s``, ``500ms``, ``0``) in seconds."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not text:
        raise ValueError("empty duration")
    if text.startswith("-"):
        raise ValueError("negative duration")
    body = text.removeprefix("+")
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    if position != len(body):
        raise ValueError("not a duration like 30s, 1m or 1h30m")
    return total


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str) -> bool:
    """A Go boolean (``true``, ``false``, ``1``, ``0``, ``t``, ``f``...)."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("not a boolean (true or false)")


_SWITCH_ON = {"1", "true", "yes", "on"}
_SWITCH_OFF = {"0", "false", "no", "off"}


def parse_switch(value: str) -> bool:
    """A plugin setting's on/off value: ``true``/``false``, ``1``/``0``, ``yes``/``no``,
    ``on``/``off`` in any case; raises ValueError otherwise. One parser for every plugin, so
    ``ZEROPOD_*`` switches read the same everywhere."""
    text = value.strip().lower()
    if text in _SWITCH_ON:
        return True
    if text in _SWITCH_OFF:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def switch_setting(env: Mapping[str, str], key: str, default: bool) -> bool:
    """The switch ``key`` of ``env`` (unset or blank: ``default``); ValueError names the key."""
    raw = env.get(key, "")
    if not raw.strip():
        return default
    try:
        return parse_switch(raw)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return port


def parse_ports_map(text: str) -> dict[str, tuple[int, ...]]:
    """``container=80,81;other=8080`` -> ``{"container": (80, 81), "other": (8080,)}``."""
    ports: dict[str, tuple[int, ...]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, values = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"entry {entry!r} is not name=port[,port]")
        try:
            ports[name.strip()] = tuple(parse_port(v.strip()) for v in values.split(","))
        except ValueError as exc:
            raise ValueError(f"entry {entry!r}: {exc}") from exc
    if not ports:
        raise ValueError("no name=port entries")
    return ports


def parse_names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


DEFAULT_SOCKET_DIR = "/run/zeropod/s"


def manager_socket_path(env: Mapping[str, str]) -> str:
    """The manager's node API socket, where shims ask it for node-wide work (migrations).

    ``ZEROPOD_MANAGER_SOCKET``, else ``manager.sock`` next to the shims' socket folder
    (``ZEROPOD_SOCKET_DIR``, default ``/run/zeropod/s`` -> ``/run/zeropod/manager.sock``): the
    shims inherit the same settings as the manager, so both ends find it without a flag.
    """
    explicit = env.get("ZEROPOD_MANAGER_SOCKET", "").strip()
    if explicit:
        return explicit
    folder = (env.get("ZEROPOD_SOCKET_DIR", "").strip() or DEFAULT_SOCKET_DIR).rstrip("/")
    return f"{folder.rpartition('/')[0] or '/'}/manager.sock".replace("//", "/")
