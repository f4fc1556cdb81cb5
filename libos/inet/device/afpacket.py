"""AF_PACKET device: a TPACKET_V2 (default) or TPACKET_V3 receive ring shared with the kernel,
batched transmit.

**TPACKET_V2** (``tpacket_version=2``, the default): the ring is an array of fixed-size
frame slots (2 KiB for a 1500-byte MTU, larger for jumbo MTUs), each with its own
``tp_status``.  The kernel sets ``TP_STATUS_USER`` in a slot as soon as the frame is
in it and wakes ``poll(2)`` for every frame, so a frame is visible at once: no block
timeout, no latency floor (RTT p50 ~1 ms with V3's 1 ms retire timeout, ~0.2 ms with
V2 on the reference VM).  :meth:`AfPacketDevice.receive` walks the slots from the
current one while they say ``TP_STATUS_USER`` (:func:`walk_frames_v2`), at most a
quarter of the ring per call, and gives them back (``TP_STATUS_KERNEL``) at the next
``receive()``, ``wait()`` or ``close()``.  With the stack's C module built (libos.inet._csum)
the walk and the give-back run in C (:class:`CRingV2`, the same results; ``c_ring=False``
keeps them in Python).  Frames larger than a slot (GSO super-frames
from a peer with offloads on) are truncated by the kernel and dropped (``truncated``).

**TPACKET_V3** (``tpacket_version=3``, ``[inet] tpacket_version = 3``), described below:
blocks of many frames, handed over when a block retires.  Peeking at the frames of the
block the kernel is still filling is not possible: ``num_pkts`` is incremented before the
frame is copied, and the kernel wakes readers only when a block retires.

Receive: the socket gets a ring of ``block_nr`` blocks of ``block_size`` bytes,
mapped with :mod:`mmap` (``PACKET_VERSION`` = ``TPACKET_V3``, ``PACKET_RX_RING``
with a ``tpacket_req3``).  The kernel fills a block with frames and *retires* it
(sets ``TP_STATUS_USER`` in its ``block_status``) when it is full or
``retire_ms`` after its first frame.  :meth:`AfPacketDevice.receive` walks the
retired blocks in ring order, frame by frame through ``tp_next_offset``, and
hands each frame out as a memoryview into the mapping: **no system call per
frame, none at all while blocks are ready**.  The blocks handed out are given
back to the kernel (``block_status = TP_STATUS_KERNEL``) at the next
``receive()``, ``wait()`` or ``close()``, which is why frames are only valid
until then.  (``wait()`` must give them back first: the kernel reports the
socket readable while the block before its current one is not
``TP_STATUS_KERNEL``, so a held block would make every poll return at once.)

Latency: a frame becomes visible when its block retires, so an idle link adds
up to ``retire_ms`` (default 1 ms, the minimum) per received frame; a ping
through this device measures about 1.5 ms where TAP gives 0.3 ms.  The ring
holds ``block_nr`` blocks, i.e. at least ``block_nr * retire_ms`` of traffic
(64 ms by default) before the kernel drops (``kernel_stats()["drops"]``).
At most ``max_blocks`` blocks are taken per call so the kernel always has
free blocks while the caller works.

Everything read from the ring is bounds-checked against the block: the kernel
writes these headers, but a wrong offset must give a counted error
(``stats()["ring_errors"]``), never a read outside the block.  Frames whose
``tp_snaplen < tp_len`` (cut because they did not fit a block) are dropped and
counted (``truncated``).

Transmit: ``sendmmsg(2)`` (called through cffi in ABI mode: no compiler needed)
with one message per frame, up to 256 frames per call; when cffi or sendmmsg is
missing, one ``send()`` per frame (``batch_tx=False`` forces that).
``PACKET_QDISC_BYPASS`` (when the kernel has it) skips the qdisc layer;
``PACKET_IGNORE_OUTGOING`` keeps our own transmissions out of the ring.

The socket and ring are created in the namespace the thread is in: open the
device inside :func:`libos.inet.device.netns.in_netns` (or in a process
started with ``ip netns exec``).  Needs CAP_NET_RAW.

Memory ordering: ``block_status`` is read with a plain load before the block's
frames.  That is enough on x86-64 (loads are not reordered with loads); a weakly
ordered CPU would need an acquire load (a cffi helper) here.
"""

