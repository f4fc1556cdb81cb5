"""Tests of apps/redis_server_queue.py, the Redis-protocol server on the queue API.

The wire-level tests of tests/test_redis_server.py are imported from it, not
copied, and run again here against the queue server: pytest resolves their
``ours`` fixture in this module, where it starts apps/redis_server_queue.py.
They cover the differential tests against Debian's redis-server 7.0 (the
script over raw sockets and through redis-cli, the fuzz, malformed wire bytes:
replies byte-identical), redis-py (protocol=2) with strings, lists, hashes,
sets, sorted sets, pipelines and expiry, malformed RESP, 200 concurrent
clients and clients disconnecting mid-command or resetting mid-reply.

The tests below them are about the queue port itself: its command line, its
signals, QUIT after a reply still being pushed, one push per received chunk,
tokens that never accumulate, FAILED pushes and pops closing only their own
connection. Some run the server in a thread of this process to look at its
wait list and at the library OS's counters.

Every server listens on a free 127.0.0.1 port and is stopped at teardown;
every wait is bounded.
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:  # plain `pytest` from a checkout; pytest puts tests/ there too
        sys.path.insert(0, _p)

from apps import redis_server_queue  # noqa: E402
from test_redis_server import (  # noqa: E402,F401  (fixtures and tests are re-collected here)
    HOST,
    IO_TIMEOUT,
    START_TIMEOUT,
    ReplyReader,
    client,
    connect,
    exchange,
    real,
    redis_py,
    resp,
    stop_process,
    test_differential_fuzz,
    test_differential_raw_script,
    test_differential_redis_cli,
    test_differential_wire_bytes,
    test_disconnect_mid_command,
    test_large_values_and_slow_reader,
    test_malformed_never_crashes,
    test_pipeline_answered_in_one_segment,
    test_redis_py_lists_hashes_sets,
    test_redis_py_pipeline_and_expiry,
    test_redis_py_sorted_sets,
    test_redis_py_strings,
    test_reset_by_peer_with_pending_output,
    test_two_hundred_concurrent_clients,
)


def start_queue_server(*extra: str, module: bool = True) -> tuple[subprocess.Popen, int]:
    """Start apps/redis_server_queue.py on a free port; return (process, port) once ready."""
    script = ROOT / "apps" / "redis_server_queue.py"
    cmd = [sys.executable, "-m", "apps.redis_server_queue"] if module else [sys.executable, str(script)]
    proc = subprocess.Popen(
        [*cmd, "--host", HOST, "--port", "0", *extra],
        cwd=ROOT if module else "/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""  # type: ignore[union-attr]
    if not line.startswith("ready on "):
        stop_process(proc)
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read().decode()!r}")  # type: ignore[union-attr]
    return proc, int(line.rsplit(":", 1)[1])


def connect_slow_reader(port: int) -> socket.socket:
    """A client with a small receive buffer: big replies keep the server's push pending."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(IO_TIMEOUT)
    sock.connect((HOST, port))
    return sock


@pytest.fixture(scope="module")
def ours() -> Iterator[int]:
    """Port of the queue server, shared by the module's tests (also the imported ones)."""
    proc, port = start_queue_server()
    yield port
    stop_process(proc)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]


