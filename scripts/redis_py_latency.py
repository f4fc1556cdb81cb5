#!/usr/bin/env python3
"""GET round trips with redis-py (a real client no one here wrote) against a server on
127.0.0.1:PORT; prints one JSON line with p50/p99 latency and the rate.

    python scripts/redis_py_latency.py --port P [--n 3000]
"""
from __future__ import annotations

import argparse
import json
import time

import redis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    r = redis.Redis(host="127.0.0.1", port=a.port, protocol=2)  # our server speaks RESP2
    r.set("bench:key", b"x" * 64)
    for _ in range(200):  # warm-up
        r.get("bench:key")
    lat = []
    clock = time.perf_counter
    t0 = clock()
    for _ in range(a.n):
        t = clock()
        if r.get("bench:key") != b"x" * 64:
            raise SystemExit("wrong reply")
        lat.append(clock() - t)
    elapsed = clock() - t0
    lat.sort()
    print(json.dumps({"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
                      "ops_per_s": a.n / elapsed}), flush=True)


if __name__ == "__main__":
    main()
