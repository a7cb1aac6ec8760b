"""zeropod-criu: checkpoints idle containers to disk with CRIU (through runc) and restores them.

The shim loads :mod:`zeropod_criu.shim_plugin` from the ``zeropod.shim`` entry point group; the
engine itself is :class:`zeropod_criu.checkpointer.CriuCheckpointer`.
"""
