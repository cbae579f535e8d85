"""WAL record framing: how records sit in a segment file.

A frame is a 16-byte header, the payload, and zero padding to a multiple of 8
bytes (HEADER_BYTES and ALIGN_BYTES), all little-endian:

    0   u32  payload length
    4   u8   record type (1..255; 0 is never written)
    5   3    zero bytes (reserved)
    8   u32  CRC32C of the payload
    12  u32  CRC32C of header bytes 0..11

The header checksum guards the length: a damaged length is caught as a damaged
header, never followed into the middle of other records. A segment is
preallocated with zeros, so the end of written data reads as a zero header.

`decode_frames` reads frames from an offset until it cannot, and says where it
stopped and why: END (end of the buffer, or a zero header), TRUNCATED (the
header or the payload runs past the end of the buffer), BAD_HEADER (header
checksum mismatch or reserved bits set), BAD_CRC (payload checksum
mismatch). Deciding whether a stop is a torn tail or corruption is the WAL's
business; `find_valid_frame` gives it the evidence (is there a whole, valid
frame anywhere after the stop?).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from native.crc32c_api cimport tessera_crc32c
from native.endian cimport load_le32, store_le32

HEADER_BYTES = 16
ALIGN_BYTES = 8
PAYLOAD_BYTES_MAX = 0xFFFFFFFF

cdef enum StopReason:
    STOP_END = 0
    STOP_TRUNCATED = 1
    STOP_BAD_HEADER = 2
    STOP_BAD_CRC = 3
    FRAME_VALID = -1

END = STOP_END
TRUNCATED = STOP_TRUNCATED
BAD_HEADER = STOP_BAD_HEADER
BAD_CRC = STOP_BAD_CRC
STOP_REASONS = ("end", "truncated", "bad header", "bad crc")

cdef Py_ssize_t HEADER = 16
cdef Py_ssize_t ALIGN = 8


cdef inline Py_ssize_t padded(Py_ssize_t n) nogil:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def frame_bytes(Py_ssize_t payload_len):
    """The bytes a frame with a payload of this length occupies."""
    return HEADER + padded(payload_len)


cdef Py_ssize_t write_frame(unsigned char *out, uint8_t record_type, object payload) except -1:
    cdef Py_buffer view
    if record_type == 0:
        raise ValueError("record type 0 is reserved")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if <uint64_t>view.len > PAYLOAD_BYTES_MAX:
            raise ValueError(f"a frame payload is at most 4 GiB, not {view.len} bytes")
        store_le32(out, <uint32_t>view.len)
        out[4] = record_type
        out[5] = 0
        out[6] = 0
        out[7] = 0
        memcpy(out + HEADER, view.buf, view.len)
        store_le32(out + 8, tessera_crc32c(0, out + HEADER, view.len))
        store_le32(out + 12, tessera_crc32c(0, out, 12))
        memset(out + HEADER + view.len, 0, padded(view.len) - view.len)
        return HEADER + padded(view.len)
    finally:
        PyBuffer_Release(&view)


def encode_frames(frames):
    """The bytes of consecutive frames, one per (record type, payload) in `frames`."""
    cdef list items = list(frames)
    cdef Py_ssize_t total = 0
    for record_type, payload in items:
        total += HEADER + padded(memoryview(payload).nbytes)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef Py_ssize_t pos = 0
    for record_type, payload in items:
        pos += write_frame(p + pos, record_type, payload)
    if pos != total:
        raise ValueError("a payload changed size while the frames were encoded")
    return out


def encode_frame(uint8_t record_type, payload):
    """The bytes of one frame."""
    return encode_frames(((record_type, payload),))


cdef inline bint all_zero(const unsigned char *p, Py_ssize_t n) nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef inline bint header_is_valid(const unsigned char *p) nogil:
    return (
        p[4] != 0 and p[5] == 0 and p[6] == 0 and p[7] == 0
        and load_le32(p + 12) == tessera_crc32c(0, p, 12)
    )


cdef int check_frame(const unsigned char *buf, Py_ssize_t length, Py_ssize_t pos) nogil:
    """-1 if a whole valid frame starts at pos, else the stop reason there."""
    cdef Py_ssize_t remaining = length - pos
    if remaining == 0:
        return STOP_END
    if remaining < HEADER:
        return STOP_END if all_zero(buf + pos, remaining) else STOP_TRUNCATED
    if all_zero(buf + pos, HEADER):
        return STOP_END
    if not header_is_valid(buf + pos):
        return STOP_BAD_HEADER
    cdef uint32_t payload_len = load_le32(buf + pos)
    if <uint64_t>(remaining - HEADER) < <uint64_t>padded(payload_len):
        return STOP_TRUNCATED
    if load_le32(buf + pos + 8) != tessera_crc32c(0, buf + pos + HEADER, payload_len):
        return STOP_BAD_CRC
    return FRAME_VALID


def decode_frames(buf, Py_ssize_t offset=0):
    """Frames from `offset` on: ([(type, offset, payload), ...], stop offset, stop reason)."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    cdef Py_ssize_t length = view.len
    cdef Py_ssize_t pos = offset
    cdef uint32_t payload_len
    cdef int reason
    cdef list records = []
    try:
        if offset < 0 or offset > length or offset % ALIGN:
            raise ValueError(f"offset {offset} is not an aligned position in {length} bytes")
        while True:
            reason = check_frame(p, length, pos)
            if reason != FRAME_VALID:
                return records, pos, reason
            payload_len = load_le32(p + pos)
            records.append((
                p[pos + 4],
                pos,
                PyBytes_FromStringAndSize(<const char *>p + pos + HEADER, payload_len),
            ))
            pos += HEADER + padded(payload_len)
    finally:
        PyBuffer_Release(&view)


def find_valid_frame(buf, Py_ssize_t start=0):
    """The first aligned offset >= start where a whole valid frame stands, or -1."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    cdef Py_ssize_t length = view.len
    cdef Py_ssize_t pos = padded(start if start > 0 else 0)
    cdef Py_ssize_t found = -1
    try:
        with nogil:
            while pos + HEADER <= length:
                # The cheap test first: most positions are zeros or payload.
                if p[pos + 4] != 0 and check_frame(p, length, pos) == FRAME_VALID:
                    found = pos
                    break
                pos += ALIGN
        return found
    finally:
        PyBuffer_Release(&view)
