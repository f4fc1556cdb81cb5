"""Live tests of the inet library OS: our stack in one network namespace, Linux in another.

Needs root and ``ip netns`` (skips otherwise, or fails when CI is set, like
tests/test_inet_device.py).  A module fixture creates namespaces with a unique prefix
(``it`` + random hex) through scripts/netns.py and always deletes them.  Processes on our
stack run ``LibOS("inet")`` inside ``P-stack`` with ``DEMI_CONFIG`` naming the TOML file the
script wrote; Linux programs run inside ``P-peer``.  Helper programs: tests/inet_live_app.py.
Only addresses inside the namespaces are contacted; every loop and process is bounded.

Covered: Linux client -> our TCP server (10 MB each way with SHA-256, echo RTT, closed
port refused), UDP echo (incl. a fragmented 4000-byte datagram), ping; our client -> Linux
server (10 MB each way, echo, UDP, ECONNREFUSED); curl against our HTTP responder; redis-cli
and redis-benchmark against apps/redis_server.py running under the shim on our stack.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "tests" / "inet_live_app.py")
SIZE = int(os.environ.get("INET_LIVE_BYTES", str(10_000_000)))
_spec = importlib.util.spec_from_file_location("netns_script_live", ROOT / "scripts" / "netns.py")
netns_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns_script)


def _live_missing() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET); run as root or set CI to fail"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: apt-get install -y iproute2"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` failed: {exc}"
    if r.returncode != 0:
        return f"`ip netns` is unavailable: {r.stderr.strip()}"
    return None


def require(reason: str | None) -> None:
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"live prerequisite missing under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ns():
    require(_live_missing())
    prefix = f"it{uuid.uuid4().hex[:8]}"
    info = netns_script.up(prefix)
    try:
        yield info
    finally:
        netns_script.down(prefix, config=info["config"])
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5).stdout
        assert prefix not in left, left


def _env(ns: dict) -> dict:
    env = dict(os.environ, DEMI_CONFIG=ns["config"], PYTHONPATH=str(ROOT))
    env.pop("DEMI_LIBOS", None)
    return env


def run_in(namespace: str, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", namespace, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@contextlib.contextmanager
def background(namespace: str, args: list[str], env: dict, stop: Path, ready: str = "READY",
               ready_timeout: float = 15.0, term: bool = False):
    """Start a program in ``namespace``, wait (bounded) for a line starting with ``ready``;
    always stop it (stop file, then SIGTERM, then SIGKILL, each bounded) and collect output."""
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    info: dict = {"lines": []}
    try:
        deadline = time.monotonic() + ready_timeout
        line = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            line = proc.stdout.readline()
            if not line or line.startswith(ready):
                break
        if not line.startswith(ready):
            proc.kill()
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"{args} did not start: {line!r} {out[-2000:]!r} {err[-3000:]!r}")
        info["ready"] = line
        yield info
    finally:
        stop.touch()
        if term:
            proc.terminate()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate(timeout=5)
        info["lines"] = out.splitlines()
        info["stderr"] = err
        info["returncode"] = proc.returncode


def result_of(text: str) -> dict:
    for ln in text.splitlines():
        if ln.startswith("RESULT "):
            return json.loads(ln[7:])
    raise AssertionError(f"no RESULT line in {text[-3000:]!r}")


def test_linux_client_against_our_server(ns: dict, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    env = _env(ns)
    with background(ns["stack_ns"], [sys.executable, APP, "server", "5000", "90", str(stop)], env, stop) as srv:
        ping = run_in(ns["peer_ns"], ["ping", "-c", "3", "-i", "0.2", "-W", "2", ns["stack_ip"]], env, 15) \
            if shutil.which("ping") else None
        r = run_in(ns["peer_ns"], [sys.executable, APP, "linux-client", ns["stack_ip"], "5000", str(SIZE)],
                   env, 120)
        res = result_of(r.stdout + r.stderr)
        curl = None
        if shutil.which("curl"):
            curl = run_in(ns["peer_ns"], ["curl", "-sS", "-m", "5", f"http://{ns['stack_ip']}:5000/"], env, 15)
    assert srv["returncode"] == 0, srv["stderr"][-3000:]
    assert res["upload_ok"] and res["download_ok"], res
    assert res["echo_ok"] and res["udp"] == ["udp 0", "udp 1", "udp 2"], res
    assert res["udp_fragmented_ok"], res
    assert res["closed_port"] == "refused", res
    if ping is not None:
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    if curl is not None:
        assert curl.returncode == 0 and curl.stdout == "hello from the user-space stack\n", curl.stderr
    stats = json.loads(next(ln for ln in srv["lines"] if ln.startswith("STATS "))[6:])
    assert stats["backend"]["device"]["ring_errors"] == 0
    print(f"\nLinux -> our server: {SIZE / 1e6:.0f} MB up {SIZE / res['upload_s'] / 1e6:.1f} MB/s, "
          f"down {SIZE / res['download_s'] / 1e6:.1f} MB/s, echo RTT {res['echo_rtt_ms']:.2f} ms; "
          f"{ping.stdout.strip().splitlines()[-1] if ping is not None else ''}")


def test_our_client_against_linux_server(ns: dict, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    env = _env(ns)
    with background(ns["peer_ns"], [sys.executable, APP, "linux-server", "6000", "90", str(stop)], env, stop):
        r = run_in(ns["stack_ns"], [sys.executable, APP, "client", ns["peer_ip"], "6000", str(SIZE)], env, 120)
    res = result_of(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    assert res["upload_ok"] and res["download_ok"], res
    assert [u[0] for u in res["udp"]] == ["udp 0", "udp 1", "udp 2"], res
    assert res["udp"][0][1] == [ns["peer_ip"], 6000]
    assert res["closed_port_errno"] == 111, res   # ECONNREFUSED
    print(f"\nour client -> Linux: {SIZE / 1e6:.0f} MB up {SIZE / res['upload_s'] / 1e6:.1f} MB/s, "
          f"down {SIZE / res['download_s'] / 1e6:.1f} MB/s, echo RTT {res['echo_rtt_ms']:.2f} ms")


def test_missing_interface_is_a_clear_enodev(ns: dict, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[inet]\ninterface = "nosuch0"\nipv4 = "{ns["stack_ip"]}"\n')
    code = ("import errno, queueapi as dq\n"
            "try:\n    dq.LibOS('inet')\nexcept OSError as e:\n    print('ERR', errno.errorcode[e.errno], e)\n")
    r = run_in(ns["stack_ns"], [sys.executable, "-c", code], dict(_env(ns), DEMI_CONFIG=str(cfg)), 30)
    assert r.stdout.startswith("ERR ENODEV") and "nosuch0" in r.stdout, r.stdout + r.stderr


def test_redis_under_the_shim_on_our_stack(ns: dict, tmp_path: Path) -> None:
    require(None if shutil.which("redis-cli") and shutil.which("redis-benchmark")
            else "redis-cli/redis-benchmark missing (apt-get install redis-tools)")
    stop = tmp_path / "stop"   # the redis app ignores it; it is stopped by SIGTERM
    env = _env(ns)
    args = [sys.executable, "-m", "demishim", "--libos", "inet", "apps/redis_server.py",
            "--host", ns["stack_ip"], "--port", "6400"]
    with background(ns["stack_ns"], args, env, stop, ready="ready on", term=True) as srv:
        host = ["-h", ns["stack_ip"], "-p", "6400"]
        set_ = run_in(ns["peer_ns"], ["redis-cli", *host, "set", "k1", "v1"], env, 15)
        get = run_in(ns["peer_ns"], ["redis-cli", *host, "get", "k1"], env, 15)
        incr = run_in(ns["peer_ns"], ["redis-cli", *host, "incr", "n"], env, 15)
        bench = run_in(ns["peer_ns"], ["redis-benchmark", *host, "-n", "2000", "-c", "20", "-q", "-t", "set,get"],
                       env, 120)
    assert set_.stdout.strip() == "OK" and get.stdout.strip() == "v1" and incr.stdout.strip() == "1", \
        (set_.stdout, get.stdout, incr.stdout, set_.stderr)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert srv["returncode"] == 0, srv["stderr"][-3000:]
    lines = [ln for ln in bench.stdout.replace("\r", "\n").splitlines() if "requests per second" in ln]
    assert any(ln.startswith("SET:") for ln in lines) and any(ln.startswith("GET:") for ln in lines), bench.stdout
    print("\nredis-benchmark on the inet stack: " + "; ".join(ln.strip() for ln in lines))
