"""The lab: the embedded default that needs no cluster.

A private containerd in a temporary folder, OCI images built offline by the project, network
namespaces with a veth pair standing in for a pod and its client, and an HTTP client that times
requests from inside a namespace. ``zeropod demo`` and the test suite (through the pytest plugin
in :mod:`zeropod_core.lab.pytest_plugin`) both use it; nothing here is imported by the shim.
"""
