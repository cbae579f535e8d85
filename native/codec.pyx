"""Raft entry codec and MVCC revision keys.

Entry format (little-endian, no padding), ENTRY_HEADER_BYTES = 21:

    term u64 | index u64 | type u8 | data length u32 | data

A batch is a u32 entry count followed by that many entries; `encode_entries`
and `decode_entries` do a whole batch in one call, with no Python work per
entry beyond building the result tuples.

Revision keys are etcd's: main revision as 8 big-endian bytes, "_", sub
revision as 8 big-endian bytes (17 bytes), plus a trailing "t" on a
tombstone's key. Byte order is revision order, so an ordered store keeps
history in revision order. Revisions are int64 in etcd's API: 0 <= rev < 2**63.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from native.endian cimport load_be64, load_le32, load_le64, store_be64, store_le32, store_le64

ENTRY_HEADER_BYTES = 21
BATCH_HEADER_BYTES = 4
REVISION_KEY_BYTES = 17
TOMBSTONE_MARKER = b"t"

cdef Py_ssize_t ENTRY_HEADER = 21
cdef Py_ssize_t BATCH_HEADER = 4
cdef uint64_t DATA_BYTES_MAX = 0xFFFFFFFF
cdef uint64_t REVISION_MAX = 0x7FFFFFFFFFFFFFFF

_tuple_new = tuple.__new__


class CodecError(ValueError):
    """Bytes that are not a well-formed encoding; says where and why."""


cdef Py_ssize_t write_entry(unsigned char *out, object entry) except -1:
    """Encode one (term, index, type, data) at out; returns the bytes written."""
    cdef object fields = entry if isinstance(entry, tuple) else tuple(entry)
    if len(fields) != 4:
        raise CodecError(f"an entry is (term, index, type, data), not {len(fields)} fields")
    cdef uint64_t term = fields[0]
    cdef uint64_t index = fields[1]
    cdef uint8_t entry_type = fields[2]
    cdef object data = fields[3]
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if <uint64_t>view.len > DATA_BYTES_MAX:
            raise CodecError(f"entry data of {view.len} bytes exceeds the 4 GiB limit")
        store_le64(out, term)
        store_le64(out + 8, index)
        out[16] = entry_type
        store_le32(out + 17, <uint32_t>view.len)
        memcpy(out + ENTRY_HEADER, view.buf, view.len)
        return ENTRY_HEADER + view.len
    finally:
        PyBuffer_Release(&view)


cdef inline Py_ssize_t encoded_entry_bytes(object entry) except -1:
    # Checked here because indexing is compiled without bounds checks.
    if len(entry) != 4:
        raise CodecError(f"an entry is (term, index, type, data), not {len(entry)} fields")
    cdef object data = entry[3]
    return ENTRY_HEADER + (len(<bytes>data) if type(data) is bytes else memoryview(data).nbytes)


cdef object read_entry(const unsigned char *buf, Py_ssize_t length, Py_ssize_t *pos, object entry_type):
    """Decode the entry at *pos and advance *pos past it."""
    cdef Py_ssize_t start = pos[0]
    if length - start < ENTRY_HEADER:
        raise CodecError(f"entry header at offset {start} is cut short: {length - start} of {ENTRY_HEADER} bytes")
    cdef uint32_t data_len = load_le32(buf + start + 17)
    if <uint64_t>(length - start - ENTRY_HEADER) < data_len:
        raise CodecError(
            f"entry data at offset {start + ENTRY_HEADER} is cut short: "
            f"{length - start - ENTRY_HEADER} of {data_len} bytes"
        )
    cdef tuple fields = PyTuple_New(4)
    cdef object item = load_le64(buf + start)
    Py_INCREF(item)
    PyTuple_SET_ITEM(fields, 0, item)
    item = load_le64(buf + start + 8)
    Py_INCREF(item)
    PyTuple_SET_ITEM(fields, 1, item)
    item = <long>buf[start + 16]
    Py_INCREF(item)
    PyTuple_SET_ITEM(fields, 2, item)
    item = PyBytes_FromStringAndSize(<const char *>buf + start + ENTRY_HEADER, data_len)
    Py_INCREF(item)
    PyTuple_SET_ITEM(fields, 3, item)
    pos[0] = start + ENTRY_HEADER + data_len
    if entry_type is None:
        return fields
    return _tuple_new(entry_type, fields)


def encode_entry(uint64_t term, uint64_t index, uint8_t entry_type, data):
    """One entry's bytes."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    cdef Py_ssize_t data_len = view.len
    PyBuffer_Release(&view)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, ENTRY_HEADER + data_len)
    write_entry(<unsigned char *>PyBytes_AS_STRING(out), (term, index, entry_type, data))
    return out


