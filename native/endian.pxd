from libc.stdint cimport uint32_t, uint64_t

cdef extern from "endian.h":
    void store_le64(unsigned char *p, uint64_t v) nogil
    void store_le32(unsigned char *p, uint32_t v) nogil
    void store_be64(unsigned char *p, uint64_t v) nogil
    uint64_t load_le64(const unsigned char *p) nogil
    uint32_t load_le32(const unsigned char *p) nogil
    uint64_t load_be64(const unsigned char *p) nogil
