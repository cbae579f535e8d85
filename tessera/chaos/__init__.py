"""Chaos runs: a recorded workload against a live cluster under injected faults, then checkers.

history (the record), checker (linearizability, revisions, watch, durability),
workload (clients and watchers), faults (kill, pause, partition, slow disk),
run (one whole run and its report); `python -m tessera.chaos --help`.
"""
