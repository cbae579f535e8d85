/* HPACK (RFC 7541): the decoder of a connection's header blocks, and a
 * stateless encoder.  The API and its error contract are in hpack.h.
 *
 * Decoding reads one whole block, field by field, straight from the caller's
 * buffer: a raw string literal is handed to the callback where it lies in the
 * block, a Huffman-coded one is decoded into the decoder's scratch buffer, a
 * table entry is handed over where the table keeps it.  Nothing is copied
 * twice.
 *
 * The dynamic table.  Entry bytes (name then value) sit in one arena of twice
 * the advertised table size, written front to back; entry slots sit in a ring
 * (a power of two, at least table_bytes_max / 32 slots, as every entry counts
 * at least 32 bytes).  Each slot records where its bytes start as a position
 * in the stream of all bytes ever written, so the live entries always occupy
 * the stream interval [oldest entry's position, arena_end_position), contiguous
 * and in order.  Eviction (RFC 7541 4.4) only moves the oldest slot forward.
 * When a new entry does not fit behind the last one, the live bytes (at most
 * table_bytes_max - 32 per entry) are moved to the front of the arena, which
 * is at least half empty then: amortized, each byte is moved at most once per
 * byte inserted, and every entry stays contiguous, so a lookup is two array
 * reads and a pointer.  A new entry may name an entry that its own insertion
 * evicts (RFC 7541 4.4); that name is copied to the scratch buffer first.
 *
 * Huffman decoding.  hpack_huffman_build derives, once, a state machine from
 * the code table of hpack_huffman.h: the 256 states are the internal nodes of
 * the code tree ("the bits read since the last whole symbol"), and each state
 * has 16 transitions, one per nibble, giving the next state, at most one
 * output octet (a code is at least 5 bits), whether EOS was completed, and
 * whether the string may end there (the pending bits are at most 7 ones).  A
 * string is decoded two table lookups per byte, without branching on the
 * data except for the loop.
 *
 * Invariants are checked with HPACK_ASSERT, which aborts: they are the
 * decoder's own bookkeeping or the encoder's caller breaking its contract,
 * never a peer's bytes (those give HPACK_ERROR_COMPRESSION). */
#include "hpack.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hpack_huffman.h"

