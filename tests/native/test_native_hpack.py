"""native.hpack (RFC 7541) against the RFC's examples and its reference twin, the PyPI hpack package.

The decoder is checked three ways: the RFC's Appendix C sequences (fields and
table sizes), random block sequences from hpack.Encoder decoded by both
decoders block after block (fields, table size and table limit equal after
each), and damaged or random bytes, where both decoders must agree on success
or failure and on the fields. The stateless encoder's output is decoded by
hpack.Decoder.
"""

import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import given, settings
from hypothesis import strategies as st

from native import hpack as native_hpack

HPACKError = native_hpack.HPACKError
HeaderListTooLarge = native_hpack.HeaderListTooLarge
huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
NO_LIMIT = 2**40


def reference_decoder(table_bytes_max=4096):
    """hpack.Decoder advertising `table_bytes_max`, as native_hpack.Decoder(table_bytes_max) does."""
    decoder = hpack.Decoder(max_header_list_size=NO_LIMIT)
    decoder.max_allowed_table_size = table_bytes_max
    decoder.header_table_size = table_bytes_max
    return decoder


def reference_table_bytes(decoder):
    return sum(32 + len(name) + len(value) for name, value in decoder.header_table.dynamic_entries)


def outcome(decoder, block):
    """The fields a decoder gives for a block, or "error"."""
    try:
        if isinstance(decoder, native_hpack.Decoder):
            return decoder.decode(block, NO_LIMIT)
        return [(name, value) for name, value in decoder.decode(block, raw=True)]
    except (HPACKError, hpack.HPACKError):
        return "error"


def assert_in_step(ours, reference):
    assert ours.table_size == reference_table_bytes(reference)
    assert ours.table_size_limit == reference.header_table_size


def literal(name, value, first_byte=0x00, name_huffman=False, value_huffman=False):
    """A literal field with a new name (RFC 7541 6.2), strings raw or Huffman-coded."""
    block = bytearray([first_byte])
    for string, coded in ((name, name_huffman), (value, value_huffman)):
        if coded:
            string = huffman.encode(string)
        block += native_hpack.encode_integer(0x80 if coded else 0x00, 7, len(string)) + string
    return bytes(block)


def huffman_value(encoded):
    """A literal without indexing, name "a", whose value is the Huffman-coded bytes `encoded`."""
    return b"\x00\x01a" + native_hpack.encode_integer(0x80, 7, len(encoded)) + encoded


# ---------------------------------------------------------------- RFC 7541 Appendix C

REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
     (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
     (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
REQUEST_TABLE_BYTES = [57, 110, 164]
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
     (b"location", b"https://www.example.com")],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
     (b"location", b"https://www.example.com")],
    [(b":status", b"200"), (b"cache-control", b"private"), (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
     (b"location", b"https://www.example.com"), (b"content-encoding", b"gzip"),
     (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")],
]
RESPONSE_TABLE_BYTES = [222, 222, 215]

# section: (SETTINGS_HEADER_TABLE_SIZE, hex of each block, header lists, table size after each)
APPENDIX_C = {
    "C.3": (4096, [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ], REQUESTS, REQUEST_TABLE_BYTES),
    "C.4": (4096, [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ], REQUESTS, REQUEST_TABLE_BYTES),
    "C.5": (256, [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
        "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
        "6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
        "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
        "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
        "3d31",
    ], RESPONSES, RESPONSE_TABLE_BYTES),
    "C.6": (256, [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
        "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
        "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
        "9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ], RESPONSES, RESPONSE_TABLE_BYTES),
}


def appendix_c(section):
    table_bytes_max, blocks, header_lists, table_sizes = APPENDIX_C[section]
    return table_bytes_max, [bytes.fromhex(block) for block in blocks], header_lists, table_sizes


@pytest.mark.parametrize("section", sorted(APPENDIX_C))
def test_appendix_c_sequences_decode_as_the_rfc_says(section):
    table_bytes_max, blocks, header_lists, table_sizes = appendix_c(section)
    ours, reference = native_hpack.Decoder(table_bytes_max), reference_decoder(table_bytes_max)
    for block, fields, table_size in zip(blocks, header_lists, table_sizes):
        assert ours.decode(block) == fields
        assert ours.table_size == table_size
        assert outcome(reference, block) == fields  # the transcription, checked by the twin
        assert_in_step(ours, reference)


@pytest.mark.parametrize("section", sorted(APPENDIX_C))
def test_every_truncation_of_an_appendix_c_block_fails_or_gives_a_prefix(section):
    table_bytes_max, blocks, header_lists, _ = appendix_c(section)
    for position, (block, fields) in enumerate(zip(blocks, header_lists)):
        for cut in range(len(block)):
            ours = native_hpack.Decoder(table_bytes_max)
            for earlier in blocks[:position]:
                ours.decode(earlier)
            got = outcome(ours, block[:cut])
            assert got == "error" or got == fields[:len(got)], (position, cut)


def test_integer_examples_of_appendix_c1():
    assert native_hpack.encode_integer(0x00, 5, 10) == bytes([0b01010])
    assert native_hpack.encode_integer(0xE0, 5, 1337) == bytes([0xFF, 0x9A, 0x0A])
    assert native_hpack.encode_integer(0x00, 8, 42) == bytes([42])


def test_representation_examples_of_appendix_c2():
    decoder = native_hpack.Decoder()
    assert decoder.decode(bytes.fromhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == [
        (b"custom-key", b"custom-header")]
    assert decoder.table_size == 55
    assert decoder.decode(bytes.fromhex("040c 2f73 616d 706c 652f 7061 7468")) == [(b":path", b"/sample/path")]
    assert decoder.decode(bytes.fromhex("1008 7061 7373 776f 7264 0673 6563 7265 74")) == [(b"password", b"secret")]
    assert decoder.decode(bytes.fromhex("82")) == [(b":method", b"GET")]
    assert decoder.table_size == 55


# ---------------------------------------------------------------- against hpack.Encoder / hpack.Decoder

STATIC_NAMES = [b":method", b":path", b":authority", b":status", b"content-type", b"te", b"user-agent",
                b"grpc-timeout", b"grpc-encoding", b"set-cookie", b"cache-control"]
names = st.one_of(st.sampled_from(STATIC_NAMES), st.binary(max_size=12))
values = st.one_of(
    st.sampled_from([b"", b"GET", b"POST", b"/", b"200", b"application/grpc", b"trailers"]),
    st.binary(max_size=40),
    st.binary(min_size=100, max_size=700),  # multi-byte lengths; some evict a small table whole
)
headers = st.lists(st.tuples(names, values, st.booleans()), max_size=8)  # (name, value, never indexed)
blocks = st.lists(
    st.tuples(headers, st.booleans(), st.lists(st.integers(min_value=0, max_value=1 << 14), max_size=2)),
    min_size=1, max_size=6,
)  # (headers, Huffman?, table size changes before the block, taken modulo the max + 1)
table_bytes_maxes = st.sampled_from([4096, 256, 100, 0, 10000])


def encode_sequence(table_bytes_max, sequence):
    """The blocks hpack.Encoder writes for a sequence, and the header lists they carry."""
    encoder = hpack.Encoder()
    encoded, lists = [], []
    for position, (fields, huffman_on, size_changes) in enumerate(sequence):
        if position == 0 and table_bytes_max < 4096:
            size_changes = [table_bytes_max, *size_changes]  # first shrink to what was advertised
        for change in size_changes:
            # hpack.Encoder forgets a pending size update when set again to the same size: skip those.
            if change % (table_bytes_max + 1) != encoder.header_table_size:
                encoder.header_table_size = change % (table_bytes_max + 1)
        encoded.append(encoder.encode([(name, value, sensitive) for name, value, sensitive in fields],
                                      huffman=huffman_on))
        lists.append([(name, value) for name, value, _ in fields])
    return encoded, lists


@settings(max_examples=100, deadline=None)
@given(table_bytes_max=table_bytes_maxes, sequence=blocks)
def test_block_sequences_from_the_reference_encoder_decode_as_the_reference_does(table_bytes_max, sequence):
    encoded, lists = encode_sequence(table_bytes_max, sequence)
    ours, reference = native_hpack.Decoder(table_bytes_max), reference_decoder(table_bytes_max)
    for block, fields in zip(encoded, lists):
        assert ours.decode(block) == fields
        assert outcome(reference, block) == fields
        assert_in_step(ours, reference)


@settings(max_examples=40, deadline=None)
@given(table_bytes_max=table_bytes_maxes, sequence=blocks)
def test_every_truncation_of_the_last_block_fails_or_gives_a_prefix(table_bytes_max, sequence):
    encoded, lists = encode_sequence(table_bytes_max, sequence)
    *earlier, last = encoded
    for cut in range(len(last)):
        ours = native_hpack.Decoder(table_bytes_max)
        for block in earlier:
            ours.decode(block)
        got = outcome(ours, last[:cut])
        assert got == "error" or got == lists[-1][:len(got)]


@settings(max_examples=100, deadline=None)
@given(table_bytes_max=table_bytes_maxes, sequence=blocks, data=st.data())
def test_damaged_blocks_decode_as_the_reference_does(table_bytes_max, sequence, data):
    encoded, _ = encode_sequence(table_bytes_max, sequence)
    ours, reference = native_hpack.Decoder(table_bytes_max), reference_decoder(table_bytes_max)
    *earlier, last = encoded
    for block in earlier:
        assert outcome(ours, block) == outcome(reference, block)
    damaged = bytearray(last or b"\x00")
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        position = data.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
        damaged[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    got = outcome(ours, bytes(damaged))
    assert got == outcome(reference, bytes(damaged))
    if got != "error":
        assert_in_step(ours, reference)


@settings(max_examples=1000, deadline=None)
@given(garbage=st.binary(max_size=48))
def test_random_bytes_decode_as_the_reference_does(garbage):
    assert outcome(native_hpack.Decoder(), garbage) == outcome(reference_decoder(), garbage)


def test_long_sequences_keep_the_tables_in_step():
    """Many insertions through small tables: eviction, arena compaction, names of evicted entries."""
    generator = random.Random(7541)
    for table_bytes_max in (64, 100, 256, 4096):
        encoder = hpack.Encoder()
        encoder.header_table_size = min(table_bytes_max, 4096)
        ours, reference = native_hpack.Decoder(table_bytes_max), reference_decoder(table_bytes_max)
        for _ in range(300):
            fields = [(generator.choice([b"x-a", b"x-b", b"content-type", b":path"]),
                       generator.randbytes(generator.choice([0, 1, 5, 20, 60, 200])))
                      for _ in range(generator.randint(1, 6))]
            block = encoder.encode(fields, huffman=generator.random() < 0.5)
            assert ours.decode(block) == fields
            assert outcome(reference, block) == fields
            assert_in_step(ours, reference)


def test_a_new_entry_may_name_the_entry_its_insertion_evicts():
    """RFC 7541 4.4: the name must survive the eviction of the entry it came from."""
    decoder = native_hpack.Decoder(table_bytes_max=100)
    decoder.decode(literal(b"name", b"v" * 50, first_byte=0x40))
    assert decoder.table_size == 86
    block = native_hpack.encode_integer(0x40, 6, 62) + native_hpack.encode_integer(0x00, 7, 50) + b"w" * 50
    assert decoder.decode(block) == [(b"name", b"w" * 50)]
    assert decoder.table_size == 86
    assert decoder.decode(b"\xbe") == [(b"name", b"w" * 50)]
    with pytest.raises(HPACKError):
        decoder.decode(b"\xbf")


# ---------------------------------------------------------------- Huffman


def test_every_octet_decodes_from_its_huffman_code():
    everything = bytes(range(256)) * 2
    decoder = native_hpack.Decoder()
    assert decoder.decode(literal(everything, everything[::-1], name_huffman=True, value_huffman=True)) == [
        (everything, everything[::-1])]


def test_all_one_and_two_byte_huffman_strings_decode_as_the_reference_does():
    """Exhaustive over 65,792 strings: every state machine transition from the root and one level on."""
    decoder = native_hpack.Decoder()
    for length in (1, 2):
        for number in range(1 << (8 * length)):
            encoded = number.to_bytes(length, "big")
            try:
                expected = [(b"a", decode_huffman(encoded))]
            except hpack.HPACKError:
                expected = "error"
            assert outcome(decoder, huffman_value(encoded)) == expected, encoded.hex()


@given(value=st.binary(max_size=300))
def test_huffman_strings_of_the_reference_encoder_decode(value):
    assert native_hpack.Decoder().decode(huffman_value(huffman.encode(value))) == [(b"a", value)]


@settings(max_examples=300)
@given(encoded=st.binary(min_size=1, max_size=12))
def test_random_huffman_strings_decode_as_the_reference_does(encoded):
    try:
        expected = [(b"a", decode_huffman(encoded))]
    except hpack.HPACKError:
        expected = "error"
    assert outcome(native_hpack.Decoder(), huffman_value(encoded)) == expected


def test_the_longest_expansion_decodes():
    """Five-bit codes only: 8 octets out of every 5 in."""
    value = b"0123456789acegiost" * 200
    assert native_hpack.Decoder().decode(huffman_value(huffman.encode(value))) == [(b"a", value)]


# ---------------------------------------------------------------- the stateless encoder

long_values = st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=20000))


@settings(max_examples=100, deadline=None)
@given(fields=st.lists(st.tuples(st.binary(max_size=300), long_values), max_size=6))
def test_our_literals_decode_with_the_reference_and_ours(fields):
    block = native_hpack.encode(fields)
    assert outcome(reference_decoder(), block) == fields
    decoder = native_hpack.Decoder()
    assert decoder.decode(block, NO_LIMIT) == fields
    assert decoder.table_size == 0  # never indexed: the peer's table stays empty


@given(index=st.integers(min_value=1, max_value=61), value=long_values)
def test_static_indexes_and_indexed_names_decode_with_the_reference(index, value):
    name, static_value = hpack.table.HeaderTable.STATIC_TABLE[index - 1]
    assert outcome(reference_decoder(), native_hpack.encode_indexed(index)) == [(name, static_value)]
    assert outcome(reference_decoder(), native_hpack.encode_literal_indexed_name(index, value)) == [(name, value)]
    assert native_hpack.Decoder().decode(native_hpack.encode_literal_indexed_name(index, value)) == [(name, value)]


def test_encoded_forms():
    assert native_hpack.encode_indexed(8) == b"\x88"  # :status: 200
    assert native_hpack.encode_literal_indexed_name(31, b"application/grpc") == b"\x0f\x10\x10application/grpc"
    assert native_hpack.encode([(b"grpc-status", b"0")]) == b"\x00\x0bgrpc-status\x010"


@given(prefix_bits=st.integers(min_value=1, max_value=8), value=st.integers(min_value=0, max_value=2**64 - 1))
def test_integers_encode_as_the_reference_does(prefix_bits, value):
    flags = 0xFF & ~((1 << prefix_bits) - 1)
    expected = hpack.hpack.encode_integer(value, prefix_bits)
    expected[0] |= flags
    assert native_hpack.encode_integer(flags, prefix_bits, value) == bytes(expected)


def test_encoder_arguments_out_of_range_are_refused():
    for index in (0, 62):
        with pytest.raises(ValueError):
            native_hpack.encode_indexed(index)
        with pytest.raises(ValueError):
            native_hpack.encode_literal_indexed_name(index, b"")
    with pytest.raises(ValueError):
        native_hpack.encode_integer(0x01, 5, 1)
    with pytest.raises(ValueError):
        native_hpack.encode_integer(0x00, 0, 1)


# ---------------------------------------------------------------- malformed blocks


def fresh_with_one_entry():
    decoder = native_hpack.Decoder()
    decoder.decode(literal(b"k", b"v", first_byte=0x40))
    return decoder


MALFORMED = {
    "index 0": b"\x80",
    "index past the dynamic table": b"\xbf",  # 63; the table holds one entry (62)
    "indexed name past the dynamic table": b"\x7f\x00\x01v",  # 6.2.1 with name index 63
    "indexed name past the tables, without indexing": b"\x0f\x30\x01v",  # index 15 + 48 = 63
    "integer of 2**32": b"\xff" + bytes([0x81, 0xFF, 0xFF, 0xFF, 0x0F]),  # 127 + 2**32 - 127
    "integer with 6 continuation bytes": b"\xff\x80\x80\x80\x80\x80\x00",
    "truncated integer": b"\xff\x80",
    "truncated string": b"\x00\x05ab",
    "truncated name": b"\x00\x81",
    "missing value": b"\x00\x01a",
    "string over 1 MiB": b"\x00\x01a" + native_hpack.encode_integer(0x00, 7, (1 << 20) + 1) + bytes((1 << 20) + 1),
    "Huffman padding of 8 ones": huffman_value(b"\x1f\xff"),  # "a" (00011), then 11 one bits
    "Huffman padding of zeros": huffman_value(b"\x18"),  # "a", then 000
    "Huffman EOS": huffman_value(b"\xff\xff\xff\xff"),  # EOS (30 ones) then 2 ones
    "Huffman EOS after a symbol": huffman_value(b"\x1f\xff\xff\xff\xff"),  # "a", EOS, 5 ones of padding
    "size update above the max": native_hpack.encode_integer(0x20, 5, 4097),
    "size update after a field": b"\x82\x20",
    "size update between fields": b"\x20\x82\x3f\x01",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_blocks_are_compression_errors(case):
    block = MALFORMED[case]
    with pytest.raises(HPACKError) as raised:
        fresh_with_one_entry().decode(block)
    assert not isinstance(raised.value, HeaderListTooLarge)
    reference = reference_decoder()
    reference.decode(literal(b"k", b"v", first_byte=0x40))
    if case != "string over 1 MiB":  # the reference sets no such limit
        assert outcome(reference, block) == "error"


def test_well_formed_neighbours_of_the_malformed_cases_decode():
    decoder = fresh_with_one_entry()
    assert decoder.decode(b"\xbe") == [(b"k", b"v")]
    assert decoder.decode(b"\x3f\xe1\x9f\x80\x80\x00") == []  # 4096 in 5 continuation bytes, 3 of them idle
    assert decoder.decode(huffman_value(b"\x1f")) == [(b"a", b"a")]  # "a" and 3 one bits
    assert huffman.encode(b"aaaaa") == bytes.fromhex("18c6 31ff")  # 25 bits, then 7 ones
    assert decoder.decode(huffman_value(bytes.fromhex("18c6 31ff"))) == [(b"a", b"aaaaa")]
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # two updates: 0, then 4096
    assert decoder.table_size == 0 and decoder.table_size_limit == 4096
    big = native_hpack.Decoder(table_bytes_max=100000)
    assert big.decode(native_hpack.encode_integer(0x20, 5, 100000)) == []
    assert big.table_size_limit == 100000


def test_a_shrinking_size_update_evicts():
    table_bytes_max, blocks, _, _ = appendix_c("C.3")
    decoder = native_hpack.Decoder(table_bytes_max)
    for block in blocks:
        decoder.decode(block)
    assert decoder.decode(native_hpack.encode_integer(0x20, 5, 110)) == []
    assert decoder.table_size == 107  # custom-key (54) and cache-control (53) stay
    assert decoder.decode(b"\xbf") == [(b"cache-control", b"no-cache")]
    with pytest.raises(HPACKError):
        decoder.decode(b"\xc0")
    assert decoder.decode(b"\x20") == [] and decoder.table_size == 0
    with pytest.raises(HPACKError):
        decoder.decode(b"\xbe")


def test_a_zero_table_never_holds_an_entry():
    decoder = native_hpack.Decoder(table_bytes_max=0)
    assert decoder.decode(literal(b"k", b"v", first_byte=0x40)) == [(b"k", b"v")]
    assert decoder.table_size == 0
    with pytest.raises(HPACKError):
        decoder.decode(b"\xbe")
    with pytest.raises(HPACKError):
        decoder.decode(b"\x21")


# ---------------------------------------------------------------- the header list limit


def test_a_list_over_the_limit_is_decoded_whole_and_the_table_stays_in_step():
    table_bytes_max, blocks, header_lists, table_sizes = appendix_c("C.5")
    decoder = native_hpack.Decoder(table_bytes_max)
    list_bytes = sum(32 + len(name) + len(value) for name, value in header_lists[0])
    assert decoder.decode(blocks[0], list_bytes) == header_lists[0]  # exactly at the limit
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(blocks[1], 40)  # the first field alone (42 bytes) is over
    assert decoder.table_size == table_sizes[1]
    assert decoder.decode(blocks[2]) == header_lists[2]
    assert decoder.table_size == table_sizes[2]


def test_a_malformed_block_over_the_limit_is_a_compression_error():
    with pytest.raises(HPACKError) as raised:
        native_hpack.Decoder().decode(b"\x82\x82\x80", 40)
    assert not isinstance(raised.value, HeaderListTooLarge)
