#!/usr/bin/env python3
"""The shm library OS against the kernel, side by side in one run (issue: shm numbers).

    python scripts/bench_echo.py [--quick] [--out FILE.json]

Three measurements, each for every path, between two processes on this host:

  rtt     64-byte echo round trips (scripts/echo.py): p50 / p99 / p99.9, for plain Python
          sockets over TCP loopback, the queue API on posix and the queue API on shm.
  stream  one-way throughput of 64-byte elements: the sender pushes a batch of 64 elements,
          then waits for the batch (wait_all); the receiver pops and waits one by one.
  bulk    one-way bandwidth of 64 KiB elements, the same way (batches of 8); on shm also
          with zero-copy pops (``[shm] zero_copy_min``: the receiver reads the element in
          the ring and frees it) and with the sender writing into the ring
          (``sgaalloc(size, qd=...)``).

posix carries elements with the queue API's framing (``framing=True``) so that both library
OSes deliver whole elements. Throughput is measured by the receiver, from its first element
to its last. Every loop is bounded in count and in time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ECHO = os.path.join(ROOT, "scripts", "echo.py")
PY = sys.executable
STREAM_BATCH = 64
BULK_BATCH = 8
DEADLINE_S = 60.0  # no single measurement runs longer


# ------------------------------------------------------------------ roles (child processes)
def _socket(los, libos: str) -> int:
    return los.socket(framing=(libos == "posix"))


def sink(libos: str, n: int, zero_copy: bool = False) -> None:
    """Accept one connection, pop ``n`` elements, print elements/s and bytes/s."""
    import queueapi as dq

    los = dq.LibOS(libos, {"zero_copy_min": 1024} if zero_copy else None)
    lqd = _socket(los, libos)
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 1)
    print("ready", los.getsockname(lqd)[1], flush=True)
    qd = los.wait(los.accept(lqd), timeout=DEADLINE_S).new_qd
    pop, wait = los.pop, los.wait
    first = wait(pop(qd), DEADLINE_S).sga
    nbytes = len(first)
    first.free()
    t0 = time.perf_counter()
    end = t0 + DEADLINE_S
    for i in range(1, n):
        sga = wait(pop(qd), DEADLINE_S)[4]
        nbytes += len(sga)
        if zero_copy:
            sga.free()  # a view into the ring: the ring moves on
        if (i & 1023) == 0 and time.perf_counter() > end:
            raise SystemExit("sink: deadline passed")
    dt = time.perf_counter() - t0
    print(json.dumps({"elements_per_s": (n - 1) / dt, "bytes_per_s": nbytes * (n - 1) / n / dt,
                      "path": los.stats(qd).get("path")}), flush=True)


def source(libos: str, port: int, n: int, size: int, batch: int, in_ring: bool = False) -> None:
    """Connect and push ``n`` elements of ``size`` bytes, ``batch`` at a time."""
    import queueapi as dq

    los = dq.LibOS(libos)
    qd = _socket(los, libos)
    r = los.wait(los.connect(qd, ("127.0.0.1", port)), timeout=10)
    if r.ret:
        raise SystemExit(f"source: connect failed: {os.strerror(r.ret)}")
    msg = os.urandom(size)
    push, wait_all = los.push, los.wait_all
    end = time.monotonic() + DEADLINE_S
    sent = 0
    wait = los.wait
    while sent < n and time.monotonic() < end:
        if in_ring:  # one element at a time: the ring holds one reservation
            sga = los.sgaalloc(size, qd=qd)
            sga.segments[0][:] = msg
            wait(push(qd, sga), DEADLINE_S)
            sent += 1
            continue
        k = min(batch, n - sent)
        wait_all([push(qd, msg) for _ in range(k)], DEADLINE_S)
        sent += k
    los.wait(los.pop(qd), timeout=DEADLINE_S)  # end of stream from the sink: all popped
    los.close(qd)


# ------------------------------------------------------------------ the runner
def _start(argv: list[str]) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = p.stdout.readline().split()
    if not line or line[0] != "ready":
        p.kill()
        raise RuntimeError(f"{argv} did not start")
    return p, int(line[1])


def run_rtt(kind: str, libos: str, n: int) -> dict:
    srv, port = _start([PY, ECHO, "server", "--kind", kind, "--libos", libos, "--port", "0"])
    try:
        out = subprocess.run([PY, ECHO, "client", "--kind", kind, "--libos", libos, "--port",
                              str(port), "--n", str(n)], capture_output=True, text=True,
                             timeout=DEADLINE_S + 30, check=True, cwd=ROOT).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        srv.terminate()
        srv.wait(10)


def run_oneway(libos: str, n: int, size: int, batch: int, zero_copy: bool = False,
               in_ring: bool = False) -> dict:
    me = os.path.abspath(__file__)
    snk, port = _start([PY, me, "_sink", "--libos", libos, "--n", str(n)]
                       + (["--zero-copy"] if zero_copy else []))
    try:
        src = subprocess.Popen([PY, me, "_source", "--libos", libos, "--port", str(port),
                                "--n", str(n), "--size", str(size), "--batch", str(batch)]
                               + (["--in-ring"] if in_ring else []), cwd=ROOT)
        out, _ = snk.communicate(timeout=DEADLINE_S + 30)
        src.wait(30)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in (snk,):
            if p.poll() is None:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", default="run", choices=["run", "_sink", "_source"])
    ap.add_argument("--quick", action="store_true", help="fewer elements (a few seconds)")
    ap.add_argument("--out", help="also write the results here (JSON)")
    ap.add_argument("--libos", default="shm")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=STREAM_BATCH)
    ap.add_argument("--zero-copy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-ring", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "_sink":
        sink(a.libos, a.n, a.zero_copy)
        return
    if a.role == "_source":
        source(a.libos, a.port, a.n, a.size, a.batch, a.in_ring)
        return

    from rich.console import Console
    from rich.table import Table

    n_rtt = 3000 if a.quick else 20000
    n_stream = 50_000 if a.quick else 400_000
    n_bulk = 2_000 if a.quick else 20_000
    results: dict = {"rtt": {}, "stream": {}, "bulk": {}}
    console = Console()
    for label, kind, libos in (("plain TCP", "plain", "posix"), ("queue posix", "queue", "posix"),
                               ("queue shm", "queue", "shm")):
        console.print(f"rtt: {label} ...")
        results["rtt"][label] = run_rtt(kind, libos, n_rtt)
    for libos in ("posix", "shm"):
        console.print(f"stream and bulk: queue {libos} ...")
        results["stream"][f"queue {libos}"] = run_oneway(libos, n_stream, 64, STREAM_BATCH)
        results["bulk"][f"queue {libos}"] = run_oneway(libos, n_bulk, 64 * 1024, BULK_BATCH)
    console.print("bulk: queue shm, zero-copy pops / sender writing in the ring ...")
    results["bulk"]["queue shm, zero-copy pops"] = run_oneway("shm", n_bulk, 64 * 1024,
                                                              BULK_BATCH, zero_copy=True)
    results["bulk"]["queue shm, zero-copy both ways"] = run_oneway(
        "shm", n_bulk, 64 * 1024, 1, zero_copy=True, in_ring=True)

    t = Table(title="shm against the kernel (same run)")
    for col in ("path", "RTT p50 µs", "p99 µs", "p99.9 µs", "64 B elements/s", "64 KiB GB/s"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for label in list(results["rtt"]) + [k for k in results["bulk"] if k not in results["rtt"]]:
        r = results["rtt"].get(label)
        st = results["stream"].get(label)
        bk = results["bulk"].get(label)
        t.add_row(label, *((f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['p999_us']:.1f}")
                           if r else ("-", "-", "-")),
                  f"{st['elements_per_s']:,.0f}" if st else "-",
                  f"{bk['bytes_per_s'] / 1e9:.2f}" if bk else "-")
    console.print(t)
    plain, shm = results["rtt"]["plain TCP"]["p50_us"], results["rtt"]["queue shm"]["p50_us"]
    console.print(f"shm RTT p50 is {plain / shm:.1f}x below plain TCP loopback in this run")
    results["ratio_plain_over_shm_p50"] = plain / shm
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