def decode_entry(buf, entry_type=None):
    """The (term, index, type, data) that `buf` holds, exactly: trailing bytes are an error.

    With `entry_type` (a tuple subclass such as a NamedTuple) the result is of that type.
    """
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        entry = read_entry(<const unsigned char *>view.buf, view.len, &pos, entry_type)
        if pos != view.len:
            raise CodecError(f"{view.len - pos} trailing bytes after the entry at offset {pos}")
        return entry
    finally:
        PyBuffer_Release(&view)


def encode_entries(entries):
    """A batch: the count, then each (term, index, type, data) of `entries` in order."""
    cdef list items = list(entries)
    cdef Py_ssize_t count = len(items)
    if <uint64_t>count > 0xFFFFFFFF:
        raise CodecError(f"a batch holds at most 2**32 - 1 entries, not {count}")
    cdef Py_ssize_t total = BATCH_HEADER
    cdef object entry
    for entry in items:
        total += encoded_entry_bytes(entry)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    store_le32(p, <uint32_t>count)
    cdef Py_ssize_t pos = BATCH_HEADER
    for entry in items:
        pos += write_entry(p + pos, entry)
    if pos != total:
        raise CodecError("entry data changed size while the batch was encoded")
    return out


def decode_entries(buf, entry_type=None):
    """The list of entries a batch holds, exactly: trailing bytes are an error."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    cdef Py_ssize_t length = view.len
    cdef Py_ssize_t pos = BATCH_HEADER
    cdef uint32_t count, i
    cdef list result
    try:
        if length < BATCH_HEADER:
            raise CodecError(f"batch header is cut short: {length} of {BATCH_HEADER} bytes")
        count = load_le32(p)
        # Every entry takes at least a header: a count that cannot fit is garbage,
        # refused before allocating a list for it.
        if count > <uint64_t>(length - BATCH_HEADER) // ENTRY_HEADER:
            raise CodecError(f"batch claims {count} entries but holds {length} bytes")
        result = PyList_New(count)
        for i in range(count):
            entry = read_entry(p, length, &pos, entry_type)
            Py_INCREF(entry)
            PyList_SET_ITEM(result, i, entry)
        if pos != length:
            raise CodecError(f"{length - pos} trailing bytes after the batch at offset {pos}")
        return result
    finally:
        PyBuffer_Release(&view)


cpdef bytes encode_revision(main, sub, bint tombstone=False):
    """The 17-byte key of revision (main, sub), 18 with the tombstone marker."""
    if not 0 <= main <= REVISION_MAX or not 0 <= sub <= REVISION_MAX:
        raise CodecError(f"revision ({main}, {sub}) is outside 0..2**63-1")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 18 if tombstone else 17)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    store_be64(p, <uint64_t>main)
    p[8] = b"_"
    store_be64(p + 9, <uint64_t>sub)
    if tombstone:
        p[17] = b"t"
    return out


def decode_revision(key):
    """(main, sub, tombstone) from a revision key."""
    cdef Py_buffer view
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    cdef uint64_t main, sub
    try:
        if view.len != 17 and view.len != 18:
            raise CodecError(f"a revision key is 17 or 18 bytes, not {view.len}")
        if p[8] != b"_":
            raise CodecError(f"revision key separator is {p[8]:#04x}, not '_'")
        if view.len == 18 and p[17] != b"t":
            raise CodecError(f"revision key marker is {p[17]:#04x}, not 't'")
        main = load_be64(p)
        sub = load_be64(p + 9)
        if main > REVISION_MAX or sub > REVISION_MAX:
            raise CodecError(f"revision ({main}, {sub}) is outside 0..2**63-1")
        return main, sub, view.len == 18
    finally:
        PyBuffer_Release(&view)


# --- mvccpb.KeyValue records ---------------------------------------------------------
#
# The store keeps each record as etcd's wire encodes a KeyValue (protobuf,
# proto3): key = 1, create_revision = 2, mod_revision = 3, version = 4,
# value = 5, lease = 6; zero and empty fields are left out, fields go in
# number order. These two functions do that encoding, and its decoding,
# without building a protobuf object per record.

cdef enum:
    WIRE_VARINT = 0
    WIRE_FIXED64 = 1
    WIRE_BYTES = 2
    WIRE_FIXED32 = 5


cdef inline Py_ssize_t varint_bytes(uint64_t value) nogil:
    cdef Py_ssize_t count = 1
    while value >= 0x80:
        value >>= 7
        count += 1
    return count


cdef inline Py_ssize_t read_varint(const unsigned char *buf, Py_ssize_t length, Py_ssize_t *pos, uint64_t *value) except -1:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= length:
            raise CodecError(f"varint at offset {pos[0]} is cut short")
        if shift >= 64:
            raise CodecError(f"varint at offset {pos[0]} is longer than 10 bytes")
        byte = buf[pos[0]]
        pos[0] += 1
        result |= <uint64_t>(byte & 0x7F) << shift
        if byte < 0x80:
            value[0] = result
            return 0
        shift += 7


cpdef bytes encode_key_value(key, long long create_revision, long long mod_revision,
                             long long version, value, long long lease):
    """The bytes protobuf gives for KeyValue(key, create_revision, ..., lease)."""
    cdef Py_buffer key_view, value_view
    cdef uint64_t numbers[4]
    cdef unsigned char tags[4]
    numbers[:] = [<uint64_t>create_revision, <uint64_t>mod_revision, <uint64_t>version, <uint64_t>lease]
    tags[:] = [0x10, 0x18, 0x20, 0x30]
    PyObject_GetBuffer(key, &key_view, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(value, &value_view, PyBUF_SIMPLE)
    except BaseException:
        PyBuffer_Release(&key_view)
        raise
    cdef Py_ssize_t total = 0, pos = 0
    cdef int field
    try:
        if key_view.len:
            total += 1 + varint_bytes(key_view.len) + key_view.len
        if value_view.len:
            total += 1 + varint_bytes(value_view.len) + value_view.len
        for field in range(4):
            if numbers[field]:
                total += 1 + varint_bytes(numbers[field])
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        if key_view.len:
            p[pos] = 0x0A
            pos += 1 + write_varint(p + pos + 1, key_view.len)
            memcpy(p + pos, key_view.buf, key_view.len)
            pos += key_view.len
        for field in range(3):  # create, mod, version come before the value
            if numbers[field]:
                p[pos] = tags[field]
                pos += 1 + write_varint(p + pos + 1, numbers[field])
        if value_view.len:
            p[pos] = 0x2A
            pos += 1 + write_varint(p + pos + 1, value_view.len)
            memcpy(p + pos, value_view.buf, value_view.len)
            pos += value_view.len
        if numbers[3]:
            p[pos] = tags[3]
            pos += 1 + write_varint(p + pos + 1, numbers[3])
        return out
    finally:
        PyBuffer_Release(&key_view)
        PyBuffer_Release(&value_view)


cdef int parse_key_value(const unsigned char *p, Py_ssize_t length, long long numbers[7],
                         Py_ssize_t spans[4]) except -1:
    """A KeyValue's varint fields into numbers[field number], and where its key and value lie:
    spans = (key offset, key size, value offset, value size), sizes 0 when absent.

    Accepts any valid encoding: fields in any order, repeats (the last wins),
    and unknown fields, which are skipped.
    """
    cdef Py_ssize_t pos = 0
    cdef uint64_t tag, number, size, field, wire
    numbers[:] = [0, 0, 0, 0, 0, 0, 0]
    spans[:] = [0, 0, 0, 0]
    while pos < length:
        read_varint(p, length, &pos, &tag)
        field, wire = tag >> 3, tag & 7
        if field == 0 or field > 0x1FFFFFFF:  # protobuf's field numbers are 1..2**29-1
            raise CodecError(f"field number {field} before offset {pos} is invalid")
        if wire == WIRE_VARINT:
            read_varint(p, length, &pos, &number)
            if field <= 6:
                numbers[field] = <long long>number
        elif wire == WIRE_BYTES:
            read_varint(p, length, &pos, &size)
            if size > <uint64_t>(length - pos):
                raise CodecError(f"field {field} at offset {pos} runs past the record")
            if field == 1 or field == 5:
                spans[0 if field == 1 else 2] = pos
                spans[1 if field == 1 else 3] = <Py_ssize_t>size
            pos += size
        elif wire == WIRE_FIXED64 or wire == WIRE_FIXED32:
            pos += 8 if wire == WIRE_FIXED64 else 4
            if pos > length:
                raise CodecError(f"fixed-width field {field} runs past the record")
        else:
            raise CodecError(f"wire type {wire} of field {field} is not one a KeyValue uses")
    return 0


cpdef tuple decode_key_value(record):
    """(key, create_revision, mod_revision, version, value, lease) from a KeyValue's bytes."""
    cdef Py_buffer view
    cdef long long numbers[7]
    cdef Py_ssize_t spans[4]
    PyObject_GetBuffer(record, &view, PyBUF_SIMPLE)
    cdef const char *p = <const char *>view.buf
    try:
        parse_key_value(<const unsigned char *>p, view.len, numbers, spans)
        return (PyBytes_FromStringAndSize(p + spans[0], spans[1]), numbers[2], numbers[3], numbers[4],
                PyBytes_FromStringAndSize(p + spans[2], spans[3]), numbers[6])
    finally:
        PyBuffer_Release(&view)


