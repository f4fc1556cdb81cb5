#!/usr/bin/env python3
"""Compare I/O paths side by side in one run: plain sockets against the queue API.

Two jobs, each run for every path:
  echo   64-byte round trips between two processes (p50/p99 latency, throughput)
  redis  the Redis-protocol server under redis-benchmark (Debian's redis-tools), -c 50

For every row it also reports system calls per operation (python-ptrace, a separate traced
run) and CPU time per operation (client plus server, psutil). It prints a table, writes
``results.json`` (one row per path) and ``latency_cdf.png`` into ``--out``.

    python scripts/compare.py [--quick] [--out DIR] [--no-syscalls] [--jobs echo,redis]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)
import syscount  # noqa: E402

ECHO = os.path.join(ROOT, "scripts", "echo.py")
REDIS_PY = os.path.join(ROOT, "scripts", "redis_py_latency.py")


@dataclass
class Row:
    job: str
    path: str
    p50_us: float | None = None
    p99_us: float | None = None
    ops_per_s: float | None = None
    syscalls_per_op: float | None = None
    cpu_us_per_op: float | None = None
    note: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)


@dataclass
class Path:
    label: str
    echo_kind: str | None  # echo.py --kind
    libos: str
    redis_argv: list[str] | None  # server command, {port} filled in
    shim: str | None = None  # run the unmodified programs under `demishim --libos shim`

    @property
    def python(self) -> list[str]:
        """How to start Python for this path's programs."""
        return syscount.python_argv(self.shim)


def available_libos() -> list[str]:
    import queueapi

    out = []
    for name in queueapi.LIBOS_NAMES:
        try:
            queueapi.LibOS(name).shutdown_libos()
            out.append(name)
        except OSError:
            pass
    return out


def paths() -> list[Path]:
    py = sys.executable
    plain_server = os.path.join(ROOT, "apps", "redis_server.py")
    rows = [Path("plain sockets", "plain", "posix", [py, plain_server, "--port", "{port}"])]
    queue_server = os.path.join(ROOT, "apps", "redis_server_queue.py")
    libs = [lib for lib in available_libos() if lib not in ("inet",)]  # inet: needs netns
    for libos in libs:
        rows.append(Path(f"queue API on {libos}", "queue", libos,
                         [py, queue_server, "--port", "{port}", "--libos", libos]
                         if os.path.exists(queue_server) else None))
    for libos in libs:  # the unmodified plain programs, under the shim
        rows.append(Path(f"plain under demishim {libos}", "plain", libos,
                         syscount.python_argv(libos) + [plain_server, "--port", "{port}"],
                         shim=libos))
    return rows


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def run_echo(path: Path, n: int, warmup: int, count_syscalls: bool) -> Row:
    row = Row("echo", path.label)
    port = syscount.free_port()
    server = subprocess.Popen([*path.python, ECHO, "server", "--kind", path.echo_kind,
                               "--libos", path.libos, "--port", str(port)],
                              stdout=subprocess.DEVNULL)
    try:
        syscount.wait_for_port(port)
        sp = psutil.Process(server.pid)
        with tempfile.NamedTemporaryFile(suffix=".json") as dump:
            cpu0 = _cpu(sp)
            out = subprocess.run([*path.python, ECHO, "client", "--kind", path.echo_kind,
                                  "--libos", path.libos, "--port", str(port), "--n", str(n),
                                  "--warmup", str(warmup), "--dump", dump.name],
                                 check=True, capture_output=True, text=True, timeout=600)
            server_cpu = _cpu(sp) - cpu0  # includes the warm-up: a small overestimate
            res = json.loads(out.stdout.strip().splitlines()[-1])
            with open(dump.name) as f:
                row.latencies = json.load(f)
    finally:
        server.terminate()
        server.wait(10)
    row.p50_us, row.p99_us, row.ops_per_s = res["p50_us"], res["p99_us"], res["ops_per_s"]
    row.cpu_us_per_op = (res["client_cpu_s"] + server_cpu) / n * 1e6
    if count_syscalls:
        c, s = syscount.echo_syscalls(path.echo_kind, path.libos, min(n, 2000), path.shim)
        row.syscalls_per_op = c + s
    return row


