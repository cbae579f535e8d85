"""native.crc against its pure-Python twin, on both of its kernels."""

import os
import zlib

import pytest
import reference_crc
from hypothesis import given
from hypothesis import strategies as st

from native import crc

KERNELS = [crc.crc32c, crc.crc32c_table]
crc_values = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_known_answer(kernel):
    assert kernel(b"123456789") == 0xE3069283
    assert kernel(b"") == 0


def test_hardware_kernel_is_used_where_the_cpu_has_it():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " sse4_2" in flags:
        assert crc.KERNEL == "sse4.2"
    assert crc.KERNEL in ("sse4.2", "armv8-crc", "table")


@pytest.mark.parametrize("kernel", KERNELS)
@given(data=st.binary(max_size=4096), start=crc_values)
def test_agrees_with_reference(kernel, data, start):
    assert kernel(data, start) == reference_crc.crc32c(data, start)


@given(data=st.binary(max_size=2048), cut=st.integers(min_value=0, max_value=2048))
def test_streaming_equals_whole(data, cut):
    head, tail = data[:cut], data[cut:]
    assert crc.crc32c(tail, crc.crc32c(head)) == crc.crc32c(data)


@given(data=st.binary(max_size=64), offset=st.integers(min_value=0, max_value=15))
def test_any_alignment_and_buffer_type(data, offset):
    buffer = bytearray(offset) + bytearray(data)
    view = memoryview(buffer)[offset:]
    assert crc.crc32c(view) == crc.crc32c(bytes(data)) == reference_crc.crc32c(data)


def test_large_buffer_both_kernels_and_reference():
    data = os.urandom(3 * 1024 * 1024 + 5)  # past the no-GIL threshold, odd length
    assert crc.crc32c(data) == crc.crc32c_table(data)
    part = data[: 256 * 1024 + 3]
    assert crc.crc32c(part) == reference_crc.crc32c(part)


def test_differs_from_zlib_crc32():
    # Castagnoli, not the IEEE polynomial zlib uses.
    assert crc.crc32c(b"123456789") != zlib.crc32(b"123456789")


@pytest.mark.parametrize("bad", ["text", 42, None])
def test_refuses_non_buffers(bad):
    with pytest.raises(TypeError):
        crc.crc32c(bad)


def test_refuses_out_of_range_start():
    with pytest.raises(OverflowError):
        crc.crc32c(b"x", -1)
    with pytest.raises(OverflowError):
        crc.crc32c(b"x", 2**32)
