"""Everything inside one replica process: the raft core, storage, transport."""
