"""Plugins that ship inside zeropod-core and are always registered (they cannot be blocked).

They give the defaults the design card promises when nothing else is installed, and they run
last among implementations of a firstresult hook (``trylast``), so any installed plugin wins.
"""

SHIM_BUILTINS: tuple[str, ...] = (
    "zeropod_core.builtin.probes",
    "zeropod_core.builtin.annotations",
    "zeropod_core.builtin.cold_start",
)
MANAGER_BUILTINS: tuple[str, ...] = ()
