"""Pure-Python entry codec and revision keys: the reference native.codec is held to."""

import struct

ENTRY_HEADER = struct.Struct("<QQBI")
REVISION_MAX = 2**63 - 1


class CodecError(ValueError):
    pass


def encode_entry(term, index, entry_type, data) -> bytes:
    data = bytes(data)
    return ENTRY_HEADER.pack(term, index, entry_type, len(data)) + data


def _read_entry(buf: bytes, pos: int):
    if len(buf) - pos < ENTRY_HEADER.size:
        raise CodecError("entry header cut short")
    term, index, entry_type, length = ENTRY_HEADER.unpack_from(buf, pos)
    start = pos + ENTRY_HEADER.size
    if len(buf) - start < length:
        raise CodecError("entry data cut short")
    return (term, index, entry_type, buf[start : start + length]), start + length


def decode_entry(buf: bytes):
    entry, pos = _read_entry(bytes(buf), 0)
    if pos != len(buf):
        raise CodecError("trailing bytes")
    return entry


def encode_entries(entries) -> bytes:
    entries = list(entries)
    return struct.pack("<I", len(entries)) + b"".join(encode_entry(*entry) for entry in entries)


def decode_entries(buf: bytes):
    buf = bytes(buf)
    if len(buf) < 4:
        raise CodecError("batch header cut short")
    (count,) = struct.unpack_from("<I", buf)
    pos = 4
    entries = []
    for _ in range(count):
        entry, pos = _read_entry(buf, pos)
        entries.append(entry)
    if pos != len(buf):
        raise CodecError("trailing bytes")
    return entries


def encode_revision(main: int, sub: int, tombstone: bool = False) -> bytes:
    if not (0 <= main <= REVISION_MAX and 0 <= sub <= REVISION_MAX):
        raise CodecError("revision out of range")
    return main.to_bytes(8, "big") + b"_" + sub.to_bytes(8, "big") + (b"t" if tombstone else b"")


def decode_revision(key: bytes):
    key = bytes(key)
    if len(key) not in (17, 18) or key[8:9] != b"_" or (len(key) == 18 and key[17:] != b"t"):
        raise CodecError("not a revision key")
    main, sub = int.from_bytes(key[:8], "big"), int.from_bytes(key[9:17], "big")
    if main > REVISION_MAX or sub > REVISION_MAX:
        raise CodecError("revision out of range")
    return main, sub, len(key) == 18
