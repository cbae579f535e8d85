"""The compiled hot path: CRC32C, raft entry codec, WAL framing, revision keys.

Each module here has a pure-Python twin in tests/reference/ and property tests
that hold the two to the same answers.
"""
