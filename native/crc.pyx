"""CRC32C (Castagnoli), the checksum of every WAL frame.

`crc32c(data, crc=0)` continues a running checksum as `zlib.crc32` does, so a
stream can be checksummed in pieces. The kernel is chosen once per process:
the CPU's crc32 instruction where it has one, slicing-by-8 tables otherwise.
Large buffers are checksummed without the GIL.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t

from native.crc32c_api cimport tessera_crc32c, tessera_crc32c_kernel, tessera_crc32c_table

# Below this many bytes, taking and releasing the GIL costs more than it frees.
cdef Py_ssize_t NOGIL_MIN_BYTES = 64 * 1024

KERNEL = tessera_crc32c_kernel().decode()


def crc32c(data, uint32_t crc=0):
    """The CRC32C of a bytes-like object, continuing from `crc`."""
    cdef Py_buffer view
    cdef uint32_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= NOGIL_MIN_BYTES:
            with nogil:
                result = tessera_crc32c(crc, view.buf, <size_t>view.len)
        else:
            result = tessera_crc32c(crc, view.buf, <size_t>view.len)
        return result
    finally:
        PyBuffer_Release(&view)


def crc32c_table(data, uint32_t crc=0):
    """`crc32c` computed by the table kernel, whatever the CPU offers."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return tessera_crc32c_table(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
