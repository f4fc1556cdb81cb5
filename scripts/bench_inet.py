#!/usr/bin/env python3
"""Our user-space TCP/IP stack (the ``inet`` library OS) against the Linux kernel stack,
side by side, between the same two network namespaces, in one run.

    sudo .venv/bin/python scripts/bench_inet.py [--quick] [--out DIR] [--no-shim]

It creates its own namespaces (``bi<hex>-stack`` and ``bi<hex>-peer``, joined by a veth
pair, through scripts/netns.py) and always deletes them.  The Linux peer in ``-peer`` is
the client every time; the server in ``-stack`` is first a process on our stack
(``LibOS("inet")`` over AF_PACKET on the veth end, which has no kernel address), then, after
the kernel address is put on that same veth end, a plain-socket process on the kernel stack.

Workloads (each bounded in bytes, count and time):

- **bulk**: ``--bytes`` (20 MB; 5 MB with ``--quick``) uploaded to the server (``up``) and
  downloaded from it (``down``) over one TCP connection each; MB/s = 10^6 bytes/s.
- **rtt**: 64-byte request/response round trips on one connection (TCP_NODELAY), p50/p99.
- **redis**: ``redis-benchmark -t set,get -n N -c 20 -q`` against apps/redis_server_queue.py
  ``--libos inet`` (ours), apps/redis_server.py under ``python -m demishim --libos inet``
  (ours through the POSIX shim; skipped with ``--no-shim``) and apps/redis_server.py on
  kernel sockets (Linux).

Per-frame costs, from the server side:

- **CPU/frame**: CPU time (user + system) of the server process divided by the frames that
  crossed the stack's veth end (rx + tx packets of ``dkstack0``, read from the server's own
  ``/proc/PID/net/dev``).  For Linux this misses the softirq work the kernel charges to the
  sending process (the peer) or to ksoftirqd, so it flatters the kernel somewhat.
- **frames/syscall**: frames divided by system calls.  Ours: the device's ``sendmmsg`` calls
  plus the backend's ``poll(2)`` sleeps (receive costs no system call: the ring).  Linux: the
  server's own ``recv``/``send`` calls (bulk and rtt only).

Instructions per request (``--instructions N``): instead of the table, the inet Redis
server (the ``inet (queue API)`` row's; with ``--server shim`` the ``inet (POSIX shim)``
row's, apps/redis_server.py under demishim) runs under valgrind's callgrind in ``-stack``;
after a 500-request warm-up the counters are zeroed, ``redis-benchmark -t set,get -n N
-c 20`` runs, and the user-space instructions counted, divided by the 2N requests, are
printed: a figure the load of the machine does not move (scripts/instructions.py does the
same for the kernel-socket paths).  ``--keep FILE`` keeps the callgrind dump for
``callgrind_annotate``.  Needs valgrind.

Output: a rich table on stdout and ``bench_inet.json`` in ``--out`` (default: ``results``,
as compare.py; git ignores it).  Needs root, ``ip`` (iproute2) and, for the redis rows, redis-benchmark.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.abspath(__file__)
PORT = 5100
REDIS_PORT = 6400
STACK_IF = "dkstack0"
CHUNK = 256 * 1024
SERVER_SECONDS = 110.0          # every server stops by itself after this
SCHEMA = 1


def _load_netns():
    spec = importlib.util.spec_from_file_location("netns_script_bench", os.path.join(ROOT, "scripts", "netns.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def iface_frames(pid: str | int = "self", ifname: str = STACK_IF) -> int:
    """rx + tx packets of ``ifname`` in the network namespace of process ``pid``."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == ifname:
                v = rest.split()
                return int(v[1]) + int(v[9])
    return 0


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# ====================================================================== servers
# Protocol: the client's first line picks the mode: "SINK n" (read n bytes, answer "OK\n"),
# "SOURCE n" (send n bytes, then close), "ECHO" (echo until end of stream), "STATS"
# (answer one JSON line of counters and close).  Servers print READY, serve connections one
# after another, and stop after SERVER_SECONDS or when the stop file exists.