#define HPACK_ASSERT(condition) \
    do { \
        if (!(condition)) hpack_assert_failed(#condition, __LINE__); \
    } while (0)

_Noreturn static void hpack_assert_failed(const char *condition, int line)
{
    fprintf(stderr, "hpack.c:%d: assertion failed: %s\n", line, condition);
    abort();
}

/* The scratch buffer's first size; it doubles as needed and is kept for the
 * next block (a connection's blocks are alike). */
#define HPACK_SCRATCH_BYTES_MIN 256

/* The longest integer encoding the encoder writes: 1 prefix byte and 10
 * continuation bytes cover 64 bits. */
#define HPACK_INTEGER_BYTES_MAX 11

/* The longest encoding of a static table index (at most 61) with a 4-bit
 * prefix, as the indexed-name literal writes it: 15 in the prefix and one
 * continuation byte.  Reserved in hpack_literal_bytes_max. */
#define HPACK_INDEX_BYTES_MAX 2

/* ---------------------------------------------------------------- static table */

typedef struct {
    const char *name;
    const char *value;
    uint8_t name_len;
    uint8_t value_len;
} hpack_static_entry;

#define HPACK_STATIC(name, value) { name, value, sizeof(name) - 1, sizeof(value) - 1 }

/* RFC 7541 Appendix A; index i is hpack_static_table[i - 1]. */
static const hpack_static_entry hpack_static_table[HPACK_STATIC_TABLE_ENTRIES] = {
    HPACK_STATIC(":authority", ""),
    HPACK_STATIC(":method", "GET"),
    HPACK_STATIC(":method", "POST"),
    HPACK_STATIC(":path", "/"),
    HPACK_STATIC(":path", "/index.html"),
    HPACK_STATIC(":scheme", "http"),
    HPACK_STATIC(":scheme", "https"),
    HPACK_STATIC(":status", "200"),
    HPACK_STATIC(":status", "204"),
    HPACK_STATIC(":status", "206"),
    HPACK_STATIC(":status", "304"),
    HPACK_STATIC(":status", "400"),
    HPACK_STATIC(":status", "404"),
    HPACK_STATIC(":status", "500"),
    HPACK_STATIC("accept-charset", ""),
    HPACK_STATIC("accept-encoding", "gzip, deflate"),
    HPACK_STATIC("accept-language", ""),
    HPACK_STATIC("accept-ranges", ""),
    HPACK_STATIC("accept", ""),
    HPACK_STATIC("access-control-allow-origin", ""),
    HPACK_STATIC("age", ""),
    HPACK_STATIC("allow", ""),
    HPACK_STATIC("authorization", ""),
    HPACK_STATIC("cache-control", ""),
    HPACK_STATIC("content-disposition", ""),
    HPACK_STATIC("content-encoding", ""),
    HPACK_STATIC("content-language", ""),
    HPACK_STATIC("content-length", ""),
    HPACK_STATIC("content-location", ""),
    HPACK_STATIC("content-range", ""),
    HPACK_STATIC("content-type", ""),
    HPACK_STATIC("cookie", ""),
    HPACK_STATIC("date", ""),
    HPACK_STATIC("etag", ""),
    HPACK_STATIC("expect", ""),
    HPACK_STATIC("expires", ""),
    HPACK_STATIC("from", ""),
    HPACK_STATIC("host", ""),
    HPACK_STATIC("if-match", ""),
    HPACK_STATIC("if-modified-since", ""),
    HPACK_STATIC("if-none-match", ""),
    HPACK_STATIC("if-range", ""),
    HPACK_STATIC("if-unmodified-since", ""),
    HPACK_STATIC("last-modified", ""),
    HPACK_STATIC("link", ""),
    HPACK_STATIC("location", ""),
    HPACK_STATIC("max-forwards", ""),
    HPACK_STATIC("proxy-authenticate", ""),
    HPACK_STATIC("proxy-authorization", ""),
    HPACK_STATIC("range", ""),
    HPACK_STATIC("referer", ""),
    HPACK_STATIC("refresh", ""),
    HPACK_STATIC("retry-after", ""),
    HPACK_STATIC("server", ""),
    HPACK_STATIC("set-cookie", ""),
    HPACK_STATIC("strict-transport-security", ""),
    HPACK_STATIC("transfer-encoding", ""),
    HPACK_STATIC("user-agent", ""),
    HPACK_STATIC("vary", ""),
    HPACK_STATIC("via", ""),
    HPACK_STATIC("www-authenticate", ""),
};

/* ---------------------------------------------------------------- Huffman */

static hpack_huffman_transition hpack_huffman_fsm[HPACK_HUFFMAN_STATES][16];
static bool hpack_huffman_built;

/* Builds hpack_huffman_fsm from hpack_huffman_codes.  Idempotent: a second
 * call (or a racing one) writes the same bytes. */
static void hpack_huffman_build(void)
{
    if (hpack_huffman_built) return;

    /* The code tree: child[node][bit] is 0 while unset (the root, node 0, is
     * nobody's child), a node number > 0 for an internal node, and
     * -(symbol + 1) for a leaf. */
    int16_t child[HPACK_HUFFMAN_STATES][2];
    memset(child, 0, sizeof(child));
    int nodes = 1;
    for (int symbol = 0; symbol < HPACK_HUFFMAN_SYMBOLS; symbol++) {
        uint32_t code = hpack_huffman_codes[symbol].code;
        int bits = hpack_huffman_codes[symbol].bits;
        HPACK_ASSERT(bits >= 5 && bits <= 30);
        HPACK_ASSERT((code >> bits) == 0);
        int node = 0;
        for (int shift = bits - 1; shift > 0; shift--) {
            int bit = (code >> shift) & 1;
            if (child[node][bit] == 0) {
                HPACK_ASSERT(nodes < HPACK_HUFFMAN_STATES);
                child[node][bit] = (int16_t)nodes++;
            }
            HPACK_ASSERT(child[node][bit] > 0); /* no code is a prefix of another */
            node = child[node][bit];
        }
        HPACK_ASSERT(child[node][code & 1] == 0);
        child[node][code & 1] = (int16_t)(-(symbol + 1));
    }
    /* A complete code: 257 leaves, 256 internal nodes, every branch used. */
    HPACK_ASSERT(nodes == HPACK_HUFFMAN_STATES);
    for (int node = 0; node < HPACK_HUFFMAN_STATES; node++) {
        HPACK_ASSERT(child[node][0] != 0 && child[node][1] != 0);
    }

    /* The states a string may end in: up to 7 one bits since the last symbol
     * (RFC 7541 5.2), i.e. the root and the first 7 nodes on EOS's path. */
    bool accepting[HPACK_HUFFMAN_STATES] = {false};
    for (int node = 0, depth = 0; depth <= 7; depth++) {
        accepting[node] = true;
        node = child[node][1];
        HPACK_ASSERT(node > 0);
    }

    for (int state = 0; state < HPACK_HUFFMAN_STATES; state++) {
        for (int nibble = 0; nibble < 16; nibble++) {
            int node = state;
            uint8_t flags = 0;
            uint8_t symbol = 0;
            for (int shift = 3; shift >= 0; shift--) {
                int next = child[node][(nibble >> shift) & 1];
                if (next > 0) {
                    node = next;
                    continue;
                }
                int leaf = -next - 1;
                node = 0;
                if (leaf == HPACK_HUFFMAN_EOS) {
                    flags = HPACK_HUFFMAN_FAIL;
                    break;
                }
                HPACK_ASSERT(!(flags & HPACK_HUFFMAN_EMIT)); /* codes are >= 5 bits */
                flags |= HPACK_HUFFMAN_EMIT;
                symbol = (uint8_t)leaf;
            }
            if (!(flags & HPACK_HUFFMAN_FAIL) && accepting[node]) flags |= HPACK_HUFFMAN_ACCEPT;
            hpack_huffman_fsm[state][nibble] =
                (hpack_huffman_transition){.state = (uint8_t)node, .flags = flags, .symbol = symbol};
        }
    }
    hpack_huffman_built = true;
}

/* At most this many octets come out of `encoded_len` Huffman-coded bytes (a
 * code is at least 5 bits), plus the one byte the decoder may write past the
 * end (it stores every nibble's symbol, wanted or not). */
static size_t hpack_huffman_decoded_bytes_max(size_t encoded_len)
{
    return encoded_len / 5 * 8 + (encoded_len % 5) * 8 / 5 + 1;
}

/* Decodes `in` into `out` (room for hpack_huffman_decoded_bytes_max(in_len)). */
static int hpack_huffman_decode(uint8_t *out, const uint8_t *in, size_t in_len, size_t *out_len)
{
    const uint8_t *in_end = in + in_len;
    uint8_t *cursor = out;
    unsigned state = 0;
    unsigned flags_any = 0;
    unsigned flags_last = HPACK_HUFFMAN_ACCEPT; /* the empty string is valid */
    while (in < in_end) {
        unsigned octet = *in++;
        const hpack_huffman_transition *high = &hpack_huffman_fsm[state][octet >> 4];
        *cursor = high->symbol;
        cursor += high->flags & HPACK_HUFFMAN_EMIT;
        const hpack_huffman_transition *low = &hpack_huffman_fsm[high->state][octet & 0xf];
        *cursor = low->symbol;
        cursor += low->flags & HPACK_HUFFMAN_EMIT;
        state = low->state;
        flags_any |= high->flags | low->flags;
        flags_last = low->flags;
    }
    /* EOS anywhere, or the last bits not a valid padding. */
    if ((flags_any & HPACK_HUFFMAN_FAIL) || !(flags_last & HPACK_HUFFMAN_ACCEPT)) {
        return HPACK_ERROR_COMPRESSION;
    }
    *out_len = (size_t)(cursor - out);
    HPACK_ASSERT(*out_len < hpack_huffman_decoded_bytes_max(in_len));
    return HPACK_OK;
}

/* ---------------------------------------------------------------- the decoder */

typedef struct {
    uint64_t position; /* where the name starts, in the stream of arena bytes */
    uint32_t name_len;
    uint32_t value_len; /* the value follows the name */
} hpack_table_entry;

struct hpack_decoder {
    uint32_t table_bytes_max;   /* SETTINGS_HEADER_TABLE_SIZE advertised: the cap on size updates */
    uint32_t table_bytes_limit; /* the table's maximum size now (RFC 7541 4.2) */
    uint32_t table_bytes;       /* the entries' RFC size now: sum of name + value + 32 */
    uint32_t entries_count;
    uint32_t entry_oldest; /* the oldest entry's slot; the newest is at oldest + count - 1 */
    uint32_t entry_mask;   /* slots - 1; slots is a power of two >= table_bytes_max / 32 */
    hpack_table_entry *entries;
    uint8_t *arena;               /* entry bytes: 2 x table_bytes_max (at least 1) */
    size_t arena_bytes;
    uint64_t arena_base_position; /* the stream position of arena[0] */
    uint64_t arena_end_position;  /* the stream position of the next byte written */
    uint8_t *scratch; /* Huffman-decoded strings and names copied out of the table */
    size_t scratch_bytes;
};

hpack_decoder *hpack_decoder_new(uint32_t table_bytes_max)
{
    hpack_huffman_build();
    hpack_decoder *decoder = calloc(1, sizeof(*decoder));
    if (decoder == NULL) return NULL;
    uint32_t slots = 1;
    while (slots < table_bytes_max / HPACK_ENTRY_OVERHEAD_BYTES) slots *= 2;
    decoder->table_bytes_max = table_bytes_max;
    decoder->table_bytes_limit = table_bytes_max;
    decoder->entry_mask = slots - 1;
    decoder->entries = calloc(slots, sizeof(hpack_table_entry));
    decoder->arena_bytes = table_bytes_max > 0 ? (size_t)table_bytes_max * 2 : 1;
    decoder->arena = malloc(decoder->arena_bytes);
    if (decoder->entries == NULL || decoder->arena == NULL) {
        hpack_decoder_free(decoder);
        return NULL;
    }
    return decoder;
}

void hpack_decoder_free(hpack_decoder *decoder)
{
    if (decoder == NULL) return;
    free(decoder->entries);
    free(decoder->arena);
    free(decoder->scratch);
    free(decoder);
}

uint32_t hpack_decoder_table_bytes(const hpack_decoder *decoder)
{
    return decoder->table_bytes;
}

uint32_t hpack_decoder_table_bytes_limit(const hpack_decoder *decoder)
{
    return decoder->table_bytes_limit;
}

static const uint8_t *hpack_entry_bytes(const hpack_decoder *decoder, const hpack_table_entry *entry)
{
    HPACK_ASSERT(entry->position >= decoder->arena_base_position);
    HPACK_ASSERT(entry->position + entry->name_len + entry->value_len <= decoder->arena_end_position);
    return decoder->arena + (entry->position - decoder->arena_base_position);
}

static void hpack_table_evict_oldest(hpack_decoder *decoder)
{
    HPACK_ASSERT(decoder->entries_count > 0);
    const hpack_table_entry *oldest = &decoder->entries[decoder->entry_oldest];
    uint32_t entry_bytes = oldest->name_len + oldest->value_len + HPACK_ENTRY_OVERHEAD_BYTES;
    HPACK_ASSERT(entry_bytes <= decoder->table_bytes);
    decoder->table_bytes -= entry_bytes;
    decoder->entry_oldest = (decoder->entry_oldest + 1) & decoder->entry_mask;
    decoder->entries_count--;
    if (decoder->entries_count == 0) {
        /* Empty: start the arena over at its front. */
        HPACK_ASSERT(decoder->table_bytes == 0);
        decoder->arena_base_position = decoder->arena_end_position;
    }
}

static void hpack_table_shrink_to(hpack_decoder *decoder, uint32_t table_bytes)
{
    while (decoder->table_bytes > table_bytes) hpack_table_evict_oldest(decoder);
}

/* Adds an entry (RFC 7541 4.4).  name and value must not point into the arena:
 * the eviction and compaction here may overwrite it. */
static void hpack_table_insert(hpack_decoder *decoder, const uint8_t *name, size_t name_len,
                               const uint8_t *value, size_t value_len)
{
    HPACK_ASSERT(name_len == 0 || name < decoder->arena || name >= decoder->arena + decoder->arena_bytes);
    HPACK_ASSERT(value_len == 0 || value < decoder->arena || value >= decoder->arena + decoder->arena_bytes);
    size_t data_bytes = name_len + value_len;
    size_t entry_bytes = data_bytes + HPACK_ENTRY_OVERHEAD_BYTES;
    if (entry_bytes > decoder->table_bytes_limit) {
        /* Larger than the table: it empties the table and is not added. */
        hpack_table_shrink_to(decoder, 0);
        return;
    }
    hpack_table_shrink_to(decoder, decoder->table_bytes_limit - (uint32_t)entry_bytes);

    uint64_t used_bytes = decoder->arena_end_position - decoder->arena_base_position;
    if (used_bytes + data_bytes > decoder->arena_bytes) {
        /* Move the live bytes to the front; the table then holds at most
         * table_bytes_max bytes, less than half the arena. */
        HPACK_ASSERT(decoder->entries_count > 0); /* an empty arena starts at its front */
        uint64_t live_position = decoder->entries[decoder->entry_oldest].position;
        HPACK_ASSERT(live_position >= decoder->arena_base_position);
        size_t live_bytes = (size_t)(decoder->arena_end_position - live_position);
        memmove(decoder->arena, decoder->arena + (live_position - decoder->arena_base_position), live_bytes);
        decoder->arena_base_position = live_position;
        used_bytes = live_bytes;
    }
    HPACK_ASSERT(used_bytes + data_bytes <= decoder->arena_bytes);
    HPACK_ASSERT(decoder->entries_count <= decoder->entry_mask);

    uint8_t *at = decoder->arena + used_bytes;
    if (name_len > 0) memcpy(at, name, name_len);
    if (value_len > 0) memcpy(at + name_len, value, value_len);
    uint32_t slot = (decoder->entry_oldest + decoder->entries_count) & decoder->entry_mask;
    decoder->entries[slot] = (hpack_table_entry){
        .position = decoder->arena_end_position,
        .name_len = (uint32_t)name_len,
        .value_len = (uint32_t)value_len,
    };
    decoder->entries_count++;
    decoder->arena_end_position += data_bytes;
    decoder->table_bytes += (uint32_t)entry_bytes;
    HPACK_ASSERT(decoder->table_bytes <= decoder->table_bytes_limit);
}

/* A header field as the block names it: either bytes somewhere stable during
 * the field (the block, the static table, the arena), or an offset into the
 * scratch buffer, which may still move as it grows. */
typedef struct {
    const uint8_t *bytes;
    size_t len;
    size_t scratch_offset;
    bool in_scratch;
} hpack_string;

static const uint8_t *hpack_string_bytes(const hpack_decoder *decoder, const hpack_string *string)
{
    return string->in_scratch ? decoder->scratch + string->scratch_offset : string->bytes;
}

static int hpack_scratch_reserve(hpack_decoder *decoder, size_t bytes)
{
    if (bytes <= decoder->scratch_bytes) return HPACK_OK;
    size_t grown = decoder->scratch_bytes > 0 ? decoder->scratch_bytes : HPACK_SCRATCH_BYTES_MIN;
    while (grown < bytes) grown *= 2;
    uint8_t *scratch = realloc(decoder->scratch, grown);
    if (scratch == NULL) return HPACK_ERROR_NO_MEMORY;
    decoder->scratch = scratch;
    decoder->scratch_bytes = grown;
    return HPACK_OK;
}

/* An integer with a `prefix_bits` prefix (RFC 7541 5.1) at *position. */
static int hpack_decode_integer(const uint8_t *block, size_t block_len, size_t *position,
                                int prefix_bits, uint32_t *value)
{
    size_t at = *position;
    if (at >= block_len) return HPACK_ERROR_COMPRESSION;
    uint32_t prefix_max = (1u << prefix_bits) - 1;
    uint64_t result = block[at++] & prefix_max;
    if (result == prefix_max) {
        for (int continuation = 0, shift = 0;; continuation++, shift += 7) {
            if (continuation == HPACK_INTEGER_CONTINUATION_BYTES_MAX) return HPACK_ERROR_COMPRESSION;
            if (at >= block_len) return HPACK_ERROR_COMPRESSION;
            uint8_t octet = block[at++];
            result += (uint64_t)(octet & 0x7f) << shift;
            if (!(octet & 0x80)) break;
        }
        if (result > UINT32_MAX) return HPACK_ERROR_COMPRESSION;
    }
    *value = (uint32_t)result;
    *position = at;
    return HPACK_OK;
}

/* A string literal (RFC 7541 5.2) at *position; a Huffman-coded one is decoded
 * into the scratch buffer at *scratch_used, which moves past it. */
static int hpack_decode_string(hpack_decoder *decoder, const uint8_t *block, size_t block_len,
                               size_t *position, hpack_string *string, size_t *scratch_used)
{
    if (*position >= block_len) return HPACK_ERROR_COMPRESSION;
    bool huffman = block[*position] & 0x80;
    uint32_t encoded_len;
    int rc = hpack_decode_integer(block, block_len, position, 7, &encoded_len);
    if (rc != HPACK_OK) return rc;
    if (encoded_len > HPACK_STRING_BYTES_MAX) return HPACK_ERROR_COMPRESSION;
    if (encoded_len > block_len - *position) return HPACK_ERROR_COMPRESSION;
    const uint8_t *encoded = block + *position;
    *position += encoded_len;
    if (!huffman) {
        *string = (hpack_string){.bytes = encoded, .len = encoded_len};
        return HPACK_OK;
    }
    rc = hpack_scratch_reserve(decoder, *scratch_used + hpack_huffman_decoded_bytes_max(encoded_len));
    if (rc != HPACK_OK) return rc;
    size_t decoded_len;
    rc = hpack_huffman_decode(decoder->scratch + *scratch_used, encoded, encoded_len, &decoded_len);
    if (rc != HPACK_OK) return rc;
    *string = (hpack_string){.len = decoded_len, .scratch_offset = *scratch_used, .in_scratch = true};
    *scratch_used += decoded_len;
    return HPACK_OK;
}

/* The field at `index` of the static or dynamic table (RFC 7541 2.3.3). */
static int hpack_table_lookup(const hpack_decoder *decoder, uint32_t index, hpack_string *name, hpack_string *value)
{
    if (index == 0) return HPACK_ERROR_COMPRESSION;
    if (index <= HPACK_STATIC_TABLE_ENTRIES) {
        const hpack_static_entry *entry = &hpack_static_table[index - 1];
        *name = (hpack_string){.bytes = (const uint8_t *)entry->name, .len = entry->name_len};
        *value = (hpack_string){.bytes = (const uint8_t *)entry->value, .len = entry->value_len};
        return HPACK_OK;
    }
    uint32_t age = index - HPACK_STATIC_TABLE_ENTRIES; /* 1 is the newest entry */
    if (age > decoder->entries_count) return HPACK_ERROR_COMPRESSION;
    uint32_t slot = (decoder->entry_oldest + decoder->entries_count - age) & decoder->entry_mask;
    const hpack_table_entry *entry = &decoder->entries[slot];
    const uint8_t *bytes = hpack_entry_bytes(decoder, entry);
    *name = (hpack_string){.bytes = bytes, .len = entry->name_len};
    *value = (hpack_string){.bytes = bytes + entry->name_len, .len = entry->value_len};
    return HPACK_OK;
}

int hpack_decode_block(hpack_decoder *decoder, const uint8_t *block, size_t block_len,
                       size_t header_list_bytes_max, hpack_field_fn on_field, void *context)
{
    size_t position = 0;
    size_t list_bytes = 0;
    bool fields_seen = false;
    bool list_too_large = false;
    while (position < block_len) {
        uint8_t first = block[position];
        hpack_string name, value;
        uint32_t index;
        int rc;
        if (first & 0x80) {
            /* 6.1 Indexed Header Field: 1xxxxxxx */
            rc = hpack_decode_integer(block, block_len, &position, 7, &index);
            if (rc != HPACK_OK) return rc;
            rc = hpack_table_lookup(decoder, index, &name, &value);
            if (rc != HPACK_OK) return rc;
        } else if ((first & 0xe0) == 0x20) {
            /* 6.3 Dynamic Table Size Update: 001xxxxx, only before the first field (4.2). */
            if (fields_seen) return HPACK_ERROR_COMPRESSION;
            uint32_t table_bytes_limit;
            rc = hpack_decode_integer(block, block_len, &position, 5, &table_bytes_limit);
            if (rc != HPACK_OK) return rc;
            if (table_bytes_limit > decoder->table_bytes_max) return HPACK_ERROR_COMPRESSION;
            decoder->table_bytes_limit = table_bytes_limit;
            hpack_table_shrink_to(decoder, table_bytes_limit);
            continue;
        } else {
            /* 6.2.1 with incremental indexing: 01xxxxxx; 6.2.2 without
             * indexing: 0000xxxx; 6.2.3 never indexed: 0001xxxx.  The name is
             * indexed, or a literal when the index is 0. */
            bool indexing = first & 0x40;
            size_t scratch_used = 0;
            rc = hpack_decode_integer(block, block_len, &position, indexing ? 6 : 4, &index);
            if (rc != HPACK_OK) return rc;
            if (index == 0) {
                rc = hpack_decode_string(decoder, block, block_len, &position, &name, &scratch_used);
                if (rc != HPACK_OK) return rc;
            } else {
                hpack_string unused_value;
                rc = hpack_table_lookup(decoder, index, &name, &unused_value);
                if (rc != HPACK_OK) return rc;
                if (indexing && index > HPACK_STATIC_TABLE_ENTRIES && name.len > 0) {
                    /* The insertion below may evict this name: keep a copy. */
                    rc = hpack_scratch_reserve(decoder, name.len);
                    if (rc != HPACK_OK) return rc;
                    memcpy(decoder->scratch, name.bytes, name.len);
                    name = (hpack_string){.len = name.len, .scratch_offset = 0, .in_scratch = true};
                    scratch_used = name.len;
                }
            }
            rc = hpack_decode_string(decoder, block, block_len, &position, &value, &scratch_used);
            if (rc != HPACK_OK) return rc;
            if (indexing) {
                hpack_table_insert(decoder, hpack_string_bytes(decoder, &name), name.len,
                                   hpack_string_bytes(decoder, &value), value.len);
            }
        }

        fields_seen = true;
        if (list_too_large) continue;
        list_bytes += name.len + value.len + HPACK_ENTRY_OVERHEAD_BYTES;
        if (list_bytes > header_list_bytes_max) {
            /* Decode on, for the table's sake, without handing out fields. */
            list_too_large = true;
            continue;
        }
        rc = on_field(context, hpack_string_bytes(decoder, &name), name.len,
                      hpack_string_bytes(decoder, &value), value.len);
        if (rc != 0) return rc;
    }
    return list_too_large ? HPACK_ERROR_LIST_TOO_LARGE : HPACK_OK;
}

/* ---------------------------------------------------------------- the encoder */

static size_t hpack_integer_bytes(int prefix_bits, uint64_t value)
{
    uint64_t prefix_max = (1u << prefix_bits) - 1;
    if (value < prefix_max) return 1;
    size_t bytes = 2;
    for (value -= prefix_max; value >= 128; value >>= 7) bytes++;
    return bytes;
}

size_t hpack_encode_integer(uint8_t *out, uint8_t first_byte_flags, int prefix_bits, uint64_t value)
{
    HPACK_ASSERT(prefix_bits >= 1 && prefix_bits <= 8);
    uint8_t prefix_max = (uint8_t)((1u << prefix_bits) - 1);
    HPACK_ASSERT((first_byte_flags & prefix_max) == 0);
    if (value < prefix_max) {
        out[0] = first_byte_flags | (uint8_t)value;
        return 1;
    }
    out[0] = first_byte_flags | prefix_max;
    size_t written = 1;
    for (value -= prefix_max; value >= 128; value >>= 7) out[written++] = 0x80 | (uint8_t)(value & 0x7f);
    out[written++] = (uint8_t)value;
    HPACK_ASSERT(written <= HPACK_INTEGER_BYTES_MAX);
    return written;
}

/* A raw (not Huffman-coded) string literal. */
static size_t hpack_encode_string(uint8_t *out, const uint8_t *bytes, size_t len)
{
    size_t written = hpack_encode_integer(out, 0x00, 7, len);
    if (len > 0) memcpy(out + written, bytes, len);
    return written + len;
}

size_t hpack_literal_bytes_max(size_t name_len, size_t value_len)
{
    size_t name_bytes = 1 + hpack_integer_bytes(7, name_len) + name_len;
    if (name_bytes < HPACK_INDEX_BYTES_MAX) name_bytes = HPACK_INDEX_BYTES_MAX;
    return name_bytes + hpack_integer_bytes(7, value_len) + value_len;
}

size_t hpack_encode_literal_indexed_name(uint8_t *out, uint32_t static_index, const uint8_t *value, size_t value_len)
{
    /* The stateless encoder never adds to the peer's table: only static names. */
    HPACK_ASSERT(static_index >= 1 && static_index <= HPACK_STATIC_TABLE_ENTRIES);
    size_t written = hpack_encode_integer(out, 0x00, 4, static_index);
    written += hpack_encode_string(out + written, value, value_len);
    HPACK_ASSERT(written <= hpack_literal_bytes_max(0, value_len));
    return written;
}

size_t hpack_encode_literal(uint8_t *out, const uint8_t *name, size_t name_len, const uint8_t *value, size_t value_len)
{
    out[0] = 0x00;
    size_t written = 1 + hpack_encode_string(out + 1, name, name_len);
    written += hpack_encode_string(out + written, value, value_len);
    HPACK_ASSERT(written <= hpack_literal_bytes_max(name_len, value_len));
    return written;
}

size_t hpack_encode_indexed(uint8_t *out, uint32_t index)
{
    HPACK_ASSERT(index >= 1 && index <= HPACK_STATIC_TABLE_ENTRIES);
    return hpack_encode_integer(out, 0x80, 7, index);
}
