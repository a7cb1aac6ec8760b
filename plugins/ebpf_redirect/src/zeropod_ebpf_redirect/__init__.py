"""zeropod-ebpf-redirect: tc eBPF redirector and activity tracker for scaled-down pods.

Module map (each has one job; only ``loader``, ``libbpf`` and ``tcattach`` need more than the
standard library, and only the loader helper process imports them):

* ``bpf/redirect.c`` -> ``redirect.bpf.o``: the tc program pair, built by ``build.sh``.
* :mod:`.bpfsys`: ``bpf(2)`` over ctypes (pinned maps, typed keys and values).
* :mod:`.maps`: the map layout shared with the C program; a pod's open maps.
* :mod:`.bpffs`: mounting bpffs, removing a pod's pins.
* :mod:`.netns`: ``setns(2)`` helpers (per-thread namespace switching, netns cookie).
* :mod:`.ports`: activator port pool.
* :mod:`.settings`: ``ZEROPOD_*`` settings and annotations.
* :mod:`.pod`: one pod's program instance in the shim (lazy load, teardown).
* :mod:`.redirector`, :mod:`.tracker`: the ``Redirector`` and ``ActivityTracker`` providers.
* :mod:`.shim_plugin`: the pluggy hooks.
* :mod:`.loader` (+ :mod:`.libbpf`, :mod:`.tcattach`): the load/attach/detach helper process.
"""

from __future__ import annotations
