from libc.stdint cimport uint32_t

cdef extern from "crc32c.h":
    uint32_t tessera_crc32c(uint32_t crc, const void *buf, size_t length) nogil
    uint32_t tessera_crc32c_table(uint32_t crc, const void *buf, size_t length) nogil
    const char *tessera_crc32c_kernel()
