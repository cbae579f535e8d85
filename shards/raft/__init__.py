"""The raft consensus core: a deterministic, sans-IO state machine."""