from __future__ import annotations

import errno
import functools
import fcntl
import mmap
import os
import socket
import struct
from collections.abc import Sequence

from .base import Device, Frame, RxFrame

__all__ = ["AfPacketDevice", "CRingV2", "walk_block", "walk_frames_v2", "RingCounters", "ETH_P_ALL"]

# Linux UAPI constants (mostly absent from Python's socket module)
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_CSUMNOTREADY = 0x8
ETH_P_ALL = 0x0003
SIOCGIFMTU = 0x8921
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

#: struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
#: block_status, num_pkts, offset_to_first_pkt, blk_len (then seq_num, timestamps)
BLOCK_HDR = struct.Struct("=IIIIII")
BLOCK_DESC_LEN = 48          # sizeof(struct tpacket_block_desc) incl. seq_num and timestamps
BLOCK_STATUS_OFFSET = 8
#: struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_net
PKT_HDR = struct.Struct("=IIIIIIHH")
PKT_HDR_LEN = PKT_HDR.size   # 28: the fields we read; the full header is 48
TPACKET_REQ3 = struct.Struct("=7I")
TPACKET_STATS_V3 = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt
#: struct tpacket_req (V1/V2): block_size, block_nr, frame_size, frame_nr
TPACKET_REQ = struct.Struct("=4I")
#: struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac (then tp_net, timestamps, VLAN)
V2_HDR = struct.Struct("=IIIH")
V2_HDR_LEN = 32              # sizeof(struct tpacket2_hdr)
_STATUS = struct.Struct("=I")

_TX_BATCH = 256

try:   # the ring walk in C (libos/inet/_csum_build.py); walk_frames_v2 below when not built
    from .._csum import ffi as _c_ffi
    from .._csum import lib as _c_lib
    _c_v2_walk = getattr(_c_lib, "v2_walk", None)
except ImportError:
    _c_ffi = _c_lib = _c_v2_walk = None
_V2_SKIP = 0x80000000
_V2_CSUM_NOT_READY = 0x40000000
_V2_LEN = 0x3FFFFFFF
_U32X3 = struct.Struct("=3I")
#: errors that mean "not now" (full queue, link down): a short count, not an exception
_TX_NOT_NOW = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ENETDOWN, errno.ENXIO})


class RingCounters:
    """Counters the ring walker updates (plain ints, cheap to bump)."""

    __slots__ = ("frames", "blocks", "truncated", "ring_errors")

    def __init__(self) -> None:
        self.frames = self.blocks = self.truncated = self.ring_errors = 0


def walk_block(view: memoryview, base: int, block_size: int, out: list, counters: RingCounters) -> None:
    """Append ``(frame_view, csum_not_ready)`` for each frame of the block at ``base``.

    ``view`` is the whole ring; only ``view[base:base + block_size]`` is read.
    Every offset and length from the headers is checked against the block
    before use; on the first inconsistency the rest of the block is skipped
    and ``counters.ring_errors`` is bumped.  The caller has already seen
    ``TP_STATUS_USER`` in the block status.
    """
    if base < 0 or block_size < BLOCK_DESC_LEN or base + block_size > len(view):
        counters.ring_errors += 1
        return
    _, _, _, num_pkts, offset, _ = BLOCK_HDR.unpack_from(view, base)
    counters.blocks += 1
    if num_pkts == 0:
        return
    # the smallest frame slot is a header plus a 14-byte Ethernet header
    if num_pkts > (block_size - BLOCK_DESC_LEN) // (PKT_HDR_LEN + 14):
        counters.ring_errors += 1
        return
    hdr_limit = block_size - PKT_HDR_LEN
    unpack = PKT_HDR.unpack_from
    append = out.append
    last = num_pkts - 1
    for i in range(num_pkts):
        if offset < BLOCK_DESC_LEN or offset > hdr_limit:
            counters.ring_errors += 1
            return
        nxt, _, _, snaplen, wirelen, status, mac, _ = unpack(view, base + offset)
        start = offset + mac
        end = start + snaplen
        if mac < PKT_HDR_LEN or end > block_size or snaplen < 14:
            counters.ring_errors += 1
            return
        if snaplen < wirelen:
            counters.truncated += 1
        else:
            append((view[base + start : base + end], bool(status & TP_STATUS_CSUMNOTREADY)))
            counters.frames += 1
        if i == last:
            return
        if nxt < PKT_HDR_LEN:     # 0 (or garbage) before the last frame: stop here
            counters.ring_errors += 1
            return
        offset += nxt


