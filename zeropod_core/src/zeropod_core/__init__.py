"""zeropod core: the hookspecs, plugin manager and runtime that plugins extend.

Plugins import the marker from here::

    from zeropod_core import hookimpl

    @hookimpl
    def zeropod_make_checkpointer(container, runtime):
        return MyCheckpointer(container, runtime)

Nothing is imported eagerly: ``containerd-shim-zeropod-v2 start`` runs on every container
start and imports this package first, so ``hookimpl`` (pluggy) and ``__version__``
(package metadata) are created on first access.
"""

from __future__ import annotations

PROJECT_NAME = "zeropod"

# Not `from typing import TYPE_CHECKING`: importing typing alone costs ~10 ms per shim start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import pluggy

    hookimpl: pluggy.HookimplMarker
    __version__: str


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        globals()["hookimpl"] = marker = pluggy.HookimplMarker(PROJECT_NAME)
        return marker
    if name == "__version__":
        from .distributions import own_version

        globals()["__version__"] = version = own_version()
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
