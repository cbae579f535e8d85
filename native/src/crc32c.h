/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 *
 * tessera_crc32c(crc, buf, len) continues a running CRC the way zlib.crc32
 * does: crc32c(b, crc32c(a)) == crc32c(a + b), starting from 0.  The first
 * call picks the fastest kernel this CPU has: the SSE4.2 crc32 instruction on
 * x86-64, the ARMv8 CRC extension on aarch64, else slicing-by-8 tables. */
#ifndef TESSERA_CRC32C_H
#define TESSERA_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t tessera_crc32c(uint32_t crc, const void *buf, size_t len);

/* The same computation with the table kernel, whatever the CPU has: lets tests
 * and benchmarks compare the two paths. */
uint32_t tessera_crc32c_table(uint32_t crc, const void *buf, size_t len);

/* "sse4.2", "armv8-crc" or "table": the kernel tessera_crc32c uses. */
const char *tessera_crc32c_kernel(void);

#endif
