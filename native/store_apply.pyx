"""A run of committed plain puts, applied in one native loop: the store's common write.

A plain put (shards.mvcc.PlainPut) is a key and a value and nothing more: no
lease, no prev_kv, no ignore flag. MvccStore applies a batch of raft entries
in one LMDB write transaction. For each proposal that holds one plain put,
PlainPutWriter.write does what MvccStore._apply_put and _write_put do in
Python: take the next revision (at least the proposal's floor), read the
record the key's latest revision points at for its creation revision,
version and lease, write the new record at (revision, 0), detach the lease
the key had, add the revision to the key index and record the change event.
It does so with no Python frame per put. A put somebody waits for (on the
leader) is answered with its PutResponse already encoded, as bytes: a header
holding the revision, all a plain put's response has.

What it does not take (any other request, a proposal of several requests, a
store that refuses writes) the caller applies on its Python path.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from native.codec cimport encode_key_value, encode_revision, key_value_numbers, write_varint
from native.endian cimport store_be64

# Positions in shards.mvcc.Proposal.
cdef enum:
    PROPOSAL_INDEX = 0
    PROPOSAL_FLOOR = 1
    PROPOSAL_REQUESTS = 2
    PROPOSAL_RESPOND = 4
    # KeyValue's field numbers
    RECORD_CREATE = 2
    RECORD_VERSION = 4
    RECORD_LEASE = 6


cdef bytes lease_key(long long lease, bytes key):
    """The leases table's key of `key` under `lease`: the lease id's 8 bytes (two's complement), the key."""
    cdef Py_ssize_t length = len(key)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 + length)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    store_be64(p, <uint64_t>lease)
    memcpy(p + 8, PyBytes_AS_STRING(key), length)
    return out


cdef bytes put_response(uint64_t revision):
    """PutResponse(header=ResponseHeader(revision=revision)) as protobuf encodes it."""
    cdef unsigned char varint[10]
    cdef Py_ssize_t length = write_varint(varint, revision)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 3 + length)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = 0x0A  # PutResponse.header, field 1, length-delimited
    p[1] = <unsigned char>(1 + length)
    p[2] = 0x18  # ResponseHeader.revision, field 3, varint
    memcpy(p + 3, varint, length)
    return out


cdef class PlainPutWriter:
    """Writes runs of plain puts for one store: its databases and the types it answers with."""

    cdef object history, leases, plain_put, change_event, missing_record
    cdef object event_put

    def __init__(self, history, leases, plain_put, change_event, event_put, missing_record):
        """history, leases: the store's LMDB databases; plain_put: the PlainPut type;
        change_event: the ChangeEvent type, and event_put the type of a put's event;
        missing_record(revision_key): the error to raise when the index points at no record."""
        self.history, self.leases = history, leases
        self.plain_put, self.change_event, self.event_put = plain_put, change_event, event_put
        self.missing_record = missing_record

    def write(self, txn, index, list proposals, Py_ssize_t position, long long applied_index,
              long long revision, list events, list responses):
        """Apply proposals[position:] in `txn` for as long as each holds one plain put.

        Appends to `events` and `responses` as the store's Python path does, and returns
        (the position it stopped at, the applied index, the revision) after them.
        """
        cdef Py_ssize_t count = len(proposals)
        cdef long long floor, create, version, previous_lease
        cdef long long numbers[7]
        cdef object proposal, requests, put, key, previous, previous_bytes, record, revision_key
        history, leases, plain_put, change_event = self.history, self.leases, self.plain_put, self.change_event
        txn_get, txn_put, txn_delete = txn.get, txn.put, txn.delete
        index_get, index_add = index.get, index.add
        while position < count:
            proposal = proposals[position]
            requests = proposal[PROPOSAL_REQUESTS]
            if len(requests) != 1 or type(requests[0]) is not plain_put:
                break
            position += 1
            if proposal[PROPOSAL_INDEX] <= applied_index:  # applied before a restart
                responses.append(None)
                continue
            put = requests[0]
            key = put[0]
            floor = proposal[PROPOSAL_FLOOR]
            revision = revision + 1 if revision + 1 > floor else floor
            previous = index_get(key)
            if previous is None:
                previous_bytes = None
                create, version, previous_lease = revision, 1, 0
            else:
                previous_bytes = txn_get(previous, None, history)
                if previous_bytes is None:
                    raise self.missing_record(previous)
                key_value_numbers(previous_bytes, numbers)
                create = numbers[RECORD_CREATE]
                version = numbers[RECORD_VERSION] + 1
                previous_lease = numbers[RECORD_LEASE]
            record = encode_key_value(key, create, revision, version, put[1], 0)
            revision_key = encode_revision(revision, 0)
            # The new revision is the history's highest key: LMDB appends it to the last page
            # without a search, and fills pages instead of splitting them in half.
            if not txn_put(revision_key, record, True, True, True, history):
                txn_put(revision_key, record, True, True, False, history)  # not the highest after all
            index_add(key, revision, 0)
            if previous_lease:
                txn_delete(lease_key(previous_lease, key), b"", leases)
            # tuple.__new__ builds the named tuple without its class's Python __new__.
            events.append(tuple.__new__(change_event, (self.event_put, revision, key, record, previous_bytes)))
            responses.append([put_response(revision)] if proposal[PROPOSAL_RESPOND] else None)
            applied_index = proposal[PROPOSAL_INDEX]
        return position, applied_index, revision
