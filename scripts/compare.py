#!/usr/bin/env python3
"""Compare I/O paths side by side in one run: plain sockets against the queue API.

Three jobs, each run for every path:
  echo      64-byte round trips between two processes (p50/p99 latency, throughput)
  redis     the Redis-protocol server under redis-benchmark (Debian's redis-tools), -c 50
  redis-py  GET latency with redis-py, a real client (plus redis-py alone, with no I/O,
            in every round)

The redis and redis-py jobs start every path's server at once and run in interleaved rounds
(``--rounds``, default 4; 2 with --quick), each path taking its turn in every round, so that
the machine's slow and fast minutes fall on every path alike; a row reports the median of its
rounds (ops/s) or the percentiles of all its GETs. A round of the redis job is short (10,000
requests per path by default), and on a noisy machine one round's ratio can swing by a third;
scripts/redis_pairs.py measures one pair of servers over many longer runs, with an interval.

For every row it also reports system calls per operation (python-ptrace, a separate traced
run) and CPU time per operation (client plus server, psutil). It prints a table, then the
ratios the project's targets are about (``TARGETS``), round by round and their median (for
the redis-py target also its bound: plain sockets over redis-py alone, the ratio an I/O path
and a server that cost nothing would give in the same rounds), and writes ``results.json``
(one row per path, with each row's per-round values, and the ``targets``) and
``latency_cdf.png`` into ``--out``.

    python scripts/compare.py [--quick] [--out DIR] [--no-syscalls] [--jobs echo,redis]
        [--rounds N]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
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
#: the redis-py row with no server and no I/O (redis_py_latency.py --no-io)
ALONE = "redis-py alone, no I/O"
T = TypeVar("T")


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
    #: the value of each interleaved round, in round order: ops/s (redis), p50 µs (redis-py)
    rounds: list[float] = field(default_factory=list)
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


def redis_benchmark(port: int, requests: int, clients: int,
                    timeout: float = 600.0) -> dict[str, float]:
    """requests/s per test (SET, GET) from ``redis-benchmark -t set,get --csv``."""
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


@contextlib.contextmanager
def servers(ps: list[Path]) -> Iterator[dict[str, tuple[int, int]]]:
    """Start the Redis server of every path that has one; yield {label: (port, pid)}; stop
    them all at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, tuple[int, int]] = {}
    try:
        for p in ps:
            if p.redis_argv is None:
                continue
            port = syscount.free_port()
            procs.append(subprocess.Popen([a.replace("{port}", str(port)) for a in p.redis_argv],
                                          stdout=subprocess.DEVNULL))
            syscount.wait_for_port(port)
            ports[p.label] = (port, procs[-1].pid)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def rotations(turns: list[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, turn) in interleaved order, the first turn moving by one each round, so that
    every path meets the machine's slow and fast minutes alike."""
    for r in range(rounds):
        for k in range(len(turns)):
            yield r, turns[(r + k) % len(turns)]


def run_redis(ps: list[Path], requests: int, rounds: int, count_syscalls: bool,
              advance: Callable[[], None]) -> list[Row]:
    """Every path's server under redis-benchmark, in ``rounds`` interleaved rounds of
    ``requests // rounds`` requests per path: ops/s is the median of the rounds."""
    rows = {p.label: Row("redis", p.label) for p in ps}
    for p in ps:
        if p.redis_argv is None:
            rows[p.label].note = "no queue-API server yet"
    if not shutil.which("redis-benchmark"):
        for row in rows.values():
            row.note = "redis-benchmark not installed (apt-get install redis-tools)"
        return list(rows.values())
    per_round = max(1, requests // rounds)
    rates: dict[str, list[dict[str, float]]] = {p.label: [] for p in ps}
    cpu: dict[str, float] = {p.label: 0.0 for p in ps}
    live = [p for p in ps if p.redis_argv is not None]
    with servers(live) as ports:
        procs = {label: psutil.Process(pid) for label, (_, pid) in ports.items()}
        for _, p in rotations(live, rounds):
            cpu0 = _cpu(procs[p.label])
            rates[p.label].append(redis_benchmark(ports[p.label][0], per_round, 50))
            cpu[p.label] += _cpu(procs[p.label]) - cpu0
    for p in live:
        row, runs = rows[p.label], rates[p.label]
        tests = sorted(runs[0])
        row.rounds = [sum(r.values()) / len(r) for r in runs]
        row.ops_per_s = statistics.median(row.rounds)
        row.cpu_us_per_op = cpu[p.label] / (per_round * rounds * len(tests)) * 1e6  # server only
        row.note = (f"server CPU; median of {rounds} rounds; "
                    + ", ".join(f"{t} {statistics.median(r[t] for r in runs):,.0f}/s"
                                for t in tests))
        if count_syscalls:
            port = syscount.free_port()
            argv = [a.replace("{port}", str(port)) for a in p.redis_argv or []]
            small = max(2000, requests // 10)

            def bench(n: int, port: int = port) -> list[str]:
                return ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(n),
                        "-c", "50", "-q"]

            per = syscount.server_calls_per_message(argv, port, bench, small // 4, small)
            row.syscalls_per_op = per / 2  # two tests per run: per request
        advance()
    for _ in range(len(ps) - len(live)):  # (the rows without a server)
        advance()
    return list(rows.values())


def _client_shim(path: Path) -> str | None:
    """Where the redis-py client of a path runs: plain, or under the shim; on a queue-API shm
    server under the shim too, so it reaches the server over shared memory."""
    return path.shim or (path.libos if path.echo_kind == "queue" and path.libos != "posix"
                         else None)


def run_redis_py(ps: list[Path], n: int, rounds: int, advance: Callable[[], None]) -> list[Row]:
    """GET latency with redis-py against every path's server, in ``rounds`` interleaved
    rounds of ``n // rounds`` GETs per path (a fresh client each round); p50 and p99 are
    those of all the GETs of a path, ops/s the median of its rounds.  Each round also runs
    redis-py alone (``ALONE``: an in-process stand-in socket, no server, no I/O), the client's
    own work per GET: roughly the floor of every row, measured in the same minutes."""
    rows = {p.label: Row("redis-py", p.label) for p in ps}
    live = [p for p in ps if p.redis_argv is not None]
    for p in ps:
        rows[p.label].note = ("no server for this path" if p.redis_argv is None else
                              f"client under demishim {_client_shim(p)}" if _client_shim(p)
                              else "plain client")
    alone = rows[ALONE] = Row("redis-py", ALONE)
    turns: list[Path | None] = [*live, None]  # None: redis-py alone
    rates: dict[str, list[float]] = {p.label: [] for p in live} | {ALONE: []}
    per_round = max(10, n // rounds)
    with servers(live) as ports, tempfile.TemporaryDirectory() as tmp:
        for r, p in rotations(turns, rounds):
            dump = os.path.join(tmp, f"{r}.json")
            argv = ([sys.executable, REDIS_PY, "--no-io"] if p is None else
                    [*syscount.python_argv(_client_shim(p)), REDIS_PY,
                     "--port", str(ports[p.label][0])])
            out = subprocess.run([*argv, "--n", str(per_round), "--dump", dump],
                                 check=True, capture_output=True, text=True, timeout=600)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row = alone if p is None else rows[p.label]
            rates[row.path].append(res["ops_per_s"])
            if p is None:
                alone.note = ("in-process stand-in socket: the client's own cost "
                              f"({res['parser']} parser)")
            with open(dump) as f:
                got = sorted(json.load(f))  # seconds, as the echo rows
            row.latencies.extend(got)
            row.rounds.append(got[len(got) // 2] * 1e6)
    for label in [p.label for p in live] + [ALONE]:
        row = rows[label]
        lat = sorted(row.latencies)
        row.p50_us, row.p99_us = lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6
        row.ops_per_s = statistics.median(rates[label])
        advance()
    for _ in range(len(ps) - len(live)):  # (the rows without a server)
        advance()
    return list(rows.values())


#: The ratios the project's targets are about: (job, path a, path b, the measure, target,
#: bound); the ratio is a's over b's (for a latency: how many times faster b is).  Reported
#: round by round, their median, and the ratio of the two rows (median ops/s; p50 of all
#: GETs).  ``bound``, if any, is the row b cannot beat by much: a's over it is about the best
#: the target's ratio can be in that run (for redis-py: an I/O path and a server that cost
#: nothing leave redis-py's own work per GET).
TARGETS = (
    ("redis", "queue API on posix", "plain sockets", "throughput", ">= 1 (goal 1.2)", None),
    ("redis", "plain under demishim posix", "plain sockets", "throughput", ">= 0.9", None),
    ("redis-py", "plain sockets", "plain under demishim shm", "p50 latency", ">= 5", ALONE),
)


def _ratio(ra: Row, rb: Row, what: str) -> dict[str, Any] | None:
    """ra's over rb's round by round, their median, and of the two rows (None: no rounds)."""
    if not ra.rounds or len(ra.rounds) != len(rb.rounds):
        return None
    per = [x / y for x, y in zip(ra.rounds, rb.rounds) if x and y]
    if not per:
        return None
    va, vb = (ra.ops_per_s, rb.ops_per_s) if what == "throughput" else (ra.p50_us, rb.p50_us)
    return {"ratio": f"{ra.path} / {rb.path}", "per_round": [round(x, 3) for x in per],
            "median": round(statistics.median(per), 3),
            "of_rows": round(va / vb, 3) if va and vb else None}


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Each target's ratio in every round (the two paths took their turns in the same round,
    so a slow or fast minute of the machine falls on both), and their median; with its
    ``bound`` measured the same way, when the target has one and its row is there."""
    by = {(r.job, r.path): r for r in rows}
    out = []
    for job, a, b, what, target, bound in TARGETS:
        ra, rb = by.get((job, a)), by.get((job, b))
        got = _ratio(ra, rb, what) if ra is not None and rb is not None else None
        if got is None:
            continue
        got = {"job": job, **got, "measure": what, "target": target}
        rc = by.get((job, bound)) if bound is not None else None
        if rc is not None and (lim := _ratio(ra, rc, what)) is not None:
            got["bound"] = lim
        out.append(got)
    return out


def _ratio_line(t: dict[str, Any]) -> str:
    return ("per round " + " ".join(f"{x:.2f}" for x in t["per_round"])
            + f", median {t['median']:.2f}"
            + (f"; the rows above: {t['of_rows']:.2f}" if t["of_rows"] else ""))


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
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds of the redis and redis-py jobs (default 4; "
                         "--quick 2); the same requests in all, split among them")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    jobs = set(a.jobs.split(","))
    n_echo, warm, n_redis = (1500, 200, 4000) if a.quick else (10000, 500, 40000)
    # redis and redis-py: interleaved rounds over the paths
    rounds = a.rounds if a.rounds is not None else 2 if a.quick else 4
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    count_syscalls = not (a.no_syscalls or a.quick)
    console = Console()
    if console.width < 130:
        console = Console(width=130)
    rows: list[Row] = []
    ps = paths()
    steps = (len(ps) * len(jobs & {"echo", "redis", "redis-py"})
             + (1 if "redis-py" in jobs else 0))
    t0 = time.monotonic()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("comparing", total=steps)

        def advance() -> None:
            progress.advance(bar)

        if "echo" in jobs:
            for p in ps:
                progress.update(bar, description=f"echo: {p.label}")
                try:
                    rows.append(run_echo(p, n_echo, warm, count_syscalls))
                except Exception as e:  # one broken path must not hide the others
                    rows.append(Row("echo", p.label, note=f"failed: {e}"))
                advance()
        # every Redis row gets the same requests, in rounds taken in turn by the paths
        for job, run in (("redis", lambda: run_redis(ps, n_redis, rounds, count_syscalls,
                                                     advance)),
                         ("redis-py", lambda: run_redis_py(ps, n_echo // 2, rounds, advance))):
            if job not in jobs:
                continue
            progress.update(bar, description=f"{job}: {len(ps)} paths, {rounds} rounds")
            try:
                rows.extend(run())
            except Exception as e:
                labels = [p.label for p in ps] + ([ALONE] if job == "redis-py" else [])
                rows.extend(Row(job, label, note=f"failed: {e}") for label in labels)
    table = Table(title=f"I/O paths side by side ({platform.node()}, {os.cpu_count()} cores, "
                        f"Python {platform.python_version()})")
    for col in ("job", "path", "p50 µs", "p99 µs", "ops/s", "syscalls/op", "CPU µs/op", "note"):
        table.add_column(col, justify="right" if "µs" in col or "/" in col else "left")
    for r in rows:
        table.add_row(r.job, r.path, fmt(r.p50_us, ".1f"), fmt(r.p99_us, ".1f"),
                      fmt(r.ops_per_s, ",.0f"), fmt(r.syscalls_per_op, ".2f"),
                      fmt(r.cpu_us_per_op, ".1f"), r.note)
    console.print(table)
    summary = targets(rows)
    for t in summary:
        console.print(f"{t['job']}: {t['ratio']} ({t['measure']}): {_ratio_line(t)} "
                      f"(target {t['target']})")
        if "bound" in t:  # (what the ratio would be with b costing no more than the bound)
            console.print(f"  its bound in this run, {t['bound']['ratio']}: "
                          f"{_ratio_line(t['bound'])}")
    result = {
        "machine": {"node": platform.node(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "kernel": platform.release()},
        "quick": a.quick,
        "rows": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in rows],
        "targets": summary,
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    png = plot_cdf([r for r in rows if r.job == "echo"], a.out)
    console.print(f"wrote {os.path.join(a.out, 'results.json')}"
                  + (f" and {png}" if png else "") + f" in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
