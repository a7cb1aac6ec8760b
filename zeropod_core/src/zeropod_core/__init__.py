"""zeropod core: the hookspecs, plugin manager and runtime that plugins extend.

Plugins import the markers from here::

    from zeropod_core import hookimpl

    @hookimpl
    def zeropod_make_checkpointer(container):
        return MyCheckpointer(container)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT_NAME = "zeropod"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

try:
    __version__ = version("zeropod-core")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
