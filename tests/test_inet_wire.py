"""Tests of the sans-IO wire layer (libos/inet/wire).

Golden frames: LINUX_FRAMES were captured once from Linux 6.18 through a TAP
device in a throwaway network namespace (kernel 10.0.0.1 / 02:00:00:00:00:01,
scripted peer 10.0.0.2 / 02:00:00:00:00:02): an ARP request from a kernel
connect(), the SYN that followed, the kernel's ARP reply and SYN-ACK, a
duplicate ACK carrying SACK after out-of-order data, an ICMP echo sent by a
kernel raw socket and an echo reply, a UDP datagram, a 2000-byte UDP datagram
fragmented by the kernel, and a port unreachable for UDP sent to a closed
port.  TAP advertises no offloads, so every checksum is complete.
SCAPY_VECTORS were built once with scapy 2.8.0 (not needed to run these tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from libos.inet.wire import (
    BROADCAST_MAC,
    ArpOperation,
    ArpPacket,
    EthernetFrame,
    EtherType,
    IcmpMessage,
    IcmpType,
    Ipv4Address,
    Ipv4Packet,
    MacAddress,
    MalformedPacket,
    Reassembler,
    TcpFlags,
    TcpOptionKind,
    TcpOptions,
    TcpSegment,
    UdpDatagram,
    checksum,
    ones_sum,
    pseudo_header_sum,
    seq_add,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STORMS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KERNEL_MAC = MacAddress("02:00:00:00:00:01")
PEER_MAC = MacAddress("02:00:00:00:00:02")
KERNEL_IP = Ipv4Address("10.0.0.1")
PEER_IP = Ipv4Address("10.0.0.2")

LINUX_FRAMES = {
    "arp_request": "ffffffffffff020000000001080600010800060400010200000000010a0000010000000000000a000002",
    "tcp_syn": (
        "02000000000202000000000108004500003caced4000400679cc0a0000010a000002a0b80050ed93777a00000000a002"
        "faf0fb600000020405b40402080abd6e7a23000000000103030a"
    ),
    "arp_reply": "020000000002020000000001080600010800060400020200000000010a0000010200000000020a000002",
    "tcp_synack": (
        "02000000000202000000000108004500003c00004000400626ba0a0000010a0000021f909c408f2463aaffffff01a012"
        "fe8855310000020405b40402080af3f45c580001e2400103030a"
    ),
    "tcp_dupack_sack": (
        "020000000002020000000001080045000040eb29400040063b8c0a0000010a0000021f909c408f2463abffffff01b010"
        "00404d2d00000101080af3f45c5b0001e2440101050affffff65ffffff97"
    ),
    "icmp_echo_request": (
        "02000000000202000000000108004500003cb47a4000400172440a0000010a00000208003b2712340001616263646566"
        "6768696a6b6c6d6e6f7071727374757677616263646566676869"
    ),
    "icmp_echo_reply": (
        "020000000002020000000001080045000033b47b00004001b24c0a0000010a0000020000ce75beef000770696e672d70"
        "61796c6f61642d30313233343536373839"
    ),
    "udp": (
        "02000000000202000000000108004500002d4f3940004011d7840a0000010a00000214e9270f001924f268656c6c6f2c"
        "2077697265206c61796572"
    ),
    "frag1": (
        "0200000000020200000000010800450005dc4f3a20004011f1d40a0000010a00000214e9270f07d85e85000102030405"
        "060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435"
        "363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465"
        "666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495"
        "969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5"
        "c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5"
        "f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425"
        "262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455"
        "565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485"
        "868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5"
        "b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5"
        "e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415"
        "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445"
        "464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475"
        "767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5"
        "a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5"
        "d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405"
        "060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435"
        "363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465"
        "666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495"
        "969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5"
        "c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5"
        "f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425"
        "262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455"
        "565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485"
        "868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5"
        "b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5"
        "e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415"
        "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445"
        "464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475"
        "767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5"
        "a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    ),
    "frag2": (
        "0200000000020200000000010800450002244f3a00b9401114d40a0000010a000002c0c1c2c3c4c5c6c7c8c9cacbcccd"
        "cecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfd"
        "feff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d"
        "2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d"
        "5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d"
        "8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbd"
        "bebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebeced"
        "eeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000"
    ),
    "icmp_port_unreach": (
        "020000000002020000000001080045c00046b47d00004001b1770a0000010a00000203031127000000004500002a03e7"
        "0000401162da0a0000020a000001823500090016754461726520796f752074686572653f"
    ),
}

SCAPY_VECTORS = {
    "vlan_udp": (
        "020000000001020000000002810060640800450000210001000007119fc90a0000020a00000104d20035000dedef766c"
        "616e21"
    ),
    "ip_options": "46b800200002000001023a060a000002e0000016940400002200fa0200000000",
    "tcp_data_unknown_opt": (
        "4500004200030000400666b10a0000020a0000019c401f9000000005fffffff070180400327600000101fe04abcd0000"
        "474554202f20485454502f312e300d0a0d0a"
    ),
    "udp_to_closed_port": "4500002a03e70000401162da0a0000020a000001823500090016754461726520796f752074686572653f",
    "our_port_unreach_icmp": "03030564000000004500002a03e70000401162da0a0000020a0000018235000900167544",
    "echo_reply_for_kernel_request": "00004327123400016162636465666768696a6b6c6d6e6f7071727374757677616263646566676869",
}


def frame(name: str) -> bytes:
    return bytes.fromhex(LINUX_FRAMES[name])


def vector(name: str) -> bytes:
    return bytes.fromhex(SCAPY_VECTORS[name])


def layers(raw: bytes) -> tuple[EthernetFrame, Ipv4Packet]:
    eth = EthernetFrame.parse(raw)
    assert eth.ethertype == EtherType.IPV4
    return eth, Ipv4Packet.parse(eth.payload)


def naive_ones_sum(data: bytes, initial: int = 0) -> int:
    """Reference RFC 1071 loop: 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header_bytes(src: int, dst: int, proto: int, length: int) -> bytes:
    return struct.pack("!IIBBH", src, dst, 0, proto, length)


# =====================================================================
# Golden frames: every layer parses and re-emits byte for byte
# =====================================================================


@pytest.mark.parametrize("name", sorted(LINUX_FRAMES))
def test_linux_frame_reemits_exactly(name: str) -> None:
    raw = frame(name)
    eth = EthernetFrame.parse(raw)
    assert eth.to_bytes() == raw
    assert (eth.dst, eth.src) in {(PEER_MAC, KERNEL_MAC), (BROADCAST_MAC, KERNEL_MAC)}
    if eth.ethertype == EtherType.ARP:
        arp = ArpPacket.parse(eth.payload)
        assert arp.to_bytes() == bytes(eth.payload)
        return
    ip = Ipv4Packet.parse(eth.payload)
    assert ip.to_bytes() == bytes(eth.payload)
    assert (ip.src, ip.dst) == (KERNEL_IP, PEER_IP)
    # header-only emission into a larger buffer at an offset
    buf = bytearray(7 + len(eth.payload))
    n = ip.emit_header(buf, 7)
    assert bytes(buf[7 : 7 + n]) == bytes(eth.payload[:n])
    if ip.is_fragment:
        return
    body = bytes(ip.payload)
    if ip.protocol == 6:
        seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
        assert seg.to_bytes(ip.src, ip.dst) == body
    elif ip.protocol == 17:
        udp = UdpDatagram.parse(ip.payload, ip.src, ip.dst)
        assert udp.to_bytes(ip.src, ip.dst) == body
    elif ip.protocol == 1:
        msg = IcmpMessage.parse(ip.payload)
        assert msg.to_bytes() == body
    else:  # pragma: no cover
        pytest.fail(f"unexpected protocol {ip.protocol}")


