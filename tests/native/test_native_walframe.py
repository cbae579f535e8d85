"""native.walframe against its pure-Python twin."""

import random

import pytest
import reference_walframe as ref
from hypothesis import given
from hypothesis import strategies as st

from native import walframe

frames = st.lists(
    st.tuples(st.integers(min_value=1, max_value=255), st.binary(max_size=100)), max_size=8
)


@given(batch=frames)
def test_encoding_matches_reference_and_decodes_back(batch):
    encoded = walframe.encode_frames(batch)
    assert encoded == ref.encode_frames(batch)
    assert len(encoded) == sum(walframe.frame_bytes(len(payload)) for _, payload in batch)
    assert len(encoded) % walframe.ALIGN_BYTES == 0
    records, stop, reason = walframe.decode_frames(encoded + bytes(64))
    assert [(kind, payload) for kind, _, payload in records] == batch
    assert (stop, reason) == (len(encoded), walframe.END)


@given(batch=frames, data=st.data())
def test_damaged_buffers_decode_as_the_reference_does(batch, data):
    buffer = bytearray(walframe.encode_frames(batch) + bytes(32))
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        position = data.draw(st.integers(min_value=0, max_value=len(buffer) - 1))
        buffer[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(buffer)))
    damaged = bytes(buffer[:cut])
    assert walframe.decode_frames(damaged) == ref.decode_frames(damaged)
    start = data.draw(st.integers(min_value=0, max_value=len(damaged)))
    assert walframe.find_valid_frame(damaged, start) == ref.find_valid_frame(damaged, start)


@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_decode_as_the_reference_does(garbage):
    assert walframe.decode_frames(garbage) == ref.decode_frames(garbage)
    assert walframe.find_valid_frame(garbage) == ref.find_valid_frame(garbage)


def frames_and_buffer():
    batch = [(2, b"a" * 10), (3, b"b" * 24), (4, b"c")]
    return batch, walframe.encode_frames(batch)


def test_every_cut_of_the_last_frame_is_reported_truncated_at_its_start():
    batch, buffer = frames_and_buffer()
    last_start = len(buffer) - walframe.frame_bytes(1)
    for cut in range(last_start + 1, len(buffer)):
        records, stop, reason = walframe.decode_frames(buffer[:cut])
        assert len(records) == 2 and stop == last_start
        assert reason == walframe.TRUNCATED


def test_each_stop_reason_is_named_at_the_damaged_frame():
    batch, buffer = frames_and_buffer()
    second = walframe.frame_bytes(10)
    damaged_length = bytearray(buffer)
    damaged_length[second] ^= 0x40  # payload length of the second frame
    damaged_payload = bytearray(buffer)
    damaged_payload[second + walframe.HEADER_BYTES + 3] ^= 0x01
    for damaged, reason in [(damaged_length, walframe.BAD_HEADER), (damaged_payload, walframe.BAD_CRC)]:
        records, stop, got = walframe.decode_frames(bytes(damaged))
        assert (len(records), stop, got) == (1, second, reason)
        assert walframe.find_valid_frame(bytes(damaged), stop) == second + walframe.frame_bytes(24)


def test_zero_header_is_the_end_of_data():
    _, buffer = frames_and_buffer()
    records, stop, reason = walframe.decode_frames(buffer + bytes(4096))
    assert (len(records), stop, reason) == (3, len(buffer), walframe.END)
    assert walframe.find_valid_frame(buffer + bytes(4096), stop) == -1


def test_large_payloads_and_large_buffers():
    payload = random.Random(7).randbytes(5 * 1024 * 1024 + 3)
    buffer = walframe.encode_frames([(2, payload), (3, b"tail")])
    records, stop, reason = walframe.decode_frames(buffer)
    assert [record[2] for record in records] == [payload, b"tail"] and reason == walframe.END
    assert walframe.find_valid_frame(bytes(8 * 1024 * 1024)) == -1


def test_refuses_reserved_type_and_bad_offsets():
    with pytest.raises(ValueError):
        walframe.encode_frame(0, b"x")
    with pytest.raises(ValueError):
        walframe.decode_frames(bytes(64), 3)
    with pytest.raises(ValueError):
        walframe.decode_frames(bytes(64), 72)
