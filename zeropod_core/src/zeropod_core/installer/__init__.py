"""``zeropod-installer``: puts the shim and CRIU in place on a node and configures containerd's
``zeropod`` runtime (see :mod:`.main`). Standard library only, and nothing of the shim."""