def test_full_frame_emission_with_one_payload_copy() -> None:
    raw = frame("tcp_dupack_sack")
    eth, ip = layers(raw)
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
    out = bytearray(14 + ip.header_len + seg.total_len)
    off = eth.emit_header(out, 0)
    off += ip.emit_header(out, off, payload_len=seg.total_len)
    off += seg.emit_into(out, off, ip.src, ip.dst)
    assert off == len(out) and bytes(out) == raw


def test_arp_request_from_linux() -> None:
    eth = EthernetFrame.parse(frame("arp_request"))
    assert eth.dst.is_broadcast and eth.ethertype == EtherType.ARP
    arp = ArpPacket.parse(eth.payload)
    assert arp.operation is ArpOperation.REQUEST
    assert (arp.sender_mac, arp.sender_ip, arp.target_ip) == (KERNEL_MAC, KERNEL_IP, PEER_IP)
    assert arp.target_mac == bytes(6)
    assert ArpPacket.request(KERNEL_MAC, KERNEL_IP, PEER_IP) == arp
    # our reply, framed like Linux frames it
    reply = arp.reply(PEER_MAC)
    assert (reply.sender_ip, reply.target_mac, reply.target_ip) == (PEER_IP, KERNEL_MAC, KERNEL_IP)
    out = EthernetFrame(KERNEL_MAC, PEER_MAC, EtherType.ARP, reply.to_bytes()).to_bytes()
    assert ArpPacket.parse(EthernetFrame.parse(out).payload) == reply


def test_arp_reply_from_linux_answers_our_request() -> None:
    eth = EthernetFrame.parse(frame("arp_reply"))
    arp = ArpPacket.parse(eth.payload)
    assert arp.operation is ArpOperation.REPLY
    ours = ArpPacket.request(PEER_MAC, PEER_IP, KERNEL_IP)
    assert ours.reply(KERNEL_MAC) == arp
    assert ours.reply(KERNEL_MAC).to_bytes() == bytes(eth.payload)


def test_arp_ignores_ethernet_padding() -> None:
    payload = bytes(EthernetFrame.parse(frame("arp_reply")).payload) + bytes(18)
    assert ArpPacket.parse(payload).to_bytes() == payload[:28]


def test_linux_syn_options() -> None:
    _, ip = layers(frame("tcp_syn"))
    assert ip.dont_fragment and ip.ttl == 64 and ip.protocol == 6
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
    assert seg.flags == TcpFlags.SYN and seg.dst_port == 80 and seg.ack == 0
    assert seg.window == 64240 and len(seg.payload) == 0 and seg.seq_len == 1
    opts = seg.options
    assert opts.mss == 1460 and opts.sack_permitted and opts.window_scale == 10
    tsval, tsecr = opts.timestamps
    assert tsecr == 0 and tsval == 3178134051
    assert opts.sack_blocks == ()
    assert [k for k, _ in opts.items] == [2, 4, 8, 1, 3]
    # Our builder lays the options out exactly as Linux does.
    built = TcpOptions.build(mss=1460, sack_permitted=True, timestamps=(tsval, 0), window_scale=10)
    assert built == opts and built.to_bytes() == bytes(ip.payload[20:40])
    again = TcpSegment(seg.src_port, 80, seg.seq, 0, TcpFlags.SYN, 64240, options=built)
    assert again.to_bytes(ip.src, ip.dst) == bytes(ip.payload)


def test_linux_synack_across_sequence_wrap() -> None:
    _, ip = layers(frame("tcp_synack"))
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
    assert seg.flags == TcpFlags.SYN | TcpFlags.ACK
    assert seg.src_port == 8080 and seg.dst_port == 40000
    # the scripted peer's ISN was 0xFFFFFF00, 255 short of the wrap
    assert seg.ack == 0xFFFFFF01 == seq_add(0xFFFFFF00, 1)
    assert seg.options.mss == 1460 and seg.options.timestamps[1] == 123456
    assert seg.options.window_scale == 10 and seg.options.sack_permitted


def test_linux_dup_ack_with_sack_block() -> None:
    _, ip = layers(frame("tcp_dupack_sack"))
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
    assert seg.flags == TcpFlags.ACK and seg.window == 64
    # the peer sent 50 bytes at ISN+1+100 with a 100-byte hole before them
    assert seg.options.sack_blocks == ((0xFFFFFF65, 0xFFFFFF97),)
    assert seg.options.timestamps[1] == 123460
    assert seq_lt(seg.ack, seg.options.sack_blocks[0][0])
    built = TcpOptions.build(timestamps=seg.options.timestamps, sack_blocks=seg.options.sack_blocks)
    assert built == seg.options


def test_checksum_partial_frames_need_verify_off() -> None:
    """veth with tx-checksumming on: the TCP checksum field holds only the
    pseudo-header sum (CHECKSUM_PARTIAL, TP_STATUS_CSUMNOTREADY)."""
    eth, ip = layers(frame("tcp_syn"))
    seg_bytes = bytearray(ip.payload)
    partial = pseudo_header_sum(ip.src, ip.dst, 6, len(seg_bytes))
    seg_bytes[16:18] = partial.to_bytes(2, "big")
    with pytest.raises(MalformedPacket, match="checksum") as info:
        TcpSegment.parse(seg_bytes, ip.src, ip.dst)
    assert info.value.layer == "tcp"
    seg = TcpSegment.parse(seg_bytes, ip.src, ip.dst, verify_checksum=False)
    assert seg.options.mss == 1460 and seg.checksum == partial
    # re-emission fills the real checksum
    assert seg.to_bytes(ip.src, ip.dst) == bytes(ip.payload)


def test_icmp_echo_request_from_linux_and_our_reply() -> None:
    _, ip = layers(frame("icmp_echo_request"))
    req = IcmpMessage.parse(ip.payload)
    assert req.type == IcmpType.ECHO_REQUEST and req.code == 0
    assert (req.ident, req.seq) == (0x1234, 1)
    assert bytes(req.payload) == b"abcdefghijklmnopqrstuvwabcdefghi"
    assert req.reply().to_bytes() == vector("echo_reply_for_kernel_request")
    assert IcmpMessage.echo_request(0x1234, 1, req.payload).to_bytes() == bytes(ip.payload)


def test_icmp_echo_reply_from_linux() -> None:
    _, ip = layers(frame("icmp_echo_reply"))
    rep = IcmpMessage.parse(ip.payload)
    assert rep.type == IcmpType.ECHO_REPLY and (rep.ident, rep.seq) == (0xBEEF, 7)
    assert bytes(rep.payload) == b"ping-payload-0123456789"
    assert IcmpMessage.echo_reply(0xBEEF, 7, b"ping-payload-0123456789").to_bytes() == bytes(ip.payload)
    assert not rep.is_error


def test_icmp_port_unreachable_from_linux() -> None:
    _, ip = layers(frame("icmp_port_unreach"))
    assert ip.dscp == 48  # Linux sends ICMP errors with TOS 0xc0
    msg = IcmpMessage.parse(ip.payload)
    assert (msg.type, msg.code) == (IcmpType.DEST_UNREACHABLE, 3) and msg.is_error
    q = msg.quoted()
    assert (q.src, q.dst, q.protocol, q.ident) == (PEER_IP, KERNEL_IP, 17, 999)
    assert (q.src_port, q.dst_port) == (33333, 9)
    assert len(q.header) == 20 and len(q.transport) == 8
    # Linux quotes the whole datagram; ours quotes header + 8 bytes
    original = vector("udp_to_closed_port")
    assert bytes(msg.payload) == original
    ours = IcmpMessage.port_unreachable(original)
    assert ours.to_bytes() == vector("our_port_unreach_icmp")
    assert bytes(ours.payload) == original[:28]
    assert IcmpMessage.parse(ours.to_bytes()).quoted() == q


