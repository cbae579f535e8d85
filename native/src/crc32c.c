/* CRC32C kernels and the run-time choice between them (see crc32c.h). */
#include "crc32c.h"

#include <string.h>

#define CRC32C_POLY 0x82F63B78u

/* Slicing-by-8: table[k][b] is the CRC of byte b followed by k zero bytes. */
static uint32_t crc_table[8][256];
static int crc_table_ready;

static void build_tables(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t crc = b;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (CRC32C_POLY & (0u - (crc & 1u)));
        crc_table[0][b] = crc;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            crc_table[k][b] = (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xFF];
    crc_table_ready = 1;
}

static inline uint64_t load_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint32_t crc_table_kernel(uint32_t crc, const unsigned char *p, size_t len) {
    while (len >= 8) {
        uint64_t v = load_le64(p) ^ crc;
        crc = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^
              crc_table[5][(v >> 16) & 0xFF] ^ crc_table[4][(v >> 24) & 0xFF] ^
              crc_table[3][(v >> 32) & 0xFF] ^ crc_table[2][(v >> 40) & 0xFF] ^
              crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t crc_hw_kernel(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t crc64 = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        crc64 = _mm_crc32_u64(crc64, v);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)crc64;
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

static int cpu_has_crc_instruction(void) { return __builtin_cpu_supports("sse4.2"); }
#define HW_KERNEL_NAME "sse4.2"

#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif

__attribute__((target("+crc")))
static uint32_t crc_hw_kernel(uint32_t crc, const unsigned char *p, size_t len) {
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        crc = __crc32cd(crc, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = __crc32cb(crc, *p++);
    return crc;
}

static int cpu_has_crc_instruction(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#define HW_KERNEL_NAME "armv8-crc"

#else
#define crc_hw_kernel crc_table_kernel
static int cpu_has_crc_instruction(void) { return 0; }
#define HW_KERNEL_NAME "table"
#endif

typedef uint32_t (*crc_kernel_fn)(uint32_t, const unsigned char *, size_t);
static crc_kernel_fn chosen_kernel;

static crc_kernel_fn choose_kernel(void) {
    if (!crc_table_ready)
        build_tables();
    if (!chosen_kernel)
        chosen_kernel = cpu_has_crc_instruction() ? crc_hw_kernel : crc_table_kernel;
    return chosen_kernel;
}

uint32_t tessera_crc32c(uint32_t crc, const void *buf, size_t len) {
    crc_kernel_fn kernel = chosen_kernel ? chosen_kernel : choose_kernel();
    return ~kernel(~crc, (const unsigned char *)buf, len);
}

uint32_t tessera_crc32c_table(uint32_t crc, const void *buf, size_t len) {
    choose_kernel();
    return ~crc_table_kernel(~crc, (const unsigned char *)buf, len);
}

const char *tessera_crc32c_kernel(void) {
    return choose_kernel() == crc_table_kernel ? "table" : HW_KERNEL_NAME;
}
