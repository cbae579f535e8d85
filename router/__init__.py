"""The etcd v3 endpoint: routes client requests to the Raft groups that own the keys."""
