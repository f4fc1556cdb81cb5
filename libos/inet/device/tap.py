"""TAP device: ``/dev/net/tun`` with ``IFF_TAP | IFF_NO_PI``, non-blocking, batched reads.

The kernel side of the TAP interface (``name``) is an ordinary Linux interface
in the namespace the process (thread) was in when the device was opened; give
it an address and it talks to our stack through this fd.  The stack uses its
own MAC (``mac``, by default a random locally administered one), not the
interface's.  Frames arrive with valid checksums and at most MTU-sized (no
offloads are negotiated: no ``IFF_VNET_HDR``), so ``csum_not_ready`` is always
False.

TAP has no shared ring: each frame is one ``read()`` (``readv`` into a slot of
a preallocated buffer, no allocation per frame), up to ``batch`` per
``receive()``, stopping at the first EAGAIN.  Transmit is one ``write()`` per
frame.  Needs CAP_NET_ADMIN (root).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from .base import Device, Frame, RxFrame

__all__ = ["TapDevice", "random_mac"]

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
IFF_UP = 0x1


def random_mac() -> bytes:
    """A random locally administered unicast MAC (02:...-style)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


class TapDevice(Device):
    """A TAP interface named ``name`` (created if missing, IFF_TAP|IFF_NO_PI).

    ``up=True`` sets the interface administratively up (the kernel side still
    needs an address to talk to us: ``ip addr add ... dev NAME``).
    """

    def __init__(self, name: str, *, mac: bytes | None = None, batch: int = 64, up: bool = True) -> None:
        if not name or len(name.encode()) > 15:
            raise ValueError(f"interface name {name!r} must be 1-15 bytes")
        self.name = name
        self.mac = bytes(mac) if mac is not None else random_mac()
        if len(self.mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self._batch = max(1, batch)
        self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.ioctl(self._fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si20x", name.encode(), 0))
                self.mtu = struct.unpack_from("16si", ifr)[1]
                if up:
                    ifr = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
                    flags = struct.unpack_from("16sH", ifr)[1]
                    fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
        except BaseException:
            os.close(self._fd)
            raise
        self._slot = self.mtu + 18 + 64     # room for a VLAN tag; longer reads are cut and dropped
        self._buf = bytearray(self._slot * self._batch)
        view = memoryview(self._buf)
        self._slots = [view[i * self._slot : (i + 1) * self._slot] for i in range(self._batch)]
        self.rx_frames = self.rx_calls = self.tx_frames = self.oversize = 0
        self._closed = False

    def receive(self) -> list[RxFrame]:
        """Up to ``batch`` frames, one ``readv()`` each; valid until the next call."""
        if self._closed:
            raise ValueError("device is closed")
        out: list[RxFrame] = []
        fd, slot_len = self._fd, self._slot
        readv = os.readv
        for slot in self._slots:
            try:
                n = readv(fd, [slot])
            except (BlockingIOError, InterruptedError):
                self.rx_calls += 1
                break
            self.rx_calls += 1
            if n <= 0:
                break
            if n >= slot_len:       # cannot tell a cut frame from an exact fit: drop it
                self.oversize += 1
                continue
            out.append((slot[:n], False))
        self.rx_frames += len(out)
        return out

    def transmit(self, frames: Sequence[Frame]) -> int:
        """One ``write()`` per frame; stops (short count) when the queue is full."""
        if self._closed:
            raise ValueError("device is closed")
        fd, sent = self._fd, 0
        for f in frames:
            try:
                os.write(fd, f)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.EIO):  # EIO: interface is down
                    break
                raise
            sent += 1
        self.tx_frames += sent
        return sent

    def fileno(self) -> int:
        return self._fd

    def stats(self) -> dict:
        return {"rx_frames": self.rx_frames, "rx_calls": self.rx_calls, "tx_frames": self.tx_frames,
                "oversize": self.oversize}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"<TapDevice {self.name} {'closed' if self._closed else f'mtu {self.mtu}'}>"