def test_icmp_quote_of_short_datagram_skips_link_padding() -> None:
    dgram = Ipv4Packet(PEER_IP, KERNEL_IP, 17, payload=b"\x01\x02\x03").to_bytes()
    msg = IcmpMessage.dest_unreachable(1, dgram + bytes(20))
    assert bytes(msg.payload) == dgram
    frag_needed = IcmpMessage.dest_unreachable(4, dgram, next_hop_mtu=1400)
    assert frag_needed.next_hop_mtu == 1400
    te = IcmpMessage.time_exceeded(1, dgram)
    assert te.type == IcmpType.TIME_EXCEEDED and te.quoted().src_port == 0x0102
    assert te.quoted().dst_port is None
    with pytest.raises(ValueError):
        IcmpMessage.dest_unreachable(3, b"\x45" * 10)


def test_udp_from_linux() -> None:
    _, ip = layers(frame("udp"))
    udp = UdpDatagram.parse(ip.payload, ip.src, ip.dst)
    assert (udp.src_port, udp.dst_port) == (5353, 9999)
    assert bytes(udp.payload) == b"hello, wire layer"
    assert UdpDatagram(5353, 9999, b"hello, wire layer").to_bytes(ip.src, ip.dst) == bytes(ip.payload)
    # wrong addresses break the pseudo-header checksum
    with pytest.raises(MalformedPacket, match="checksum"):
        UdpDatagram.parse(ip.payload, ip.src, Ipv4Address("10.0.0.3"))


def test_linux_fragment_pair_reassembles() -> None:
    _, f1 = layers(frame("frag1"))
    _, f2 = layers(frame("frag2"))
    assert f1.more_fragments and f1.fragment_offset == 0 and len(f1.payload) == 1480
    assert not f2.more_fragments and f2.fragment_offset == 1480 and len(f2.payload) == 528
    assert f1.ident == f2.ident and f1.is_fragment and f2.is_fragment
    r = Reassembler()
    assert r.feed(f2, 0.0) is None
    whole = r.feed(f1, 0.1)
    assert whole is not None and not whole.is_fragment and r.pending == 0 and r.buffered_bytes == 0
    udp = UdpDatagram.parse(whole.payload, whole.src, whole.dst)
    assert bytes(udp.payload) == bytes(range(256)) * 7 + bytes(208)
    assert (udp.src_port, udp.dst_port) == (5353, 9999)
    # the reassembled datagram is a valid unfragmented packet
    assert Ipv4Packet.parse(whole.to_bytes()).payload == whole.payload


def test_vlan_tagged_frame() -> None:
    raw = vector("vlan_udp")
    eth = EthernetFrame.parse(raw)
    assert eth.vlan is not None and eth.vlan_id == 100 and eth.vlan >> 13 == 3
    assert eth.ethertype == EtherType.IPV4 and eth.header_len == 18
    ip = Ipv4Packet.parse(eth.payload)
    udp = UdpDatagram.parse(ip.payload, ip.src, ip.dst)
    assert bytes(udp.payload) == b"vlan!" and ip.ttl == 7
    assert eth.to_bytes() == raw
    untagged = dataclasses.replace(eth, vlan=None).to_bytes()
    assert untagged == raw[:12] + raw[16:]


def test_ipv4_options_kept_raw() -> None:
    raw = vector("ip_options")
    ip = Ipv4Packet.parse(raw)
    assert ip.header_len == 24 and ip.options == bytes.fromhex("94040000")
    assert (ip.dscp, ip.ecn, ip.ttl, ip.protocol) == (46, 0, 1, 2)
    assert ip.dst.is_multicast and str(ip.dst) == "224.0.0.22"
    assert ip.to_bytes() == raw


def test_tcp_unknown_option_and_eol() -> None:
    raw = vector("tcp_data_unknown_opt")
    ip = Ipv4Packet.parse(raw)
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst)
    assert seg.flags == TcpFlags.PSH | TcpFlags.ACK
    assert seg.options.items == ((1, None), (1, None), (254, b"\xab\xcd"))
    assert seg.options.mss is None and seg.options.timestamps is None
    assert bytes(seg.payload) == b"GET / HTTP/1.0\r\n\r\n"
    assert seg.to_bytes(ip.src, ip.dst) == bytes(ip.payload)


def test_ethernet_padding_after_ip_total_length_is_ignored() -> None:
    raw = frame("icmp_echo_reply") + bytes(9)  # 65 -> 74 bytes, e.g. NIC padding
    eth, ip = layers(raw)
    assert len(ip.payload) == 31 and IcmpMessage.parse(ip.payload).seq == 7


def test_to_bytes_pad_to_minimum_frame() -> None:
    arp = ArpPacket.request(PEER_MAC, PEER_IP, KERNEL_IP).to_bytes()
    out = EthernetFrame(BROADCAST_MAC, PEER_MAC, EtherType.ARP, arp).to_bytes(pad=True)
    assert len(out) == 60 and out[42:] == bytes(18)


# =====================================================================
# Addresses
# =====================================================================


def test_mac_address_helpers() -> None:
    mac = MacAddress("02:AB:cd:0:1:ff")
    assert mac == bytes.fromhex("02abcd0001ff") and str(mac) == "02:ab:cd:00:01:ff"
    assert MacAddress("02-ab-cd-00-01-ff") == mac and MacAddress(bytes(mac)) == mac
    assert repr(mac) == "MacAddress('02:ab:cd:00:01:ff')"
    assert mac.is_unicast and not mac.is_multicast
    assert MacAddress("01:00:5e:00:00:16").is_multicast and BROADCAST_MAC.is_broadcast
    for bad in ["", "02:ab:cd:00:01", "02:ab:cd:00:01:ff:00", "zz:ab:cd:00:01:ff", "123:ab:cd:00:01:ff",
                "+f:ab:cd:00:01:ff", " f:ab:cd:00:01:ff", "02:ab:cd:00:01:"]:
        with pytest.raises(ValueError):
            MacAddress(bad)
    with pytest.raises(ValueError):
        MacAddress(b"\x00" * 5)


def test_ipv4_address_helpers() -> None:
    import ipaddress

    a = Ipv4Address("10.0.0.1")
    assert a == 0x0A000001 and str(a) == "10.0.0.1" and f"{a}" == "10.0.0.1" and f"{a:08x}" == "0a000001"
    assert repr(a) == "Ipv4Address('10.0.0.1')" and a.packed == b"\x0a\x00\x00\x01"
    assert Ipv4Address(b"\x0a\x00\x00\x01") == a == Ipv4Address(ipaddress.IPv4Address("10.0.0.1"))
    assert hash(a) == hash(0x0A000001) and {a: 1}[0x0A000001] == 1
    assert Ipv4Address(0xFFFFFFFF).is_broadcast
    for bad in [-1, 1 << 32, "10.0.0", "10.0.0.256", b"\x00" * 3, 1.5]:
        with pytest.raises(ValueError):
            Ipv4Address(bad)


# =====================================================================
# Checksum
# =====================================================================


def test_checksum_known_vectors() -> None:
    # RFC 1071 section 3 example: sum ddf2, checksum 220d
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2 and checksum(data) == 0x220D
    assert checksum(b"") == 0xFFFF and checksum(bytes(20)) == 0xFFFF
    assert checksum(b"\xff\xff") == 0 and ones_sum(b"\xff\xff") == 0xFFFF
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd byte padded on the right
    assert checksum(b"\x00\x01", b"\xf2") == checksum(b"\x00\x01\xf2")
    # a real IPv4 header verifies to 0 and recomputes to its stored value
    _, ip = layers(frame("tcp_syn"))
    hdr = bytearray(frame("tcp_syn")[14:34])
    assert checksum(hdr) == 0
    stored = hdr[10:12]
    hdr[10:12] = b"\0\0"
    assert checksum(hdr).to_bytes(2, "big") == stored