cdef int key_value_numbers(record, long long numbers[7]) except -1:
    """decode_key_value's numbers alone, by field number (create 2, mod 3, version 4, lease 6):
    no copy of the key or the value."""
    cdef Py_buffer view
    cdef Py_ssize_t spans[4]
    PyObject_GetBuffer(record, &view, PyBUF_SIMPLE)
    try:
        parse_key_value(<const unsigned char *>view.buf, view.len, numbers, spans)
    finally:
        PyBuffer_Release(&view)
    return 0


def repeated_messages(data):
    """The elements of a message whose fields are all one repeated message field
    numbered 1 (ShardRequestBatch.requests, ShardResponseBatch.responses), as
    bytes each, unparsed: a request can be proposed as the bytes it came in."""
    cdef Py_buffer view
    cdef list found = []
    cdef Py_ssize_t position = 0
    cdef uint64_t tag, length
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        while position < view.len:
            read_varint(<const unsigned char *>view.buf, view.len, &position, &tag)
            if tag != (1 << 3 | WIRE_BYTES):
                raise CodecError(f"field tag {tag} at offset {position}: not a repeated message numbered 1")
            read_varint(<const unsigned char *>view.buf, view.len, &position, &length)
            if length > <uint64_t>(view.len - position):
                raise CodecError(f"a message of {length} bytes at offset {position} runs past the end")
            found.append(PyBytes_FromStringAndSize(<const char *>view.buf + position, <Py_ssize_t>length))
            position += <Py_ssize_t>length
    finally:
        PyBuffer_Release(&view)
    return found


