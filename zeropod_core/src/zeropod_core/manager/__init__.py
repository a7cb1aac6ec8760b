"""``zeropod-manager``: one per node. Discovers the shims, follows their status, merges their
metrics and serves ``/metrics``, ``/healthz`` and ``/status`` over HTTP.

:mod:`.links` talks to one shim, :mod:`.node` keeps the node's view and finds shims,
:mod:`.http` serves people and Prometheus, :mod:`.capabilities` says what the node can do,
:mod:`.main` wires it together with plugins of group ``zeropod.manager``.
"""
