"""``containerd-shim-zeropod-v2``: the per-pod process containerd talks to over ttrpc.

Split by job: :mod:`.main` parses containerd's flags, :mod:`.bootstrap` handles the short-lived
``start``/``delete`` calls, :mod:`.server` runs the long-lived daemon, :mod:`.task_service`
implements ``containerd.task.v2.Task`` on top of :mod:`.runc`, :mod:`.reaper` reaps every child,
:mod:`.stdio` moves bytes between containerd's FIFOs and the container, :mod:`.events` publishes
task events back to containerd.
"""