cdef object plain_put_fields(const unsigned char *p, Py_ssize_t length):
    """A PutRequest's (key, value); None if it sets anything but those two."""
    cdef Py_ssize_t pos = 0
    cdef uint64_t tag, size, number
    cdef object key = b"", value = b""
    while pos < length:
        read_varint(p, length, &pos, &tag)
        if tag == (3 << 3 | WIRE_VARINT) or tag == (4 << 3 | WIRE_VARINT) or tag == (5 << 3 | WIRE_VARINT) \
                or tag == (6 << 3 | WIRE_VARINT):
            read_varint(p, length, &pos, &number)  # lease, prev_kv, ignore_value, ignore_lease
            if number:
                return None
            continue
        if tag != (1 << 3 | WIRE_BYTES) and tag != (2 << 3 | WIRE_BYTES):
            return None
        read_varint(p, length, &pos, &size)
        if size > <uint64_t>(length - pos):
            raise CodecError(f"a put's field at offset {pos} runs past its end")
        if tag == (1 << 3 | WIRE_BYTES):
            key = PyBytes_FromStringAndSize(<const char *>p + pos, <Py_ssize_t>size)
        else:
            value = PyBytes_FromStringAndSize(<const char *>p + pos, <Py_ssize_t>size)
        pos += <Py_ssize_t>size
    return key, value