def test_checksum_accepts_any_buffer_type() -> None:
    data = bytes(range(255))
    for buf in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))[0:255]):
        assert checksum(buf) == checksum(data)


@PROPS
@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_checksum_matches_naive_loop(data: bytes, initial: int) -> None:
    assert ones_sum(data, initial=initial) == naive_ones_sum(data, initial)
    assert checksum(data, initial=initial) == ~naive_ones_sum(data, initial) & 0xFFFF


@PROPS
@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(0, 0x3FFFF))
def test_checksum_of_pieces_equals_concatenation(pieces: list[bytes], initial: int) -> None:
    assert ones_sum(*pieces, initial=initial) == ones_sum(b"".join(pieces), initial=initial)
    assert checksum(*pieces, initial=initial) == checksum(b"".join(pieces), initial=initial)


@PROPS
@given(st.binary(max_size=64).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=64))
def test_incremental_sum_equals_one_shot(head: bytes, tail: bytes) -> None:
    assert ones_sum(tail, initial=ones_sum(head)) == ones_sum(head + tail)


@PROPS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from([6, 17]), st.binary(max_size=100))
def test_pseudo_header_sum_equals_explicit_pseudo_header(src: int, dst: int, proto: int, seg: bytes) -> None:
    explicit = pseudo_header_bytes(src, dst, proto, len(seg))
    assert checksum(seg, initial=pseudo_header_sum(src, dst, proto, len(seg))) == checksum(explicit + seg)
    assert pseudo_header_sum(src.to_bytes(4, "big"), dst.to_bytes(4, "big"), proto, len(seg)) == ones_sum(explicit)


@PROPS
@given(st.binary(min_size=2, max_size=200))
def test_checksum_verifies_to_zero_once_stored(data: bytes) -> None:
    buf = bytearray(data)
    buf[0:2] = b"\0\0"
    buf[0:2] = checksum(buf).to_bytes(2, "big")
    assert checksum(buf) == 0


# =====================================================================
# Sequence numbers
# =====================================================================

seqs = st.integers(0, 2**32 - 1)
forward = st.integers(1, 2**31 - 1)


def test_seq_wrap_examples() -> None:
    assert seq_add(0xFFFFFFFF, 1) == 0 and seq_add(0, -1) == 0xFFFFFFFF
    assert seq_lt(0xFFFFFFFF, 0) and seq_gt(0, 0xFFFFFFFF) and seq_le(0xFFFFFFF0, 5)
    assert seq_sub(5, 0xFFFFFFF0) == 21 and seq_sub(0xFFFFFFF0, 5) == -21
    assert seq_max(0xFFFFFFF0, 5) == 5 and seq_min(0xFFFFFFF0, 5) == 0xFFFFFFF0
    assert seq_in_window(3, 0xFFFFFFFE, 10) and not seq_in_window(8, 0xFFFFFFFE, 10)
    assert not seq_in_window(5, 5, 0)
    # exactly 2**31 apart: unordered (RFC 1982 leaves it undefined)
    assert not seq_lt(0, 2**31) and not seq_lt(2**31, 0) and not seq_le(0, 2**31)
    assert seq_sub(2**31, 0) == -(2**31)


@PROPS
@given(seqs, forward)
def test_seq_order_across_wrap(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert seq_lt(a, b) and seq_le(a, b) and seq_gt(b, a) and seq_ge(b, a)
    assert not seq_lt(b, a) and not seq_ge(a, b) and not seq_gt(a, b) and not seq_le(b, a)
    assert seq_sub(b, a) == d and seq_sub(a, b) == -d
    assert seq_max(a, b) == b == seq_max(b, a) and seq_min(a, b) == a == seq_min(b, a)
    assert seq_in_window(b, a, d + 1) and not seq_in_window(b, a, d)


@PROPS
@given(seqs, st.integers(-(2**31), 2**31 - 1))
def test_seq_add_sub_inverse(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert 0 <= b < 2**32 and seq_sub(b, a) == d and seq_add(b, -d) == a
    assert seq_le(a, a) and seq_ge(a, a) and not seq_lt(a, a) and not seq_gt(a, a)


@PROPS
@given(seqs, seqs, seqs)
def test_seq_comparisons_consistent(a: int, b: int, c: int) -> None:
    assert seq_lt(a, b) == seq_gt(b, a) and seq_le(a, b) == seq_ge(b, a)
    assert seq_le(a, b) == (a == b or seq_lt(a, b))
    assert not (seq_lt(a, b) and seq_lt(b, a))
    # transitivity holds while the whole chain spans less than half the space
    if seq_lt(a, b) and seq_lt(b, c) and seq_sub(b, a) + seq_sub(c, b) < 2**31:
        assert seq_lt(a, c)


# =====================================================================
# Malformed input: each check raises MalformedPacket with a reason
# =====================================================================


def _ip_bytes(**changes: int) -> bytearray:
    """The SYN's IPv4 packet with byte N set by keyword ``bN`` (checksum left stale)."""
    b = bytearray(frame("tcp_syn")[14:])
    for offset, value in changes.items():
        b[int(offset[1:])] = value
    return b


@pytest.mark.parametrize(
    "data, reason",
    [
        (bytes(13), "shorter than the 14-byte header"),
        (bytes(12) + b"\x81\x00\x00", "802.1Q frame"),
    ],
)
def test_ethernet_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason) as info:
        EthernetFrame.parse(data)
    assert info.value.layer == "ethernet" and isinstance(info.value, ValueError)


def _arp(**fields: int) -> bytes:
    b = bytearray(EthernetFrame.parse(frame("arp_request")).payload)
    layout = {"htype": (0, 2), "ptype": (2, 2), "hlen": (4, 1), "plen": (5, 1), "op": (6, 2)}
    for name, value in fields.items():
        off, size = layout[name]
        b[off : off + size] = value.to_bytes(size, "big")
    return bytes(b)


@pytest.mark.parametrize(
    "data, reason",
    [
        (_arp()[:27], "shorter than 28"),
        (_arp(htype=6), "hardware type 6"),
        (_arp(ptype=0x86DD), "protocol type"),
        (_arp(hlen=8), "address lengths"),
        (_arp(plen=16), "address lengths"),
        (_arp(op=3), "unsupported operation 3"),
    ],
)
def test_arp_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        ArpPacket.parse(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (_ip_bytes()[:19], "shorter than the 20-byte header"),
        (_ip_bytes(b0=0x65), "version is 6"),
        (_ip_bytes(b0=0x44), "header length 16 is below 20"),
        (_ip_bytes()[:30], "total length 60 exceeds the 30-byte buffer"),
        (_ip_bytes(b0=0x4F)[:40], "header length 60 exceeds the 40-byte buffer"),
        (_ip_bytes(b2=0, b3=19), "total length 19 is below the header length 20"),
        (_ip_bytes(b3=59), "bad header checksum"),
        (_ip_bytes(b8=63), "bad header checksum"),
    ],
)
def test_ipv4_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason) as info:
        Ipv4Packet.parse(data)
    assert info.value.layer == "ipv4" and reason in info.value.reason


def test_ipv4_checksum_can_be_skipped() -> None:
    ip = Ipv4Packet.parse(_ip_bytes(b8=63), verify_checksum=False)
    assert ip.ttl == 63


def _udp_case() -> tuple[bytearray, Ipv4Address, Ipv4Address]:
    _, ip = layers(frame("udp"))
    return bytearray(ip.payload), ip.src, ip.dst


