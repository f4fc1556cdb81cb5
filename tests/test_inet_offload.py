"""Filter offload: ``queueapi.Match`` compiled to classic BPF (libos/inet/bpf.py).

Pure tests: golden instructions and bytes of a compiled program; the program (run by the
small interpreter in libos/inet/bpf.py) agrees with ``Match.test`` on frames in scope and
lets through everything the stack needs (ARP, ICMP, TCP, other UDP ports, later
fragments); a Match on a posix queue runs on the CPU with the usual steering.

Live (root; skips otherwise, fails under CI like tests/test_inet_live.py): our stack in a
namespace the test creates, a UDP socket with an offloaded Match; a Linux peer sends from
the matching source port and from another one: the other one's frames never enter the
device's ring (its receive counter), the filter's stats say ``offload: "bpf"``.
"""
from __future__ import annotations

import random
import socket
import struct
import sys

import pytest

import queueapi as dq
from libos.inet import bpf
from queueapi import Match

from test_inet_live import ROOT, _env, background, ns, result_of, run_in  # noqa: F401  (ns: fixture)

APP = str(ROOT / "tests" / "inet_adversary_app.py")

GOLDEN_RULES = [(5353, [Match(proto="udp", dst_port=5353, src_ip="10.77.0.0/16", src_port=7000)]),
                (53, [Match(src_port=(1024, 65535)), Match(src_ip="192.168.1.7")])]
GOLDEN = [
    (0x28, 0, 0, 12),            # ldh [12]                ethertype
    (0x15, 0, 23, 0x0800),       # jeq #IPv4, else accept
    (0x30, 0, 0, 23),            # ldb [23]                protocol
    (0x15, 0, 21, 17),           # jeq #UDP, else accept
    (0x28, 0, 0, 20),            # ldh [20]                flags/fragment offset
    (0x45, 19, 0, 0x1FFF),       # jset #0x1fff: a later fragment -> accept
    (0xB1, 0, 0, 14),            # ldxb 4*([14]&0xf)       X = IHL*4
    (0x48, 0, 0, 16),            # ldh [x+16]              UDP destination port
    (0x15, 2, 0, 53),            # jeq #53 -> rules of 53
    (0x15, 8, 0, 5353),          # jeq #5353 -> rules of 5353
    (0x06, 0, 0, 0x40000),       # ret #all                 another port
    (0x48, 0, 0, 14),            # 53, rule 1: ldh [x+14]   source port
    (0x35, 0, 1, 1024),          #   jge #1024, else next rule
    (0x06, 0, 0, 0x40000),       #   ret #all
    (0x20, 0, 0, 26),            # 53, rule 2: ld [26]      source address
    (0x15, 0, 1, 0xC0A80107),    #   jeq #192.168.1.7, else drop
    (0x06, 0, 0, 0x40000),       #   ret #all
    (0x06, 0, 0, 0),             # ret #0                   no rule of 53 matched
    (0x20, 0, 0, 26),            # 5353: ld [26]
    (0x54, 0, 0, 0xFFFF0000),    #   and #255.255.0.0
    (0x15, 0, 3, 0x0A4D0000),    #   jeq #10.77.0.0, else drop
    (0x48, 0, 0, 14),            #   ldh [x+14]
    (0x15, 0, 1, 7000),          #   jeq #7000, else drop
    (0x06, 0, 0, 0x40000),       #   ret #all
    (0x06, 0, 0, 0),             # ret #0
    (0x06, 0, 0, 0x40000),       # accept: ret #all
]


def test_compile_golden_instructions() -> None:
    assert bpf.compile_udp_filters(GOLDEN_RULES) == GOLDEN
    # order of the input ports does not matter: the program is a function of the rules
    assert bpf.compile_udp_filters(list(reversed(GOLDEN_RULES))) == GOLDEN


@pytest.mark.skipif(sys.byteorder != "little", reason="golden bytes are little-endian struct sock_filter")
def test_compile_golden_bytes() -> None:
    raw = bpf.to_bytes(GOLDEN)
    assert len(raw) == 8 * len(GOLDEN)
    assert raw[:24].hex() == "280000000c00000015000017000800003000000017000000"
    assert raw[-8:] == struct.pack("<HBBI", 6, 0, 0, 0x40000)


def test_port_without_matches_drops_everything_to_it() -> None:
    prog = bpf.compile_udp_filters([(9, [])])
    assert prog[-3:] == [(0x06, 0, 0, 0x40000), (0x06, 0, 0, 0), (0x06, 0, 0, 0x40000)]
    assert bpf.run(prog, _udp(1, 9, "10.0.0.1")) == 0
    assert bpf.run(prog, _udp(1, 10, "10.0.0.1")) == bpf.ACCEPT


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip(proto: int, src: str, payload: bytes, frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 1, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton("10.77.1.1")) + options
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + h + payload


def _udp(sport: int, dport: int, src: str, frag: int = 0, options: bytes = b"") -> bytes:
    return _ip(17, src, struct.pack("!HHHH", sport, dport, 12, 0) + b"data", frag, options)


def test_program_agrees_with_match_on_random_frames() -> None:
    rng = random.Random(7)
    rules = GOLDEN_RULES + [(9000, [Match(src_port=(5000, 5010))])]
    prog = bpf.compile_udp_filters(rules)
    by_port = {p: ms for p, ms in rules}
    for _ in range(3000):
        sport = rng.choice([7000, 7001, 1023, 1024, 65535, 5000, 5010, 5011, rng.randrange(65536)])
        dport = rng.choice([53, 5353, 9000, 80, rng.randrange(1, 65536)])
        src = rng.choice(["10.77.3.4", "10.78.0.1", "192.168.1.7", "192.168.1.8", "1.2.3.4"])
        opts = rng.choice([b"", b"\x01\x01\x01\x00", b"\x00" * 8])
        frame = _udp(sport, dport, src, options=opts)
        src_int = int.from_bytes(socket.inet_aton(src), "big")
        if dport in by_port:
            want = any(m.test("udp", dport, src_int, sport) for m in by_port[dport])
        else:
            want = True
        assert (bpf.run(prog, frame) != 0) == want, (sport, dport, src, opts)


