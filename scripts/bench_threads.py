#!/usr/bin/env python3
"""A threaded server, unmodified, plainly and under the shim: round trips side by side.

    python scripts/bench_threads.py [--quick] [--rounds 4] [--n 3000]

The server is ``socketserver.ThreadingTCPServer`` (a thread per connection, the main thread
in ``serve_forever``'s selector loop: two threads wait in the library OS at once), echoing
64-byte messages; one client process sends them one at a time with TCP_NODELAY. Each path
runs plain sockets, ``demishim --libos posix`` and ``demishim --libos shm`` (server and
client under the shim), in ``--rounds`` interleaved rounds with a fresh server and client
each; it prints p50/p90/p99 of all round trips of a path and the median of its rounds' p50.
Every run is bounded in messages and time.

    python scripts/bench_threads.py server PORT     (the server, as the script runs it)
    python scripts/bench_threads.py client PORT N   (prints one JSON line)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import syscount  # noqa: E402

PATHS = (("plain sockets", None), ("plain under demishim posix", "posix"),
         ("plain under demishim shm", "shm"))
SIZE = 64
WARMUP = 200


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s = self.request
        while True:
            data = s.recv(4096)
            if not data:
                return
            s.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(port: int) -> None:
    with Server(("127.0.0.1", port), Echo) as srv:
        srv.serve_forever()


def client(port: int, n: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * SIZE
    lat = []
    clock = time.perf_counter
    for i in range(n + WARMUP):
        t = clock()
        s.sendall(msg)
        got = 0
        while got < SIZE:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("the server closed the connection")
            got += len(chunk)
        if i >= WARMUP:
            lat.append(clock() - t)
    s.close()
    print(json.dumps(lat), flush=True)


def run_round(shim: str | None, n: int) -> list[float]:
    port = syscount.free_port()
    py = syscount.python_argv(shim)
    server = subprocess.Popen([*py, __file__, "server", str(port)], stdout=subprocess.DEVNULL)
    try:
        syscount.wait_for_port(port)
        out = subprocess.run([*py, __file__, "client", str(port), str(n)], check=True,
                             capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(10)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(lat: list[float], q: float) -> float:
    return sorted(lat)[min(len(lat) - 1, int(len(lat) * q))] * 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        return serve(int(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client(int(sys.argv[2]), int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4)")
    ap.add_argument("--n", type=int, default=None, help="round trips per round (default 3000)")
    a = ap.parse_args()
    rounds = a.rounds or (2 if a.quick else 4)
    n = a.n or (500 if a.quick else 3000)
    if rounds < 1 or n < 1:
        ap.error("--rounds and --n must be at least 1")
    from compare import rotations
    from rich.console import Console
    from rich.table import Table
    lat: dict[str, list[float]] = {label: [] for label, _ in PATHS}
    p50s: dict[str, list[float]] = {label: [] for label, _ in PATHS}
    for _, (label, shim) in rotations(list(PATHS), rounds):
        got = run_round(shim, n)
        lat[label].extend(got)
        p50s[label].append(pct(got, 0.5))
    table = Table(title=f"ThreadingTCPServer echo, {SIZE}-byte round trips "
                        f"({rounds} rounds of {n})")
    for col in ("path", "p50 µs", "p90 µs", "p99 µs", "median of rounds' p50"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for label, _ in PATHS:
        table.add_row(label, f"{pct(lat[label], 0.5):.1f}", f"{pct(lat[label], 0.9):.1f}",
                      f"{pct(lat[label], 0.99):.1f}", f"{statistics.median(p50s[label]):.1f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
