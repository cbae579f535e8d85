/* Little- and big-endian loads and stores for the codecs (unaligned-safe). */
#ifndef TESSERA_ENDIAN_H
#define TESSERA_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TESSERA_LE64(v) __builtin_bswap64(v)
#define TESSERA_LE32(v) __builtin_bswap32(v)
#define TESSERA_BE64(v) (v)
#else
#define TESSERA_LE64(v) (v)
#define TESSERA_LE32(v) (v)
#define TESSERA_BE64(v) __builtin_bswap64(v)
#endif

static inline void store_le64(unsigned char *p, uint64_t v) { v = TESSERA_LE64(v); memcpy(p, &v, 8); }
static inline void store_le32(unsigned char *p, uint32_t v) { v = TESSERA_LE32(v); memcpy(p, &v, 4); }
static inline void store_be64(unsigned char *p, uint64_t v) { v = TESSERA_BE64(v); memcpy(p, &v, 8); }
static inline uint64_t load_le64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return TESSERA_LE64(v); }
static inline uint32_t load_le32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return TESSERA_LE32(v); }
static inline uint64_t load_be64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return TESSERA_BE64(v); }

#endif
