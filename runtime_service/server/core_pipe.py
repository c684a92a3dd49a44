"""Framed messages over one end of the socketpair between a pod and its engine-core process.

A frame is a 4-byte little-endian length, then a kind byte and the body (engine/core_codec.py
says what each kind holds). Any thread may send (one lock keeps frames whole); one thread reads.
A sender that must never block (the pod's event loop) uses send_nowait and leaves the rest of
the frame to a thread that may.
A closed peer reads as EOFError.
"""

from __future__ import annotations

import select
import socket
import struct
import threading

_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = (1 << 32) - 1


class FramedSocket:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()

    @staticmethod
    def frame(kind: bytes, body: bytes = b"") -> bytes:
        size = len(kind) + len(body)
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"a core message is limited to 4 GiB, got {size} bytes")
        return _LENGTH.pack(size) + kind + body

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.send_bytes(self.frame(kind, body))

    def send_bytes(self, data: bytes) -> None:
        """Sends framed bytes (or the rest of a frame that send_nowait began), waiting for room."""
        with self._send_lock:
            self.sock.sendall(data)

    def send_nowait(self, data: bytes) -> int:
        """Sends what of `data` the socket takes without waiting; returns how many bytes. The
        caller sends the rest (send_bytes) before any other frame."""
        with self._send_lock:
            try:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return 0

    def readable(self, timeout_s: float = 0.0) -> bool:
        """A frame has begun to arrive (or the peer closed) within `timeout_s`: recv will not
        wait for the other side to start sending."""
        return bool(select.select([self.sock], [], [], timeout_s)[0])

    def recv(self) -> tuple[bytes, bytes]:
        """The next (kind, body); EOFError when the peer closed its end."""
        (size,) = _LENGTH.unpack(self._read_exactly(_LENGTH.size))
        frame = self._read_exactly(size)
        return frame[:1], frame[1:]

    def _read_exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("the other end of the engine-core pipe closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