def serve_ours(port: int, stop: str) -> None:
    import queueapi as dq
    los = dq.LibOS("inet")
    backend = los.backend
    lq = los.socket()
    los.bind(lq, ("0.0.0.0", port))
    los.listen(lq)
    blob = memoryview(bytes(CHUNK))
    print("READY", flush=True)
    end = time.monotonic() + SERVER_SECONDS
    acc = los.accept(lq)

    def read_line(qd: int) -> tuple[bytes, bytes]:
        buf = b""
        while b"\n" not in buf:
            sga = los.blocking_pop(qd, timeout=30)
            if not len(sga):
                break
            buf += sga.tobytes()
        line, _, rest = buf.partition(b"\n")
        return line, rest

    while time.monotonic() < end and not os.path.exists(stop):
        try:
            r = los.wait(acc, timeout=0.2)
        except TimeoutError:
            continue
        acc = los.accept(lq)
        qd = r.new_qd
        try:
            line, rest = read_line(qd)
            if line.startswith(b"SINK "):
                left = int(line.split()[1]) - len(rest)
                while left > 0:
                    sga = los.blocking_pop(qd, 1 << 20, timeout=30)
                    if not len(sga):
                        break
                    left -= len(sga)
                    sga.free()
                los.blocking_push(qd, b"OK\n", timeout=10)
            elif line.startswith(b"SOURCE "):
                left = int(line.split()[1])
                qts = []
                while left > 0:   # keep a few pushes in flight, as a socket's send buffer would
                    n = min(left, CHUNK)
                    qts.append(los.push(qd, blob[:n]))
                    left -= n
                    if len(qts) >= 4:
                        los.wait(qts.pop(0), timeout=30)
                for qt in qts:
                    los.wait(qt, timeout=30)
            elif line == b"ECHO":
                if rest:
                    los.blocking_push(qd, rest, timeout=10)
                while True:
                    sga = los.blocking_pop(qd, 65536, timeout=30)
                    if not len(sga):
                        break
                    los.blocking_push(qd, sga, timeout=30)
            elif line == b"STATS":
                st = backend.stats()
                dev = st.get("device", {})
                los.blocking_push(qd, json.dumps({
                    "cpu_s": _cpu(), "frames": iface_frames(),
                    "syscalls": int(dev.get("tx_calls", 0)) + int(st.get("sleeps", 0)),
                    "rx_frames": st.get("rx_frames"), "tx_frames": st.get("tx_frames"),
                    "tx_calls": dev.get("tx_calls"), "sleeps": st.get("sleeps"),
                    "polls": st.get("polls"), "retransmits": st.get("stack", {}).get("tcp_retransmits"),
                }).encode() + b"\n", timeout=10)
        except (OSError, TimeoutError) as e:
            print(f"connection failed: {e!r}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            los.close(qd)
    los.shutdown_libos()


def serve_linux(port: int, stop: str) -> None:
    ls = socket.create_server(("0.0.0.0", port), backlog=16)
    ls.settimeout(0.2)
    calls = 0
    blob = memoryview(bytes(CHUNK))
    print("READY", flush=True)
    end = time.monotonic() + SERVER_SECONDS
    while time.monotonic() < end and not os.path.exists(stop):
        try:
            c, _ = ls.accept()
        except TimeoutError:
            continue
        c.settimeout(30)
        try:
            buf = b""
            while b"\n" not in buf:
                d = c.recv(65536)
                calls += 1
                if not d:
                    break
                buf += d
            line, _, rest = buf.partition(b"\n")
            if line.startswith(b"SINK "):
                left = int(line.split()[1]) - len(rest)
                while left > 0:
                    d = c.recv(1 << 20)
                    calls += 1
                    if not d:
                        break
                    left -= len(d)
                c.sendall(b"OK\n")
                calls += 1
            elif line.startswith(b"SOURCE "):
                left = int(line.split()[1])
                while left > 0:
                    n = c.send(blob[:min(left, CHUNK)])
                    calls += 1
                    left -= n
            elif line == b"ECHO":
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if rest:
                    c.sendall(rest)
                while d := c.recv(65536):
                    calls += 2
                    c.sendall(d)
            elif line == b"STATS":
                c.sendall(json.dumps({"cpu_s": _cpu(), "frames": iface_frames(), "syscalls": calls}).encode()
                          + b"\n")
        except OSError as e:
            print(f"connection failed: {e!r}", file=sys.stderr, flush=True)
        c.close()


def serve_redis_ours(host: str, port: int, stats_file: str) -> None:
    """apps/redis_server_queue.py on LibOS("inet"); its counters go to ``stats_file`` at exit."""
    sys.path.insert(0, ROOT)
    from apps.redis_server_queue import _Server
    server = _Server(host, port, "inet")
    server.install_signals()
    print(f"ready on {server.host}:{server.port}", flush=True)
    signal.alarm(int(float(os.environ.get("BENCH_INET_SERVER_SECONDS", SERVER_SECONDS))))
    try:
        server.run()
    finally:
        st = server.los.backend.stats()
        dev = st.get("device", {})
        with open(stats_file, "w") as f:
            json.dump({"syscalls": int(dev.get("tx_calls", 0)) + int(st.get("sleeps", 0)),
                       "rx_frames": st.get("rx_frames"), "tx_frames": st.get("tx_frames")}, f)
        server.close()


# ====================================================================== client (Linux, in -peer)
def client(ip: str, port: int, size: int, rtt_n: int) -> None:
    def conn(first: bytes) -> socket.socket:
        c = socket.create_connection((ip, port), timeout=10)
        c.settimeout(30)
        c.sendall(first)
        return c

    def stats() -> dict:
        c = conn(b"STATS\n")
        buf = b""
        while d := c.recv(65536):
            buf += d
        c.close()
        return json.loads(buf)

    res: dict = {"stats": [stats()]}
    data = memoryview(bytes(size))
    t0 = time.perf_counter()
    c = conn(f"SINK {size}\n".encode())
    c.sendall(data)
    ok = c.recv(16)
    res["up_s"] = time.perf_counter() - t0
    res["up_ok"] = ok == b"OK\n"
    c.close()
    res["stats"].append(stats())

    t0 = time.perf_counter()
    c = conn(f"SOURCE {size}\n".encode())
    got = 0
    while d := c.recv(1 << 20):
        got += len(d)
    res["down_s"] = time.perf_counter() - t0
    res["down_ok"] = got == size
    c.close()
    res["stats"].append(stats())

    c = conn(b"ECHO\n")
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = bytes(range(64))
    rtts = []
    deadline = time.monotonic() + 30
    for _ in range(rtt_n):
        t = time.perf_counter()
        c.sendall(msg)
        got_b = 0
        while got_b < 64:
            d = c.recv(64 - got_b)
            if not d:
                raise ConnectionError("echo server closed")
            got_b += len(d)
        rtts.append(time.perf_counter() - t)
        if time.monotonic() > deadline:
            break
    c.close()
    res["rtts"] = rtts
    res["stats"].append(stats())
    print("RESULT " + json.dumps(res), flush=True)


# ====================================================================== the driver
class Proc:
    """A process in a namespace: started, awaited (bounded) for its ready line, always stopped."""

    def __init__(self, ns: str, argv: list[str], env: dict, ready: str, timeout: float = 20.0) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            line = self.p.stdout.readline()
            if not line or line.startswith(ready):
                break
        if not line.startswith(ready):
            self.stop()
            raise RuntimeError(f"{argv[1:3]} did not start: {line!r} {self.err[-1500:]}")
        self.pid = self.p.pid   # `ip netns exec` execs the command: same pid

    def cpu(self) -> float:
        import psutil
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.out, self.err = self.p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.out, self.err = self.p.communicate(timeout=5)


def _run(ns: str, argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def tcp_workloads(info: dict, kind: str, env: dict, size: int, rtt_n: int, tmp: str) -> dict:
    stop = os.path.join(tmp, f"stop-{kind}")
    srv = Proc(info["stack_ns"], [sys.executable, HERE, f"--serve-{kind}", str(PORT), stop], env, "READY")
    try:
        r = _run(info["peer_ns"], [sys.executable, HERE, "--client", info["stack_ip"], str(PORT), str(size),
                                   str(rtt_n)], env, 90)
    finally:
        open(stop, "w").close()
        srv.stop()
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"client failed: {r.stdout[-1000:]} {r.stderr[-2000:]} server: {srv.err[-1500:]}")
    res = json.loads(line[7:])
    s = res["stats"]

    def per(a: int, b: int) -> dict:
        frames = s[b]["frames"] - s[a]["frames"]
        calls = s[b]["syscalls"] - s[a]["syscalls"]
        cpu = s[b]["cpu_s"] - s[a]["cpu_s"]
        return {"frames": frames, "cpu_us_per_frame": round(cpu / frames * 1e6, 2) if frames else None,
                "frames_per_syscall": round(frames / calls, 2) if calls else None}

    bulk = per(0, 2)
    rtts = res["rtts"]
    return {
        "bulk_up_MBps": round(size / res["up_s"] / 1e6, 1) if res["up_ok"] else None,
        "bulk_down_MBps": round(size / res["down_s"] / 1e6, 1) if res["down_ok"] else None,
        "rtt_p50_us": round(_percentile(rtts, 0.5) * 1e6, 1),
        "rtt_p99_us": round(_percentile(rtts, 0.99) * 1e6, 1),
        "rtt_mean_us": round(statistics.fmean(rtts) * 1e6, 1),
        "cpu_us_per_frame_bulk": bulk["cpu_us_per_frame"],
        "frames_per_syscall_bulk": bulk["frames_per_syscall"],
        "frames_bulk": bulk["frames"],
        "retransmits": s[-1].get("retransmits"),
    }


_RPS = re.compile(r"^(SET|GET): ([\d.]+) requests per second")


def redis_workload(info: dict, label: str, argv: list[str], env: dict, n: int, tmp: str,
                   stats_file: str | None = None) -> dict:
    srv = Proc(info["stack_ns"], argv, env, "ready on")
    try:
        cpu0, fr0 = srv.cpu(), iface_frames(srv.pid)
        r = _run(info["peer_ns"], ["redis-benchmark", "-h", info["stack_ip"], "-p", str(REDIS_PORT), "-n", str(n),
                                   "-c", "20", "-q", "-t", "set,get"], env, 60)
        cpu1, fr1 = srv.cpu(), iface_frames(srv.pid)
    finally:
        srv.stop()
    out = {}
    for ln in r.stdout.replace("\r", "\n").splitlines():
        m = _RPS.match(ln.strip())
        if m:
            out[f"redis_{m.group(1).lower()}_rps"] = round(float(m.group(2)))
    if "redis_set_rps" not in out or "redis_get_rps" not in out:
        raise RuntimeError(f"redis-benchmark ({label}) failed: {r.stdout[-500:]} {r.stderr[-500:]} "
                           f"server: {srv.err[-1500:]}")
    frames = fr1 - fr0
    out["frames_redis"] = frames
    out["cpu_us_per_frame_redis"] = round((cpu1 - cpu0) / frames * 1e6, 2) if frames else None
    if stats_file and os.path.exists(stats_file):
        with open(stats_file) as f:
            st = json.load(f)
        total = (st.get("rx_frames") or 0) + (st.get("tx_frames") or 0)
        out["frames_per_syscall_redis"] = round(total / st["syscalls"], 2) if st.get("syscalls") else None
    return out


def instructions(n: int, timeout: float = 300.0, server: str = "queue", keep: str | None = None) -> float:
    """User-space instructions per request of the inet Redis server under callgrind.

    ``server``: ``queue`` (apps/redis_server_queue.py, the ``inet (queue API)`` row's) or
    ``shim`` (apps/redis_server.py under ``python -m demishim --libos inet``, the ``inet
    (POSIX shim)`` row's).  ``keep``: copy the callgrind dump there (for callgrind_annotate)."""
    import glob
    netns = _load_netns()
    prefix = f"bi{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench_inet") as tmp, netns.namespaces(prefix) as info:
        env = dict(os.environ, DEMI_CONFIG=info["config"], PYTHONPATH=ROOT,
                   BENCH_INET_SERVER_SECONDS=str(timeout))
        env.pop("DEMI_LIBOS", None)
        out = os.path.join(tmp, "cg.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        if server == "shim":
            argv += ["-m", "demishim", "--libos", "inet", "apps/redis_server.py", "--host", info["stack_ip"],
                     "--port", str(REDIS_PORT)]
        else:
            argv += [HERE, "--serve-redis-ours", info["stack_ip"], str(REDIS_PORT), os.path.join(tmp, "st.json")]
        deadline = time.monotonic() + timeout
        srv = Proc(info["stack_ns"], argv, env, "ready on", timeout=120)
        try:
            for count in (500, None):
                if count is None:
                    subprocess.run(["callgrind_control", "--zero", str(srv.pid)], check=True, capture_output=True,
                                   timeout=60)
                r = _run(info["peer_ns"], ["redis-benchmark", "-h", info["stack_ip"], "-p", str(REDIS_PORT),
                                           "-n", str(count or n), "-c", "20", "-q", "-t", "set,get"], env,
                         max(1.0, deadline - time.monotonic()))
                if r.returncode:
                    raise RuntimeError(f"redis-benchmark failed: {r.stdout[-300:]} {r.stderr[-300:]}")
            subprocess.run(["callgrind_control", "--dump", str(srv.pid)], check=True, capture_output=True, timeout=60)
        finally:
            srv.stop()
        dumps = sorted(f for f in glob.glob(out + "*") if f != out)
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        if keep:
            shutil.copyfile(dumps[0], keep)
        with open(dumps[0]) as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if m is None:
            raise RuntimeError("no instruction total in the callgrind dump")
        return int(m.group(1)) / (2 * n)


def run(args: argparse.Namespace) -> dict:
    netns = _load_netns()
    prefix = f"bi{uuid.uuid4().hex[:8]}"
    size = args.bytes or (5_000_000 if args.quick else 20_000_000)
    rtt_n = args.rtt_count or (300 if args.quick else 3000)
    redis_n = args.redis_requests or (3000 if args.quick else 20000)
    have_redis = shutil.which("redis-benchmark") is not None and not args.no_redis
    rows: dict[str, dict] = {}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_inet") as tmp, netns.namespaces(prefix) as info:
        if args.inet_config:   # extra [inet] keys, e.g. defer_tx=false push_ack_delay=0 (A/B runs)
            with open(info["config"], "a") as f:
                for kv in args.inet_config:
                    f.write(kv.replace("=", " = ", 1) + "\n")
        env = dict(os.environ, DEMI_CONFIG=info["config"], PYTHONPATH=ROOT)
        env.pop("DEMI_LIBOS", None)
        ip = info["stack_ip"]

        def attempt(row: dict, fn, *a, **kw) -> None:
            try:
                row.update(fn(*a, **kw))
            except Exception as e:  # a failed workload is a note in the row, not a crash
                row["note"] = (row.get("note", "") + f" {fn.__name__} failed: {e}"[:300]).strip()

        ours = rows["inet (queue API)"] = {"stack": "ours", "server": "LibOS('inet')"}
        attempt(ours, tcp_workloads, info, "ours", env, size, rtt_n, tmp)
        if have_redis:
            sf = os.path.join(tmp, "redis-ours.json")
            attempt(ours, redis_workload, info, "ours",
                    [sys.executable, HERE, "--serve-redis-ours", ip, str(REDIS_PORT), sf], env, redis_n, tmp, sf)
            if not args.no_shim and not args.quick:
                shim = rows["inet (POSIX shim)"] = {"stack": "ours", "server": "demishim --libos inet"}
                attempt(shim, redis_workload, info, "shim",
                        [sys.executable, "-m", "demishim", "--libos", "inet", "apps/redis_server.py",
                         "--host", ip, "--port", str(REDIS_PORT)], env, redis_n, tmp)
        # the same veth end, now with a kernel address: the Linux stack serves
        subprocess.run(["ip", "netns", "exec", info["stack_ns"], "ip", "addr", "add",
                        f"{ip}/{info['prefix_len']}", "dev", info["stack_if"]], check=True, timeout=10)
        linux = rows["Linux kernel"] = {"stack": "linux", "server": "socket"}
        attempt(linux, tcp_workloads, info, "linux", env, size, rtt_n, tmp)
        if have_redis:
            attempt(linux, redis_workload, info, "linux",
                    [sys.executable, "apps/redis_server.py", "--host", ip, "--port", str(REDIS_PORT)],
                    env, redis_n, tmp)
    return {
        "schema": SCHEMA,
        "meta": {"host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(), "quick": bool(args.quick), "bytes": size,
                 "rtt_count": rtt_n, "redis_requests": redis_n if have_redis else 0, "redis_clients": 20,
                 "seconds": round(time.monotonic() - t_start, 1), "namespaces": prefix,
                 "inet_config": args.inet_config or []},
        "rows": [dict(path=k, **v) for k, v in rows.items()],
    }


COLUMNS = [("bulk_up_MBps", "bulk up MB/s"), ("bulk_down_MBps", "bulk down MB/s"),
           ("rtt_p50_us", "RTT p50 µs"), ("rtt_p99_us", "RTT p99 µs"),
           ("redis_set_rps", "redis SET/s"), ("redis_get_rps", "redis GET/s"),
           ("cpu_us_per_frame_bulk", "CPU µs/frame bulk"), ("cpu_us_per_frame_redis", "CPU µs/frame redis"),
           ("frames_per_syscall_bulk", "frames/syscall bulk"), ("frames_per_syscall_redis", "frames/syscall redis")]


def markdown(data: dict) -> str:
    head = "| path | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in data["rows"]:
        cells = ["" if r.get(k) is None else f"{r[k]:g}" for k, _ in COLUMNS]
        lines.append(f"| {r['path']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    m = data["meta"]
    t = Table(title=f"inet (ours) vs Linux between two namespaces ({m['cpus']} cores, kernel {m['kernel']}, "
                    f"{m['bytes'] / 1e6:g} MB bulk, {m['rtt_count']} RTTs, redis -n {m['redis_requests']} -c 20)")
    t.add_column("path")
    for _, title in COLUMNS:
        t.add_column(title, justify="right")
    for r in data["rows"]:
        t.add_row(r["path"], *["" if r.get(k) is None else f"{r[k]:g}" for k, _ in COLUMNS])
    c = Console(width=max(160, shutil.get_terminal_size((160, 24)).columns))
    c.print(t)
    for r in data["rows"]:
        if r.get("note"):
            c.print(f"[yellow]{r['path']}: {r['note']}[/yellow]")
    print(f"({m['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts (< 30 s)")
    p.add_argument("--out", default="results", help="folder for bench_inet.json")
    p.add_argument("--bytes", type=int, help="bulk bytes each way (default 20 MB, 5 MB quick)")
    p.add_argument("--rtt-count", type=int, help="round trips (default 3000, 300 quick)")
    p.add_argument("--redis-requests", type=int, help="redis-benchmark -n (default 20000, 3000 quick)")
    p.add_argument("--no-redis", action="store_true", help="skip the redis-benchmark rows")
    p.add_argument("--no-shim", action="store_true", help="skip redis under the POSIX shim")
    p.add_argument("--instructions", type=int, metavar="N",
                   help="only: callgrind instructions per request of the inet Redis server (-n N)")
    p.add_argument("--server", choices=("queue", "shim"), default="queue",
                   help="with --instructions: the queue-API server (default) or apps/redis_server.py "
                        "under the POSIX shim (demishim --libos inet)")
    p.add_argument("--keep", metavar="FILE", help="with --instructions: keep the callgrind dump in FILE")
    p.add_argument("--inet-config", nargs="*", metavar="KEY=VALUE",
                   help="extra [inet] settings for our stack (TOML values), e.g. defer_tx=false")
    # internal roles, run inside the namespaces
    p.add_argument("--serve-ours", nargs=2, metavar=("PORT", "STOP"), help=argparse.SUPPRESS)
    p.add_argument("--serve-linux", nargs=2, metavar=("PORT", "STOP"), help=argparse.SUPPRESS)
    p.add_argument("--serve-redis-ours", nargs=3, metavar=("HOST", "PORT", "STATS"), help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=4, metavar=("IP", "PORT", "BYTES", "RTTS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_ours:
        serve_ours(int(a.serve_ours[0]), a.serve_ours[1])
        return 0
    if a.serve_linux:
        serve_linux(int(a.serve_linux[0]), a.serve_linux[1])
        return 0
    if a.serve_redis_ours:
        serve_redis_ours(a.serve_redis_ours[0], int(a.serve_redis_ours[1]), a.serve_redis_ours[2])
        return 0
    if a.client:
        client(a.client[0], int(a.client[1]), int(a.client[2]), int(a.client[3]))
        return 0
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("bench_inet.py: needs root and `ip` (iproute2): it creates network namespaces", file=sys.stderr)
        return 2
    if a.instructions:
        for tool in ("valgrind", "callgrind_control", "redis-benchmark"):
            if shutil.which(tool) is None:
                print(f"--instructions needs {tool} (apt-get install valgrind redis-tools)", file=sys.stderr)
                return 2
        label = "inet (POSIX shim)" if a.server == "shim" else "inet (queue API)"
        print(f"{label} {instructions(a.instructions, server=a.server, keep=a.keep):,.0f} instructions/request "
              f"(redis-benchmark -t set,get -n {a.instructions} -c 20, callgrind)")
        return 0
    data = run(a)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "bench_inet.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    show(data)
    print(markdown(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