def walk_frames_v2(view: memoryview, offsets: Sequence[int], cur: int, limit: int, frame_size: int,
                   out: list, held: list, counters: RingCounters) -> int:
    """Append ``(frame_view, csum_not_ready)`` for each TPACKET_V2 frame slot from ``cur`` on
    whose ``tp_status`` has ``TP_STATUS_USER``, at most ``limit`` of them; returns the next slot.

    ``offsets[i]`` is the start of slot ``i`` in the ring ``view``; each slot taken goes
    into ``held`` (given back to the kernel later).  ``tp_mac`` and ``tp_snaplen`` are
    checked against the slot: a wrong one is counted in ``ring_errors`` and the slot is
    skipped (still taken, so it goes back to the kernel); ``tp_snaplen < tp_len`` frames
    are dropped and counted (``truncated``).
    """
    n = len(offsets)
    unpack = V2_HDR.unpack_from
    append = out.append
    hold = held.append
    for _ in range(limit):
        off = offsets[cur]
        status, wirelen, snaplen, mac = unpack(view, off)
        if not status & TP_STATUS_USER:
            break
        hold(off)
        cur = cur + 1 if cur + 1 < n else 0
        if mac < V2_HDR_LEN or mac + snaplen > frame_size or snaplen < 14:
            counters.ring_errors += 1
        elif snaplen < wirelen:
            counters.truncated += 1
        else:
            start = off + mac
            append((view[start:start + snaplen], bool(status & TP_STATUS_CSUMNOTREADY)))
            counters.frames += 1
    return cur


class CRingV2:
    """:func:`walk_frames_v2` and the release of the slots it took, in C (``v2_walk`` and
    ``v2_release`` of libos.inet._csum), for one TPACKET_V2 ring.

    ``ring`` is the mapping (any writable buffer of ``ring_len`` bytes), ``offsets`` the
    slot starts, ``limit`` the most slots one :meth:`walk` takes.  Same results as
    :func:`walk_frames_v2` (tests/test_inet_device.py compares them), except that ``held``
    gets one ``(first_slot, count)`` run per walk instead of each slot's offset; hand those
    runs to :meth:`release`.  :meth:`close` before closing the mapping (the C pointer holds
    an export of its buffer)."""

    def __init__(self, ring, ring_len: int, offsets: Sequence[int], frame_size: int, limit: int) -> None:
        if _c_v2_walk is None:
            raise RuntimeError("libos.inet._csum with v2_walk is not built")
        self._ring = _c_ffi.from_buffer(ring, require_writable=True)
        self._ring_len = ring_len
        self._n = len(offsets)
        self._offs = _c_ffi.new("uint32_t[]", list(offsets))
        self._frame_size = frame_size
        self._limit = max(1, limit)
        self._out = _c_ffi.new("uint32_t[]", 3 * self._limit)
        self._outbuf = _c_ffi.buffer(self._out)
        self._st = _c_ffi.new("uint32_t[4]")

    def walk(self, view: memoryview, cur: int, out: list, held: list, counters: RingCounters) -> int:
        """Append ``(frame_view, csum_not_ready)`` for each frame of the slots taken from
        ``cur`` on (``view`` is the ring), one ``(cur, count)`` run to ``held`` if any slot
        was taken; returns the next slot.  ValueError for a ring that is not one."""
        k = _c_v2_walk(self._ring, self._ring_len, self._offs, self._n, cur, self._limit, self._frame_size,
                       self._out, self._st)
        if k <= 0:
            if k < 0:
                raise ValueError("v2_walk: slot offsets or frame size outside the ring")
            return cur
        held.append((cur, k))
        append = out.append
        for _, start, info in _U32X3.iter_unpack(self._outbuf[0:12 * k]):
            if not info & _V2_SKIP:
                append((view[start:start + (info & _V2_LEN)], bool(info & _V2_CSUM_NOT_READY)))
        st = self._st
        if st[2] or st[3]:
            counters.truncated += st[2]
            counters.ring_errors += st[3]
        counters.frames += st[1]
        return st[0]

    def release(self, first: int, count: int) -> None:
        """Give ``count`` slots from ``first`` (a run :meth:`walk` put in ``held``) back to the kernel."""
        if _c_lib.v2_release(self._ring, self._ring_len, self._offs, self._n, first, count) < 0:
            raise ValueError(f"v2_release: run ({first}, {count}) is not in the ring")

    def close(self) -> None:
        """Drop the C pointer's export of the mapping (idempotent)."""
        ring, self._ring = self._ring, None
        if ring is not None:
            _c_ffi.release(ring)


