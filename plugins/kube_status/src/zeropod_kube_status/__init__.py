"""zeropod-kube-status: pod labels and Kubernetes events for zeropod's status events."""
