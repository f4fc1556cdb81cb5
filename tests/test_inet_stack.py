"""Tests of the inet stack glue (libos/inet/stack.py) and the inet Backend, without a kernel.

Two of our :class:`Stack` objects talk over the in-process WireLink (libos/inet/device/wire.py)
on a virtual clock: TCP handshake, echo, bulk transfers with SHA-256 under loss, duplication
and reordering, UDP, ICMP echo, ARP resolution/retry/expiry, RST for closed ports, ephemeral
port exhaustion, hostile frames.  Then two ``LibOS("inet")`` instances over a WireLink in real
time (one thread each) check the queue semantics the application sees.

Transfer sizes: 10 MB each way on a clean link (with 1% duplication and 5% reordering) and
at 1% and 5% loss (each ~2-3 s of wall time on the reference VM; INET_STACK_BYTES and
INET_STACK_LOSSY_BYTES override the sizes).
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import threading
import time

import pytest

import queueapi as dq
from libos.inet.device import Device, WireLink
from libos.inet.stack import Stack
from libos.inet.tcp import TcpConfig, TcpState
from libos.inet.wire import IcmpMessage, Ipv4Address
from queueapi.types import Opcode

A_IP, B_IP = "10.1.0.1", "10.1.0.2"
CLEAN_BYTES = int(os.environ.get("INET_STACK_BYTES", str(10_000_000)))
LOSSY_BYTES = int(os.environ.get("INET_STACK_LOSSY_BYTES", str(10_000_000)))


class Net:
    """Stacks ``a`` and ``b`` on the two ends of a WireLink, driven on virtual time."""

    def __init__(self, seed: int = 1, cfg: TcpConfig | None = None, **link_kw) -> None:
        link_kw.setdefault("delay", 0.001)
        link_kw.setdefault("jitter", 0.0002)
        self.link = WireLink(seed=seed, **link_kw)
        cfg = cfg or TcpConfig(msl=0.5)
        self.a = Stack(self.link.a.mac, A_IP, rng=random.Random(seed * 3 + 1), tcp_config=cfg,
                       arp_ttl=30.0)
        self.b = Stack(self.link.b.mac, B_IP, rng=random.Random(seed * 3 + 2), tcp_config=cfg,
                       arp_ttl=30.0)
        self.t = 0.0

    def step(self) -> None:
        t = self.t
        for dev, st in ((self.link.a, self.a), (self.link.b, self.b)):
            st.receive_many(dev.receive(), t)
            out = st.poll(t)
            if out:
                dev.transmit(out)

    def run(self, until, max_t: float = 600.0, app=None) -> bool:
        """Step until ``until()`` is true (True) or nothing is scheduled / ``max_t`` passes."""
        for _ in range(10_000_000):
            if app is not None:
                app()
            self.step()
            if until():
                return True
            cands = [d for d in (self.a.next_deadline(), self.b.next_deadline(), self.link.next_arrival())
                     if d is not None]
            if not cands or self.t > max_t:
                return False
            self.t = max(self.t, min(cands))
            self.link.advance(self.t)
        return False

    def advance(self, dt: float) -> None:
        end = self.t + dt
        self.run(lambda: self.t >= end, max_t=end)
        self.t = max(self.t, end)
        self.link.advance(self.t)
        self.step()


def ip(s: str) -> int:
    return int(Ipv4Address(s))


def connect_pair(net: Net, port: int = 80):
    net.b.tcp_reserve(port)
    lst = net.b.tcp_listen(port)
    c = net.a.tcp_connect(ip(B_IP), port, net.t)
    box = {}

    def accepted() -> bool:
        if "s" not in box:
            s = net.b.tcp_accept(lst)
            if s is not None:
                box["s"] = s
        return "s" in box and c.state is TcpState.ESTABLISHED

    assert net.run(accepted, max_t=net.t + 30)
    return c, box["s"], lst


def transfer(net: Net, size: int, max_t: float = 3600.0):
    c, s, _ = connect_pair(net)
    up = random.Random(5).randbytes(size)
    down = random.Random(6).randbytes(size)
    got_up, got_down = bytearray(), bytearray()
    sent = {"c": 0, "s": 0}

    def app_side(conn, data, key, got) -> None:
        if conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            if sent[key] < len(data):
                sent[key] += conn.send(memoryview(data)[sent[key]:sent[key] + 262144])
            if sent[key] == len(data):
                conn.close()
        chunk = conn.recv()
        if chunk:
            got += chunk

    def app() -> None:
        app_side(c, up, "c", got_down)
        app_side(s, down, "s", got_up)

    done = (TcpState.TIME_WAIT, TcpState.CLOSED)
    w0 = time.perf_counter()
    ok = net.run(lambda: len(got_up) == size and len(got_down) == size and c.state in done and s.state in done,
                 max_t=max_t, app=app)
    wall = time.perf_counter() - w0
    assert ok, (c, s, len(got_up), len(got_down))
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert c.error is None and s.error is None
    return c, s, wall


# ============================================================ TCP over two stacks

def test_tcp_connect_accept_echo_and_close() -> None:
    net = Net()
    c, s, lst = connect_pair(net)
    assert (s.remote_addr, s.local_port) == (ip(A_IP), 80)
    assert net.a.arp_lookup(B_IP, net.t) == net.link.b.mac          # ARP resolved on the way
    c.send(b"hello, stack")
    assert net.run(lambda: s.readable == 12)
    s.send(s.recv())
    assert net.run(lambda: c.readable == 12)
    assert c.recv() == b"hello, stack"
    c.close()
    assert net.run(lambda: s.eof)
    s.close()
    assert net.run(lambda: c.state is TcpState.TIME_WAIT and s.state is TcpState.CLOSED)
    assert net.run(lambda: not net.a.connections and not net.b.connections)   # TIME_WAIT ended
    assert net.b.stats()["tcp_closed_connections"] == 1


def test_tcp_10mb_each_way_clean_link_with_dup_and_reorder() -> None:
    net = Net(seed=3, dup=0.01, reorder=0.05)
    c, s, wall = transfer(net, CLEAN_BYTES)
    print(f"\n{2 * CLEAN_BYTES / 1e6:.0f} MB through two stacks in {wall:.2f} s wall "
          f"({2 * CLEAN_BYTES / 1e6 / wall:.1f} MB/s), virtual {net.t:.2f} s")


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_tcp_transfer_under_loss_dup_and_reorder(loss: float) -> None:
    net = Net(seed=7, loss=loss, dup=0.01, reorder=0.05)
    c, s, wall = transfer(net, LOSSY_BYTES)
    assert c.counters.retransmits and s.counters.retransmits
    assert net.link.stats["a->b"]["lost"] and net.link.stats["b->a"]["lost"]
    print(f"\n{2 * LOSSY_BYTES / 1e6:.0f} MB at {loss:.0%} loss: {wall:.2f} s wall, virtual {net.t:.2f} s, "
          f"retransmits {c.counters.retransmits}+{s.counters.retransmits}")


def test_rst_for_a_closed_port_refuses_the_connect() -> None:
    net = Net()
    c = net.a.tcp_connect(ip(B_IP), 4444, 0.0)
    assert net.run(lambda: c.state is TcpState.CLOSED)
    assert c.error == errno.ECONNREFUSED
    assert net.b.counters["tcp_rst_closed_port"] == 1
    assert not net.a.connections                       # a closed connection leaves the table


def test_ephemeral_port_exhaustion_and_reuse_per_destination() -> None:
    net = Net()
    st = Stack(net.link.a.mac, A_IP, ephemeral_ports=(50000, 50002), rng=random.Random(1))
    ports = {st.tcp_connect(ip(B_IP), 80, 0.0).local_port for _ in range(3)}
    assert ports == {50000, 50001, 50002}
    with pytest.raises(OSError) as ei:
        st.tcp_connect(ip(B_IP), 80, 0.0)
    assert ei.value.errno == errno.EADDRNOTAVAIL and "50000-50002" in str(ei.value)
    assert st.tcp_connect(ip(B_IP), 81, 0.0).local_port in ports   # another destination: fine
    st.udp_bind(0), st.udp_bind(0), st.udp_bind(0)
    with pytest.raises(OSError) as ei:
        st.udp_bind(0)
    assert ei.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as ei:
        st.udp_bind(50000)
    assert ei.value.errno == errno.EADDRINUSE


def test_bind_conflicts_and_unreachable_destinations() -> None:
    st = Stack(b"\x02\0\0\0\0\x01", A_IP)
    st.tcp_reserve(80)
    with pytest.raises(OSError) as ei:
        st.tcp_reserve(80)
    assert ei.value.errno == errno.EADDRINUSE
    for dst in ("192.168.1.1", A_IP, "127.0.0.1"):          # no gateway / ourselves / loopback
        with pytest.raises(OSError) as ei:
            st.tcp_connect(ip(dst), 80, 0.0)
        assert ei.value.errno == errno.ENETUNREACH


# ============================================================ UDP, ICMP, ARP

def test_udp_echo_between_stacks_and_port_unreachable() -> None:
    net = Net()
    ea, eb = net.a.udp_bind(0), net.b.udp_bind(7)
    net.a.udp_send(ea, b"ping", ip(B_IP), 7, net.t)
    assert net.run(lambda: eb.rx)
    data, (src, sport) = eb.take()
    assert (data, src, sport) == (b"ping", A_IP, ea.port)
    big = random.Random(1).randbytes(5000)          # fragmented on output, reassembled on input
    net.b.udp_send(eb, big, ip(src), sport, net.t)
    assert net.run(lambda: ea.rx)
    assert ea.take()[0] == big
    assert net.b.counters["fragments_sent"] == 4 and net.a.reassembler.stats.reassembled == 1
    ea.peer = (ip(B_IP), 9)                          # "connected" to a closed port
    net.a.udp_send(ea, b"anyone?", ip(B_IP), 9, net.t)
    assert net.run(lambda: ea.error)
    assert ea.error == errno.ECONNREFUSED and net.b.counters["icmp_unreachable_sent"] == 1


def test_icmp_echo_between_stacks() -> None:
    net = Net()
    req = IcmpMessage.echo_request(0x77, 1, b"are you there").to_bytes()
    net.a.send_ip(ip(B_IP), 1, req, net.t)
    assert net.run(lambda: net.a.counters["icmp_other"] == 1)     # the echo reply came back
    assert net.b.counters["icmp_echo_replies"] == 1


def test_arp_resolution_retry_give_up_and_expiry() -> None:
    net = Net()
    ea = net.a.udp_bind(0)
    # nobody has 10.1.0.99: 3 who-has, then the queued datagrams are dropped
    for i in range(3):
        net.a.udp_send(ea, b"x%d" % i, ip("10.1.0.99"), 7, net.t)
    net.advance(5.0)
    assert net.a.counters["arp_requests"] == 3
    assert net.a.counters["arp_unresolved_drops"] == 3 and net.a.stats()["arp_pending"] == 0
    # B resolves; the queued datagram goes out once the reply comes
    eb = net.b.udp_bind(7)
    net.a.udp_send(ea, b"hi", ip(B_IP), 7, net.t)
    assert net.run(lambda: eb.rx)
    assert net.a.counters["arp_resolved"] == 1
    assert net.a.arp_lookup(B_IP, net.t) == net.link.b.mac
    # the entry expires after arp_ttl (30 s) without refresh; the next send asks again
    net.advance(31.0)
    assert net.a.arp_lookup(B_IP, net.t) is None
    before = net.a.counters["arp_requests"]
    net.a.udp_send(ea, b"again", ip(B_IP), 7, net.t)
    assert net.run(lambda: len(eb.rx) == 2)
    assert net.a.counters["arp_requests"] == before + 1


def test_arp_queue_is_bounded_per_next_hop() -> None:
    st = Stack(b"\x02\0\0\0\0\x01", A_IP, arp_queue_limit=4)
    ep = st.udp_bind(0)
    for i in range(10):
        st.udp_send(ep, b"%d" % i, ip("10.1.0.50"), 7, 0.0)
    assert st.stats()["arp_pending"] == 4 and st.counters["arp_queue_overflow"] == 6


def test_hostile_frames_never_raise_and_are_counted() -> None:
    net = Net()
    rnd = random.Random(9)
    c, s, _ = connect_pair(net)
    good = []
    c.send(b"x" * 3000)
    for seg in c.poll(net.t):        # real frames to mutate
        frame = net.a._ip_frame(seg.dst_addr, 6, 20 + seg.options.padded_len + len(seg.payload))
        seg.to_wire().emit_into(frame, 34, seg.src_addr, seg.dst_addr)
        frame[0:6] = net.link.b.mac
        good.append(bytes(frame))
    assert good
    for i in range(3000):
        f = bytearray(rnd.choice(good))
        kind = i % 4
        if kind == 0:
            f = f[:rnd.randrange(len(f))]
        elif kind == 1:
            for _ in range(rnd.randrange(1, 6)):
                f[rnd.randrange(len(f))] = rnd.randrange(256)
        elif kind == 2:
            f = bytearray(rnd.randbytes(rnd.randrange(0, 120)))
        else:
            f[12:14] = rnd.choice([b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x08\x00"])
        net.b.receive(bytes(f), net.t, csum_ok=rnd.random() < 0.8)
        net.b.poll(net.t)
    malformed = sum(v for k, v in net.b.counters.items() if k.startswith("malformed_"))
    assert malformed > 500


# ============================================================ the Backend (LibOS("inet")) in-process

class RealTimeWire(Device):
    """One end of a WireLink whose clock follows time.monotonic (for two LibOS threads)."""

    def __init__(self, dev, lock: threading.Lock) -> None:
        self.dev, self.lock, self.link = dev, lock, dev.link
        self.mac, self.mtu, self.name = dev.mac, dev.mtu, dev.name

    def _sync(self) -> None:
        t = time.monotonic()
        if t > self.link.now:
            self.link.advance(t)

    def receive(self):
        with self.lock:
            self._sync()
            return self.dev.receive()

    def transmit(self, frames):
        with self.lock:
            self._sync()
            return self.dev.transmit(frames)

    def fileno(self) -> int:
        return self.dev.fileno()

    def close(self) -> None:
        pass


@pytest.fixture
def pair():
    link = WireLink(seed=1, now=time.monotonic())
    lock = threading.Lock()
    kw = {"msl": 0.5, "send_buffer": 65536}
    a = dq.LibOS("inet", config={"device_object": RealTimeWire(link.a, lock), "ipv4": A_IP,
                                 "mac": link.a.mac.hex(":"), **kw})
    b = dq.LibOS("inet", config={"device_object": RealTimeWire(link.b, lock), "ipv4": B_IP,
                                 "mac": link.b.mac.hex(":"), **kw})
    stop = threading.Event()

    def pump(los) -> None:
        # progress happens inside wait calls: keep each LibOS polled while the test thread
        # waits on the other one (the core hands the poller role between threads)
        qt = los.pop(los.queue())
        while not stop.is_set():
            try:
                los.wait(qt, timeout=0.05)
            except TimeoutError:
                pass

    pumps = [threading.Thread(target=pump, args=(los,), daemon=True) for los in (a, b)]
    for t in pumps:
        t.start()
    yield a, b
    stop.set()
    for t in pumps:
        t.join(5)
    a.shutdown_libos()
    b.shutdown_libos()


def _serve(b, ready: threading.Event, result: dict, mode: str = "echo") -> None:
    lq = b.socket()
    b.bind(lq, ("0.0.0.0", 7000))
    b.listen(lq)
    ready.set()
    r = b.wait(b.accept(lq), timeout=10)
    q = r.new_qd
    result["peer"] = r.addr
    if mode == "hold":               # accept, then do not read for a while (backpressure)
        time.sleep(1.0)
    got = bytearray()
    while True:
        sga = b.blocking_pop(q, 65536, timeout=20)
        if not len(sga):
            break
        got += sga.tobytes()
        if mode == "echo":
            b.blocking_push(q, sga.tobytes(), timeout=10)
    result["got"] = bytes(got)
    b.blocking_push(q, hashlib.sha256(got).digest(), timeout=10)
    b.close(q)
    b.close(lq)


def test_backend_stream_socket_semantics(pair) -> None:
    a, b = pair
    ready, result = threading.Event(), {}
    th = threading.Thread(target=_serve, args=(b, ready, result), daemon=True)
    th.start()
    assert ready.wait(5)
    q = a.socket()
    with pytest.raises(OSError) as ei:
        a.push(q, b"too early")
    assert ei.value.errno == errno.ENOTCONN
    r = a.wait(a.connect(q, (B_IP, 7000)), timeout=5)
    assert r.opcode == Opcode.CONNECT and r.ret == 0
    assert a.getpeername(q) == (B_IP, 7000) and a.getsockname(q)[0] == A_IP
    with pytest.raises(OSError) as ei:
        a.connect(q, (B_IP, 7000))
    assert ei.value.errno == errno.EISCONN
    a.blocking_push(q, [b"seg", b"ments"], timeout=5)
    got = b""
    while len(got) < 8:
        got += a.blocking_pop(q, timeout=5).tobytes()
    assert got == b"segments"
    a.shutdown(q, socket.SHUT_WR)
    with pytest.raises(OSError) as ei:
        a.push(q, b"after shutdown")
    assert ei.value.errno == errno.EPIPE
    digest = b""
    while len(digest) < 32:
        sga = a.blocking_pop(q, timeout=5)
        assert len(sga)
        digest += sga.tobytes()
    assert digest == hashlib.sha256(b"segments").digest()
    assert len(a.blocking_pop(q, timeout=5)) == 0          # end of stream ...
    assert len(a.blocking_pop(q, timeout=5)) == 0          # ... again at once
    st = a.stats(q)
    assert st["path"] == "inet" and st["libos"] == "inet" and "retransmits" in st["tcp"]
    a.close(q)
    with pytest.raises(OSError) as ei:
        a.close(q)
    assert ei.value.errno == errno.EBADF
    th.join(10)
    assert result["peer"][0] == A_IP


def test_backend_refused_connect_udp_and_errors(pair) -> None:
    a, b = pair
    q = a.socket()
    r = a.wait(a.connect(q, (B_IP, 4444)), timeout=5)
    assert r.opcode == Opcode.FAILED and r.ret == errno.ECONNREFUSED
    a.close(q)
    with pytest.raises(OSError) as ei:
        a.socket(socket.AF_INET6)
    assert ei.value.errno == errno.EAFNOSUPPORT and "AF_INET" in str(ei.value)
    ub = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(ub, ("0.0.0.0", 5353))
    ua = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(OSError) as ei:
        a.pop(ua)
    assert ei.value.errno == errno.EDESTADDRREQ
    a.wait(a.pushto(ua, b"question", (B_IP, 5353)), timeout=5)
    r = b.wait(b.pop(ub), timeout=5)
    assert r.sga.tobytes() == b"question" and r.addr[0] == A_IP
    b.wait(b.pushto(ub, b"answer", r.addr), timeout=5)
    r2 = a.wait(a.pop(ua), timeout=5)
    assert r2.sga.tobytes() == b"answer" and r2.addr == (B_IP, 5353)
    # connected to a closed port: the ICMP port unreachable fails the next pop
    a.wait(a.connect(ua, (B_IP, 9)), timeout=5)
    a.wait(a.push(ua, b"hello?"), timeout=5)
    r3 = a.wait(a.pop(ua), timeout=5)
    assert r3.opcode == Opcode.FAILED and r3.ret == errno.ECONNREFUSED
    qt = a.pop(ua)
    a.close(ua)
    assert a.wait(qt, timeout=1).ret == errno.ECANCELED


def test_backend_push_pends_while_the_send_buffer_is_full(pair) -> None:
    a, b = pair
    ready, result = threading.Event(), {}
    th = threading.Thread(target=_serve, args=(b, ready, result, "hold"), daemon=True)
    th.start()
    assert ready.wait(5)
    q = a.socket()
    a.wait(a.connect(q, (B_IP, 7000)), timeout=5)
    data = random.Random(2).randbytes(1_000_000)   # > send buffer (64 KiB) + peer window (256 KiB)
    qt = a.push(q, data)
    with pytest.raises(TimeoutError):
        a.wait(qt, timeout=0.3)                       # pending: backpressure while the peer sleeps
    assert a.stats(q)["pending_pushes"] == 1
    assert a.wait(qt, timeout=20).opcode == Opcode.PUSH
    a.shutdown(q, socket.SHUT_WR)
    digest = a.blocking_pop(q, timeout=20).tobytes()
    th.join(20)
    assert result["got"] == data and digest[:32] == hashlib.sha256(data).digest()
    a.close(q)


def test_backend_not_configured_is_enodev(monkeypatch) -> None:
    monkeypatch.delenv("DEMI_CONFIG", raising=False)
    with pytest.raises(OSError) as ei:
        dq.LibOS("inet")
    assert ei.value.errno == errno.ENODEV and "interface" in str(ei.value)
