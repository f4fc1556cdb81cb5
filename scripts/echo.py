#!/usr/bin/env python3
"""Echo servers and clients for the I/O path comparison (one process each).

    echo.py server --kind plain|queue [--libos NAME] [--port 0]   prints "ready PORT"
    echo.py client --kind plain|queue [--libos NAME] --port P --n N --size 64
                                                                    prints one JSON line

``plain`` is what a Python programmer writes with ``socket`` + ``selectors``; ``queue`` is
the same echo on the queue API (``wait_any`` over an accept token and one pop token per
connection). The client sends ``n`` messages of ``size`` bytes one at a time and records the
round-trip time of each; it reports percentiles, throughput and its own CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def plain_server(port: int) -> None:
    lsock = socket.create_server(("127.0.0.1", port), reuse_port=False)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    print("ready", lsock.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is lsock:
                conn, _ = lsock.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                continue
            sent = s.send(data)
            if sent < len(data):  # the kernel buffer is full: finish this reply blocking
                s.setblocking(True)
                s.sendall(data[sent:])
                s.setblocking(False)


def queue_server(port: int, libos: str) -> None:
    import queueapi as dq
    from queueapi import Opcode

    los = dq.LibOS(libos)
    lqd = los.socket()
    los.setsockopt(lqd, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    los.bind(lqd, ("127.0.0.1", port))
    los.listen(lqd, 128)
    print("ready", los.getsockname(lqd)[1], flush=True)
    ACCEPT, POP = Opcode.ACCEPT, Opcode.POP  # (an enum member lookup costs ~0.1 us on 3.11)
    qts = [los.accept(lqd)]
    while True:
        i, r = los.wait_any(qts)
        if r.opcode is ACCEPT:
            los.setsockopt(r.new_qd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            qts[i] = los.accept(lqd)
            qts.append(los.pop(r.new_qd))
        elif r.opcode is POP and len(r.sga):
            los.wait(los.push(r.qd, r.sga))
            qts[i] = los.pop(r.qd)
        else:  # end of stream or failure: drop the connection
            los.close(r.qd)
            del qts[i]


def _percentiles(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    n = len(lat)

    def p(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1e6

    return {"p50_us": p(0.50), "p99_us": p(0.99), "p999_us": p(0.999)}


def plain_client(port: int, n: int, size: int) -> list[float]:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"e" * size
    lat = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        s.sendall(msg)
        got = 0
        while got < size:
            chunk = s.recv(size - got)
            if not chunk:
                raise ConnectionError("server closed the connection")
            got += len(chunk)
        lat.append(clock() - t0)
    s.close()
    return lat


def queue_client(port: int, n: int, size: int, libos: str) -> list[float]:
    import queueapi as dq
    from queueapi import Opcode

    los = dq.LibOS(libos)
    qd = los.socket()
    r = los.wait(los.connect(qd, ("127.0.0.1", port)))
    if r.opcode != Opcode.CONNECT:
        raise OSError(r.ret, os.strerror(r.ret))
    los.setsockopt(qd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"e" * size
    lat = []
    clock = time.perf_counter
    push, pop, wait = los.push, los.pop, los.wait
    POP = Opcode.POP
    for _ in range(n):
        t0 = clock()
        wait(push(qd, msg))
        got = 0
        while got < size:
            r = wait(pop(qd, size - got))
            if r.opcode is not POP or not len(r.sga):
                raise ConnectionError("server closed the connection")
            got += len(r.sga)
        lat.append(clock() - t0)
    los.close(qd)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--kind", choices=["plain", "queue"], required=True)
    ap.add_argument("--libos", default="posix")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--dump", help="write every round-trip time (seconds, JSON list) here")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.role == "server":
        try:
            plain_server(a.port) if a.kind == "plain" else queue_server(a.port, a.libos)
        except KeyboardInterrupt:
            pass
        return
    run = (lambda n: plain_client(a.port, n, a.size)) if a.kind == "plain" else \
        (lambda n: queue_client(a.port, n, a.size, a.libos))
    run(a.warmup)
    t0 = time.perf_counter()
    c0 = time.process_time()  # (os.times() counts in clock ticks: a fast run shows 0)
    lat = run(a.n)
    c1 = time.process_time()
    elapsed = time.perf_counter() - t0
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump(lat, f)
    out = _percentiles(lat)
    out.update(n=a.n, elapsed_s=elapsed, ops_per_s=a.n / elapsed,
               client_cpu_s=c1 - c0)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
