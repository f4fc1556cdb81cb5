"""Helper programs for tests/test_inet_live.py (not a test module).

``python tests/inet_live_app.py server PORT SECONDS STOPFILE``  (our stack, LibOS("inet"))
``python tests/inet_live_app.py client PEER_IP PORT SIZE``      (our stack, LibOS("inet"))
``python tests/inet_live_app.py linux-server PORT SECONDS STOPFILE`` (Linux sockets)
``python tests/inet_live_app.py linux-client IP PORT SIZE``     (Linux sockets)

Protocol of every TCP server here: the client's first line picks the mode:
``ECHO`` (echo until end of stream), ``SINK`` (read until end of stream, answer the SHA-256
hex and close), ``SOURCE n seed`` (send ``random.Random(seed).randbytes(n)`` and close);
a first line starting ``GET `` gets a small HTTP/1.0 response.  UDP on the same port echoes.
Servers print ``READY`` once listening, and stop after SECONDS or when STOPFILE exists.
Every loop is bounded in time.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
import time

CHUNK = 256 * 1024
HTTP_BODY = b"hello from the user-space stack\n"


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------ our stack (queueapi)
def _read_line(los, qd, deadline: float) -> tuple[bytes, bytes]:
    buf = b""
    while b"\n" not in buf:
        sga = los.blocking_pop(qd, timeout=max(0.01, deadline - time.monotonic()))
        if not len(sga):
            break
        buf += sga.tobytes()
    line, _, rest = buf.partition(b"\n")
    return line, rest


def _handle(los, qd) -> None:
    deadline = time.monotonic() + 60
    line, rest = _read_line(los, qd, deadline)
    if line.startswith(b"GET "):
        while b"\r\n\r\n" not in (line + b"\n" + rest) and time.monotonic() < deadline:
            sga = los.blocking_pop(qd, timeout=5)
            if not len(sga):
                break
            rest += sga.tobytes()
        los.blocking_push(qd, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                          + str(len(HTTP_BODY)).encode() + b"\r\n\r\n" + HTTP_BODY, timeout=10)
    elif line == b"ECHO":
        if rest:
            los.blocking_push(qd, rest, timeout=10)
        while time.monotonic() < deadline:
            sga = los.blocking_pop(qd, 65536, timeout=30)
            if not len(sga):
                break
            los.blocking_push(qd, sga.tobytes(), timeout=30)
    elif line == b"SINK":
        h = hashlib.sha256(rest)
        while time.monotonic() < deadline:
            sga = los.blocking_pop(qd, 1 << 20, timeout=30)
            if not len(sga):
                break
            for seg in sga.segments:
                h.update(seg)
        los.blocking_push(qd, h.hexdigest().encode() + b"\n", timeout=10)
    elif line.startswith(b"SOURCE "):
        _, n, seed = line.split()
        data = payload(int(n), int(seed))
        view = memoryview(data)
        for i in range(0, len(data), CHUNK):
            los.blocking_push(qd, view[i:i + CHUNK], timeout=30)
    los.close(qd)


def server(port: int, seconds: float, stop: str) -> None:
    import queueapi as dq
    los = dq.LibOS("inet")
    lq = los.socket()
    los.bind(lq, ("0.0.0.0", port))
    los.listen(lq)
    uq = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
    los.bind(uq, ("0.0.0.0", port))
    print("READY " + json.dumps({"addr": los.getsockname(lq)}), flush=True)
    end = time.monotonic() + seconds
    acc, upop = los.accept(lq), los.pop(uq)
    served = 0
    while time.monotonic() < end and not os.path.exists(stop):
        try:
            i, r = los.wait_any([acc, upop], timeout=0.2)
        except TimeoutError:
            continue
        if i == 1:
            los.wait(los.pushto(uq, r.sga.tobytes(), r.addr), timeout=5)
            upop = los.pop(uq)
        else:
            acc = los.accept(lq)
            try:
                _handle(los, r.new_qd)
            except (OSError, TimeoutError) as e:
                print(f"connection failed: {e!r}", file=sys.stderr, flush=True)
            served += 1
    st = los.backend.stats()
    print("STATS " + json.dumps({"served": served, "backend": st}, default=str), flush=True)
    los.shutdown_libos()


def client(ip: str, port: int, size: int) -> None:
    """Against a Linux server: SINK (upload + SHA), SOURCE (download + SHA), ECHO, UDP echo."""
    import queueapi as dq
    los = dq.LibOS("inet")
    res: dict = {}

    def conn(first: bytes) -> int:
        q = los.socket()
        r = los.wait(los.connect(q, (ip, port)), timeout=5)
        if r.ret:
            raise OSError(r.ret, "connect failed")
        los.blocking_push(q, first, timeout=5)
        return q

    data = payload(size, 1)
    t0 = time.monotonic()
    q = conn(b"SINK\n")
    view = memoryview(data)
    for i in range(0, size, CHUNK):
        los.blocking_push(q, view[i:i + CHUNK], timeout=30)
    los.shutdown(q)
    digest = b""
    while b"\n" not in digest:
        sga = los.blocking_pop(q, timeout=30)
        if not len(sga):
            break
        digest += sga.tobytes()
    res["upload_ok"] = digest.strip().decode() == hashlib.sha256(data).hexdigest()
    res["upload_s"] = time.monotonic() - t0
    res["upload_stats"] = los.stats(q).get("tcp")
    los.close(q)

    t0 = time.monotonic()
    q = conn(f"SOURCE {size} 2\n".encode())
    h = hashlib.sha256()
    got = 0
    while True:
        sga = los.blocking_pop(q, 1 << 20, timeout=30)
        if not len(sga):
            break
        got += len(sga)
        for seg in sga.segments:
            h.update(seg)
    res["download_ok"] = got == size and h.digest() == hashlib.sha256(payload(size, 2)).digest()
    res["download_s"] = time.monotonic() - t0
    los.close(q)

    q = conn(b"ECHO\n")
    rtts = []
    for i in range(20):
        t = time.monotonic()
        los.blocking_push(q, b"ping %d" % i, timeout=5)
        los.blocking_pop(q, timeout=5)
        rtts.append(time.monotonic() - t)
    res["echo_rtt_ms"] = sorted(rtts)[len(rtts) // 2] * 1000
    los.close(q)

    u = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp = []
    for i in range(3):
        los.wait(los.pushto(u, b"udp %d" % i, (ip, port)), timeout=5)
        try:
            r = los.wait(los.pop(u), timeout=2)
            udp.append([r.sga.tobytes().decode(), list(r.addr)])
        except TimeoutError:
            udp.append(None)
    res["udp"] = udp
    # a closed port: the connect fails with ECONNREFUSED (Linux answers with a RST)
    q = los.socket()
    r = los.wait(los.connect(q, (ip, 9)), timeout=5)
    res["closed_port_errno"] = r.ret
    los.close(q)
    print("RESULT " + json.dumps(res), flush=True)
    los.shutdown_libos()


# ------------------------------------------------------------------ Linux sockets
def linux_server(port: int, seconds: float, stop: str) -> None:
    import selectors
    import threading
    ls = socket.create_server(("0.0.0.0", port), backlog=16)
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind(("0.0.0.0", port))
    ls.settimeout(0.2)

    def udp_loop() -> None:
        us.settimeout(0.2)
        while time.monotonic() < end and not os.path.exists(stop):
            try:
                data, addr = us.recvfrom(65536)
            except TimeoutError:
                continue
            us.sendto(data, addr)

    def handle(c: socket.socket) -> None:
        c.settimeout(30)
        f = b""
        while b"\n" not in f:
            d = c.recv(65536)
            if not d:
                break
            f += d
        line, _, rest = f.partition(b"\n")
        if line == b"ECHO":
            if rest:
                c.sendall(rest)
            while d := c.recv(65536):
                c.sendall(d)
        elif line == b"SINK":
            h = hashlib.sha256(rest)
            while d := c.recv(1 << 20):
                h.update(d)
            c.sendall(h.hexdigest().encode() + b"\n")
        elif line.startswith(b"SOURCE "):
            _, n, seed = line.split()
            c.sendall(payload(int(n), int(seed)))
        c.close()

    end = time.monotonic() + seconds
    threading.Thread(target=udp_loop, daemon=True).start()
    print("READY", flush=True)
    while time.monotonic() < end and not os.path.exists(stop):
        try:
            c, _ = ls.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(c,), daemon=True).start()
    del selectors


def linux_client(ip: str, port: int, size: int) -> None:
    """Against our server: SINK, SOURCE, ECHO (RTT), UDP echo, HTTP-less."""
    res: dict = {}

    def conn(first: bytes) -> socket.socket:
        c = socket.create_connection((ip, port), timeout=5)
        c.settimeout(30)
        c.sendall(first)
        return c

    data = payload(size, 3)
    t0 = time.monotonic()
    c = conn(b"SINK\n")
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    digest = b""
    while d := c.recv(100):
        digest += d
    res["upload_ok"] = digest.strip().decode() == hashlib.sha256(data).hexdigest()
    res["upload_s"] = time.monotonic() - t0
    c.close()

    t0 = time.monotonic()
    c = conn(f"SOURCE {size} 4\n".encode())
    h = hashlib.sha256()
    got = 0
    while d := c.recv(1 << 20):
        got += len(d)
        h.update(d)
    res["download_ok"] = got == size and h.digest() == hashlib.sha256(payload(size, 4)).digest()
    res["download_s"] = time.monotonic() - t0
    c.close()

    c = conn(b"ECHO\n")
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for i in range(20):
        t = time.monotonic()
        msg = b"ping %d" % i
        c.sendall(msg)
        got_b = b""
        while len(got_b) < len(msg):
            got_b += c.recv(100)
        rtts.append(time.monotonic() - t)
    res["echo_ok"] = True
    res["echo_rtt_ms"] = sorted(rtts)[len(rtts) // 2] * 1000
    c.close()

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1.0)
    udp = []
    for i in range(3):
        u.sendto(b"udp %d" % i, (ip, port))
        try:
            d, a = u.recvfrom(2048)
            udp.append(d.decode())
        except TimeoutError:
            udp.append(None)
    res["udp"] = udp
    big = payload(4000, 5)   # > MTU: Linux fragments it, our stack reassembles and replies fragmented
    u.sendto(big, (ip, port))
    try:
        res["udp_fragmented_ok"] = u.recvfrom(65536)[0] == big
    except TimeoutError:
        res["udp_fragmented_ok"] = False
    # a closed TCP port on our stack: RST -> ECONNREFUSED
    try:
        socket.create_connection((ip, 9), timeout=3).close()
        res["closed_port"] = "connected?!"
    except ConnectionRefusedError:
        res["closed_port"] = "refused"
    except OSError as e:
        res["closed_port"] = repr(e)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif mode == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "linux-server":
        linux_server(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif mode == "linux-client":
        linux_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
