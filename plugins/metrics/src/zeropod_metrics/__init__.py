"""zeropod-metrics: checkpoint and restore metrics with upstream zeropod's names.

The shim side (:mod:`.shim_plugin`) counts, cumulatively, per container; the manager side
(:mod:`.manager_plugin`) turns what every shim reports into Prometheus series.
"""
