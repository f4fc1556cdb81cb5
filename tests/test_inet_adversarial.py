"""scapy as an adversarial peer against our stack (live; root, in namespaces the test creates).

Our TCP echo server runs on ``LibOS("inet")`` in ``P-stack``; from ``P-peer`` a scapy
program (tests/inet_adversary_app.py ``attack``) sends truncated and malformed frames, bad
IP/TCP/UDP checksums, SYNs with bogus TCP options (zero MSS, window scale 200, lengths that
run past the header), a connection of its own (from an address no kernel owns, so Linux
sends no RSTs) with overlapping, out-of-window and duplicate segments, blind RSTs and a
SYN in the window, and a bounded SYN flood (600 SYNs, half from addresses whose ARP never
resolves).  Then a normal Linux client must still be served, the server's RSS must stay
bounded, and the stack's counters must show each attack was dropped for its reason.
"""
from __future__ import annotations

import json
import socket
import sys

import pytest

from test_inet_live import ROOT, _env, background, ns, require, result_of, run_in  # noqa: F401  (ns: fixture)

APP = str(ROOT / "tests" / "inet_adversary_app.py")
PORT = 7100

CLIENT = """
import json, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((ip, port), timeout=5)
c.settimeout(5)
msg = b"hello after the storm" * 50
c.sendall(msg)
got = b""
while len(got) < len(msg):
    d = c.recv(65536)
    if not d:
        break
    got += d
c.sendall(b"STATS\\n")
st = b""
while not st.endswith(b"\\n"):
    d = c.recv(65536)
    if not d:
        break
    st += d
c.close()
print("RESULT " + json.dumps({"echo_ok": got == msg, "stats": json.loads(st)}))
"""


def test_adversarial_peer_does_not_hurt_the_stack(ns: dict, tmp_path) -> None:
    try:
        import scapy  # noqa: F401
    except ImportError:
        require("scapy is not installed (pip install -e '.[test]')")
    env = _env(ns)
    stop = tmp_path / "stop"
    with background(ns["stack_ns"], [sys.executable, APP, "echo-server", str(PORT), "60", str(stop)],
                    env, stop) as srv:
        rss0 = json.loads(srv["ready"][6:])["rss"]
        a = run_in(ns["peer_ns"], [sys.executable, APP, "attack", ns["peer_if"], ns["stack_ip"], ns["stack_mac"],
                                   str(PORT)], env, 60)
        sent = result_of(a.stdout + a.stderr)
        c = run_in(ns["peer_ns"], [sys.executable, "-c", CLIENT, ns["stack_ip"], str(PORT)], env, 30)
        after = result_of(c.stdout + c.stderr)
    assert srv["returncode"] == 0, srv["stderr"][-3000:]
    end = result_of("\n".join(srv["lines"]))
    assert sent["handshake"] is True, json.dumps([sent, end["stack"]])
    assert sent["syn_flood"] == 600 and sent["truncated"] == 7, sent
    assert after["echo_ok"], after
    st = end["stack"]
    # every kind of bad input was dropped and counted for its reason
    assert st.get("malformed_ethernet", 0) + st.get("malformed_ipv4", 0) >= 5, st
    assert st.get("malformed_ipv4", 0) >= 3, st      # bad IHL, total length, version, IP checksum
    assert st.get("malformed_tcp", 0) >= 1, st       # bad TCP checksum, options past the header
    assert st.get("malformed_udp", 0) >= 1, st       # bad UDP checksum
    # the SYN flood: bounded half-open state, ARP for spoofed sources bounded
    assert st["tcp_connections"] <= 70, st
    assert st.get("arp_pending", 0) <= 64 * 256, st
    # the scapy connection: overlapping / out-of-window segments and blind RSTs were absorbed
    fake = int.from_bytes(socket.inet_aton(ns["stack_ip"].rsplit(".", 1)[0] + ".50"), "big")
    c = end["conns"].get(f"{fake}:41000")
    assert c is not None, end["conns"]          # still alive: no blind RST or SYN killed it
    assert c["out_of_window"] >= 1 and c["rst_in"] >= 4, c
    assert c["challenge_acks"] + c["acks_rate_limited"] >= 1, c
    # the SYN flood: the listener's half-open queue is bounded
    assert end["listener"]["half_open"] <= 128 and end["listener"]["syn_backlog_drops"] > 0, end["listener"]
    # memory stays bounded: less than 64 MiB growth for all of the above
    assert end["rss_peak"] - rss0 < 64 << 20, (rss0, end["rss_peak"])
    assert end["device"]["ring_errors"] == 0, end["device"]
    print("\nadversarial peer: sent " + json.dumps(sent) + "\nstack counters: "
          + json.dumps({k: v for k, v in st.items() if not isinstance(v, dict)})
          + "\nscapy connection: " + json.dumps(c) + "\nlistener: " + json.dumps(end["listener"]))
