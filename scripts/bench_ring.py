"""Benchmark of the shared-memory ring (libos/shm/ring.py) between two processes.

Prints:
  * one-way throughput, 64 B elements (elements/s), producer and consumer in
    separate processes;
  * ping-pong round-trip time, 64 B, p50/p99 (spin-then-futex waits);
  * bulk throughput, 64 KiB elements (GB/s), zero-copy consumer and copying
    consumer.

Every loop is bounded in count and in time.  Waits spin for at most
``--spin-us`` before sleeping, so the benchmark is safe on a 2-core machine.
Run from the repository root:  python scripts/bench_ring.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libos.shm.ring import Ring  # noqa: E402

EAGAIN = 11


def _pin(cpu: int) -> None:
    try:
        ncpu = os.cpu_count() or 1
        if ncpu > 1:
            os.sched_setaffinity(0, {cpu % ncpu})
    except (AttributeError, OSError):
        pass


def _fork(child, *args) -> int:
    """Run child(*args) in a forked process pinned to CPU 1; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _pin(1)
            child(*args)
        except BaseException:  # pragma: no cover - reported by exit code
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _join(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: status {status}")


def _producer(ring: Ring, payload: bytes, count: int, deadline: float) -> None:
    push = ring.push
    wait = ring.wait_writable
    size = len(payload)
    i = 0
    while i < count:
        if push(payload) == 0:
            i += 1
        elif not wait(1.0, size):
            if time.monotonic() > deadline:
                break
    ring.close_producer()


def one_way(size: int, count: int, spin_ns: int, copy: bool, time_limit: float,
            batch: int = 0) -> tuple[float, float]:
    """Elements per second and bytes per second for `count` elements of `size`
    bytes; the consumer pops one element per call, or up to `batch`."""
    ring, fd = Ring.create(1 << 22)
    os.close(fd)
    ring.spin_ns = spin_ns
    payload = os.urandom(size)
    deadline = time.monotonic() + time_limit
    pid = _fork(_producer, ring, payload, count, deadline)
    pop = ring.try_pop
    release = ring.release
    wait = ring.wait_readable
    pop_many = ring.try_pop_many
    got = 0
    nbytes = 0
    t0 = None
    try:
        while batch:
            try:
                els = pop_many(batch)
            except EOFError:
                break
            if not els:
                if not wait(1.0) and time.monotonic() > deadline:
                    break
                continue
            if t0 is None:
                t0 = time.perf_counter()
            for v in els:
                nbytes += len(v[0].tobytes()) if copy else v[0].nbytes
            release()
            got += len(els)
        while not batch:
            try:
                v = pop()
            except EOFError:
                break
            if v is None:
                if not wait(1.0) and time.monotonic() > deadline:
                    break
                continue
            if t0 is None:
                t0 = time.perf_counter()
            if copy:
                nbytes += len(v[0].tobytes())
            else:
                nbytes += v[0].nbytes
            release()
            got += 1
        t1 = time.perf_counter()
    finally:
        ring.close_consumer()
        _join(pid)
        ring.close()
    if got != count:
        raise SystemExit(f"one-way: received {got} of {count}")
    dt = t1 - (t0 or t1)
    return got / dt, nbytes / dt


def _echo(rx: Ring, tx: Ring, count: int, deadline: float) -> None:
    pop = rx.pop_wait
    release = rx.release
    push = tx.push
    for _ in range(count):
        v = pop(1.0)
        if v is None:
            if time.monotonic() > deadline:
                return
            continue
        push(v[0])
        release()


def ping_pong(size: int, count: int, warmup: int, spin_ns: int, time_limit: float) -> list[int]:
    """Round-trip times in nanoseconds."""
    a, fa = Ring.create(1 << 16)
    b, fb = Ring.create(1 << 16)
    os.close(fa)
    os.close(fb)
    a.spin_ns = b.spin_ns = spin_ns
    deadline = time.monotonic() + time_limit
    total = count + warmup
    pid = _fork(_echo, a, b, total, deadline)
    payload = os.urandom(size)
    push = a.push
    pop = b.pop_wait
    release = b.release
    clock = time.perf_counter_ns
    rtts = []
    append = rtts.append
    try:
        for i in range(total):
            t0 = clock()
            push(payload)
            v = pop(1.0)
            t1 = clock()
            if v is None:
                raise SystemExit("ping-pong: echo timed out")
            release()
            if i >= warmup:
                append(t1 - t0)
            if time.monotonic() > deadline:
                break
    finally:
        _join(pid)
        a.close()
        b.close()
    return rtts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2_000_000, help="64 B elements in the one-way test")
    ap.add_argument("--rtt-count", type=int, default=200_000)
    ap.add_argument("--bulk-count", type=int, default=100_000, help="64 KiB elements in the bulk test")
    ap.add_argument("--spin-us", type=float, default=50.0, help="spin before sleeping (µs)")
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per test, at most")
    args = ap.parse_args()
    spin_ns = int(args.spin_us * 1000)
    _pin(0)

    print(f"CPUs: {os.cpu_count()}, spin {args.spin_us:g} µs then futex sleep; producer/echo on CPU 1, main on CPU 0")
    eps, _ = one_way(64, args.count, spin_ns, False, args.time_limit)
    print(f"one-way 64 B:        {eps / 1e6:6.2f} M elements/s  ({args.count} elements, try_pop + release each)")
    eps, _ = one_way(64, args.count, spin_ns, False, args.time_limit, batch=256)
    print(f"one-way 64 B:        {eps / 1e6:6.2f} M elements/s  ({args.count} elements, try_pop_many(256) + release)")

    rtts = ping_pong(64, args.rtt_count, 10_000, spin_ns, args.time_limit)
    rtts.sort()
    p50 = rtts[len(rtts) // 2] / 1000
    p99 = rtts[int(len(rtts) * 0.99)] / 1000
    print(f"ping-pong RTT 64 B:  p50 {p50:5.2f} µs  p99 {p99:5.2f} µs  mean {statistics.fmean(rtts) / 1000:5.2f} µs"
          f"  ({len(rtts)} round trips)")

    _, bps = one_way(64 * 1024, args.bulk_count, spin_ns, False, args.time_limit)
    print(f"bulk 64 KiB:         {bps / 1e9:6.2f} GB/s  (zero-copy consumer, producer copies in)")
    _, bps = one_way(64 * 1024, args.bulk_count, spin_ns, True, args.time_limit)
    print(f"bulk 64 KiB:         {bps / 1e9:6.2f} GB/s  (consumer copies out too)")


if __name__ == "__main__":
    main()
