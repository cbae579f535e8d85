# What other native modules call of native.codec at C speed (native.store_apply).

from libc.stdint cimport uint64_t


cdef inline Py_ssize_t write_varint(unsigned char *out, uint64_t value) nogil:
    """Protobuf's varint of value at out; the bytes written (10 at most)."""
    cdef Py_ssize_t count = 0
    while value >= 0x80:
        out[count] = <unsigned char>(value & 0x7F) | 0x80
        value >>= 7
        count += 1
    out[count] = <unsigned char>value
    return count + 1


cpdef bytes encode_revision(main, sub, bint tombstone=*)
cpdef bytes encode_key_value(key, long long create_revision, long long mod_revision,
                             long long version, value, long long lease)
cpdef tuple decode_key_value(record)
cdef int key_value_numbers(record, long long numbers[7]) except -1
