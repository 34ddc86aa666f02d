"""Best-effort wiping of mutable buffers."""

from __future__ import annotations

import array

import pytest

from shardbus.crypto.wipe import wipe


def test_wipe_bytearray_in_place():
    buffer = bytearray(b"secret material")
    view = memoryview(buffer)
    wipe(buffer)
    assert buffer == bytearray(15)
    assert view.tobytes() == bytes(15)


def test_wipe_writable_memoryview_slice():
    buffer = bytearray(b"keep-SECRET-keep")
    wipe(memoryview(buffer)[5:11])
    assert buffer == bytearray(b"keep-\x00\x00\x00\x00\x00\x00-keep")


def test_wipe_typed_array():
    numbers = array.array("I", [1, 2, 3])
    wipe(memoryview(numbers))
    assert list(numbers) == [0, 0, 0]


def test_wipe_leaves_bytearray_resizable():
    buffer = bytearray(b"abc")
    wipe(buffer)
    buffer.extend(b"d")
    assert buffer == bytearray(b"\x00\x00\x00d")


def test_wipe_empty_buffer():
    buffer = bytearray()
    wipe(buffer)
    assert buffer == bytearray()


@pytest.mark.parametrize("value", [b"immutable", "text"])
def test_wipe_rejects_immutable(value):
    with pytest.raises(TypeError, match="cannot wipe an immutable"):
        wipe(value)


def test_wipe_rejects_read_only_view():
    with pytest.raises(TypeError, match="read-only"):
        wipe(memoryview(b"read only"))