def test_udp_malformed_and_edge_cases() -> None:
    data, src, dst = _udp_case()
    with pytest.raises(MalformedPacket, match="shorter than the 8-byte header"):
        UdpDatagram.parse(data[:7], src, dst)
    short = bytearray(data)
    short[4:6] = (7).to_bytes(2, "big")
    with pytest.raises(MalformedPacket, match="length field 7 is below 8"):
        UdpDatagram.parse(short, src, dst)
    with pytest.raises(MalformedPacket, match="exceeds the 24-byte IP payload"):
        UdpDatagram.parse(data[:24], src, dst)
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with pytest.raises(MalformedPacket, match="bad checksum"):
        UdpDatagram.parse(corrupt, src, dst)
    assert bytes(UdpDatagram.parse(corrupt, src, dst, verify_checksum=False).payload).endswith(b"layes")
    # checksum 0 means "none": accepted without verification
    none = bytearray(corrupt)
    none[6:8] = b"\0\0"
    assert UdpDatagram.parse(none, src, dst).checksum == 0
    assert UdpDatagram.parse(none, src, dst).to_bytes(src, dst, fill_checksum=False) == bytes(none)
    # bytes past the UDP length are trimmed (as Linux does)
    assert bytes(UdpDatagram.parse(data + b"junk", src, dst).payload) == b"hello, wire layer"


def test_udp_computed_zero_checksum_is_sent_as_ffff() -> None:
    # find a payload whose checksum computes to 0: fix the last two bytes
    src, dst = PEER_IP, KERNEL_IP
    base = UdpDatagram(1, 2, b"\0\0")
    raw = bytearray(base.to_bytes(src, dst, fill_checksum=False))
    need = ones_sum(raw, initial=pseudo_header_sum(src, dst, 17, len(raw)))
    raw[8:10] = (~need & 0xFFFF).to_bytes(2, "big")  # now the full sum is 0xffff
    dgram = UdpDatagram(1, 2, bytes(raw[8:10]))
    out = dgram.to_bytes(src, dst)
    assert out[6:8] == b"\xff\xff"
    assert UdpDatagram.parse(out, src, dst).payload == raw[8:10]


def _tcp_case() -> tuple[bytearray, Ipv4Address, Ipv4Address]:
    _, ip = layers(frame("tcp_syn"))
    return bytearray(ip.payload), ip.src, ip.dst


def test_tcp_header_malformed() -> None:
    data, src, dst = _tcp_case()
    with pytest.raises(MalformedPacket, match="shorter than the 20-byte header"):
        TcpSegment.parse(data[:19], src, dst)
    low = bytearray(data)
    low[12] = 0x40
    with pytest.raises(MalformedPacket, match="data offset 4 is below 5"):
        TcpSegment.parse(low, src, dst, verify_checksum=False)
    with pytest.raises(MalformedPacket, match="header length 40 exceeds the 30-byte segment"):
        TcpSegment.parse(data[:30], src, dst, verify_checksum=False)
    data[5] ^= 0x10
    with pytest.raises(MalformedPacket, match="bad checksum"):
        TcpSegment.parse(data, src, dst)


@pytest.mark.parametrize(
    "options, reason",
    [
        (b"\x02", "has no length byte"),
        (b"\x01\x01\x01\x08", "has no length byte"),
        (b"\x02\x00\x05\xb4", "length 0"),
        (b"\x02\x01\x05\xb4", "length 1"),
        (b"\x01\x01\x08\x0a\x00\x00", "overruns"),
        (b"\xfe\x09\x00\x00", "overruns"),
        (b"\x02\x05\x05\xb4\x00\x01\x01\x01", "MSS option has length 5"),
        (b"\x02\x03\x05\x01", "MSS option has length 3"),
        (b"\x03\x04\x07\x00", "window scale option has length 4"),
        (b"\x03\x02\x01\x01", "window scale option has length 2"),
        (b"\x04\x03\x00\x01", "SACK-permitted option has length 3"),
        (b"\x08\x08" + bytes(6), "timestamps option has length 8"),
        (b"\x08\x0c" + bytes(10), "timestamps option has length 12"),
        (b"\x05\x02\x01\x01", "SACK option has length 2"),
        (b"\x05\x0b" + bytes(9) + b"\x01", "SACK option has length 11"),
        (b"\x05\x06" + bytes(4) + b"\x01\x01", "SACK option has length 6"),
    ],
)
def test_tcp_options_malformed(options: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        TcpOptions.parse(options)
    # and through a whole segment (padded to a multiple of 4)
    padded = options + bytes(-len(options) % 4)
    seg = bytearray(TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5).to_bytes(PEER_IP, KERNEL_IP))
    seg[12] = (5 + len(padded) // 4) << 4
    seg[20:20] = padded
    with pytest.raises(MalformedPacket):  # padding may change which check fires
        TcpSegment.parse(seg, PEER_IP, KERNEL_IP, verify_checksum=False)


def test_tcp_options_edge_cases() -> None:
    # bytes after EOL are padding, whatever they hold
    opts = TcpOptions.parse(b"\x02\x04\x05\xb4\x00\xff\xff\xff")
    assert opts.items == ((2, 1460),) and opts.encoded_len == 4
    assert TcpOptions.parse(b"").items == () and not TcpOptions.parse(b"\x00\x00\x00\x00")
    # unknown options, including empty ones, are kept
    opts = TcpOptions.parse(b"\x1e\x02\x1f\x04\xaa\xbb\x01\x01")
    assert opts.items == ((30, b""), (31, b"\xaa\xbb"), (1, None), (1, None))
    assert opts.to_bytes() == b"\x1e\x02\x1f\x04\xaa\xbb\x01\x01"
    # four SACK blocks fill 34 bytes; the last duplicate known option wins
    blocks = tuple((i * 100, i * 100 + 50) for i in range(4))
    four = TcpOptions([(TcpOptionKind.SACK, blocks)])
    assert TcpOptions.parse(four.to_bytes()).sack_blocks == blocks and four.padded_len == 36
    dup = TcpOptions.parse(b"\x02\x04\x05\xb4\x02\x04\x02\x18")
    assert dup.mss == 536 and len(dup.items) == 2
    # window scale beyond 14 is reported as sent; clamping is the TCP layer's job
    assert TcpOptions.parse(b"\x03\x03\x0f\x00").window_scale == 15


def test_tcp_option_builder_rejects_bad_items() -> None:
    for items in (
        [(2, 70000)],
        [(3, -1)],
        [(0, None)],
        [(5, ())],
        [(5, [(1, 2)] * 5)],
        [(8, (1, 2**32))],
        [(8, (1.0, 2))],
        [(99, "text")],
        [(300, b"")],
        [(99, bytes(39))],
        ["nonsense"],
    ):
        with pytest.raises(ValueError):
            TcpOptions(items)
    with pytest.raises(ValueError, match="TCP allows 40"):
        TcpOptions.build(timestamps=(1, 2), sack_blocks=[(1, 2)] * 4)
    assert TcpOptions.build(timestamps=(1, 2), sack_blocks=[(1, 2)] * 3).padded_len == 40


def test_icmp_malformed() -> None:
    _, ip = layers(frame("icmp_echo_reply"))
    data = bytearray(ip.payload)
    with pytest.raises(MalformedPacket, match="shorter than the 8-byte header"):
        IcmpMessage.parse(data[:7])
    data[-1] ^= 0xFF
    with pytest.raises(MalformedPacket, match="bad checksum"):
        IcmpMessage.parse(data)
    msg = IcmpMessage.parse(data, verify_checksum=False)
    with pytest.raises(MalformedPacket, match="does not quote"):
        msg.quoted()
    with pytest.raises(ValueError):
        msg.reply()  # a reply is not a request
    for quote, reason in [
        (bytes(19), "shorter than an IPv4 header"),
        (b"\x65" + bytes(19), "IP version 6"),
        (b"\x46" + bytes(19), "quoted IP header length 24"),
    ]:
        with pytest.raises(MalformedPacket, match=reason):
            IcmpMessage(3, 3, 0, quote).quoted()


def test_emitters_reject_unencodable_fields() -> None:
    with pytest.raises(ValueError, match="needs 20 bytes at offset 0"):
        TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5).emit_into(bytearray(19), 0, PEER_IP, KERNEL_IP)
    with pytest.raises(ValueError, match="at offset 5"):
        UdpDatagram(1, 2).emit_into(memoryview(bytearray(12)), 5, PEER_IP, KERNEL_IP)
    buf = bytearray(10)
    with pytest.raises(ValueError):
        IcmpMessage.echo_request(1, 1, b"x" * 10).emit_into(buf)
    assert len(buf) == 10  # a bytearray is never resized
    bad = [
        lambda: TcpSegment(70000, 2, 3, 4, TcpFlags.ACK, 5).to_bytes(PEER_IP, KERNEL_IP),
        lambda: TcpSegment(1, 2, 2**32, 4, TcpFlags.ACK, 5).to_bytes(PEER_IP, KERNEL_IP),
        lambda: TcpSegment(1, 2, 3, 4, 0x200, 5).to_bytes(PEER_IP, KERNEL_IP),
        lambda: TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5, reserved=8).to_bytes(PEER_IP, KERNEL_IP),
        lambda: UdpDatagram(1, 2, bytes(65528)).to_bytes(PEER_IP, KERNEL_IP),
        lambda: Ipv4Packet(PEER_IP, KERNEL_IP, 6, ttl=256).to_bytes(),
        lambda: Ipv4Packet(PEER_IP, KERNEL_IP, 6, fragment_offset=12).to_bytes(),
        lambda: Ipv4Packet(PEER_IP, KERNEL_IP, 6, options=bytes(44)).to_bytes(),
        lambda: Ipv4Packet(PEER_IP, KERNEL_IP, 6, payload=bytes(65516)).to_bytes(),
        lambda: Ipv4Packet(PEER_IP, KERNEL_IP, 6, dscp=64).to_bytes(),
        lambda: EthernetFrame(PEER_MAC, KERNEL_MAC, 0x10000).to_bytes(),
        lambda: EthernetFrame(PEER_MAC, KERNEL_MAC, 0x800, vlan=0x10000).to_bytes(),
        lambda: EthernetFrame(b"\x00", KERNEL_MAC, 0x800).to_bytes(),
        lambda: ArpPacket(ArpOperation.REQUEST, PEER_MAC, PEER_IP, KERNEL_MAC, 2**32).to_bytes(),
        lambda: IcmpMessage(256, 0).to_bytes(),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