def decode_plain_put(data):
    """(id, floor, key, value) of a ShardRequest that is a put and nothing more; None otherwise.

    "Nothing more": no lease, no prev_kv, ignore_value or ignore_lease, no
    unknown lease, no other field. Those, and anything this cannot read as
    protobuf would, are left to protobuf (None). Repeated scalar fields keep
    their last value, as protobuf does: a raft entry is the request's wire
    bytes with the proposal id appended.
    """
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0
    cdef uint64_t tag, size, request_id = 0, floor = 0
    cdef object put = None
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        while pos < view.len:
            read_varint(p, view.len, &pos, &tag)
            if tag == (1 << 3 | WIRE_VARINT):
                read_varint(p, view.len, &pos, &request_id)
            elif tag == (2 << 3 | WIRE_VARINT):
                read_varint(p, view.len, &pos, &floor)
            elif tag == (4 << 3 | WIRE_BYTES) and put is None:  # a second one would merge into the first
                read_varint(p, view.len, &pos, &size)
                if size > <uint64_t>(view.len - pos):
                    raise CodecError(f"the put at offset {pos} runs past the request")
                put = plain_put_fields(p + pos, <Py_ssize_t>size)
                if put is None:
                    return None
                pos += <Py_ssize_t>size
            else:
                return None
        if put is None:
            return None
        return request_id, <long long>floor, put[0], put[1]
    finally:
        PyBuffer_Release(&view)


def gather_plain_puts(list entries, Py_ssize_t start, list proposals, dict waiting, waiting_writes,
                      proposal_type, put_type, no_leases):
    """The store's proposals for the run of raft entries from `start` that are plain puts.

    Appends a `proposal_type` (index, floor, (put_type(key, value),), no_leases, respond) to
    `proposals` for each entry (term, index, type, data) of type 0 whose data decode_plain_put
    reads, and records `waiting[its position] = its proposal id` where that id is in
    `waiting_writes`. Stops at the first entry that is anything else, and returns its position
    (len(entries) once all are taken): the caller builds that one's proposal itself.
    """
    cdef Py_ssize_t i = start, n = len(entries)
    cdef tuple entry, put
    cdef bint respond
    while i < n:
        entry = <tuple>entries[i]
        if entry[2] != 0 or not entry[3]:
            break
        put = decode_plain_put(entry[3])
        if put is None:
            break
        respond = put[0] in waiting_writes
        if respond:
            waiting[len(proposals)] = put[0]
        proposals.append(_tuple_new(proposal_type, (
            entry[1], put[1], (_tuple_new(put_type, (put[2], put[3])),), no_leases, respond)))
        i += 1
    return i


cdef list SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


