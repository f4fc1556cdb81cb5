#!/usr/bin/env python3
"""What does a program pay to ask "is there input?" at timeout 0: plainly, and under demishim.

Clients probe their connection before each request. redis-py's Python parser does a recv at
timeout 0, redis-py with hiredis a poll(0) on a new poll object, and an event loop a
select(0). This script times each kind of probe on an idle loopback connection (a
listen/connect pair in one process; under ``--libos shm`` a shared-memory connection). It
runs the same probes plainly (kernel sockets) and under ``python -m demishim --libos LIBOS``
in interleaved rounds, and prints the median per probe kind side by side:

    recv(t=0)        settimeout(0); recv -> BlockingIOError; settimeout(None)
    poll, new        select.poll(); register(POLLIN); poll(0)       (hiredis, per command)
    poll, kept       poll(0) on one poll object
    select           select.select([s], [], [], 0)
    selector, kept   DefaultSelector().select(0) on one selector
    new after recv   a byte arrives and is received, then a new poll object probes
                     (the socket's next read must be armed first: the common case of a
                     client that probes before each request)

Every probe must find the connection idle, and the byte in "new after recv" must arrive.
The script checks both and exits non-zero if a probe says otherwise.

    .venv/bin/python scripts/probe_cost.py [--libos shm] [--n 20000] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import selectors
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("recv(t=0)", "poll, new", "poll, kept", "select", "selector, kept", "new after recv")


def measure(n: int) -> dict[str, float]:
    """Microseconds per probe of each kind, on an idle connection (this process)."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    kept = select.poll()
    kept.register(b, select.POLLIN)
    sel = selectors.DefaultSelector()
    sel.register(b, selectors.EVENT_READ)

    def recv0() -> object:
        b.settimeout(0)
        try:
            return b.recv(100)
        except BlockingIOError:
            return []
        finally:
            b.settimeout(None)

    def poll_new() -> list:
        p = select.poll()
        p.register(b, select.POLLIN)
        return p.poll(0)

    def after_recv() -> list:
        a.send(b"x")
        if b.recv(10) != b"x":
            raise SystemExit("new after recv: the byte did not arrive")
        t = time.perf_counter()
        got = poll_new()
        spent[0] += time.perf_counter() - t
        return got

    probes = {"recv(t=0)": recv0, "poll, new": poll_new, "poll, kept": lambda: kept.poll(0),
              "select": lambda: select.select([b], [], [], 0)[0],
              "selector, kept": lambda: sel.select(0), "new after recv": after_recv}
    out = {}
    clock = time.perf_counter
    for kind, probe in probes.items():
        for _ in range(min(1000, n)):  # warm-up
            probe()
        spent = [0.0]
        t0 = clock()
        for _ in range(n):
            if probe():
                raise SystemExit(f"{kind}: the idle connection was reported ready")
        total = spent[0] if kind == "new after recv" else clock() - t0
        out[kind] = total / n * 1e6
    sel.close()
    a.close()
    b.close()
    return out


def run(argv: list[str]) -> dict[str, float]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libos", default="shm")
    ap.add_argument("--n", type=int, default=20000, help="probes of each kind per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the medians as JSON")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.n)), flush=True)
        return
    me = [os.path.abspath(__file__), "--measure", "--n", str(a.n)]
    sides = {"kernel": [sys.executable, *me],
             f"demishim {a.libos}": [sys.executable, "-m", "demishim", "--libos", a.libos, *me]}
    got: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for r in range(a.rounds):  # interleaved, the order flipped every round
        for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            got[side].append(run(sides[side]))
    med = {s: {k: statistics.median(x[k] for x in got[s]) for k in KINDS} for s in sides}
    if a.json:
        print(json.dumps(med))
        return
    kern, shim = list(sides)
    print(f"{'probe':<16} {kern + ' us':>12} {shim + ' us':>18} {'ratio':>7}")
    for k in KINDS:
        print(f"{k:<16} {med[kern][k]:>12.2f} {med[shim][k]:>18.2f} "
              f"{med[shim][k] / med[kern][k]:>7.2f}")
    print(f"(medians of {a.rounds} interleaved rounds of {a.n} probes each; ratio = shim / kernel)")


if __name__ == "__main__":
    main()
