#!/usr/bin/env python3
"""The Redis server on one I/O path against the plain one, interleaved pair by pair.

Starts two servers on two free loopback ports: ``apps/redis_server.py`` plainly, and the one
``--path`` names:

- ``shim`` (default): the same unmodified file under ``python -m demishim --libos LIBOS``
  (what the shim costs; the shim issue's target: ratio >= 0.90);
- ``queue``: its port to the queue API, ``apps/redis_server_queue.py --libos LIBOS`` (the
  apps issue's target: ratio >= 1.0, goal 1.2).

Then runs ``redis-benchmark -t set,get -c 50 -n N`` against each in turn, A B / B A ... (the
order flips every pair, so a drift in machine load hits both sides alike), for ``--pairs``
pairs or until ``--max-seconds`` have passed. For every run it records the throughput (the
mean of the SET and GET rates) and the server's CPU time per request (psutil: user + system
of the server process over the run, divided by the requests). Prints one line per pair, the
medians and, from three pairs on, a 95% bootstrap interval of the median ratio:

    ratio      PATH ops/s / plain ops/s
    cpu ratio  plain CPU per request / PATH CPU per request  (the steadier figure on a busy
               machine: it does not count the time the server waited for a CPU)

    .venv/bin/python scripts/redis_pairs.py [--path shim|queue] [--libos posix] [--pairs 5]
        [--requests 40000] [--clients 50] [--max-seconds 300] [--py-spy OUT.svg|OUT.txt]
        [--json]

``--py-spy OUT`` records the PATH server with py-spy during one extra run after the pairs
(``.txt``: py-spy's raw collapsed stacks; otherwise a flame graph).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

import psutil

from compare import redis_benchmark  # (scripts/ is sys.path[0])
from syscount import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "apps", "redis_server.py")
QUEUE_SERVER = os.path.join(ROOT, "apps", "redis_server_queue.py")
PY = sys.executable


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


def one_run(proc: psutil.Process, port: int, requests: int, clients: int,
            timeout: float) -> tuple[float, float]:
    """(ops/s, server CPU µs per request) of one redis-benchmark run."""
    c0 = cpu_of(proc)
    rates = redis_benchmark(port, requests, clients, timeout)
    cpu = cpu_of(proc) - c0
    return sum(rates.values()) / len(rates), cpu / (requests * len(rates)) * 1e6


def path_argv(path: str, libos: str, port: int) -> list[str]:
    """The command line of the ``path`` server (see the module docstring) on ``port``."""
    if path == "shim":
        return [PY, "-m", "demishim", "--libos", libos, SERVER, "--port", str(port)]
    return [PY, QUEUE_SERVER, "--libos", libos, "--port", str(port)]


def median_interval(values: list[float], rounds: int = 2000, seed: int = 1) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``values`` (percentile method)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=("shim", "queue"), default="shim",
                    help="the server compared with the plain one (default shim)")
    ap.add_argument("--libos", default="posix")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="start no new pair after this long (default 300)")
    ap.add_argument("--py-spy", metavar="OUT", help="profile the PATH server in one extra run")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark not found (apt-get install redis-tools)", file=sys.stderr)
        return 2
    name = args.path
    t_start = time.monotonic()
    pp, sp = free_port(), free_port()
    while sp == pp:
        sp = free_port()
    plain = start([PY, SERVER, "--port", str(pp)])
    try:
        other = start(path_argv(name, args.libos, sp))
    except BaseException:
        stop(plain)
        raise
    rows = []
    run_timeout = max(60.0, args.requests / 500.0)
    try:
        procs = {"plain": (psutil.Process(plain.pid), pp), name: (psutil.Process(other.pid), sp)}
        # warm-up: one short run each (imports, first connections, page faults)
        for which in ("plain", name):
            proc, port = procs[which]
            one_run(proc, port, min(5000, args.requests), args.clients, run_timeout)
        print(f"redis-benchmark -t set,get -c {args.clients} -n {args.requests}; "
              f"{name}: --libos {args.libos}; {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"{'pair':>4} {'plain ops/s':>12} {name + ' ops/s':>11} {'ratio':>6} "
              f"{'plain µs/req':>13} {name + ' µs/req':>12} {'cpu ratio':>9}")
        for i in range(args.pairs):
            if time.monotonic() - t_start > args.max_seconds:
                print(f"(stopped after {i} pairs: --max-seconds {args.max_seconds:g})")
                break
            order = ("plain", name) if i % 2 == 0 else (name, "plain")
            res = {}
            for which in order:
                proc, port = procs[which]
                res[which] = one_run(proc, port, args.requests, args.clients, run_timeout)
            (po, pc), (so, sc) = res["plain"], res[name]
            row = {"plain_ops": po, "path_ops": so, "ratio": so / po,
                   "plain_cpu_us": pc, "path_cpu_us": sc, "cpu_ratio": pc / sc}
            rows.append(row)
            print(f"{i + 1:>4} {po:>12,.0f} {so:>11,.0f} {so / po:>6.2f} {pc:>13.1f} "
                  f"{sc:>12.1f} {pc / sc:>9.2f}", flush=True)
        if rows:
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(f"{'med':>4} {med['plain_ops']:>12,.0f} {med['path_ops']:>11,.0f} "
                  f"{med['ratio']:>6.2f} {med['plain_cpu_us']:>13.1f} "
                  f"{med['path_cpu_us']:>12.1f} {med['cpu_ratio']:>9.2f}")
            print(f"median throughput ratio {med['ratio']:.3f}, median CPU-per-request ratio "
                  f"{med['cpu_ratio']:.3f} (plain/{name}; 1.0 = the same), "
                  f"{len(rows)} pairs, {time.monotonic() - t_start:.0f} s")
            intervals = {}
            if len(rows) >= 3:
                for k in ("ratio", "cpu_ratio"):
                    intervals[k] = median_interval([r[k] for r in rows])
                print("95% interval of the median: throughput ratio {:.3f}-{:.3f}, "
                      "CPU ratio {:.3f}-{:.3f}".format(*intervals["ratio"], *intervals["cpu_ratio"]))
            if args.json:
                print(json.dumps({"path": name, "libos": args.libos, "requests": args.requests,
                                  "clients": args.clients, "pairs": rows, "median": med,
                                  "interval95": intervals}))
        if args.py_spy:
            spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
            fmt = ["--format", "raw"] if args.py_spy.endswith(".txt") else []
            rec = subprocess.Popen([spy, "record", "-p", str(other.pid), "-o", args.py_spy,
                                    "-r", "500", "--nonblocking", *fmt],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            try:
                one_run(procs[name][0], sp, args.requests, args.clients, run_timeout)
            finally:
                rec.send_signal(signal.SIGINT)
                try:
                    rec.wait(30)
                except subprocess.TimeoutExpired:
                    rec.kill()
            print(f"py-spy profile of the {name} server: {args.py_spy}")
    finally:
        stop(plain)
        stop(other)
    return 0


if __name__ == "__main__":
    sys.exit(main())
