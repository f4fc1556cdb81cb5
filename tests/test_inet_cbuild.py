"""The C frame builder and receive check (libos/inet/_csum_build.py) against the Python forms.

``tcp_frame`` must write exactly the bytes of ``Stack._send_tcp_py`` (the Python builder),
and ``tcp_rx`` must accept exactly the frames the Python fast-path checks of
``Stack.receive`` accept: random fields, options and payloads (hypothesis), and valid
frames with random damage (flipped bytes, truncation, padding).  With the C module absent
the stack must behave the same (the fallbacks are exercised with C switched off).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import libos.inet.stack as stack_mod
from libos.inet.stack import Stack
from libos.inet.tcp.segment import FLAGS, OutSegment
from libos.inet.wire import EthernetFrame, Ipv4Packet, MacAddress, TcpOptions, TcpSegment

needs_c = pytest.mark.skipif(stack_mod._tcp_frame is None or stack_mod._tcp_rx is None,
                             reason="libos.inet._csum is not built with tcp_frame/tcp_rx")

OUR_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
OUR_IP, PEER_IP, FAR_IP = 0x0A000001, 0x0A000002, 0x08080808
_OPTS = [
    TcpOptions(),
    TcpOptions.build(mss=1460, window_scale=7, sack_permitted=True),
    TcpOptions.build(mss=536),
    TcpOptions.build(sack_blocks=[(1, 2), (100, 2000), (0xFFFFFFF0, 5)]),
    TcpOptions.build(timestamps=(123, 456)),
]


def _stack(mtu: int = 1500) -> Stack:
    s = Stack(OUR_MAC, OUR_IP, prefix_len=24, gateway=PEER_IP, mtu=mtu, rng=random.Random(1))
    s._arp[PEER_IP] = (MacAddress(PEER_MAC), 1e9)
    return s


def _both(s: Stack, seg: OutSegment, ident: int) -> tuple[list, list]:
    s._ident = ident
    s._send_tcp(seg, 0.0)
    a = s.poll(0.0)
    s._ident = ident
    s._send_tcp_py(seg, 0.0)
    b = s.poll(0.0)
    return a, b


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sport=st.integers(0, 0xFFFF), dport=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFFFFFF),
       ack=st.integers(0, 0xFFFFFFFF), flags=st.integers(0, 0x1FF), window=st.integers(0, 0xFFFF),
       ident=st.integers(0, 0xFFFF), ttl=st.integers(1, 255), opts=st.sampled_from(_OPTS),
       payload=st.binary(max_size=1460), kind=st.sampled_from([bytes, bytearray, memoryview]),
       far=st.booleans())
def test_c_builder_writes_the_python_builders_bytes(sport, dport, seq, ack, flags, window, ident, ttl,
                                                    opts, payload, kind, far) -> None:
    s = _stack()
    s.ttl = ttl
    dst = FAR_IP if far else PEER_IP     # through the gateway, or on-link
    seg = OutSegment(sport, dport, seq, ack, FLAGS[flags], window, opts, kind(payload), OUR_IP, dst)
    a, b = _both(s, seg, ident)
    assert len(a) == len(b) == 1
    assert bytes(a[0]) == bytes(b[0])
    # and the layered parsers take it, checksums verified
    eth = EthernetFrame.parse(bytes(a[0]))
    ip = Ipv4Packet.parse(eth.payload)
    tcp = TcpSegment.parse(ip.payload, int(ip.src), int(ip.dst))
    assert (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, int(tcp.flags), tcp.window) == \
        (sport, dport, seq, ack, flags, window)
    assert bytes(tcp.payload) == payload and tcp.options == opts
    assert bytes(eth.dst) == bytes(MacAddress(PEER_MAC)) and ip.ident == ((ident + 1) & 0xFFFF)


@needs_c
def test_c_builder_falls_back_where_python_decides() -> None:
    """No ARP entry (held for ARP), an expired one, a broadcast, no route, a frame beyond the
    scratch buffer: the Python path, with its counters and pending queue."""
    seg = OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, TcpOptions(), b"data", OUR_IP, 0x0A000003)
    s = _stack()
    s._send_tcp(seg, 0.0)
    assert s._pending and not s._out                     # waits for ARP, as a bytearray
    assert isinstance(s._pending[0x0A000003].frames[0], bytearray)
    s = _stack()
    s._arp[PEER_IP] = (MacAddress(PEER_MAC), 0.5)
    s._send_tcp(OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, TcpOptions(), b"x", OUR_IP, PEER_IP), 1.0)
    assert s._pending and not s._out                     # expired entry
    s = Stack(OUR_MAC, OUR_IP, prefix_len=24, rng=random.Random(1))
    s._send_tcp(OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, TcpOptions(), b"x", OUR_IP, FAR_IP), 0.0)
    assert s.counters["no_route"] == 1
    s = _stack()
    a, b = _both(s, OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, TcpOptions(), b"x", OUR_IP, 0x0A0000FF), 9)
    assert a == b and bytes(a[0][:6]) == b"\xff" * 6     # the subnet broadcast
    s = _stack(mtu=576)
    big = OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, _OPTS[1], b"y" * 530, OUR_IP, PEER_IP)
    a, b = _both(s, big, 9)
    assert bytes(a[0]) == bytes(b[0]) and len(a[0]) == 14 + 20 + 32 + 530
    a, b = _both(s, OutSegment(1, 2, 3, 4, FLAGS[0x18], 5, TcpOptions(), b"y" * 2000, OUR_IP, PEER_IP), 9)
    assert bytes(a[0]) == bytes(b[0]) and len(a[0]) == 2054   # beyond the MTU: the device refuses it


@needs_c
def test_c_builder_rejects_what_does_not_fit() -> None:
    from libos.inet._csum import ffi, lib
    buf = ffi.new("char[]", 100)
    mac = b"\x02" * 6
    assert lib.tcp_frame(buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 0, 46) == 100
    assert lib.tcp_frame(buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 0, 47) == -1
    assert lib.tcp_frame(buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 44, 0) == -1  # > 40
    assert lib.tcp_frame(buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 6, 0) == -1   # not 4n
    assert lib.tcp_frame(buf, 53, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 0, 0) == -1
    assert lib.tcp_frame(buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x10, 5, 0, 1 << 40) == -1


# ---------------------------------------------------------------------------- receive
_RX_HDRS = struct.Struct("!6s6xHBBHHHBBHIIHHIIHHHH")


def _python_rx(frame: bytes, mac: bytes, ip: int, csum_ok: bool) -> int:
    """The fast-path checks of Stack.receive in Python: the IPv4 total length when the frame
    is an intact TCP segment for us, else 0 (not one) or -1 (a bad checksum)."""
    if len(frame) < 54:
        return 0
    (dmac, etype, vihl, _tos, total, _ident, ffo, _ttl, proto, _ipcs, src, dst,
     _sport, _dport, _seq, _ack, off_flags, _window, _tcs, _urgent) = _RX_HDRS.unpack_from(frame)
    if not (proto == 6 and vihl == 0x45 and etype == 0x0800 and dst == ip and dmac == mac
            and not ffo & 0x3FFF and 40 <= total <= len(frame) - 14):
        return 0
    hlen = (off_flags >> 12) << 2
    tlen = total - 20
    if not 20 <= hlen <= tlen:
        return 0
    if int.from_bytes(frame[14:34], "big") % 0xFFFF:
        return -1
    if csum_ok:
        v = int.from_bytes(frame[34:14 + total], "big")
        if tlen & 1:
            v <<= 8
        if (v + (src >> 16) + (src & 0xFFFF) + (ip >> 16) + (ip & 0xFFFF) + 6 + tlen) % 0xFFFF:
            return -1
    return total


def _valid_frame(payload: bytes, opts: TcpOptions) -> bytes:
    s = _stack()
    # a frame from the peer to us: built by our own builder with the roles swapped
    s._arp[OUR_IP] = (MacAddress(OUR_MAC), 1e9)
    s._ip_int = PEER_IP
    s._ip_words = (PEER_IP >> 16) + (PEER_IP & 0xFFFF)
    seg = OutSegment(40000, 6379, 77, 88, FLAGS[0x18], 999, opts, payload, PEER_IP, OUR_IP)
    s._send_tcp_py(seg, 0.0)
    return bytes(s.poll(0.0)[0])


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=300), opts=st.sampled_from(_OPTS),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
       cut=st.integers(0, 400), pad=st.integers(0, 20), csum_ok=st.booleans(),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_c_receive_check_matches_the_python_checks(payload, opts, flips, cut, pad, csum_ok, kind) -> None:
    from libos.inet._csum import ffi, lib
    frame = bytearray(_valid_frame(payload, opts)) + bytes(pad)
    for pos, x in flips:
        if pos < len(frame):
            frame[pos] ^= x
    if cut:
        del frame[max(0, len(frame) - cut):]
    frame = bytes(frame)
    mac = bytes(MacAddress(OUR_MAC))
    want = _python_rx(frame, mac, OUR_IP, csum_ok)
    got = lib.tcp_rx(ffi.from_buffer(kind(frame)), len(frame), mac, OUR_IP, csum_ok)
    assert got == want
    if not flips and not cut:
        assert got == len(frame) - 14 - pad


@needs_c
def test_c_receive_check_of_an_intact_frame() -> None:
    from libos.inet._csum import ffi, lib
    frame = _valid_frame(b"hello", _OPTS[0])
    mac = bytes(MacAddress(OUR_MAC))
    assert lib.tcp_rx(ffi.from_buffer(frame), len(frame), mac, OUR_IP, 1) == 45
    assert lib.tcp_rx(ffi.from_buffer(frame), len(frame), mac, OUR_IP + 1, 1) == 0   # not ours
    bad = bytearray(frame)
    bad[-1] ^= 1
    assert lib.tcp_rx(ffi.from_buffer(bad), len(bad), mac, OUR_IP, 1) == -1
    assert lib.tcp_rx(ffi.from_buffer(bad), len(bad), mac, OUR_IP, 0) == 45          # not verified
    assert lib.tcp_rx(ffi.from_buffer(frame), 53, mac, OUR_IP, 1) == 0               # too short


def test_stack_without_the_c_module_sends_and_receives_the_same(monkeypatch) -> None:
    """Two stack pairs over a lossless link, one with C switched off: the same frames."""
    from libos.inet.device import WireLink

    def run() -> list[bytes]:
        link = WireLink(seed=5, mac_a=b"\x02\0\0\0\0\x0a", mac_b=b"\x02\0\0\0\0\x0b")
        a = Stack(link.a.mac, "10.0.0.1", rng=random.Random(1))
        b = Stack(link.b.mac, "10.0.0.2", rng=random.Random(2))
        a.tcp_reserve(7000)
        lst = a.tcp_listen(7000)
        c = b.tcp_connect(int(a.ip), 7000, 0.0)
        seen: list[bytes] = []
        now = 0.0
        srv = None
        for i in range(200):
            now += 0.001
            for st_, dev in ((a, link.a), (b, link.b)):
                dev.transmit(st_.poll(now))
            link.advance(now)
            for st_, dev in ((a, link.a), (b, link.b)):
                for f, nr in dev.receive():
                    seen.append(bytes(f))
                    st_.receive(f, now, not nr)
            if srv is None:
                srv = a.tcp_accept(lst)
            if srv is not None and i % 3 == 0:
                c.send(b"req %d\r\n" % i)
                data = srv.recv()
                if data:
                    srv.send(b"+OK " + data)
                c.recv()
        assert srv is not None and len(seen) > 100
        return seen

    with_c = run()
    monkeypatch.setattr(stack_mod, "_tcp_rx", None)
    monkeypatch.setattr(stack_mod, "_tcp_frame", None)
    without = run()
    assert with_c == without


# ---------------------------------------------------------------------------- data segments
needs_data_c = pytest.mark.skipif(stack_mod._tcp_data_frame is None,
                                  reason="libos.inet._csum is not built with tcp_data_frame")


class _Conn:
    """What Stack._send_data reads of a connection."""

    def __init__(self, sport: int, dport: int, dst: int, sndbuf: bytearray) -> None:
        self.local_port, self.remote_port, self.local_addr, self.remote_addr = sport, dport, OUR_IP, dst
        self._sndbuf = sndbuf


@needs_data_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sport=st.integers(0, 0xFFFF), dport=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFFFFFF),
       ack=st.integers(0, 0xFFFFFFFF), window=st.integers(0, 0xFFFF), ident=st.integers(0, 0xFFFF),
       buf=st.binary(max_size=3000), cut=st.tuples(st.integers(0, 3000), st.integers(0, 1460)),
       far=st.booleans())
def test_c_data_frame_writes_the_python_builders_bytes(sport, dport, seq, ack, window, ident, buf, cut,
                                                      far) -> None:
    """Stack._send_data (tcp_data_frame: the payload copied in C from the send buffer at an
    offset) writes exactly what _send_tcp_py writes for the same ACK|PSH segment."""
    off = min(cut[0], len(buf))
    n = min(cut[1], len(buf) - off)
    dst = FAR_IP if far else PEER_IP
    s = _stack()
    s._ident = ident
    s._send_data(_Conn(sport, dport, dst, bytearray(buf)), (seq, ack, window, off, n), 0.0)
    a = s.poll(0.0)
    s._ident = ident
    s._send_tcp_py(OutSegment(sport, dport, seq, ack, FLAGS[0x18], window, TcpOptions(), buf[off:off + n],
                              OUR_IP, dst), 0.0)
    b = s.poll(0.0)
    assert len(a) == len(b) == 1 and bytes(a[0]) == bytes(b[0])
    assert s._ident == (ident + 1) & 0xFFFF


@needs_data_c
def test_c_data_frame_rejects_what_is_not_in_the_buffer_or_does_not_fit() -> None:
    from libos.inet._csum import ffi, lib
    buf = ffi.new("char[]", 100)
    mac = b"\x02" * 6
    data = b"z" * 50
    args = (buf, 100, mac, mac, 1, 2, 3, 64, 1, 2, 3, 4, 0x18, 5, data, len(data))
    assert lib.tcp_data_frame(*args, 4, 46) == 100 and ffi.buffer(buf)[54:100] == data[4:50]
    assert lib.tcp_data_frame(*args, 5, 46) == -1            # past the end of the data
    assert lib.tcp_data_frame(*args, 51, 0) == -1            # offset past the data
    assert lib.tcp_data_frame(*args[:-2], b"z" * 60, 60, 0, 47) == -1   # beyond the frame buffer


def _exchange() -> tuple[list[bytes], dict]:
    """A request/response exchange whose replies go out through Stack.poll_connection."""
    from libos.inet.device import WireLink
    from libos.inet.tcp import TcpConfig

    link = WireLink(seed=7, mac_a=b"\x02\0\0\0\0\x0a", mac_b=b"\x02\0\0\0\0\x0b")
    cfg = TcpConfig(push_ack_delay=0.001)
    a = Stack(link.a.mac, "10.0.0.1", rng=random.Random(1), tcp_config=cfg)
    b = Stack(link.b.mac, "10.0.0.2", rng=random.Random(2), tcp_config=cfg)
    a.tcp_reserve(7000)
    lst = a.tcp_listen(7000)
    c = b.tcp_connect(int(a.ip), 7000, 0.0)
    sent: list[bytes] = []
    now, srv = 0.0, None
    rng = random.Random(3)
    for i in range(300):
        now += 0.0005
        out = a.poll(now)
        sent += [bytes(f) for f in out]
        link.a.transmit(out)
        link.b.transmit(b.poll(now))
        link.advance(now)
        for st_, dev in ((a, link.a), (b, link.b)):
            for f, nr in dev.receive():
                st_.receive(f, now, not nr)
        if srv is None:
            srv = a.tcp_accept(lst)
            continue
        if rng.random() < 0.6:
            c.send(b"req %d\r\n" % i * rng.randrange(1, 3))
        data = srv.recv()
        if data:   # the reply, pushed as the library OS does: poll_connection at once
            srv.send(b"+OK " + data * rng.randrange(1, 400))
            out = a.poll_connection(srv, now)
            sent += [bytes(f) for f in out]
            link.a.transmit(out)
        c.recv()
    assert srv is not None and len(sent) > 150
    return sent, srv.counters.as_dict()


def test_poll_connection_fast_path_sends_what_the_general_path_sends(monkeypatch) -> None:
    """Stack.poll_connection through TcpConnection.poll_data and the C data-frame builder,
    the same without the C builder, and through the general TcpConnection.poll: the same
    frames, the same counters (replies of one segment and of several)."""
    from libos.inet.tcp import TcpConnection

    taken = []
    orig = TcpConnection.poll_data

    def spy(self, now):
        r = orig(self, now)
        taken.append(r is not None)
        return r

    monkeypatch.setattr(TcpConnection, "poll_data", spy)
    fast, fast_counters = _exchange()
    assert sum(taken) > 50 and not all(taken)      # one-segment replies, and larger ones
    monkeypatch.setattr(stack_mod, "_tcp_data_frame", None)
    no_c, no_c_counters = _exchange()
    monkeypatch.setattr(TcpConnection, "poll_data", lambda self, now: None)
    general, general_counters = _exchange()
    assert fast == no_c == general
    assert fast_counters == no_c_counters == general_counters