def test_ipv4_options_are_padded_on_emit() -> None:
    ip = Ipv4Packet(PEER_IP, KERNEL_IP, 17, b"x", options=b"\x94\x04\x00")
    raw = ip.to_bytes()
    assert ip.header_len == 24 and raw[20:24] == b"\x94\x04\x00\x00"
    assert Ipv4Packet.parse(raw).options == b"\x94\x04\x00\x00"


def test_malformed_packet_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(MalformedPacket("tcp", "bad checksum")))
    assert (err.layer, err.reason, str(err)) == ("tcp", "bad checksum", "tcp: bad checksum")


# =====================================================================
# Hypothesis: parse(emit(fields)) == fields and emit(parse(x)) == x
# =====================================================================

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
macs = st.binary(min_size=6, max_size=6).map(MacAddress)
addrs = u32.map(Ipv4Address)
payloads = st.binary(max_size=120)


@st.composite
def tcp_option_items(draw: st.DrawFn) -> TcpOptions:
    item = st.one_of(
        st.just((1, None)),
        st.tuples(st.just(2), u16),
        st.tuples(st.just(3), u8),
        st.just((4, None)),
        st.tuples(st.just(5), st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)),
        st.tuples(st.just(8), st.tuples(u32, u32)),
        st.tuples(st.integers(6, 255).filter(lambda k: k != 8), st.binary(max_size=8)),
    )
    items = draw(st.lists(item, max_size=6))
    opts = TcpOptions(items)
    assume(opts.padded_len <= 40)
    return opts


built_options = st.builds(
    TcpOptions.build,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=2),
)

tcp_segments = st.builds(
    TcpSegment,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0x1FF).map(TcpFlags),
    window=u16,
    urgent=u16,
    options=tcp_option_items() | built_options,
    payload=payloads,
    reserved=st.integers(0, 7),
)


@PROPS
@given(tcp_segments, addrs, addrs)
def test_tcp_round_trip(seg: TcpSegment, src: Ipv4Address, dst: Ipv4Address) -> None:
    raw = seg.to_bytes(src, dst)
    parsed = TcpSegment.parse(raw, src, dst)
    assert dataclasses.replace(parsed, checksum=0) == seg
    assert parsed.options.items == seg.options.items
    assert parsed.to_bytes(src, dst) == raw
    # emit_into at an offset of a memoryview gives the same bytes
    buf = memoryview(bytearray(len(raw) + 9))
    assert seg.emit_into(buf, 9, src, dst) == len(raw) and bytes(buf[9:]) == raw


@PROPS
@given(st.builds(UdpDatagram, src_port=u16, dst_port=u16, payload=payloads), addrs, addrs)
def test_udp_round_trip(dgram: UdpDatagram, src: Ipv4Address, dst: Ipv4Address) -> None:
    raw = dgram.to_bytes(src, dst)
    parsed = UdpDatagram.parse(raw, src, dst)
    assert parsed.checksum != 0 and dataclasses.replace(parsed, checksum=0) == dgram
    assert parsed.to_bytes(src, dst) == raw


@PROPS
@given(st.builds(IcmpMessage, type=u8, code=u8, rest=u32, payload=payloads))
def test_icmp_round_trip(msg: IcmpMessage) -> None:
    raw = msg.to_bytes()
    parsed = IcmpMessage.parse(raw)
    assert dataclasses.replace(parsed, checksum=0) == msg and parsed.to_bytes() == raw


ipv4_packets = st.builds(
    Ipv4Packet,
    src=addrs,
    dst=addrs,
    protocol=u8,
    payload=payloads,
    ttl=u8,
    ident=u16,
    dont_fragment=st.booleans(),
    more_fragments=st.booleans(),
    fragment_offset=st.integers(0, 0x1FFF).map(lambda v: v * 8),
    dscp=st.integers(0, 63),
    ecn=st.integers(0, 3),
    options=st.binary(max_size=10).map(lambda b: b + bytes(-len(b) % 4)),
    reserved_flag=st.booleans(),
)


@PROPS
@given(ipv4_packets, st.binary(max_size=6))
def test_ipv4_round_trip(ip: Ipv4Packet, padding: bytes) -> None:
    raw = ip.to_bytes()
    parsed = Ipv4Packet.parse(raw + padding)
    assert dataclasses.replace(parsed, checksum=0) == ip and parsed.to_bytes() == raw


@PROPS
@given(st.builds(EthernetFrame, dst=macs, src=macs, ethertype=u16.filter(lambda t: t != 0x8100),
                 payload=payloads, vlan=st.none() | u16))
def test_ethernet_round_trip(eth: EthernetFrame) -> None:
    raw = eth.to_bytes()
    parsed = EthernetFrame.parse(raw)
    assert parsed == eth and parsed.to_bytes() == raw


@PROPS
@given(st.builds(ArpPacket, operation=st.sampled_from(ArpOperation), sender_mac=macs, sender_ip=addrs,
                 target_mac=macs, target_ip=addrs))
def test_arp_round_trip(arp: ArpPacket) -> None:
    raw = arp.to_bytes()
    parsed = ArpPacket.parse(raw)
    assert parsed == arp and parsed.to_bytes() == raw


# =====================================================================
# Fuzz: nothing but MalformedPacket escapes a parser
# =====================================================================


