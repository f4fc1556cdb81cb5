#!/usr/bin/env python3
"""How much does demishim cost the unmodified Redis server? Plain against shim, interleaved.

Starts ``apps/redis_server.py`` twice, on two free loopback ports: plainly, and under
``python -m demishim --libos LIBOS``. Then runs ``redis-benchmark -t set,get -c 50 -n N``
against each in turn, A B / B A ... (the order flips every pair, so a drift in machine load
hits both sides alike), for ``--pairs`` pairs or until ``--max-seconds`` have passed. For
every run it records the throughput (the mean of the SET and GET rates) and the server's CPU
time per request (psutil: user + system of the server process over the run, divided by the
requests). Prints one line per pair and the medians:

    ratio      shim ops/s / plain ops/s            (the issue's target: >= 0.90)
    cpu ratio  plain CPU per request / shim CPU per request  (the steadier figure on a busy
               machine: it does not count the time the server waited for a CPU)

    .venv/bin/python scripts/shim_overhead.py [--pairs 5] [--requests 40000] [--libos posix]
        [--clients 50] [--max-seconds 300] [--py-spy OUT.svg|OUT.txt] [--json]

``--py-spy OUT`` records the shim server with py-spy during one extra run after the pairs
(``.txt``: py-spy's raw collapsed stacks; otherwise a flame graph).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "apps", "redis_server.py")
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], timeout: float = 30.0) -> subprocess.Popen:
    """Start a server that prints ``ready on HOST:PORT``; wait for that line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT)
    deadline = time.monotonic() + timeout
    assert p.stdout is not None
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith("ready on"):
            return p
    p.kill()
    err = p.stderr.read() if p.stderr else ""
    raise RuntimeError(f"server did not start: {' '.join(argv)}\n{err}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def cpu_of(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def bench(port: int, requests: int, clients: int, timeout: float) -> dict[str, float]:
    """requests/s per test (SET, GET) from redis-benchmark --csv."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-n",
                          str(requests), "-c", str(clients), "--csv"],
                         check=True, capture_output=True, text=True, timeout=timeout).stdout
    rates = {}
    for line in out.splitlines():
        m = re.match(r'"(\w+)","([\d.]+)"', line)
        if m:
            rates[m.group(1)] = float(m.group(2))
    if len(rates) != 2:
        raise RuntimeError(f"could not parse redis-benchmark output: {out!r}")
    return rates


def one_run(proc: psutil.Process, port: int, requests: int, clients: int,
            timeout: float) -> tuple[float, float]:
    """(ops/s, server CPU µs per request) of one redis-benchmark run."""
    c0 = cpu_of(proc)
    rates = bench(port, requests, clients, timeout)
    cpu = cpu_of(proc) - c0
    return sum(rates.values()) / len(rates), cpu / (requests * len(rates)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--libos", default="posix")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="start no new pair after this long (default 300)")
    ap.add_argument("--py-spy", metavar="OUT", help="profile the shim server in one extra run")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark not found (apt-get install redis-tools)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    pp, sp = free_port(), free_port()
    while sp == pp:
        sp = free_port()
    plain = start([PY, SERVER, "--port", str(pp)])
    try:
        shim = start([PY, "-m", "demishim", "--libos", args.libos, SERVER, "--port", str(sp)])
    except BaseException:
        stop(plain)
        raise
    rows = []
    run_timeout = max(60.0, args.requests / 500.0)
    try:
        procs = {"plain": (psutil.Process(plain.pid), pp), "shim": (psutil.Process(shim.pid), sp)}
        # warm-up: one short run each (imports, first connections, page faults)
        for name in ("plain", "shim"):
            proc, port = procs[name]
            one_run(proc, port, min(5000, args.requests), args.clients, run_timeout)
        print(f"redis-benchmark -t set,get -c {args.clients} -n {args.requests}; "
              f"shim: --libos {args.libos}; {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"{'pair':>4} {'plain ops/s':>12} {'shim ops/s':>11} {'ratio':>6} "
              f"{'plain µs/req':>13} {'shim µs/req':>12} {'cpu ratio':>9}")
        for i in range(args.pairs):
            if time.monotonic() - t_start > args.max_seconds:
                print(f"(stopped after {i} pairs: --max-seconds {args.max_seconds:g})")
                break
            order = ("plain", "shim") if i % 2 == 0 else ("shim", "plain")
            res = {}
            for name in order:
                proc, port = procs[name]
                res[name] = one_run(proc, port, args.requests, args.clients, run_timeout)
            (po, pc), (so, sc) = res["plain"], res["shim"]
            row = {"plain_ops": po, "shim_ops": so, "ratio": so / po,
                   "plain_cpu_us": pc, "shim_cpu_us": sc, "cpu_ratio": pc / sc}
            rows.append(row)
            print(f"{i + 1:>4} {po:>12,.0f} {so:>11,.0f} {so / po:>6.2f} {pc:>13.1f} "
                  f"{sc:>12.1f} {pc / sc:>9.2f}", flush=True)
        if rows:
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(f"{'med':>4} {med['plain_ops']:>12,.0f} {med['shim_ops']:>11,.0f} "
                  f"{med['ratio']:>6.2f} {med['plain_cpu_us']:>13.1f} "
                  f"{med['shim_cpu_us']:>12.1f} {med['cpu_ratio']:>9.2f}")
            print(f"median throughput ratio {med['ratio']:.3f}, median CPU-per-request ratio "
                  f"{med['cpu_ratio']:.3f} (plain/shim; 1.0 = no overhead), "
                  f"{len(rows)} pairs, {time.monotonic() - t_start:.0f} s")
            if args.json:
                print(json.dumps({"libos": args.libos, "requests": args.requests,
                                  "clients": args.clients, "pairs": rows, "median": med}))
        if args.py_spy:
            spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
            fmt = ["--format", "raw"] if args.py_spy.endswith(".txt") else []
            rec = subprocess.Popen([spy, "record", "-p", str(shim.pid), "-o", args.py_spy,
                                    "-r", "500", "--nonblocking", *fmt],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            try:
                one_run(procs["shim"][0], sp, args.requests, args.clients, run_timeout)
            finally:
                rec.send_signal(signal.SIGINT)
                try:
                    rec.wait(30)
                except subprocess.TimeoutExpired:
                    rec.kill()
            print(f"py-spy profile of the shim server: {args.py_spy}")
    finally:
        stop(plain)
        stop(shim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