def redis_benchmark(port: int, requests: int, clients: int) -> dict[str, float]:
    """requests/s per test from ``redis-benchmark -t set,get --csv``."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-n",
                          str(requests), "-c", str(clients), "--csv"],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    rates = {}
    for line in out.splitlines():
        m = re.match(r'"(\w+)","([\d.]+)"', line)
        if m:
            rates[m.group(1)] = float(m.group(2))
    if not rates:
        raise RuntimeError(f"could not parse redis-benchmark output: {out!r}")
    return rates


def run_redis(path: Path, requests: int, count_syscalls: bool) -> Row:
    row = Row("redis", path.label)
    if path.redis_argv is None:
        row.note = "no queue-API server yet"
        return row
    if not shutil.which("redis-benchmark"):
        row.note = "redis-benchmark not installed (apt-get install redis-tools)"
        return row
    port = syscount.free_port()
    argv = [a.replace("{port}", str(port)) for a in path.redis_argv]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        syscount.wait_for_port(port)
        sp = psutil.Process(server.pid)
        cpu0 = _cpu(sp)
        rates = redis_benchmark(port, requests, 50)
        cpu = _cpu(sp) - cpu0
    finally:
        server.terminate()
        server.wait(10)
    row.ops_per_s = sum(rates.values()) / len(rates)
    row.cpu_us_per_op = cpu / (requests * len(rates)) * 1e6  # server CPU only
    row.note = "server CPU; " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items())
    if count_syscalls:
        port = syscount.free_port()
        argv = [a.replace("{port}", str(port)) for a in path.redis_argv]
        small = max(2000, requests // 10)

        def bench(n: int) -> list[str]:
            return ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(n),
                    "-c", "50", "-q"]

        per = syscount.server_calls_per_message(argv, port, bench, small // 4, small)
        row.syscalls_per_op = per / 2  # two tests per run: per request
    return row


def run_redis_py(path: Path, n: int) -> Row:
    """GET latency with redis-py. The client runs where this path's programs run: plain, or
    under the shim; on a queue-API shm server it runs under the shim too, so it reaches the
    server over shared memory (the path it can reach)."""
    row = Row("redis-py", path.label)
    if path.redis_argv is None:
        row.note = "no server for this path"
        return row
    port = syscount.free_port()
    argv = [a.replace("{port}", str(port)) for a in path.redis_argv]
    client_shim = path.shim or (path.libos if path.echo_kind == "queue" and path.libos != "posix"
                                else None)
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        syscount.wait_for_port(port)
        out = subprocess.run([*syscount.python_argv(client_shim), REDIS_PY, "--port", str(port),
                              "--n", str(n)], check=True, capture_output=True, text=True,
                             timeout=600)
    finally:
        server.terminate()
        server.wait(10)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    row.p50_us, row.p99_us, row.ops_per_s = res["p50_us"], res["p99_us"], res["ops_per_s"]
    row.note = f"client under demishim {client_shim}" if client_shim else "plain client"
    return row


def run_redis_py_alone(n: int) -> Row:
    """redis-py's own work per GET, with an in-process stand-in socket (no server, no I/O):
    the bound on what any I/O path can give a redis-py GET."""
    row = Row("redis-py", "redis-py alone, no I/O")
    out = subprocess.run([sys.executable, REDIS_PY, "--no-io", "--n", str(n)], check=True,
                         capture_output=True, text=True, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    row.p50_us, row.p99_us, row.ops_per_s = res["p50_us"], res["p99_us"], res["ops_per_s"]
    row.note = "in-process stand-in socket: the client's own cost"
    return row


def plot_cdf(rows: list[Row], out: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not any(r.latencies for r in rows):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if not r.latencies:
            continue
        lat = sorted(x * 1e6 for x in r.latencies)
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        ax.plot(lat, ys, label=r.path)
    ax.set_xscale("log")
    ax.set_xlabel("64-byte echo round trip (µs, log scale)")
    ax.set_ylabel("fraction of round trips")
    ax.set_title("Echo latency CDF between two processes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "latency_cdf.png")
    fig.savefig(path, dpi=120)
    return path


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small counts and no traced runs: done within about 30 s")
    ap.add_argument("--out", default="results", help="folder for results.json and the plot")
    ap.add_argument("--no-syscalls", action="store_true", help="skip the traced runs")
    ap.add_argument("--jobs", default="echo,redis,redis-py",
                    help="comma-separated: echo, redis, redis-py")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    jobs = set(a.jobs.split(","))
    n_echo, warm, n_redis = (1500, 200, 4000) if a.quick else (10000, 500, 40000)
    count_syscalls = not (a.no_syscalls or a.quick)
    console = Console()
    if console.width < 130:
        console = Console(width=130)
    rows: list[Row] = []
    ps = paths()
    tasks: list[tuple[str, Path | None]] = [
        (j, p) for j in ("echo", "redis", "redis-py") if j in jobs for p in ps]
    if "redis-py" in jobs:
        tasks.append(("redis-py", None))  # redis-py alone: the bound for its rows
    t0 = time.monotonic()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("comparing", total=len(tasks))
        for job, p in tasks:
            progress.update(bar, description=f"{job}: {p.label if p else 'client alone'}")
            try:
                if p is None:
                    rows.append(run_redis_py_alone(n_echo // 2))
                elif job == "echo":
                    rows.append(run_echo(p, n_echo, warm, count_syscalls))
                elif job == "redis-py":
                    rows.append(run_redis_py(p, n_echo // 2))
                else:  # every row gets the same requests: short runs are not comparable
                    rows.append(run_redis(p, n_redis, count_syscalls))
            except Exception as e:  # one broken path must not hide the others
                rows.append(Row(job, p.label if p else "redis-py alone", note=f"failed: {e}"))
            progress.advance(bar)
    table = Table(title=f"I/O paths side by side ({platform.node()}, {os.cpu_count()} cores, "
                        f"Python {platform.python_version()})")
    for col in ("job", "path", "p50 µs", "p99 µs", "ops/s", "syscalls/op", "CPU µs/op", "note"):
        table.add_column(col, justify="right" if "µs" in col or "/" in col else "left")
    for r in rows:
        table.add_row(r.job, r.path, fmt(r.p50_us, ".1f"), fmt(r.p99_us, ".1f"),
                      fmt(r.ops_per_s, ",.0f"), fmt(r.syscalls_per_op, ".2f"),
                      fmt(r.cpu_us_per_op, ".1f"), r.note)
    console.print(table)
    result = {
        "machine": {"node": platform.node(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "kernel": platform.release()},
        "quick": a.quick,
        "rows": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in rows],
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    png = plot_cdf([r for r in rows if r.job == "echo"], a.out)
    console.print(f"wrote {os.path.join(a.out, 'results.json')}"
                  + (f" and {png}" if png else "") + f" in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
