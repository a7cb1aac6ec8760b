"""zeropod-resize: in-place resize of a sleeping pod's requests (Kubernetes >= 1.32)."""