def parse_everything(data: bytes, verify: bool) -> None:
    """Run ``data`` through every parser, tolerating only MalformedPacket."""
    src, dst = PEER_IP, KERNEL_IP
    attempts = [
        lambda: EthernetFrame.parse(data),
        lambda: ArpPacket.parse(data),
        lambda: Ipv4Packet.parse(data, verify_checksum=verify),
        lambda: UdpDatagram.parse(data, src, dst, verify_checksum=verify),
        lambda: TcpSegment.parse(data, src, dst, verify_checksum=verify),
        lambda: TcpOptions.parse(data),
        lambda: IcmpMessage.parse(data, verify_checksum=verify).quoted(),
        lambda: IcmpMessage(3, 3, 0, data).quoted(),
        lambda: Ipv4Packet.parse(EthernetFrame.parse(data).payload, verify_checksum=verify),
    ]
    for attempt in attempts:
        with contextlib.suppress(MalformedPacket):
            attempt()


@FUZZ
@given(st.binary(max_size=100), st.booleans())
def test_fuzz_random_bytes(data: bytes, verify: bool) -> None:
    parse_everything(data, verify)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A golden frame or one of its inner layers, with bytes flipped and length changed."""
    raw = bytearray(frame(draw(st.sampled_from(sorted(LINUX_FRAMES)))))
    start = draw(st.sampled_from([0, 14, 34]))
    data = raw[start:]
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@FUZZ
@given(mutated_frames())
def test_fuzz_mutated_real_frames(data: bytes) -> None:
    parse_everything(data, verify=False)
    parse_everything(data, verify=True)


@FUZZ
@given(st.lists(st.one_of(st.integers(0, 10), u8), max_size=44).map(bytes))
def test_fuzz_tcp_options_parse_or_reject(data: bytes) -> None:
    try:
        opts = TcpOptions.parse(data)
    except MalformedPacket:
        return
    # whatever parses re-encodes to the same bytes up to EOL
    enc = opts.to_bytes()
    assert enc[: opts.encoded_len] == data[: opts.encoded_len]
    assert TcpOptions.parse(enc) == opts


# =====================================================================
# Reassembly
# =====================================================================


def datagram(size: int = 100, ident: int = 7, fill: int = 0) -> Ipv4Packet:
    data = bytes((i * 7 + fill) & 0xFF for i in range(size))
    return Ipv4Packet(PEER_IP, KERNEL_IP, 17, data, ident=ident, ttl=9, options=b"\x94\x04\x00\x00")


def fragments(dgram: Ipv4Packet, cuts: list[int]) -> list[Ipv4Packet]:
    """Split ``dgram`` at the given data offsets (multiples of 8)."""
    bounds = [0, *cuts, len(dgram.payload)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        out.append(
            dataclasses.replace(
                dgram, payload=dgram.payload[a:b], fragment_offset=a, more_fragments=b < len(dgram.payload)
            )
        )
    return out


def piece(dgram: Ipv4Packet, start: int, end: int, data: bytes | None = None) -> Ipv4Packet:
    return dataclasses.replace(
        dgram,
        payload=data if data is not None else dgram.payload[start:end],
        fragment_offset=start,
        more_fragments=end < len(dgram.payload),
    )


def test_reassembly_in_order() -> None:
    dg = datagram(100)
    r = Reassembler()
    f = fragments(dg, [32, 64])
    assert r.feed(f[0], 0) is None and r.feed(f[1], 1) is None
    whole = r.feed(f[2], 2)
    assert whole == dg and r.pending == 0 and r.buffered_bytes == 0
    assert r.stats.reassembled == 1 and r.stats.fragments == 3
    # parsed fragments off the wire work the same way (views into a buffer)
    wire = [Ipv4Packet.parse(p.to_bytes()) for p in f]
    assert [r.feed(p, 3) for p in wire][-1] == dg


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_reassembly_any_order(order: tuple[int, ...]) -> None:
    dg = datagram(200)
    f = fragments(dg, [48, 96, 160])
    r = Reassembler()
    results = [r.feed(f[i], t) for t, i in enumerate(order)]
    assert results[:3] == [None] * 3 and results[3] == dg


def test_reassembly_duplicates_and_consistent_overlaps() -> None:
    dg = datagram(120)
    r = Reassembler()
    assert r.feed(piece(dg, 0, 64), 0) is None
    assert r.feed(piece(dg, 0, 64), 0) is None  # exact duplicate
    assert r.stats.duplicates == 1
    assert r.feed(piece(dg, 32, 96), 1) is None  # overlaps with the same bytes
    assert r.buffered_bytes == 96 + 2 * r.fragment_overhead
    assert r.feed(piece(dg, 8, 16), 1) is None and r.stats.duplicates == 2
    assert r.feed(piece(dg, 88, 120), 2) == dg


def test_reassembly_conflicting_overlap_drops_datagram() -> None:
    dg = datagram(120)
    r = Reassembler(timeout=10)
    assert r.feed(piece(dg, 0, 64), 0) is None
    forged = bytes(b ^ 0xFF for b in dg.payload[56:120])
    assert r.feed(piece(dg, 56, 120, forged), 1) is None
    assert r.stats.overlap_drops == 1 and r.pending == 0 and r.buffered_bytes == 0
    # the rest of that datagram is refused until its deadline ...
    assert r.feed(piece(dg, 64, 120), 2) is None and r.feed(piece(dg, 0, 64), 3) is None
    assert r.stats.dead_drops == 2 and r.pending == 0
    # ... after which the same key may be reassembled again
    assert r.feed(piece(dg, 0, 64), 11) is None
    assert r.feed(piece(dg, 64, 120), 11) == dg


def test_reassembly_rejects_bad_fragments() -> None:
    dg = datagram(120)
    r = Reassembler()
    assert r.feed(piece(dg, 0, 12), 0) is None  # MF with length not a multiple of 8
    assert r.feed(dataclasses.replace(piece(dg, 0, 8), payload=b""), 0) is None  # MF, empty
    assert r.stats.malformed == 2 and r.pending == 0
    # a fragment reaching past 65535 bytes (ping of death) poisons the datagram
    big = dataclasses.replace(dg, payload=bytes(100), fragment_offset=65440, more_fragments=False)
    assert r.feed(big, 0) is None and r.stats.malformed == 3
    # two last fragments that disagree on the length
    dg2 = datagram(120, ident=8)
    assert r.feed(piece(dg2, 64, 120), 0) is None
    assert r.feed(dataclasses.replace(piece(dg2, 64, 112), more_fragments=False), 0) is None
    assert r.stats.malformed == 4 and r.pending == 0
    # data beyond an already known end
    dg3 = datagram(64, ident=9)
    assert r.feed(piece(dg3, 32, 64), 0) is None
    assert r.feed(dataclasses.replace(piece(datagram(120, ident=9), 64, 96)), 0) is None
    assert r.stats.malformed == 5


def test_reassembly_passes_whole_datagrams_through() -> None:
    r = Reassembler()
    dg = datagram(50)
    assert r.feed(dg, 0) is dg and r.pending == 0


def test_reassembly_datagram_limit_evicts_oldest() -> None:
    r = Reassembler(max_datagrams=2)
    dgs = [datagram(64, ident=i, fill=i) for i in range(3)]
    for t, dg in enumerate(dgs):
        assert r.feed(piece(dg, 0, 32), t) is None
        assert r.pending <= 2
    assert r.stats.limit_drops == 1 and r.pending == 2
    assert r.feed(piece(dgs[0], 32, 64), 5) is None  # evicted: refused
    assert r.feed(piece(dgs[1], 32, 64), 5) == dgs[1]
    assert r.feed(piece(dgs[2], 32, 64), 5) == dgs[2]


def test_reassembly_byte_limit() -> None:
    r = Reassembler(max_bytes=400, fragment_overhead=0)
    a, b = datagram(512, ident=1), datagram(512, ident=2)
    assert r.feed(piece(a, 0, 256), 0) is None
    assert r.feed(piece(b, 0, 256), 1) is None  # evicts a to make room
    assert r.stats.limit_drops == 1 and r.pending == 1 and r.buffered_bytes == 256
    assert r.feed(piece(b, 256, 512), 2) is None  # b alone cannot fit: dropped
    assert r.stats.limit_drops == 2 and r.pending == 0 and r.buffered_bytes == 0
    # a datagram that can never fit does not evict the others
    c, d = datagram(512, ident=3), datagram(512, ident=4)
    assert r.feed(piece(c, 0, 128), 3) is None and r.feed(piece(d, 0, 256), 3) is None
    assert r.feed(piece(d, 256, 512), 3) is None  # d alone would need 512 > 400
    assert r.pending == 1 and r.buffered_bytes == 128 and r.stats.limit_drops == 3
    assert r.feed(piece(c, 128, 256), 4) is None and r.buffered_bytes == 256
    # small fragments are charged their bookkeeping overhead
    r2 = Reassembler(max_bytes=8 * 10 + 64 * 10)
    c = datagram(800, ident=3)
    for i in range(11):
        r2.feed(piece(c, i * 16, i * 16 + 8), 0)
        assert r2.buffered_bytes <= r2.max_bytes
    assert r2.stats.limit_drops == 1


def test_reassembly_expiry() -> None:
    r = Reassembler(timeout=30)
    dg = datagram(100)
    other = datagram(100, ident=99)
    assert r.next_deadline() is None
    r.feed(piece(dg, 0, 48), 10)
    r.feed(piece(other, 48, 100), 20)
    assert r.next_deadline() == 40 and r.pending == 2
    assert r.expire(39.9) == []
    expired = r.expire(40)
    assert r.pending == 1 and r.stats.expired == 1 and r.next_deadline() == 50
    # the first fragment comes back for ICMP time exceeded (code 1)
    (first,) = expired
    assert first.fragment_offset == 0 and first.more_fragments and bytes(first.payload) == dg.payload[:48]
    te = IcmpMessage.time_exceeded(1, first.to_bytes())
    assert te.quoted().ident == dg.ident and len(te.payload) == 24 + 8
    # a datagram without its first fragment expires silently
    assert r.expire(1000) == [] and r.pending == 0 and r.buffered_bytes == 0
    # late fragments start over and cannot complete with the expired pieces
    assert r.feed(piece(dg, 48, 100), 1001) is None and r.pending == 1


def test_reassembly_stale_entry_replaced_on_feed() -> None:
    r = Reassembler(timeout=5)
    dg = datagram(64)
    r.feed(piece(dg, 0, 32), 0)
    assert r.feed(piece(dg, 32, 64), 6) is None  # the old half timed out
    assert r.stats.expired == 1 and r.pending == 1


@st.composite
def fragment_storms(draw: st.DrawFn) -> tuple[list[Ipv4Packet], dict[int, Ipv4Packet], set[int], list[float]]:
    """Fragments of a few datagrams: random cuts, duplicates, re-fragmented
    overlaps, occasional forgeries, shuffled; with non-decreasing times."""
    count = draw(st.integers(1, 4))
    dgs = {i: datagram(draw(st.integers(9, 40)) * 8, ident=i, fill=i) for i in range(count)}
    frags: list[Ipv4Packet] = []
    forged: set[int] = set()
    for dg in dgs.values():
        n = len(dg.payload)
        for _ in range(draw(st.integers(1, 3))):  # possibly several fragmentations
            cuts = sorted(draw(st.sets(st.integers(1, n // 8 - 1).map(lambda v: v * 8), min_size=1, max_size=5)))
            frags += fragments(dg, cuts)
        if draw(st.integers(0, 9)) == 0:
            s = draw(st.integers(0, n // 8 - 1)) * 8
            frags.append(piece(dg, s, s + 8, b"\xee" * 8))
            forged.add(dg.ident)
    frags = draw(st.permutations(frags))
    times = sorted(draw(st.lists(st.floats(0, 100), min_size=len(frags), max_size=len(frags))))
    return frags, dgs, forged, times


@STORMS
@given(fragment_storms(), st.integers(1, 3), st.integers(200, 4000))
def test_reassembly_storm_under_tight_limits(storm, max_datagrams: int, max_bytes: int) -> None:
    frags, dgs, forged, times = storm
    r = Reassembler(max_datagrams=max_datagrams, max_bytes=max_bytes, timeout=30)
    for frag, now in zip(frags, times):
        r.expire(now)
        out = r.feed(frag, now)
        assert r.pending <= max_datagrams and r.buffered_bytes <= max_bytes
        if out is not None and out.ident not in forged:  # delivered == the original
            assert out == dgs[out.ident]
    r.expire(1e9)
    assert r.pending == 0 and r.buffered_bytes == 0


@STORMS
@given(fragment_storms())
def test_reassembly_storm_with_room_delivers_every_honest_datagram(storm) -> None:
    frags, dgs, forged, times = storm
    r = Reassembler(max_datagrams=8, max_bytes=1 << 20, timeout=1000)
    delivered = set()
    for frag, now in zip(frags, times):
        out = r.feed(frag, now)
        if out is not None:
            # a forged piece that fills a hole without overlapping is undetectable
            assert out == dgs[out.ident] or out.ident in forged
            delivered.add(out.ident)
    assert set(dgs) - forged <= delivered
    assert r.stats.reassembled >= len(delivered)


# =====================================================================
# Optional cross-check against scapy (skipped when it is not installed)
# =====================================================================


def test_cross_check_with_scapy() -> None:
    scapy_all = pytest.importorskip("scapy.all")
    IP, TCP, UDP, ICMP, Ether = scapy_all.IP, scapy_all.TCP, scapy_all.UDP, scapy_all.ICMP, scapy_all.Ether
    rng = random.Random(1234)
    for _ in range(50):
        src, dst = Ipv4Address(rng.getrandbits(32)), Ipv4Address(rng.getrandbits(32))
        ts = (rng.getrandbits(32), rng.getrandbits(32))
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        seg = TcpSegment(
            rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32),
            TcpFlags(rng.getrandbits(8)), rng.getrandbits(16), 0,
            TcpOptions.build(mss=rng.getrandbits(16), sack_permitted=True, timestamps=ts, window_scale=7),
            data,
        )
        ip = Ipv4Packet(src, dst, 6, seg.to_bytes(src, dst), ident=rng.getrandbits(16), ttl=rng.randint(1, 255))
        theirs = IP(ip.to_bytes())
        assert theirs[TCP].seq == seg.seq and theirs[TCP].window == seg.window
        assert dict(theirs[TCP].options)["MSS"] == seg.options.mss
        assert dict(theirs[TCP].options)["Timestamp"] == ts
        rebuilt = theirs.copy()
        del rebuilt[IP].chksum, rebuilt[TCP].chksum
        assert bytes(rebuilt) == ip.to_bytes()  # scapy computes the same checksums
        u = UdpDatagram(rng.getrandbits(16), rng.getrandbits(16), data)
        ours = Ipv4Packet(src, dst, 17, u.to_bytes(src, dst)).to_bytes()
        theirs_udp = IP(src=str(src), dst=str(dst), ttl=64, id=0) / UDP(sport=u.src_port, dport=u.dst_port) / data
        assert bytes(theirs_udp) == ours
        echo = IcmpMessage.echo_request(rng.getrandbits(16), rng.getrandbits(16), data)
        assert bytes(ICMP(type=8, id=echo.ident, seq=echo.seq) / data) == echo.to_bytes()
    eth = Ether(frame("tcp_syn"))
    assert eth[TCP].options == [
        ("MSS", 1460), ("SAckOK", b""), ("Timestamp", (3178134051, 0)), ("NOP", None), ("WScale", 10)
    ]