def _load_sendmmsg():
    """(ffi, lib) for sendmmsg through cffi's ABI mode, or None when unavailable."""
    try:
        import cffi
    except ImportError:
        return None
    ffi = cffi.FFI()
    ffi.cdef(
        """
        struct iovec { void *iov_base; size_t iov_len; };
        struct msghdr {
            void *msg_name; unsigned int msg_namelen;
            struct iovec *msg_iov; size_t msg_iovlen;
            void *msg_control; size_t msg_controllen;
            int msg_flags;
        };
        struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
        int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
        """
    )
    try:
        lib = ffi.dlopen(None)
        lib.sendmmsg  # noqa: B018 (resolve now, fail here if absent)
    except (OSError, AttributeError):
        return None
    return ffi, lib


_SENDMMSG = None
_SENDMMSG_LOADED = False


def _sendmmsg():
    global _SENDMMSG, _SENDMMSG_LOADED
    if not _SENDMMSG_LOADED:
        _SENDMMSG = _load_sendmmsg()
        _SENDMMSG_LOADED = True
    return _SENDMMSG


class AfPacketDevice(Device):
    """An AF_PACKET/SOCK_RAW/ETH_P_ALL socket bound to ``interface`` with a TPACKET_V2 or V3 RX ring.

    ``tpacket_version`` picks the ring (2: per-frame slots, ``frame_nr`` of them, sized
    for the MTU; 3: the block ring described by the parameters below, which V2 ignores).

    ``block_size`` must be a multiple of the page size; 1 MiB blocks hold even
    64 KiB GSO frames (should offloads be on).  ``retire_ms`` bounds how long a
    frame can sit in a partly filled block (latency vs. fewer wake-ups).
    ``mac`` is the interface's own MAC, which the stack uses as its own: the
    interface is ours alone (no kernel address on it).
    """

    def __init__(
        self,
        interface: str,
        *,
        block_size: int = 1 << 18,
        block_nr: int = 64,
        frame_size: int = 2048,
        retire_ms: int = 1,
        max_blocks: int | None = None,
        qdisc_bypass: bool = True,
        batch_tx: bool = True,
        tpacket_version: int = 2,
        frame_nr: int = 4096,
        c_ring: bool = True,
    ) -> None:
        page = mmap.PAGESIZE
        if tpacket_version not in (2, 3):
            raise ValueError(f"tpacket_version must be 2 or 3, not {tpacket_version!r}")
        if block_size <= 0 or block_size % page:
            raise ValueError(f"block_size {block_size} must be a positive multiple of the page size {page}")
        if block_nr < 2:
            raise ValueError("block_nr must be at least 2")
        if frame_size < 64 or block_size % frame_size:
            raise ValueError(f"frame_size {frame_size} must divide block_size {block_size}")
        if frame_nr < 16:
            raise ValueError("frame_nr must be at least 16")
        self.name = interface
        self.version = tpacket_version
        self._block_size = block_size
        self._block_nr = block_nr
        self._max_blocks = max(1, block_nr // 4) if max_blocks is None else max(1, min(max_blocks, block_nr - 1))
        self._cur = 0
        self._held: list = []   # V2: slot offsets (or CRingV2's (first, count) runs); V3: block bases
        self._offsets: list[int] = []     # V2: start of each frame slot
        self._frame_size = frame_size
        self._max_frames = 0
        self.counters = RingCounters()
        self.tx_frames = self.tx_calls = self.tx_short = 0
        self.waits = 0
        self._closed = False
        self._netdev = None
        self.bpf_insns = 0            # length of the attached classic BPF program (0: none)
        self._bpf_base: tuple[int, int] | None = None
        self._bpf_filtered = 0        # estimate accumulated over earlier attachments
        self._mm = None
        self._view = None
        self._cring: CRingV2 | None = None   # V2 with the C module: the walk in C
        # protocol 0: receives nothing until bind() names the interface, so no
        # frame of another interface lands in the ring meanwhile
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sock = sock
        try:
            try:
                ifr = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, struct.pack("16si20x", interface.encode(), 0))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind AF_PACKET to {interface!r}: {exc.strerror} "
                              "(wrong network namespace? open it inside in_netns())") from None
            self.mtu = struct.unpack_from("16si", ifr)[1]
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2 if tpacket_version == 2 else TPACKET_V3)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.qdisc_bypass = False
            if qdisc_bypass:
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
                    self.qdisc_bypass = True
                except OSError:
                    pass
            if tpacket_version == 2:
                # one slot per frame: the V2 header (32 B, aligned) + sockaddr_ll, the MAC header
                # placed so the network header is 16-aligned, an optional VLAN tag, the MTU
                need = 96 + 18 + self.mtu
                fsize = 2048
                while fsize < need:
                    fsize <<= 1
                bsize = max(page, fsize)
                while bsize < (64 << 10):     # 64 KiB blocks (or one frame, if larger)
                    bsize <<= 1
                per_block = bsize // fsize
                blocks = max(2, -(-frame_nr // per_block))
                self._frame_size = fsize
                self._block_size, self._block_nr = bsize, blocks
                self._offsets = [b * bsize + i * fsize for b in range(blocks) for i in range(per_block)]
                self._max_frames = max(1, len(self._offsets) // 4)
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                                TPACKET_REQ.pack(bsize, blocks, fsize, len(self._offsets)))
                ring_len = bsize * blocks
            else:
                req = TPACKET_REQ3.pack(block_size, block_nr, frame_size, block_size // frame_size * block_nr,
                                        retire_ms, 0, 0)
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                ring_len = block_size * block_nr
            self._mm = mmap.mmap(sock.fileno(), ring_len, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self._view = memoryview(self._mm)
            if tpacket_version == 2 and _c_v2_walk is not None and c_ring:
                self._cring = CRingV2(self._mm, ring_len, self._offsets, self._frame_size, self._max_frames)
            try:
                sock.bind((interface, ETH_P_ALL))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind AF_PACKET to {interface!r}: {exc.strerror} "
                              "(wrong network namespace? open it inside in_netns())") from None
            sock.setblocking(False)
            self.mac = bytes(sock.getsockname()[4][:6])
            # the interface counters of this namespace (for the frames a BPF filter drops);
            # opened now, while the thread is in the device's namespace
            try:
                self._netdev = open("/proc/thread-self/net/dev", "rb", buffering=0)
            except OSError:
                self._netdev = None
        except BaseException:
            self.close()
            raise
        self._fd = sock.fileno()
        self._tx = _sendmmsg() if batch_tx else None
        if self._tx is not None:
            ffi = self._tx[0]
            # ffi.from_buffer(f) without the Python wrapper of cffi's ABI-mode FFI (api.py):
            # the backend's C function with the char[] type the wrapper would pass
            try:
                bchar = ffi.BCharA
                backend_fb = ffi._backend.from_buffer
                self._from_buffer = functools.partial(backend_fb, bchar)
                self._from_buffer(b"x")
            except (AttributeError, TypeError):
                self._from_buffer = ffi.from_buffer
            self._msgs = ffi.new("struct mmsghdr[]", _TX_BATCH)
            self._iovs = ffi.new("struct iovec[]", _TX_BATCH)
            for i in range(_TX_BATCH):
                self._msgs[i].msg_hdr.msg_iov = self._iovs + i
                self._msgs[i].msg_hdr.msg_iovlen = 1
        self.max_frame = self.mtu + 18  # Ethernet header with one VLAN tag

    # --- receive -----------------------------------------------------------
    def release(self) -> None:
        """Give the blocks of the last ``receive()`` back to the kernel now (their frames die).

        ``receive()`` and ``wait()`` do this anyway; an event loop that waits on
        ``fileno()`` itself should call it before waiting, or the socket polls
        readable at once (the kernel sees the block we hold)."""
        if self._held and self._view is not None:
            self._release()

    def _release(self) -> None:
        view = self._view
        pack = _STATUS.pack_into
        if self._cring is not None:   # (first slot, count) runs
            release = self._cring.release
            for first, count in self._held:
                release(first, count)
        elif self.version == 2:   # tp_status is the first field of a V2 frame slot
            for off in self._held:
                pack(view, off, TP_STATUS_KERNEL)
        else:
            for base in self._held:
                pack(view, base + BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self._held.clear()

    def receive(self) -> list[RxFrame]:
        """V2: the frames the kernel has handed over (at most a quarter of the ring);
        V3: the frames of the retired blocks (at most ``max_blocks`` of them).  No system call."""
        if self._held:
            self._release()
        view = self._view
        if view is None:
            raise ValueError("device is closed")
        out: list[RxFrame] = []
        if self._cring is not None:
            self._cur = self._cring.walk(view, self._cur, out, self._held, self.counters)
            return out
        if self.version == 2:
            self._cur = walk_frames_v2(view, self._offsets, self._cur, self._max_frames, self._frame_size,
                                       out, self._held, self.counters)
            return out
        bs, nb, cur = self._block_size, self._block_nr, self._cur
        counters = self.counters
        for _ in range(self._max_blocks):
            base = cur * bs
            if not _STATUS.unpack_from(view, base + BLOCK_STATUS_OFFSET)[0] & TP_STATUS_USER:
                break
            walk_block(view, base, bs, out, counters)
            self._held.append(base)
            cur = cur + 1 if cur + 1 < nb else 0
        self._cur = cur
        return out

    def ready(self) -> bool:
        """True if ``receive()`` would return frames (V3: the next block is retired); no system call."""
        if self.version == 2:
            return bool(_STATUS.unpack_from(self._view, self._offsets[self._cur])[0] & TP_STATUS_USER)
        return bool(_STATUS.unpack_from(self._view, self._cur * self._block_size + BLOCK_STATUS_OFFSET)[0]
                    & TP_STATUS_USER)

    def wait(self, timeout: float | None) -> bool:
        if self._held:
            self._release()  # the kernel may be waiting for a free block
        if self.ready():
            return True
        self.waits += 1
        return super().wait(timeout)

    # --- transmit ----------------------------------------------------------
    def transmit(self, frames: Sequence[Frame]) -> int:
        """Send ``frames`` (sendmmsg batches, or one send() each); return how many went out."""
        n = len(frames)
        if not n:
            return 0
        limit = self.max_frame
        for f in frames:
            if len(f) > limit:
                raise ValueError(f"frame of {len(f)} bytes exceeds the {limit}-byte maximum (MTU {self.mtu} + 18)")
        if self._tx is None:
            return self._transmit_each(frames)
        ffi, lib = self._tx
        msgs, iovs, fd, from_buffer = self._msgs, self._iovs, self._fd, self._from_buffer
        sent = 0
        while sent < n:
            batch = frames[sent : sent + _TX_BATCH]
            keep = list(map(from_buffer, batch))  # alive until the call returns
            for i, buf in enumerate(keep):
                iov = iovs[i]
                iov.iov_base = buf
                iov.iov_len = len(buf)
            m = len(batch)
            done = 0
            for _ in range(m):  # bounded: each round sends >= 1 or stops
                r = lib.sendmmsg(fd, msgs + done, m - done, socket.MSG_DONTWAIT)
                self.tx_calls += 1
                if r < 0:
                    err = ffi.errno
                    if err == errno.EINTR:
                        continue
                    if err in _TX_NOT_NOW:
                        self.tx_short += 1
                        self.tx_frames += done
                        return sent + done
                    raise OSError(err, f"sendmmsg on {self.name}: {os.strerror(err)}")
                done += r
                if done >= m:
                    break
            del keep
            sent += done
            self.tx_frames += done
            if done < m:
                self.tx_short += 1
                return sent
        return sent

    def _transmit_each(self, frames: Sequence[Frame]) -> int:
        send = self._sock.send
        sent = 0
        for f in frames:
            try:
                send(f)
            except (BlockingIOError, InterruptedError):
                self.tx_short += 1
                break
            except OSError as exc:
                if exc.errno in _TX_NOT_NOW:
                    self.tx_short += 1
                    break
                raise
            sent += 1
        self.tx_calls += sent
        self.tx_frames += sent
        return sent

    # --- classic BPF ---------------------------------------------------------
    def attach_filter(self, prog) -> None:
        """Attach (or replace, atomically) a classic BPF program (``libos.inet.bpf`` instructions):
        frames it drops never enter the ring.  ``None`` or ``[]`` detaches it."""
        if not prog:
            self.detach_filter()
            return
        import ctypes

        from ..bpf import to_bytes
        raw = to_bytes(prog)
        buf = ctypes.create_string_buffer(raw, len(raw))
        fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))   # struct sock_fprog
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it
        if self._bpf_base is None:
            self._bpf_base = (self._iface_rx(), self._ring_seen())
        self.bpf_insns = len(prog)

    def detach_filter(self) -> None:
        if not self.bpf_insns:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        except OSError:
            pass
        self._bpf_filtered = self.kernel_filtered()
        self._bpf_base = None
        self.bpf_insns = 0

    def _ring_seen(self) -> int:
        c = self.counters
        return c.frames + c.truncated

    def _iface_rx(self) -> int:
        f = self._netdev
        if f is None:
            return 0
        try:
            f.seek(0)
            text = f.read(1 << 16)
        except OSError:
            return 0
        key = self.name.encode() + b":"
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(key):
                return int(line[len(key):].split()[1])
        return 0

    def kernel_filtered(self) -> int:
        """About how many frames the BPF filter has dropped: the interface's received
        packets minus the frames that reached the ring, since the filter was attached (the
        kernel keeps no count of its own; frames of a block not yet retired, and ring
        overflows, blur it a little)."""
        base = self._bpf_base
        if base is None or self._netdev is None:
            return self._bpf_filtered
        diff = (self._iface_rx() - base[0]) - (self._ring_seen() - base[1])
        return self._bpf_filtered + max(0, diff)

    # --- the rest ----------------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno()

    def kernel_stats(self) -> dict:
        """``PACKET_STATISTICS``: frames and drops since the last call (reading resets them)."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        packets, drops, freezes = TPACKET_STATS_V3.unpack(raw.ljust(TPACKET_STATS_V3.size, b"\0"))
        return {"packets": packets, "drops": drops, "freeze_q": freezes}

    def stats(self) -> dict:
        c = self.counters
        return {
            "rx_frames": c.frames, "rx_blocks": c.blocks, "truncated": c.truncated, "ring_errors": c.ring_errors,
            "waits": self.waits, "tx_frames": self.tx_frames, "tx_calls": self.tx_calls, "tx_short": self.tx_short,
            "tx_mode": "sendmmsg" if self._tx is not None else "send", "tpacket_version": self.version,
            "bpf_insns": self.bpf_insns, "kernel_filtered": self.kernel_filtered(),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._view is not None:
            try:
                self._release()
            except (ValueError, TypeError):
                pass
            self._view.release()
            self._view = None
        if self._cring is not None:
            self._cring.close()
            self._cring = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a frame: the mapping goes when that view does
            self._mm = None
        self._sock.close()
        if self._netdev is not None:
            self._netdev.close()
            self._netdev = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"mtu {getattr(self, 'mtu', '?')}"
        return f"<AfPacketDevice {self.name} {state}>"
