#!/usr/bin/env python3
"""Instructions per request of the Redis server on each I/O path: a comparison that machine
noise does not move.

    python scripts/instructions.py [--requests N] [--clients C] [--paths plain,queue,shim]

Wall-clock throughput on a shared 2-core machine swings by 2x between runs (scripts/compare.py
says so in its table). This script instead runs each server under valgrind's callgrind, which
counts the user-space instructions the server executes (repeatable to a fraction of a percent
for the same code and load, whatever else the machine does), and divides the count by the
requests redis-benchmark made. Counting starts after a warm-up (``callgrind_control --zero``)
and stops before the server exits (``--dump``), so start-up and imports are not counted.

Paths (each the same commands from redis-benchmark ``-t set,get -c C``):

- ``plain``: apps/redis_server.py on kernel sockets (``socket`` + ``selectors``);
- ``queue``: apps/redis_server_queue.py on the posix library OS;
- ``shim``: apps/redis_server.py unmodified under ``python -m demishim --libos posix``;
- ``queue-shm``, ``shim-shm`` (not by default): the same two on the shm library OS, which
  serves redis-benchmark (a kernel client) over its kernel listener.

What it does not count: kernel work (system calls and the TCP stack, the same on every path
here) and time spent waiting. Lower is better; the ratio to ``plain`` is the cost of the path.
Needs valgrind (Debian package ``valgrind``) and redis-benchmark (``redis-tools``). Each path
takes about 20-40 s under valgrind; every run is bounded by ``--timeout``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
PATHS = {
    "plain": ["apps/redis_server.py"],
    "queue": ["apps/redis_server_queue.py", "--libos", "posix"],
    "shim": ["-m", "demishim", "--libos", "posix", "apps/redis_server.py"],
    "queue-shm": ["apps/redis_server_queue.py", "--libos", "shm"],
    "shim-shm": ["-m", "demishim", "--libos", "shm", "apps/redis_server.py"],
}
WARMUP = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench(port: int, requests: int, clients: int, timeout: float) -> None:
    subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests),
                    "-c", str(clients), "-q"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=timeout, check=True)


def count(path: str, requests: int, clients: int, timeout: float) -> int:
    """User-space instructions the server executed for ``requests`` SETs and as many GETs."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="instr-") as tmp:
        out = os.path.join(tmp, "cg.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                PY, *PATHS[path], "--port", str(port)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            deadline = time.monotonic() + timeout
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("ready"):
                raise RuntimeError(f"{path}: the server did not start under valgrind: {line!r}")
            bench(port, WARMUP, clients, deadline - time.monotonic())
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            bench(port, requests, clients, deadline - time.monotonic())
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        dumps = [f for f in glob.glob(out + "*") if f != out]  # the --dump file(s): out.N
        if not dumps:
            raise RuntimeError(f"{path}: callgrind wrote no dump")
        text = open(sorted(dumps)[0]).read()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"{path}: no instruction total in the callgrind dump")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="requests per test (SET, GET)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--paths", default="plain,queue,shim")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per path at most")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"instructions.py needs {tool} (apt-get install valgrind redis-tools)",
                  file=sys.stderr)
            return 2
    paths = [p for p in a.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        print(f"unknown path(s) {sorted(unknown)}; choose from {sorted(PATHS)}", file=sys.stderr)
        return 2
    results = {}
    for p in paths:
        total = count(p, a.requests, a.clients, a.timeout)
        results[p] = total / (2 * a.requests)
        print(f"{p:6s} {results[p]:10,.0f} instructions/request", flush=True)
    if "plain" in results:
        for p, v in results.items():
            if p != "plain":
                print(f"{p} / plain = {v / results['plain']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"requests": a.requests, "clients": a.clients,
                       "instructions_per_request": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
