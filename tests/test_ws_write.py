"""Our own framing and the direct socket write (gateway/ws.py)."""

from __future__ import annotations

import struct

import pytest
from twisted.internet import tcp

from gateway.ws import binary_frame_header, write_direct


@pytest.mark.parametrize(("length", "header"), [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f" + struct.pack(">Q", 65536)),
])
def test_binary_frame_header_follows_rfc_6455(length: int, header: bytes) -> None:
    assert binary_frame_header(length) == header


class FakeTCP(tcp.Connection):
    """A tcp.Connection whose socket accepts ``accept`` bytes per call."""

    def __init__(self, accept: int) -> None:  # no real socket: only the write path runs
        self.accept = accept
        self.sent: list[bytes] = []
        self.buffered: list[bytes] = []
        self.connected = 1
        self.disconnecting = 0
        self.dataBuffer = b""
        self._tempDataLen = 0

    def writeSomeData(self, data: bytes) -> int:  # type: ignore[override]
        taken = bytes(data[: self.accept])
        self.sent.append(taken)
        return len(taken)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.buffered.append(data)
        self._tempDataLen += len(data)


def test_whole_write_goes_straight_to_the_socket() -> None:
    t = FakeTCP(accept=1 << 20)
    write_direct(t, b"hello")
    assert t.sent == [b"hello"] and t.buffered == []


def test_partial_write_leaves_the_rest_to_twisted_in_order() -> None:
    t = FakeTCP(accept=3)
    write_direct(t, b"abcdef")
    assert t.sent == [b"abc"] and t.buffered == [b"def"]
    # Something is buffered now: later data must queue behind it, never overtake it.
    write_direct(t, b"gh")
    assert t.sent == [b"abc"] and t.buffered == [b"def", b"gh"]


def test_other_transports_always_use_write() -> None:
    class Other:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    other = Other()
    write_direct(other, b"x")
    assert other.written == [b"x"]
