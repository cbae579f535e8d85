/* HPACK (RFC 7541): header compression for the native HTTP/2 edge.
 *
 * The decoder is complete: static and dynamic tables, dynamic table size
 * updates, Huffman-coded strings.  One hpack_decoder serves one connection's
 * header blocks, in the order they arrived; the dynamic table it keeps must
 * stay in step with the peer's encoder, so every block is decoded to its end,
 * even one whose header list is over the limit.  Any error other than
 * HPACK_ERROR_LIST_TOO_LARGE leaves the table out of step: the connection must
 * end (COMPRESSION_ERROR for HPACK_ERROR_COMPRESSION).
 *
 * The encoder is stateless: indexed fields of the static table and literals
 * without indexing, never Huffman-coded.  It never adds to the peer's dynamic
 * table, so it needs no state and never sends a table size update; constant
 * response headers can be encoded once and copied.
 *
 * Integers are at most 2^32 - 1 (hpack_decode_block rejects larger ones); the
 * limits below are the decoder's.  No function allocates except
 * hpack_decoder_new (the decoder's tables) and hpack_decode_block (its scratch
 * buffer for Huffman-decoded strings, grown on demand and kept). */
#ifndef TESSERA_HPACK_H
#define TESSERA_HPACK_H

#include <stddef.h>
#include <stdint.h>

enum {
    HPACK_OK = 0,
    HPACK_ERROR_COMPRESSION = -1,    /* malformed block: the connection must end with COMPRESSION_ERROR */
    HPACK_ERROR_LIST_TOO_LARGE = -2, /* block decoded whole (table kept in sync) but the header list exceeded the limit */
    HPACK_ERROR_NO_MEMORY = -3,
};

/* The longest string literal accepted, in encoded bytes (before Huffman
 * decoding).  Far above any header a gRPC peer sends; a longer length prefix is
 * an attack or garbage, and refusing it bounds the scratch buffer. */
#define HPACK_STRING_BYTES_MAX (1u << 20)

/* The most continuation bytes an integer may have (RFC 7541 5.1): 5 x 7 = 35
 * bits cover any value below 2^32 with any prefix.  More is a COMPRESSION error
 * (RFC 7541 5.1 allows refusing over-long encodings), as is a value >= 2^32. */
#define HPACK_INTEGER_CONTINUATION_BYTES_MAX 5

/* Entries of the static table (RFC 7541 Appendix A); dynamic indexes follow. */
#define HPACK_STATIC_TABLE_ENTRIES 61

/* The RFC's size of a table entry or header list field: name + value + 32. */
#define HPACK_ENTRY_OVERHEAD_BYTES 32

typedef struct hpack_decoder hpack_decoder;

/* `table_bytes_max`: the SETTINGS_HEADER_TABLE_SIZE this side advertised (4096
   by default); a dynamic table size update above it is a COMPRESSION error.
   Allocates 2.5 to 3 x table_bytes_max bytes up front (a byte arena of twice
   the table size, and 16-byte entry slots: the power of two at or above
   table_bytes_max / 32); 10 KiB for 4096.  NULL when out of memory. */
hpack_decoder *hpack_decoder_new(uint32_t table_bytes_max);
void hpack_decoder_free(hpack_decoder *decoder);

/* The dynamic table's size now, in RFC bytes (sum of name + value + 32). */
uint32_t hpack_decoder_table_bytes(const hpack_decoder *decoder);
/* The dynamic table's maximum size now: table_bytes_max until the peer's
   encoder sends a size update, then the last size it set. */
uint32_t hpack_decoder_table_bytes_limit(const hpack_decoder *decoder);

/* Called once per decoded header field, in order; name/value point at memory
   valid only during the call.  Return 0 to go on; non-zero stops decoding and
   hpack_decode_block returns that value. */
typedef int (*hpack_field_fn)(void *context, const uint8_t *name, size_t name_len,
                              const uint8_t *value, size_t value_len);

/* Decode one complete header block (HEADERS plus its CONTINUATIONs, already
   joined).  `header_list_bytes_max`: RFC 7540's SETTINGS_MAX_HEADER_LIST_SIZE
   measure (sum of name + value + 32 per field).  When the list exceeds it, keep
   decoding to keep the dynamic table in sync, stop calling `on_field`, and
   return HPACK_ERROR_LIST_TOO_LARGE at the end (a malformed block still gives
   HPACK_ERROR_COMPRESSION).  A dynamic table size update is valid only at the
   start of a block (RFC 7541 4.2), before any field; several in a row are
   allowed.  Anything malformed is HPACK_ERROR_COMPRESSION: an index of 0 or
   past the tables, an integer of 2^32 or more or with more than
   HPACK_INTEGER_CONTINUATION_BYTES_MAX continuation bytes, a truncated string or
   integer, a string longer than HPACK_STRING_BYTES_MAX, Huffman padding longer
   than 7 bits or not all ones, an EOS symbol inside a string, a size update
   above table_bytes_max or not at the start. */
int hpack_decode_block(hpack_decoder *decoder, const uint8_t *block, size_t block_len,
                       size_t header_list_bytes_max, hpack_field_fn on_field, void *context);

/* The stateless encoder: literal header field without indexing (RFC 7541
   6.2.2), never Huffman.  Each returns the bytes written at `out`; the caller
   guarantees room: hpack_literal_bytes_max(name_len, value_len) (name_len 0 for
   the indexed-name form).  Indexes are static ones, 1 to 61 (the encoder never
   adds to the peer's table), else abort(); hpack_encode_indexed writes 1 byte. */
size_t hpack_literal_bytes_max(size_t name_len, size_t value_len);
size_t hpack_encode_literal_indexed_name(uint8_t *out, uint32_t static_index, const uint8_t *value, size_t value_len);
size_t hpack_encode_literal(uint8_t *out, const uint8_t *name, size_t name_len, const uint8_t *value, size_t value_len);
size_t hpack_encode_indexed(uint8_t *out, uint32_t index); /* 6.1, e.g. static 8 = ":status: 200" -> 0x88 */
size_t hpack_encode_integer(uint8_t *out, uint8_t first_byte_flags, int prefix_bits, uint64_t value); /* 5.1 */

#endif
