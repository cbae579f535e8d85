"""Tessera: an etcd-compatible key-value store sharded by key prefix over Raft groups."""

__version__ = "0.1.0"