class InProcess:
    """The queue server running in a thread of the test process (signals stay the test's)."""

    def __init__(self) -> None:
        self.server = redis_server_queue._Server(HOST, 0)
        self.port = self.server.port
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def settle(self, predicate, timeout: float = IO_TIMEOUT) -> bool:  # type: ignore[no-untyped-def]
        """Wait (bounded) until ``predicate()`` holds; return whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    def clients(self) -> list[redis_server_queue._Client]:
        return [c for c in set(self.server.owners) if c is not None and not c.conn.closed]

    def pending_tokens(self) -> int:
        return len(self.server.los._ops)  # every token the libOS still holds for us

    def stop(self) -> None:
        self.server.running = False
        self.thread.join(5)
        assert not self.thread.is_alive(), "server loop did not stop"
        self.server.close()
        assert not self.errors, self.errors


@pytest.fixture
def inproc() -> Iterator[InProcess]:
    srv = InProcess()
    try:
        yield srv
    finally:
        srv.stop()


# ===========================================================================
# Command line and signals
# ===========================================================================


def test_script_mode_alias_and_ready_line() -> None:
    proc, port = start_queue_server("--libos", "catnap", module=False)  # Demikernel's name for posix
    try:
        assert exchange(port, b"PING\r\n") == (b"+PONG\r\n", False)
    finally:
        stop_process(proc)
    assert proc.returncode == 0


def test_unknown_libos_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apps.redis_server_queue", "--port", "0", "--libos", "nosuch"],
        cwd=ROOT,
        capture_output=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 2
    assert b"unknown library OS 'nosuch'" in done.stderr and not done.stdout


@pytest.mark.parametrize("libos", ["posix", "catmem"])  # catmem: Demikernel's name for shm
def test_serves_on_each_library_os(libos: str) -> None:
    try:
        proc, port = start_queue_server("--libos", libos)
    except RuntimeError as err:
        if "not available" in str(err):  # a library OS this version does not have
            pytest.skip(str(err))
        raise
    try:
        with connect(port) as sock:
            reader = ReplyReader(sock)
            sock.sendall(resp("SET", "k", "v") + resp("GET", "k") + b"ECHO hi\r\n")
            assert [reader.read() for _ in range(3)] == [b"+OK\r\n", b"$1\r\nv\r\n", b"$2\r\nhi\r\n"]
            sock.sendall(resp("QUIT"))
            assert reader.read() == b"+OK\r\n" and sock.recv(16) == b""
    finally:
        stop_process(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_cleanly_with_clients_connected(signum: int) -> None:
    proc, port = start_queue_server()
    with connect(port) as idle, connect(port) as busy:  # pending pops must not block shutdown
        busy.sendall(b"*2\r\n$3\r\nGET\r\n$5\r\nab")  # and neither a half-received command
        assert exchange(port, b"PING\r\n")[0] == b"+PONG\r\n"
        start = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=5) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() - start < 2.0
        idle.settimeout(IO_TIMEOUT)
        assert idle.recv(16) == b""  # closed by the server on its way out


# ===========================================================================
# The queue port's own behaviour
# ===========================================================================


def test_quit_waits_for_a_pending_push(ours: int) -> None:
    big = b"v" * (4 * 1024 * 1024)
    with connect_slow_reader(ours) as sock:
        reader = ReplyReader(sock)
        sock.sendall(resp("SET", "quitbig", big))
        assert reader.read() == b"+OK\r\n"
        sock.sendall(resp("GET", "quitbig") + resp("QUIT") + resp("PING"))
        time.sleep(0.3)  # the 4 MB reply cannot be sent at once: its push stays pending
        assert reader.read() == b"$%d\r\n%b\r\n" % (len(big), big)
        assert reader.read() == b"+OK\r\n"
        assert sock.recv(16) == b""  # closed after the QUIT reply, PING ignored
    assert exchange(ours, resp("DEL", "quitbig")) == (b":1\r\n", False)


def test_quit_and_protocol_error_close_after_reply(ours: int) -> None:
    assert exchange(ours, b"PING\r\nQUIT\r\nPING\r\n") == (b"+PONG\r\n+OK\r\n", True)
    assert exchange(ours, b"PING\r\n*1\r\n$x\r\n") == (
        b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        True,
    )


def test_one_push_per_received_chunk_and_no_token_leak(inproc: InProcess) -> None:
    n_clients, rounds = 5, 20
    socks = [connect(inproc.port) for _ in range(n_clients)]
    try:
        readers = [ReplyReader(s) for s in socks]
        for r in range(rounds):
            for s in socks:
                s.sendall(b"".join(resp("ECHO", f"{r}:{j}") for j in range(50)))  # one pipeline
            for reader in readers:
                for j in range(50):
                    want = f"{r}:{j}".encode()
                    assert reader.read() == b"$%d\r\n%b\r\n" % (len(want), want)
        clients = inproc.clients()
        assert len(clients) == n_clients
        for c in clients:
            stats = inproc.server.los.stats(c.qd)
            # every received chunk was answered by exactly one push of its replies
            assert stats["pushes"] == stats["pops"] >= rounds, stats
            assert stats["bytes_out"] == sum(len(b"$%d\r\n%d:%d\r\n" % (len(f"{r}:{j}"), r, j))
                                             for r in range(rounds) for j in range(50))
        # only the accept token and one pop token per client are left
        assert inproc.settle(lambda: len(inproc.server.qts) == n_clients + 1)
        assert inproc.settle(lambda: inproc.pending_tokens() == n_clients + 1)
    finally:
        for s in socks:
            s.close()
    assert inproc.settle(lambda: len(inproc.server.qts) == 1 and inproc.pending_tokens() == 1)
    assert inproc.server.store.connected_clients == 0


def test_memory_stays_bounded_over_many_requests() -> None:
    """A long-running server keeps nothing per completed request (tokens, results, buffers)."""
    proc, port = start_queue_server()

    def rss_kb() -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    try:
        request = resp("SET", "memkey", "v" * 100)
        with connect(port) as sock:
            for round_ in range(2):  # a warm-up, then the measured round
                before = rss_kb()
                for _ in range(5000 if round_ == 0 else 20000):  # one pop and one push each
                    sock.sendall(request)
                    assert sock.recv(16) == b"+OK\r\n"
        grown = rss_kb() - before
        assert grown < 4096, f"RSS grew by {grown} kB over 20000 requests"
    finally:
        stop_process(proc)


def test_failed_push_closes_only_that_connection(inproc: InProcess) -> None:
    with connect(inproc.port) as other:
        other_reader = ReplyReader(other)
        other.sendall(resp("SET", "k", "v") + resp("SET", "big", "x" * 1_000_000))
        assert other_reader.read() == other_reader.read() == b"+OK\r\n"
        victims = []
        for _ in range(3):
            sock = connect_slow_reader(inproc.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(resp("GET", "big") * 10)  # 10 MB of replies it never reads
            victims.append(sock)
        assert inproc.settle(lambda: any(c.out for c in inproc.clients()))  # a push is pending
        for sock in victims:
            sock.close()  # RST: the pending push (or the pop) completes FAILED
        assert inproc.settle(lambda: len(inproc.clients()) == 1)
        other.sendall(resp("GET", "k"))
        assert other_reader.read() == b"$1\r\nv\r\n"
        assert inproc.settle(lambda: len(inproc.server.qts) == 2 and inproc.pending_tokens() == 2)
        assert inproc.server.store.connected_clients == 1


def test_slow_reader_pauses_reading_and_resumes(inproc: InProcess) -> None:
    value = b"y" * (1024 * 1024)
    with connect(inproc.port) as sock:
        reader = ReplyReader(sock)
        sock.sendall(resp("SET", "big", value))
        assert reader.read() == b"+OK\r\n"
        sock.sendall(resp("GET", "big") * 12)  # 12 MB: above the 4 MB high-water mark
        assert inproc.settle(lambda: any(not c.reading for c in inproc.clients()))
        for _ in range(12):
            assert reader.read() == b"$%d\r\n%b\r\n" % (len(value), value)
        sock.sendall(resp("STRLEN", "big"))
        assert reader.read() == b":%d\r\n" % len(value)
        (client,) = inproc.clients()
        assert client.reading and client.out == 0 and not client.pushes


def test_malformed_client_does_not_disturb_connected_ones(ours: int) -> None:
    with connect(ours) as a, connect(ours) as b:
        ra, rb = ReplyReader(a), ReplyReader(b)
        a.sendall(resp("SET", "mk", "1"))
        assert ra.read() == b"+OK\r\n"
        b.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n\xff\r\n")  # protocol error: reply, then close
        assert rb.read() == b"+PONG\r\n"
        assert rb.read() == b"-ERR Protocol error: expected '$', got '\xff'\r\n"
        assert b.recv(16) == b""
        a.sendall(resp("INCR", "mk"))
        assert ra.read() == b":2\r\n"


@pytest.mark.parametrize("meanwhile", ["idle", "busy"])
def test_active_expiry_runs(ours: int, meanwhile: str) -> None:
    """The expiry cycle removes keys no command touches, both while the server is idle (its
    wait times out) and while requests keep the wait from ever timing out (the loop reads
    the clock once per CLOCK_EVERY completions then)."""
    with connect(ours) as sock:
        reader = ReplyReader(sock)
        sock.sendall(resp("SELECT", "9" if meanwhile == "idle" else "8"))
        assert reader.read() == b"+OK\r\n"
        sock.sendall(b"".join(resp("SET", f"e{i}", "v", "PX", "50") for i in range(100)))
        for _ in range(100):
            assert reader.read() == b"+OK\r\n"
        deadline = time.monotonic() + 0.5
        if meanwhile == "idle":
            time.sleep(0.5)
        while meanwhile == "busy" and time.monotonic() < deadline:  # a request every ~0.1 ms
            sock.sendall(resp("PING"))
            assert reader.read() == b"+PONG\r\n"
        sock.sendall(resp("DBSIZE"))
        assert reader.read() == b":0\r\n"
