"""HPACK (RFC 7541) of the native HTTP/2 edge, exposed for tests only.

The codec is native/src/hpack.c, called from C by the edge (h2edge.c); this
module lets tests drive it against its reference twin, the PyPI `hpack`
package. A Decoder holds one connection's dynamic table: feed it that
connection's header blocks in order. The encoder functions are stateless and
write only static-table indexes and literals without indexing, never Huffman.

C error codes become exceptions here: HPACK_ERROR_COMPRESSION is HPACKError,
HPACK_ERROR_LIST_TOO_LARGE is HeaderListTooLarge (the block was decoded whole
and the table is in step, so the decoder can go on), HPACK_ERROR_NO_MEMORY is
MemoryError. Arguments the C encoder would abort on raise ValueError first.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "hpack.h":
    enum:
        HPACK_OK
        HPACK_ERROR_COMPRESSION
        HPACK_ERROR_LIST_TOO_LARGE
        HPACK_ERROR_NO_MEMORY
        HPACK_STRING_BYTES_MAX
        HPACK_INTEGER_CONTINUATION_BYTES_MAX
        HPACK_STATIC_TABLE_ENTRIES

    ctypedef struct hpack_decoder:
        pass

    ctypedef int (*hpack_field_fn)(void *context, const uint8_t *name, size_t name_len,
                                   const uint8_t *value, size_t value_len) noexcept

    hpack_decoder *hpack_decoder_new(uint32_t table_bytes_max)
    void hpack_decoder_free(hpack_decoder *decoder)
    uint32_t hpack_decoder_table_bytes(const hpack_decoder *decoder)
    uint32_t hpack_decoder_table_bytes_limit(const hpack_decoder *decoder)
    int hpack_decode_block(hpack_decoder *decoder, const uint8_t *block, size_t block_len,
                           size_t header_list_bytes_max, hpack_field_fn on_field, void *context)

    size_t hpack_literal_bytes_max(size_t name_len, size_t value_len)
    size_t hpack_encode_literal_indexed_name(uint8_t *out, uint32_t static_index,
                                             const uint8_t *value, size_t value_len)
    size_t hpack_encode_literal(uint8_t *out, const uint8_t *name, size_t name_len,
                                const uint8_t *value, size_t value_len)
    size_t hpack_encode_indexed(uint8_t *out, uint32_t index)
    size_t hpack_encode_integer(uint8_t *out, uint8_t first_byte_flags, int prefix_bits, uint64_t value)


STRING_BYTES_MAX = HPACK_STRING_BYTES_MAX
INTEGER_CONTINUATION_BYTES_MAX = HPACK_INTEGER_CONTINUATION_BYTES_MAX
STATIC_TABLE_ENTRIES = HPACK_STATIC_TABLE_ENTRIES

# The callback's own code for "a Python error while collecting a field".
cdef int FIELD_COLLECT_FAILED = 1


class HPACKError(ValueError):
    """A malformed header block: the connection ends with COMPRESSION_ERROR."""


class HeaderListTooLarge(HPACKError):
    """The block decoded whole, but its header list exceeded the limit."""


cdef int collect_field(void *context, const uint8_t *name, size_t name_len,
                       const uint8_t *value, size_t value_len) noexcept:
    try:
        (<list>context).append((
            PyBytes_FromStringAndSize(<const char *>name, name_len),
            PyBytes_FromStringAndSize(<const char *>value, value_len),
        ))
    except BaseException:
        return FIELD_COLLECT_FAILED
    return 0


cdef class Decoder:
    """One connection's HPACK decoder: its dynamic table lives between blocks."""

    cdef hpack_decoder *decoder

    def __cinit__(self, uint32_t table_bytes_max=4096):
        self.decoder = hpack_decoder_new(table_bytes_max)
        if self.decoder == NULL:
            raise MemoryError()

    def __init__(self, uint32_t table_bytes_max=4096):
        pass

    def __dealloc__(self):
        hpack_decoder_free(self.decoder)

    def decode(self, bytes block, size_t header_list_bytes_max=65536):
        """The block's header fields, as (name, value) byte pairs."""
        cdef list fields = []
        cdef int rc = hpack_decode_block(
            self.decoder, <const uint8_t *>PyBytes_AS_STRING(block), len(block),
            header_list_bytes_max, collect_field, <void *>fields)
        if rc == HPACK_OK:
            return fields
        if rc == HPACK_ERROR_COMPRESSION:
            raise HPACKError("malformed header block")
        if rc == HPACK_ERROR_LIST_TOO_LARGE:
            raise HeaderListTooLarge(f"header list larger than {header_list_bytes_max} bytes")
        if rc == HPACK_ERROR_NO_MEMORY or rc == FIELD_COLLECT_FAILED:
            raise MemoryError()
        raise AssertionError(f"hpack_decode_block returned {rc}")

    @property
    def table_size(self):
        """The dynamic table's size now, in RFC bytes (name + value + 32 each)."""
        return hpack_decoder_table_bytes(self.decoder)

    @property
    def table_size_limit(self):
        """The dynamic table's maximum size now: the last size update's, at first table_bytes_max."""
        return hpack_decoder_table_bytes_limit(self.decoder)


def encode(headers):
    """Literal fields without indexing, names and values raw (RFC 7541 6.2.2)."""
    cdef bytearray out = bytearray()
    cdef bytearray field
    cdef bytes name, value
    cdef size_t written
    for name, value in headers:
        field = bytearray(hpack_literal_bytes_max(len(name), len(value)))
        written = hpack_encode_literal(
            <uint8_t *>(<char *>field), <const uint8_t *>PyBytes_AS_STRING(name), len(name),
            <const uint8_t *>PyBytes_AS_STRING(value), len(value))
        if written > <size_t>len(field):
            raise AssertionError("hpack_encode_literal overran hpack_literal_bytes_max")
        out += field[:written]
    return bytes(out)


cdef check_static_index(uint32_t index):
    if not 1 <= index <= HPACK_STATIC_TABLE_ENTRIES:
        raise ValueError(f"the stateless encoder writes static indexes 1..61 only, not {index}")


def encode_indexed(uint32_t index):
    """An indexed field of the static table (RFC 7541 6.1)."""
    cdef uint8_t out[16]
    check_static_index(index)
    return PyBytes_FromStringAndSize(<char *>out, hpack_encode_indexed(out, index))


def encode_literal_indexed_name(uint32_t index, bytes value):
    """A literal without indexing whose name is static entry `index` (RFC 7541 6.2.2)."""
    check_static_index(index)
    cdef bytearray out = bytearray(hpack_literal_bytes_max(0, len(value)))
    cdef size_t written = hpack_encode_literal_indexed_name(
        <uint8_t *>(<char *>out), index, <const uint8_t *>PyBytes_AS_STRING(value), len(value))
    if written > <size_t>len(out):
        raise AssertionError("hpack_encode_literal_indexed_name overran hpack_literal_bytes_max")
    return bytes(out[:written])


def encode_integer(uint8_t flags, int prefix_bits, uint64_t value):
    """An integer with a prefix_bits-bit prefix under `flags` (RFC 7541 5.1)."""
    cdef uint8_t out[16]
    if not 1 <= prefix_bits <= 8:
        raise ValueError(f"prefix_bits is 1..8, not {prefix_bits}")
    if flags & ((1 << prefix_bits) - 1):
        raise ValueError(f"flags {flags:#04x} overlap the {prefix_bits}-bit prefix")
    return PyBytes_FromStringAndSize(<char *>out, hpack_encode_integer(out, flags, prefix_bits, value))