def test_program_passes_what_the_stack_needs() -> None:
    prog = bpf.compile_udp_filters([(5353, [Match(src_port=7000)])])
    arp = b"\xff" * 6 + b"\x02\0\0\0\0\x02\x08\x06" + bytes(28)
    ipv6 = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x86\xdd" + bytes(40)
    tcp_to_5353 = _ip(6, "10.77.1.2", struct.pack("!HHIIBBHHH", 7001, 5353, 1, 0, 0x50, 2, 100, 0, 0))
    icmp = _ip(1, "10.77.1.2", b"\x08\x00" + bytes(6))
    later_fragment = _udp(7001, 5353, "10.77.1.2", frag=0x0010)    # offset 128: no ports in it
    first_fragment = _udp(7001, 5353, "10.77.1.2", frag=0x2000)    # MF, offset 0: has the ports
    for frame in (arp, ipv6, tcp_to_5353, icmp, later_fragment, _udp(7001, 5354, "10.77.1.2")):
        assert bpf.run(prog, frame) == bpf.ACCEPT
    assert bpf.run(prog, first_fragment) == 0
    assert bpf.run(prog, _udp(7000, 5353, "10.77.1.2")) == bpf.ACCEPT
    assert bpf.run(prog, _udp(7001, 5353, "10.77.1.2")) == 0


def test_too_many_rules_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        bpf.compile_udp_filters([(p, [Match(src_port=p)]) for p in range(1, 400)])


def test_match_validation_and_cpu_evaluation() -> None:
    with pytest.raises(ValueError):
        Match(proto="sctp")
    with pytest.raises(ValueError):
        Match(src_port=(10, 5))
    with pytest.raises(TypeError):
        Match(dst_port="53")
    m = Match(proto="UDP", src_ip="10.0.0.0/8", src_port=(1000, 2000))
    assert m.proto == "udp"
    assert m(dq.SGArray.from_bytes(b"x", ("10.1.2.3", 1500)))
    assert not m(dq.SGArray.from_bytes(b"x", ("11.1.2.3", 1500)))
    assert not m(dq.SGArray.from_bytes(b"x", ("10.1.2.3", 999)))
    assert not m(dq.SGArray.from_bytes(b"x"))   # no address: the source fields cannot match


def test_match_on_a_posix_queue_runs_on_the_cpu_with_steering() -> None:
    los = dq.LibOS("posix")
    try:
        rx = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
        los.bind(rx, ("127.0.0.1", 0))
        port = los.getsockname(rx)[1]
        fq = los.filter(rx, Match(proto="udp", dst_port=port, src_port=None, src_ip="127.0.0.1"))
        other = los.filter(rx, Match(proto="tcp"))        # never true on a UDP queue
        st = los.stats(fq)
        assert st["offloaded"] is False and st["offload"] is None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"one", ("127.0.0.1", port))
        r = los.wait(los.pop(fq), timeout=5)
        assert r.sga.tobytes() == b"one"
        with pytest.raises(TimeoutError):
            los.wait(los.pop(other), timeout=0.2)
        s.close()
    finally:
        los.shutdown_libos()


# ---------------------------------------------------------------------- live
def test_offloaded_match_keeps_other_frames_out_of_the_ring(ns: dict, tmp_path) -> None:
    port, good, bad, n = 5353, 7000, 7001, 100
    env = _env(ns)
    stop = tmp_path / "stop"
    sender = (
        "import socket, sys, time\n"
        f"ip = {ns['stack_ip']!r}\n"
        "w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "w.sendto(b'warm', (ip, 9)); time.sleep(0.3)\n"     # ARP resolved before the counts
        f"b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(('0.0.0.0', {bad}))\n"
        f"g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); g.bind(('0.0.0.0', {good}))\n"
        f"for i in range({n}):\n"
        f"    b.sendto(b'bad %d' % i, (ip, {port}))\n"
        "    time.sleep(0.0005)\n"
        f"for i in range({n}):\n"
        f"    g.sendto(b'good %d' % i, (ip, {port}))\n"
        "    time.sleep(0.0005)\n"
    )
    with background(ns["stack_ns"], [sys.executable, APP, "bpf-server", str(port), str(good), str(n), "15"],
                    env, stop) as srv:
        ready = srv["ready"]
        assert '"offload": "bpf"' in ready, ready
        r = run_in(ns["peer_ns"], [sys.executable, "-c", sender], env, 30)
        assert r.returncode == 0, r.stderr
    res = result_of("\n".join(srv["lines"]))
    assert srv["returncode"] == 0, srv["stderr"][-3000:]
    assert len(res["got"]) == n and all(g[0].startswith("good ") and g[1][1] == good for g in res["got"]), res
    assert res["parent_left"] == 0, res
    fs = res["filter_stats"]
    assert fs["offload"] == "bpf" and fs["offloaded"] is True and fs["bpf_insns"] > 0, fs
    # the 100 datagrams from the other source port never entered the ring
    assert res["device_rx"] < n + 20, res
    assert res["udp_filtered"] == 0, res          # none reached the CPU backstop either
    assert fs["kernel_filtered"] >= n * 0.9, fs
    assert res["after_close_insns"] == 0, res     # closing the filter detaches the program