def varint(uint64_t value):
    """Protobuf's base-128 varint of a non-negative integer below 2**64."""
    if value < 0x80:
        return SMALL_VARINTS[value]
    cdef unsigned char out[10]
    return PyBytes_FromStringAndSize(<const char *>out, write_varint(out, value))


cdef int skip_field(const unsigned char *p, Py_ssize_t length, Py_ssize_t *pos, uint64_t wire) except -1:
    """Move past a field's value of this wire type."""
    cdef uint64_t size
    if wire == WIRE_VARINT:
        read_varint(p, length, pos, &size)
    elif wire == WIRE_BYTES:
        read_varint(p, length, pos, &size)
        if size > <uint64_t>(length - pos[0]):
            raise CodecError(f"a field at offset {pos[0]} runs past the message")
        pos[0] += <Py_ssize_t>size
    elif wire == WIRE_FIXED64 or wire == WIRE_FIXED32:
        pos[0] += 8 if wire == WIRE_FIXED64 else 4
        if pos[0] > length:
            raise CodecError(f"a fixed-width field runs past the message")
    else:
        raise CodecError(f"wire type {wire} before offset {pos[0]} is not one this reads")
    return 0


def response_id(response):
    """The id (field 1) of an encoded ShardResponse: `answer_parts`' first part, without the copy."""
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0
    cdef uint64_t tag, response_id = 0
    PyObject_GetBuffer(response, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        while pos < view.len:
            read_varint(p, view.len, &pos, &tag)
            if tag == (1 << 3 | WIRE_VARINT):
                read_varint(p, view.len, &pos, &response_id)
            else:
                skip_field(p, view.len, &pos, tag & 7)
        return response_id
    finally:
        PyBuffer_Release(&view)


def answer_parts(response):
    """(id, answer field number, answer bytes) of an encoded ShardResponse.

    The id is field 1; the answer is the one other field, a message. Field
    number 0 (and None) where protobuf should read it instead: no answer, or
    an answer given twice (protobuf would merge the two).
    """
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0, start
    cdef uint64_t tag, size, response_id = 0, field = 0
    cdef object body = None
    PyObject_GetBuffer(response, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        while pos < view.len:
            read_varint(p, view.len, &pos, &tag)
            if tag == (1 << 3 | WIRE_VARINT):
                read_varint(p, view.len, &pos, &response_id)
            elif tag & 7 == WIRE_BYTES and tag >> 3 > 1 and field == 0:
                field = tag >> 3
                read_varint(p, view.len, &pos, &size)
                if size > <uint64_t>(view.len - pos):
                    raise CodecError(f"the answer at offset {pos} runs past the response")
                body = PyBytes_FromStringAndSize(<const char *>p + pos, <Py_ssize_t>size)
                pos += <Py_ssize_t>size
            elif tag & 7 == WIRE_BYTES and tag >> 3 > 1:
                return response_id, 0, None
            else:
                skip_field(p, view.len, &pos, tag & 7)
        return response_id, field, body
    finally:
        PyBuffer_Release(&view)


def restamp_header(answer, uint64_t cluster_id, uint64_t member_id, uint64_t raft_term):
    """(revision, answer) with the answer's header (field 1, an etcd ResponseHeader) made anew.

    The header keeps the revision it had and takes the cluster id, member id
    and raft term given; it goes first, the answer's other fields follow as they
    were, in their order. What the router does to every answer a replica gives.
    """
    return restamped(answer, cluster_id, member_id, raft_term, False, 0)


def restamp_watch_response(response, long long watch_id, uint64_t cluster_id, uint64_t member_id,
                           uint64_t raft_term):
    """(revision, response): `restamp_header` of an encoded WatchResponse that also takes this
    watch id (field 2): what the router does to the events a replica sends one client's watch."""
    return restamped(response, cluster_id, member_id, raft_term, True, watch_id)


cdef Py_ssize_t read_header_revision(const unsigned char *p, Py_ssize_t length, Py_ssize_t pos,
                                     uint64_t *revision) except -1:
    """At the length of a header (field 1, an etcd ResponseHeader) at `pos`: its revision (field
    3) into `revision`; returns the offset after the header."""
    cdef uint64_t size, tag
    cdef Py_ssize_t end
    read_varint(p, length, &pos, &size)
    if size > <uint64_t>(length - pos):
        raise CodecError(f"the header at offset {pos} runs past the message")
    end = pos + <Py_ssize_t>size
    while pos < end:
        read_varint(p, end, &pos, &tag)
        if tag == (3 << 3 | WIRE_VARINT):
            read_varint(p, end, &pos, revision)
        else:
            skip_field(p, end, &pos, tag & 7)
    return end


cdef tuple restamped(message, uint64_t cluster_id, uint64_t member_id, uint64_t raft_term,
                     bint replace_field_2, long long field_2):
    """The message with a new header first, then field 2 (`field_2`, if replaced and not zero),
    then its other fields as they were; and the revision its header had."""
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0, start, rest_bytes = 0, field_2_bytes = 0
    cdef uint64_t tag, revision = 0
    cdef list kept = []  # (start, end) of the fields after the header
    cdef uint64_t numbers[4]
    cdef Py_ssize_t header_bytes = 0, field
    cdef unsigned char *o
    PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        while pos < view.len:
            start = pos
            read_varint(p, view.len, &pos, &tag)
            if tag == (1 << 3 | WIRE_BYTES):
                pos = read_header_revision(p, view.len, pos, &revision)
            elif replace_field_2 and tag >> 3 == 2:
                skip_field(p, view.len, &pos, tag & 7)
            else:
                skip_field(p, view.len, &pos, tag & 7)
                kept.append((start, pos))
                rest_bytes += pos - start
        numbers[:] = [cluster_id, member_id, revision, raft_term]
        for field in range(4):
            if numbers[field]:
                header_bytes += 1 + varint_bytes(numbers[field])
        if replace_field_2 and field_2 != 0:
            field_2_bytes = 1 + varint_bytes(<uint64_t>field_2)
        out = PyBytes_FromStringAndSize(
            NULL, 1 + varint_bytes(header_bytes) + header_bytes + field_2_bytes + rest_bytes)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        o[0] = 1 << 3 | WIRE_BYTES
        start = 1 + write_varint(o + 1, header_bytes)
        for field in range(4):
            if numbers[field]:
                o[start] = (field + 1) << 3 | WIRE_VARINT
                start += 1 + write_varint(o + start + 1, numbers[field])
        if field_2_bytes:
            o[start] = 2 << 3 | WIRE_VARINT
            start += 1 + write_varint(o + start + 1, <uint64_t>field_2)
        for begin, end in kept:
            memcpy(o + start, p + <Py_ssize_t>begin, <Py_ssize_t>end - <Py_ssize_t>begin)
            start += <Py_ssize_t>end - <Py_ssize_t>begin
        return revision, out
    finally:
        PyBuffer_Release(&view)


def watch_response_peek(response):
    """(watch id, header revision, plain) of an encoded WatchResponse.

    Plain: it holds nothing but a header, a watch id and events (no created,
    canceled, compaction, cancel reason or fragment flag), so a router that
    passes a watch through may forward it as it is, restamped.
    """
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0
    cdef uint64_t tag, revision = 0, watch_id = 0
    cdef bint plain = True
    PyObject_GetBuffer(response, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        while pos < view.len:
            read_varint(p, view.len, &pos, &tag)
            if tag == (1 << 3 | WIRE_BYTES):
                pos = read_header_revision(p, view.len, pos, &revision)
            elif tag == (2 << 3 | WIRE_VARINT):
                read_varint(p, view.len, &pos, &watch_id)
            else:
                plain = plain and tag == (11 << 3 | WIRE_BYTES)
                skip_field(p, view.len, &pos, tag & 7)
        return <long long>watch_id, <long long>revision, plain
    finally:
        PyBuffer_Release(&view)
