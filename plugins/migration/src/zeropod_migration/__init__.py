"""zeropod-migration: move checkpointed containers between nodes.

Manager side only for now: the node-to-node image service (gRPC, mutual TLS 1.3, chunked
and checksummed, zstd where it pays). Nothing here is imported by the shim.
"""
