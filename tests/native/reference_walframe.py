"""Pure-Python WAL framing: the reference native.walframe is held to."""

import struct

from reference_crc import crc32c

HEADER_BYTES = 16
ALIGN_BYTES = 8
END, TRUNCATED, BAD_HEADER, BAD_CRC = range(4)


def _padded(n: int) -> int:
    return (n + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


def encode_frames(frames) -> bytes:
    out = bytearray()
    for record_type, payload in frames:
        payload = bytes(payload)
        head = struct.pack("<IB3xI", len(payload), record_type, crc32c(payload))
        out += head + struct.pack("<I", crc32c(head)) + payload
        out += bytes(_padded(len(payload)) - len(payload))
    return bytes(out)


def _check_frame(buf: bytes, pos: int):
    """None when a whole valid frame starts at pos, else the stop reason."""
    remaining = buf[pos:]
    if not remaining:
        return END
    if len(remaining) < HEADER_BYTES:
        return END if not any(remaining) else TRUNCATED
    header = remaining[:HEADER_BYTES]
    if not any(header):
        return END
    length, record_type, payload_crc, header_crc = struct.unpack("<IB3xII", header)
    if record_type == 0 or any(header[5:8]) or crc32c(header[:12]) != header_crc:
        return BAD_HEADER
    if len(remaining) - HEADER_BYTES < _padded(length):
        return TRUNCATED
    if crc32c(remaining[HEADER_BYTES : HEADER_BYTES + length]) != payload_crc:
        return BAD_CRC
    return None


def decode_frames(buf: bytes, offset: int = 0):
    buf = bytes(buf)
    records = []
    pos = offset
    while True:
        reason = _check_frame(buf, pos)
        if reason is not None:
            return records, pos, reason
        (length,) = struct.unpack_from("<I", buf, pos)
        records.append((buf[pos + 4], pos, buf[pos + HEADER_BYTES : pos + HEADER_BYTES + length]))
        pos += HEADER_BYTES + _padded(length)


def find_valid_frame(buf: bytes, start: int = 0) -> int:
    buf = bytes(buf)
    for pos in range(_padded(max(start, 0)), len(buf) - HEADER_BYTES + 1, ALIGN_BYTES):
        if _check_frame(buf, pos) is None:
            return pos
    return -1
