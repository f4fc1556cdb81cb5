"""Helper programs for tests/test_inet_offload.py and tests/test_inet_adversarial.py (not a test module).

``python tests/inet_adversary_app.py bpf-server PORT SRC_PORT COUNT SECONDS``  (our stack)
    UDP socket on PORT with ``filter(Match(proto="udp", dst_port=PORT, src_port=SRC_PORT))``;
    prints READY, pops the filter queue until COUNT datagrams or SECONDS, prints RESULT.
``python tests/inet_adversary_app.py echo-server PORT SECONDS STOPFILE``  (our stack)
    TCP echo server (several connections at once); READY, then STATS lines on request
    (a client line "STATS"), RESULT at the end.
``python tests/inet_adversary_app.py attack IFACE STACK_IP STACK_MAC PORT``  (scapy, in the peer)
    the adversarial frames; prints RESULT with what it sent.
Every loop is bounded in count and time; only addresses of the test's namespaces are used.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bpf_server(port: int, src_port: int, count: int, seconds: float) -> None:
    import queueapi as dq
    los = dq.LibOS("inet")
    uq = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
    los.bind(uq, ("0.0.0.0", port))
    fq = los.filter(uq, dq.Match(proto="udp", dst_port=port, src_port=src_port))
    rx0 = los.backend.stats()["device"]["rx_frames"]
    print("READY " + json.dumps(los.stats(fq)), flush=True)
    got: list = []
    end = time.monotonic() + seconds
    qt = los.pop(fq)
    while len(got) < count and time.monotonic() < end:
        try:
            r = los.wait(qt, timeout=0.2)
        except TimeoutError:
            continue
        got.append([r.sga.tobytes().decode(), list(r.addr)])
        qt = los.pop(fq)
    time.sleep(0.3)   # let stragglers (the other source port) arrive, if they were to
    los.backend.poll(0)
    parent_left = 0
    pq = los.pop(uq)
    try:
        los.wait(pq, timeout=0.2)
        parent_left = 1
    except TimeoutError:
        pass
    st = los.backend.stats()
    res = {"got": got, "parent_left": parent_left, "filter_stats": los.stats(fq),
           "device_rx": st["device"]["rx_frames"] - rx0, "device": st["device"],
           "udp_filtered": st["stack"].get("udp_filtered", 0)}
    los.close(fq)
    res["after_close_insns"] = los.backend.stats()["device"]["bpf_insns"]
    print("RESULT " + json.dumps(res, default=str), flush=True)
    los.shutdown_libos()


def echo_server(port: int, seconds: float, stop: str) -> None:
    import queueapi as dq
    from queueapi import Opcode
    los = dq.LibOS("inet")
    lq = los.socket()
    los.bind(lq, ("0.0.0.0", port))
    los.listen(lq, 64)
    rss0 = _rss()
    print("READY " + json.dumps({"rss": rss0}), flush=True)
    end = time.monotonic() + seconds
    qts = [los.accept(lq)]
    owners: list = [None]
    served = 0
    peak = rss0
    while time.monotonic() < end and not os.path.exists(stop):
        try:
            i, r = los.wait_any(qts, timeout=0.1)
        except TimeoutError:
            peak = max(peak, _rss())
            continue
        qd = owners[i]
        if qd is None:
            qts[i] = los.accept(lq)
            qts.append(los.pop(r.new_qd))
            owners.append(r.new_qd)
            served += 1
            continue
        if r.opcode == Opcode.POP and len(r.sga):
            data = r.sga.tobytes()
            if data.strip() == b"STATS":
                st = los.backend.stats()
                data = json.dumps({"rss": _rss(), "stack": st["stack"]}, default=str).encode() + b"\n"
            try:
                los.push(qd, data)
                qts[i] = los.pop(qd)
                continue
            except OSError:
                pass
        # end of stream, reset, or a failed push: forget the connection
        del qts[i], owners[i]
        try:
            los.close(qd)
        except OSError:
            pass
        peak = max(peak, _rss())
    st = los.backend.stats()
    conns = {f"{c.remote_addr}:{c.remote_port}": c.counters.as_dict()
             for c in los.backend.stack.connections.values()}
    print("RESULT " + json.dumps({"served": served, "rss0": rss0, "rss_peak": peak, "rss": _rss(),
                                  "stack": st["stack"], "device": st["device"], "conns": conns,
                                  "listener": los.stats(lq).get("tcp_listener")}, default=str), flush=True)
    los.shutdown_libos()


def attack(iface: str, stack_ip: str, stack_mac: str, port: int) -> None:
    from scapy.all import ARP, IP, TCP, UDP, AsyncSniffer, Ether, Raw, conf, get_if_hwaddr
    conf.verb = 0
    me = get_if_hwaddr(iface)
    base = stack_ip.rsplit(".", 1)[0]
    fake = f"{base}.50"          # a client address nobody in the kernel owns: no RSTs from Linux
    eth = Ether(src=me, dst=stack_mac)
    sent: dict = {}
    s = conf.L2socket(iface=iface)

    def send(name: str, frames) -> None:
        frames = frames if isinstance(frames, list) else [frames]
        for f in frames:
            s.send(f)
        sent[name] = sent.get(name, 0) + len(frames)

    # our stack learns fake -> our MAC from an ARP request for its address (RFC 826 merge)
    send("arp", eth.copy() / ARP(op=1, hwsrc=me, psrc=fake, pdst=stack_ip))
    time.sleep(0.1)
    # truncated and malformed frames
    good = eth / IP(src=fake, dst=stack_ip) / TCP(sport=40000, dport=port, flags="S", seq=1000)
    raw = bytes(good)
    send("truncated", [Ether(raw[:n]) if n >= 14 else Raw(raw[:n]) for n in (14, 15, 20, 33, 34, 40, 53)])
    bad_ihl = bytearray(raw)
    bad_ihl[14] = 0x4F   # IHL 15: options beyond the packet
    bad_len = bytearray(raw)
    bad_len[16:18] = (9000).to_bytes(2, "big")   # total length past the frame
    bad_ver = bytearray(raw)
    bad_ver[14] = 0x65
    send("malformed_ip", [Ether(bytes(b)) for b in (bad_ihl, bad_len, bad_ver)])
    send("bad_ip_checksum", eth / IP(src=fake, dst=stack_ip, chksum=0x1234) / TCP(sport=40001, dport=port,
                                                                                   flags="S"))
    send("bad_tcp_checksum", eth / IP(src=fake, dst=stack_ip) / TCP(sport=40002, dport=port, flags="S",
                                                                       chksum=0xBEEF))
    send("bad_udp_checksum", eth / IP(src=fake, dst=stack_ip) / UDP(sport=40003, dport=port, chksum=0x0101)
         / Raw(b"x" * 20))
    bogus = [
        [("MSS", 0)], [("WScale", 200)], [("SAckOK", b"")] * 8, [(99, b"\x00" * 30)],
        [(2, b"")],   # MSS with a bad length
        [("NOP", None)] * 40,
    ]
    frames = []
    for i, opts in enumerate(bogus):
        try:
            frames.append(eth / IP(src=fake, dst=stack_ip) / TCP(sport=40100 + i, dport=port, flags="S",
                                                                   seq=5000, options=opts))
        except Exception:
            pass
    # raw option bytes scapy would not build: a length running past the header, length 0/1
    hdr = bytes(eth / IP(src=fake, dst=stack_ip) / TCP(sport=40200, dport=port, flags="S", seq=1,
                                                        options=[("NOP", None)] * 4))
    for optbytes in (b"\x02\x00\x00\x00", b"\x05\x01\x00\x00", b"\x08\x0a\x01\x02", b"\x03\x09\x0e\x00"):
        b = bytearray(hdr)
        b[-4:] = optbytes
        frames.append(Ether(bytes(b)))
    send("bogus_options", frames)
    # a real connection from the fake address (scapy answers for it): overlapping segments
    sport = 41000
    sniffer = AsyncSniffer(iface=iface, store=True,   # lfilter, not filter: no libpcap needed
                           lfilter=lambda p: TCP in p and p[IP].src == stack_ip and p[TCP].dport == sport)
    sniffer.start()
    time.sleep(0.3)
    send("handshake_syn", eth / IP(src=fake, dst=stack_ip) / TCP(sport=sport, dport=port, flags="S",
                                                                  seq=10_000, options=[("MSS", 1460)]))
    synack = None
    for _ in range(40):      # at most 2 s
        time.sleep(0.05)
        got = [p for p in sniffer.results or [] if p[TCP].flags == "SA"] if sniffer.results is not None else []
        if got:
            synack = got[0]
            break
    sniffer.stop()
    if synack is None:
        synack = next((p for p in sniffer.results or [] if p[TCP].flags == "SA"), None)
    sent["handshake"] = synack is not None
    if synack is not None:
        srv_seq = synack[TCP].seq + 1
        cseq = 10_001
        ack = eth / IP(src=fake, dst=stack_ip) / TCP(sport=sport, dport=port, flags="A", seq=cseq, ack=srv_seq)
        send("handshake_ack", ack)
        seg = lambda seq, data, flags="PA": (eth / IP(src=fake, dst=stack_ip)  # noqa: E731
                                             / TCP(sport=sport, dport=port, flags=flags, seq=seq, ack=srv_seq)
                                             / Raw(data))
        send("overlap", [seg(cseq, b"AAAAAAAAAA"), seg(cseq + 5, b"BBBBBBBBBB"), seg(cseq + 2, b"CCC"),
                         seg(cseq + 30, b"DDDD"), seg(cseq + 25, b"EEEEEEEEEEEE"), seg(cseq - 5, b"FFFFFFFFFF"),
                         seg(cseq + 1_000_000, b"far"), seg(cseq + 20, b"G" * 10)])
        # blind RSTs: out of the window, and in the window but not exact (challenge ACK)
        send("blind_rst", [eth / IP(src=fake, dst=stack_ip) / TCP(sport=sport, dport=port, flags="R",
                                                                  seq=cseq + off)
                           for off in (3_000_000, 2**31, 100_000, 7)])
        send("blind_syn", eth / IP(src=fake, dst=stack_ip) / TCP(sport=sport, dport=port, flags="S",
                                                                  seq=cseq + 50))
    # a SYN flood from spoofed sources on the subnet (their ARP never resolves) and from fake
    flood = []
    for i in range(600):
        src = f"{base}.{100 + i % 100}" if i % 2 else fake
        flood.append(eth / IP(src=src, dst=stack_ip) / TCP(sport=20000 + i, dport=port, flags="S", seq=i * 7919))
    t0 = time.monotonic()
    send("syn_flood", flood)
    sent["syn_flood_s"] = round(time.monotonic() - t0, 3)
    s.close()
    print("RESULT " + json.dumps(sent), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "bpf-server":
        bpf_server(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "echo-server":
        echo_server(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif mode == "attack":
        attack(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
