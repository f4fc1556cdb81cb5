#!/usr/bin/env python3
"""GET round trips with redis-py (a real client no one here wrote) against a server on
127.0.0.1:PORT; prints one JSON line with p50/p99 latency and the rate.

    python scripts/redis_py_latency.py --port P [--n 3000] [--beside-alone]
    python scripts/redis_py_latency.py --no-io [--n 3000]

``--no-io``: no server and no I/O; redis-py's connection gets an in-process stand-in socket
that has each reply ready when it is read.  What it measures is redis-py's own work per
GET (pool, packing, the input probe, parsing), roughly the floor for any I/O path: the
stand-in's methods are Python and the probe polls a real (idle) kernel socket, which can
cost a little more than a fast path's C, so a shim pair can measure slightly below it.

``--beside-alone``: the same process alternates blocks of 50 GETs to the server with blocks
of 50 GETs of redis-py alone (the stand-in), and also reports ``alone_p50_us``: the two at
matched moments, so that what the I/O path and the server add is not hidden by the
machine's speed changing between runs (on a VM, redis-py's own work can double from one
second to the next).
"""
from __future__ import annotations

import argparse
import json
import socket
import time

import redis

# redis-py's reply parser: hiredis (C) when installed, as redis-py picks it
PARSER = "hiredis" if redis.connection.DefaultParser.__name__ == "_HiredisParser" else "python"

#: GETs per block with --beside-alone
BLOCK = 50

REPLY = {b"SET": b"+OK\r\n", b"GET": b"$64\r\n" + b"x" * 64 + b"\r\n"}


class InProcessSocket:
    """The socket calls redis-py makes, answered in-process: ``sendall`` of a command queues
    its reply, ``recv`` returns what is queued (EAGAIN when nothing is, as a kernel socket at
    timeout 0).  ``fileno`` is one end of an idle socket pair, for a parser that probes for
    input with poll (redis-py's hiredis parser does): never readable, as the stand-in never
    has input before a command is sent."""

    def __init__(self) -> None:
        self.queued = bytearray()
        self.timeout: float | None = None
        self.idle = socket.socketpair()

    def fileno(self) -> int:
        return self.idle[0].fileno()

    def sendall(self, data: bytes) -> None:
        name = bytes(data).split(b"\r\n")[2].upper()
        self.queued += REPLY.get(name, b"+OK\r\n")

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.queued:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        data = bytes(self.queued[:size])
        del self.queued[:size]
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        data = self.recv(nbytes or len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def setsockopt(self, *args: object) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        for s in self.idle:
            s.close()


class InProcessConnection(redis.Connection):
    def _connect(self) -> InProcessSocket:
        return InProcessSocket()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int)
    ap.add_argument("--no-io", action="store_true", help="redis-py alone: an in-process socket")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--dump", help="write every GET's latency (seconds, JSON list) here")
    ap.add_argument("--beside-alone", action="store_true",
                    help="alternate blocks of 50 GETs with redis-py alone in this process and "
                         "report its p50 too (alone_p50_us)")
    a = ap.parse_args()
    alone = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=InProcessConnection,
                                                             protocol=2))
    if a.no_io:
        r = alone
    elif a.port is None:
        ap.error("--port is required (or --no-io)")
    else:
        r = redis.Redis(host="127.0.0.1", port=a.port, protocol=2)  # our server speaks RESP2
    if a.beside_alone and a.no_io:
        ap.error("--beside-alone needs --port")
    clients = [(r, [])] + ([(alone, [])] if a.beside_alone else [])
    for c, _ in clients:
        c.set("bench:key", b"x" * 64)
        for _ in range(200):  # warm-up
            c.get("bench:key")
    clock = time.perf_counter
    block = BLOCK if a.beside_alone else a.n
    elapsed = 0.0
    for start in range(0, a.n, block):
        for c, lat in clients:
            t0 = clock()
            for _ in range(min(block, a.n - start)):
                t = clock()
                if c.get("bench:key") != b"x" * 64:
                    raise SystemExit("wrong reply")
                lat.append(clock() - t)
            if c is r:
                elapsed += clock() - t0
    lat = clients[0][1]
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump(lat, f)
    out = {"p50_us": p50_us(lat), "p99_us": sorted(lat)[int(len(lat) * 0.99)] * 1e6,
           "ops_per_s": a.n / elapsed, "parser": PARSER}
    if a.beside_alone:
        out["alone_p50_us"] = p50_us(clients[1][1])
    print(json.dumps(out), flush=True)


def p50_us(lat: list[float]) -> float:
    return sorted(lat)[len(lat) // 2] * 1e6


if __name__ == "__main__":
    main()
