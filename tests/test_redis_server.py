"""Tests of the Redis-protocol server: apps/resp.py, apps/commands.py, apps/redis_server.py.

* unit tests of the RESP parser/encoders and of the command layer (no I/O);
* differential tests: tests/redis_script.txt is run against Debian's
  redis-server 7.0 and against our server, over raw sockets (reply bytes must
  be identical) and through redis-cli (printed output must be identical);
* a differential fuzz: thousands of random commands (valid or not, across
  types) sent to both servers, replies compared;
* redis-py against our server; malformed input; 200 concurrent clients.

The differential tests need ``redis-server`` and ``redis-cli`` (Debian packages
redis-server, redis-tools) and the redis-py ones the ``redis`` package: they
are skipped without them, except when the environment variable CI is set, in
which case they fail. Every server is started on a free loopback port and
killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` from a checkout, package not installed
    sys.path.insert(0, str(ROOT))

from apps.commands import Store, ZSet, execute, format_double, glob_match, parse_double  # noqa: E402
from apps.redis_server import Connection  # noqa: E402
from apps.resp import (  # noqa: E402
    MAX_INLINE_LEN,
    Parser,
    ProtocolError,
    encode_array,
    encode_bulk,
    encode_error,
    encode_integer,
    encode_raw_array,
    encode_simple,
    parse_ll,
    split_inline,
)

SCRIPT = Path(__file__).resolve().parent / "redis_script.txt"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
IO_TIMEOUT = 5.0


# ===========================================================================
# Helpers
# ===========================================================================


def resp(*args: bytes | str) -> bytes:
    """Encode a command as a RESP multibulk request."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def run(store: Store, *args: bytes | str) -> bytes:
    """Execute one command on ``store``; return the reply bytes."""
    argv = [a.encode() if isinstance(a, str) else a for a in args]
    return execute(store, argv)[0]


class ReplyReader:
    """Reads exactly one RESP2 reply at a time from a socket, returning its raw bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by server")
        self.buf += data

    def _line(self, pos: int) -> int:
        while True:
            end = self.buf.find(b"\r\n", pos)
            if end >= 0:
                return end
            self._fill()

    def _skip(self, pos: int) -> int:
        end = self._line(pos)
        kind = self.buf[pos : pos + 1]
        if kind in (b"+", b"-", b":"):
            return end + 2
        n = int(self.buf[pos + 1 : end])
        pos = end + 2
        if kind == b"$":
            if n < 0:
                return pos
            while len(self.buf) < pos + n + 2:
                self._fill()
            return pos + n + 2
        if kind == b"*":
            for _ in range(max(n, 0)):
                pos = self._skip(pos)
            return pos
        raise AssertionError(f"bad reply type {kind!r} in {self.buf[:200]!r}")

    def read(self) -> bytes:
        end = self._skip(0)
        reply, self.buf = self.buf[:end], self.buf[end:]
        return reply


def array_items(reply: bytes) -> list[bytes]:
    """The raw element replies of a flat array reply."""
    assert reply.startswith(b"*"), reply
    head = reply.index(b"\r\n")
    fake = ReplyReader.__new__(ReplyReader)
    fake.sock = None  # type: ignore[assignment]
    fake.buf = reply[head + 2 :]
    return [fake.read() for _ in range(int(reply[1:head]))]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(port: int, data: bytes, quiet: float = 0.3) -> tuple[bytes, bool]:
    """Send ``data``; return (everything received, whether the server closed).

    Reading stops at close, or once nothing arrived for ``quiet`` seconds.
    """
    with connect(port) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(data)
        out = b""
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], quiet)
            if not ready:
                return out, False
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def need_tool(name: str) -> str:
    """Path of an executable; skip (or fail under CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed (apt-get install redis-server redis-tools)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def wait_ping(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with connect(port) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no server on port {port}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_ours(*extra: str, module: bool = True) -> tuple[subprocess.Popen, int]:
    """Start apps/redis_server.py on a free port; return (process, port) once ready."""
    script = ROOT / "apps" / "redis_server.py"
    cmd = [sys.executable, "-m", "apps.redis_server"] if module else [sys.executable, str(script)]
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


@pytest.fixture(scope="module")
def ours() -> Iterator[int]:
    """Port of our server, shared by the module's tests."""
    proc, port = start_ours()
    yield port
    stop_process(proc)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def real() -> Iterator[int]:
    """Port of a throw-away Debian redis-server (skips when not installed, fails under CI)."""
    exe = need_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/tmp",
    )
    try:
        wait_ping(port)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def redis_py():  # type: ignore[no-untyped-def]
    try:
        import redis
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("redis-py not installed (pip install redis)")
        pytest.skip("redis-py not installed (pip install redis)")
    return redis


# ===========================================================================
# RESP parser
# ===========================================================================

GOLDEN = [
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", [[b"SET", b"k", b""]]),
    (b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n", [[b"GET", b"a\r\nb"]]),
    (b"*1\r\n$3\r\n\x00\xff\n\r\n", [[b"\x00\xff\n"]]),
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"set a b\r\nget a\r\n", [[b"set", b"a", b"b"], [b"get", b"a"]]),
    (b"\r\n\n   \r\n*0\r\n*-1\r\n*-7\r\nPING\r\n", [[b"PING"]]),
    (b"echo \"a b\" 'c d'\r\n", [[b"echo", b"a b", b"c d"]]),
    (b"echo \"\\x41\\n\\t\\\"\" 'it\\'s'\r\n", [[b"echo", b'A\n\t"', b"it's"]]),
    (b'echo ""\r\n', [[b"echo", b""]]),
    (b"*1\r\n$4\r\npingXY", [[b"ping"]]),  # Redis skips the 2 bytes after a bulk unchecked
    (b"*2\r\n$4\r\necho\r\n$2\r\nhi\r\n*1\r\n$4\r\nPING\r\nPING\r\n", [[b"echo", b"hi"], [b"PING"], [b"PING"]]),
]


@pytest.mark.parametrize(("data", "expected"), GOLDEN)
def test_parser_golden(data: bytes, expected: list[list[bytes]]) -> None:
    assert Parser().feed(data) == expected


@pytest.mark.parametrize(("data", "expected"), GOLDEN)
def test_parser_split_at_every_byte(data: bytes, expected: list[list[bytes]]) -> None:
    for cut in range(len(data) + 1):
        p = Parser()
        assert p.feed(data[:cut]) + p.feed(data[cut:]) == expected, cut
    p = Parser()
    got = []
    for i in range(len(data)):
        got += p.feed(data[i : i + 1])
    assert got == expected


def test_parser_pipeline_random_chunks() -> None:
    rng = random.Random(7)
    cmds = [[b"SET", b"key:%d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(40)))] for i in range(300)]
    stream = b"".join(resp(*c) for c in cmds) + b"PING\r\n"
    p = Parser()
    got: list[list[bytes]] = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 50)
        got += p.feed(stream[pos : pos + step])
        pos += step
    assert got == [*cmds, [b"PING"]]
    assert p.buffered == 0


MALFORMED = [
    (b"*1\r\nx\r\n", b"Protocol error: expected '$', got 'x'"),
    (b"*1\r\n\r\n", b"Protocol error: expected '$', got ' '"),
    (b"*1\r\n\xff\r\n", b"Protocol error: expected '$', got '\xff'"),
    (b"*abc\r\n", b"Protocol error: invalid multibulk length"),
    (b"*01\r\n", b"Protocol error: invalid multibulk length"),
    (b"*2147483648\r\n", b"Protocol error: invalid multibulk length"),
    (b"*1\r\n$-1\r\n", b"Protocol error: invalid bulk length"),
    (b"*1\r\n$04\r\nping\r\n", b"Protocol error: invalid bulk length"),
    (b"*1\r\n$x\r\n", b"Protocol error: invalid bulk length"),
    (b"*1\r\n$2147483648\r\n", b"Protocol error: invalid bulk length"),
    (b"*1\r\n$536870913\r\n", b"Protocol error: invalid bulk length"),
    (b'ping\r\necho "abc\r\n', b"Protocol error: unbalanced quotes in request"),
    (b'echo "a"b\r\n', b"Protocol error: unbalanced quotes in request"),
    (b"echo 'a\r\n", b"Protocol error: unbalanced quotes in request"),
    (b"x" * (MAX_INLINE_LEN + 1), b"Protocol error: too big inline request"),
    (b"*" + b"1" * (MAX_INLINE_LEN + 1), b"Protocol error: too big mbulk count string"),
    (b"*1\r\n$" + b"1" * (MAX_INLINE_LEN + 1), b"Protocol error: too big bulk count string"),
]


@pytest.mark.parametrize(("data", "text"), MALFORMED)
def test_parser_malformed(data: bytes, text: bytes) -> None:
    p = Parser()
    with pytest.raises(ProtocolError) as info:
        p.feed(data)
    assert info.value.text == text
    assert info.value.reply == b"-ERR " + text + b"\r\n"
    with pytest.raises(ProtocolError):  # dead after an error
        p.feed(b"PING\r\n")


def test_parser_error_keeps_earlier_commands() -> None:
    with pytest.raises(ProtocolError) as info:
        Parser().feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*1\r\nz\r\n")
    assert info.value.commands == [[b"PING"], [b"ECHO"]]


def test_parser_huge_bulk_is_not_preallocated() -> None:
    p = Parser()
    assert p.feed(b"*2\r\n$3\r\nSET\r\n$536870912\r\n") == []  # 512 MB: accepted by Redis
    for _ in range(10):
        assert p.feed(b"x" * 1000) == []
    assert p.buffered < 20_000


def test_parser_waits_on_nul_in_line_like_redis() -> None:
    # Redis looks for the line end with strchr(), which stops at a NUL byte.
    p = Parser()
    assert p.feed(b"echo a\x00b\r\n") == []
    with pytest.raises(ProtocolError, match="too big inline request"):
        p.feed(b"y" * MAX_INLINE_LEN)


def test_split_inline() -> None:
    assert split_inline(b"  a  b\tc ") == [b"a", b"b", b"c"]
    assert split_inline(b"a\x0bb") == [b"a\x0bb"]  # \v ends no word
    assert split_inline(b'a"b c"') == [b"ab c"]
    assert split_inline(b'"\\xZZ"') == [b"xZZ"]
    assert split_inline(b"") == []
    assert split_inline(b'"abc') is None
    assert split_inline(b"'a'b") is None


def test_parse_ll() -> None:
    assert parse_ll(b"0") == 0
    assert parse_ll(b"-5") == -5
    assert parse_ll(b"9223372036854775807") == 2**63 - 1
    assert parse_ll(b"-9223372036854775808") == -(2**63)
    for bad in (b"", b"-", b"-0", b"01", b"+1", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"\xd9\xa1"):
        assert parse_ll(bad) is None, bad


def test_encoders() -> None:
    assert encode_simple(b"OK") == b"+OK\r\n"
    assert encode_error(b"ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert encode_integer(-3) == b":-3\r\n"
    assert encode_bulk(b"ab") == b"$2\r\nab\r\n"
    assert encode_bulk(b"") == b"$0\r\n\r\n"
    assert encode_bulk(None) == b"$-1\r\n"
    assert encode_array([b"a", None]) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert encode_array([]) == b"*0\r\n"
    assert encode_array(None) == b"*-1\r\n"
    assert encode_raw_array([b":1\r\n", b"+OK\r\n"]) == b"*2\r\n:1\r\n+OK\r\n"


# ===========================================================================
# Command layer
# ===========================================================================


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store(clock=clock)


def test_strings(store: Store) -> None:
    assert run(store, "SET", "a", "1") == b"+OK\r\n"
    assert run(store, "get", "a") == b"$1\r\n1\r\n"
    assert run(store, "INCRBY", "a", "41") == b":42\r\n"
    assert run(store, "APPEND", "a", "x") == b":3\r\n"
    assert run(store, "INCR", "a") == b"-ERR value is not an integer or out of range\r\n"
    assert run(store, "MSET", "b", "2", "c", "3") == b"+OK\r\n"
    assert run(store, "MGET", "a", "b", "zz") == b"*3\r\n$3\r\n42x\r\n$1\r\n2\r\n$-1\r\n"
    assert run(store, "GETSET", "b", "B") == b"$1\r\n2\r\n"
    assert run(store, "DEL", "a", "b", "zz") == b":2\r\n"


def test_errors_exact(store: Store) -> None:
    assert run(store, "GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert run(store, "foo", "a", "b") == b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"
    assert run(store, "CONFIG", "x") == b"-ERR unknown subcommand 'x'. Try CONFIG HELP.\r\n"
    assert run(store, "CONFIG", "GET") == b"-ERR wrong number of arguments for 'config|get' command\r\n"
    run(store, "RPUSH", "l", "a")
    assert run(store, "GET", "l").startswith(b"-WRONGTYPE ")
    assert run(store, "SET", "k", "v", "NX", "XX") == b"-ERR syntax error\r\n"


def test_expiry_with_injected_clock(store: Store, clock: FakeClock) -> None:
    run(store, "SET", "k", "v", "EX", "10")
    assert run(store, "TTL", "k") == b":10\r\n"
    clock.t += 4.4
    assert run(store, "TTL", "k") == b":6\r\n"
    assert run(store, "PTTL", "k") == b":5600\r\n"
    clock.t += 5.6
    assert run(store, "GET", "k") == b"$-1\r\n"
    assert run(store, "TTL", "k") == b":-2\r\n"
    run(store, "SET", "p", "v", "PX", "100")
    assert run(store, "PERSIST", "p") == b":1\r\n"
    clock.t += 1
    assert run(store, "GET", "p") == b"$1\r\nv\r\n"


def test_active_expiry(store: Store, clock: FakeClock) -> None:
    for i in range(50):
        run(store, "SET", f"k{i}", "v", "PX", str(10 + i))
    run(store, "SET", "keep", "v")
    clock.t += 0.035
    assert store.expire_cycle() == 26
    assert run(store, "DBSIZE") == b":25\r\n"
    clock.t += 1
    assert store.expire_cycle(budget=10) == 10
    assert store.expire_cycle() == 14
    assert run(store, "DBSIZE") == b":1\r\n"


def test_quit_flag(store: Store) -> None:
    assert execute(store, [b"QUIT"]) == (b"+OK\r\n", True)


def test_select_isolates_databases(store: Store) -> None:
    s1, s2 = store.new_session(), store.new_session()
    execute(store, [b"SELECT", b"3"], s1)
    execute(store, [b"SET", b"k", b"db3"], s1)
    assert execute(store, [b"GET", b"k"], s2)[0] == b"$-1\r\n"
    assert execute(store, [b"GET", b"k"], s1)[0] == b"$3\r\ndb3\r\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, b"1"), (1.5, b"1.5"), (float("inf"), b"inf"), (float("-inf"), b"-inf"), (0.1, b"0.10000000000000001"),
     (1e300, b"1.0000000000000001e+300"), (-2.0, b"-2"), (1e-320, b"9.9998886718268301e-321")],
)  # fmt: skip
def test_format_double(value: float, text: bytes) -> None:
    assert format_double(value) == text


def test_parse_double() -> None:
    assert parse_double(b"1.5") == 1.5
    assert parse_double(b"0x10") == 16.0
    assert parse_double(b"-inf") == float("-inf")
    assert parse_double(b"Infinity") == float("inf")
    assert parse_double(b".5") == 0.5
    assert parse_double(b"5.") == 5.0
    for bad in (b"", b" 1", b"1 ", b"nan", b"1e400", b"1e-400", b"1_0", b"abc", b"1e", b"0x"):
        assert parse_double(bad) is None, bad


@pytest.mark.parametrize(
    ("pattern", "key", "match"),
    [(b"*", b"abc", True), (b"a*c", b"abc", True), (b"a?c", b"abc", True), (b"a?c", b"ac", False),
     (b"[ab]c", b"bc", True), (b"[^ab]c", b"bc", False), (b"[a-c]", b"b", True), (b"[c-a]", b"b", True),
     (b"\\*", b"*", True), (b"\\*", b"a", False), (b"a[", b"a", False), (b"a[bc", b"ac", True),
     (b"[]", b"a", False), (b"[^]", b"a", True), (b"**", b"", False), (b"", b"", True), (b"a\\", b"a\\", True),
     (b"*.txt", b"a\nb.txt", True)],
)  # fmt: skip
def test_glob_match(pattern: bytes, key: bytes, match: bool) -> None:
    assert glob_match(pattern, key) is match


def test_zset_structure() -> None:
    z = ZSet()
    for m, s in [(b"b", 2.0), (b"a", 2.0), (b"c", 1.0)]:
        z.add(m, s)
    assert [m for _, m in z.order] == [b"c", b"a", b"b"]
    z.add(b"c", 3.0)
    assert z.order[-1] == (3.0, b"c")
    assert z.remove(b"a") and not z.remove(b"a")
    assert z.pop_min(5) == [(2.0, b"b"), (3.0, b"c")] and len(z) == 0


def test_connection_pipeline_and_protocol_error(store: Store) -> None:
    conn = Connection(store)
    assert conn.feed(b"PING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n*1\r\n$4\r\nPI") == (b"+PONG\r\n$1\r\nx\r\n", False)
    assert conn.feed(b"NG\r\n") == (b"+PONG\r\n", False)
    replies, close = conn.feed(b"PING\r\n*1\r\n$x\r\n")
    assert (replies, close) == (b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n", True)
    conn.close()
    conn2 = Connection(store)
    assert conn2.feed(b"PING\r\nQUIT\r\nPING\r\n") == (b"+PONG\r\n+OK\r\n", True)
    assert conn2.feed(b"PING\r\n") == (b"", True)


def test_info_and_hello(store: Store) -> None:
    info = run(store, "INFO", "server")
    assert b"# Server\r\nredis_version:7.0.15\r\n" in info
    assert run(store, "INFO", "nosuch") == b"$0\r\n\r\n"
    assert run(store, "HELLO", "3") == b"-NOPROTO unsupported protocol version\r\n"
    assert run(store, "HELLO").startswith(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    assert run(store, "CLIENT", "SETINFO", "LIB-NAME", "redis-py") == b"+OK\r\n"
    assert run(store, "COMMAND", "DOCS") == b"*0\r\n"
    assert run(store, "CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"


# ===========================================================================
# Differential tests against redis-server 7.0
# ===========================================================================


def load_script() -> list[tuple[int, str, list[bytes], float]]:
    """(line number, directive, argv, number) for each script line."""
    steps = []
    for lineno, raw in enumerate(SCRIPT.read_bytes().split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        directive, number = "", 0.0
        if line.startswith(b"@sleep "):
            steps.append((lineno, "sleep", [], float(line.split()[1])))
            continue
        if line.startswith(b"@unordered "):
            directive, line = "unordered", line[len(b"@unordered ") :]
        elif line.startswith(b"@approx "):
            _, n, line = line.split(b" ", 2)
            directive, number = "approx", float(n)
        argv = split_inline(line)
        assert argv, f"bad script line {lineno}"
        steps.append((lineno, directive, argv, number))
    return steps


def run_script_raw(port: int) -> list[tuple[int, str, bytes, float]]:
    """Run the script over one raw connection; return (line, directive, reply, number)."""
    out = []
    with connect(port) as sock:
        reader = ReplyReader(sock)
        for lineno, directive, argv, number in load_script():
            if directive == "sleep":
                time.sleep(number)
                continue
            sock.sendall(resp(*argv))
            out.append((lineno, directive, reader.read(), number))
    return out


def comparable(directive: str, reply: bytes) -> object:
    if directive == "unordered" and reply.startswith(b"*"):
        return sorted(array_items(reply))
    return reply


def test_differential_raw_script(real: int, ours: int) -> None:
    results: dict[int, list[tuple[int, str, bytes, float]]] = {}

    def worker(port: int) -> None:
        results[port] = run_script_raw(port)

    threads = [threading.Thread(target=worker, args=(p,)) for p in (real, ours)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2, "script run did not finish"
    mismatches = []
    for (lineno, directive, want, number), (_, _, got, _) in zip(results[real], results[ours], strict=True):
        close_enough = directive == "approx" and want[:1] == got[:1] == b":"
        if close_enough and abs(int(want[1:-2]) - int(got[1:-2])) <= number:
            continue
        if comparable(directive, want) != comparable(directive, got):
            mismatches.append(f"line {lineno}: redis {want!r} ours {got!r}")
    assert not mismatches, "\n".join(mismatches)
    assert len(results[ours]) > 400


def redis_cli_lines() -> list[list[str]]:
    """Script lines for redis-cli: segments separated by @sleep, directives dropped."""
    segments: list[list[str]] = [[]]
    for raw in SCRIPT.read_text(encoding="latin-1").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("@approx"):
            continue
        if line.startswith("@sleep"):
            segments.append([])
        elif not line.startswith("@") and not line.upper().startswith("QUIT"):
            segments[-1].append(line)
    return segments


def run_redis_cli(cli: str, port: int) -> str:
    outputs = []
    for i, segment in enumerate(redis_cli_lines()):
        if i:
            time.sleep(0.35)
        done = subprocess.run(
            [cli, "-h", HOST, "-p", str(port)],
            input="\n".join(segment).encode("latin-1") + b"\n",
            capture_output=True,
            timeout=30,
        )
        outputs.append(done.stdout.decode("latin-1") + done.stderr.decode("latin-1"))
    return "\n".join(outputs)


def test_differential_redis_cli(real: int, ours: int) -> None:
    cli = need_tool("redis-cli")
    results: dict[int, str] = {}

    def worker(port: int) -> None:
        results[port] = run_redis_cli(cli, port)

    threads = [threading.Thread(target=worker, args=(p,)) for p in (real, ours)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2, "redis-cli runs did not finish"
    want, got = results[real].splitlines(), results[ours].splitlines()
    diff = [f"{i}: redis {a!r} ours {b!r}" for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b]
    assert not diff and len(want) == len(got), "\n".join(diff[:30])


FUZZ_KEYS = {"s": ["s0", "s1", ""], "l": ["l0", "l1"], "h": ["h0", "h1"], "t": ["t0", "t1"], "z": ["z0", "z1"]}
FUZZ_ALL_KEYS = [k for keys in FUZZ_KEYS.values() for k in keys]
FUZZ_VALUES = [
    "0", "1", "-1", "2", "7", "10", "100", "abc", "", "1.5", "-0", "01", "9223372036854775807",
    "-9223372036854775808", "inf", "-inf", "nan", "1e400", "0x10", "(1", "[a", "(b", "-", "+", "a", "b",
]  # fmt: skip
FUZZ_TTLS = ["100", "1000", "0", "-5", "abc"]
# name: (key family, arguments after the key (negative: at least that many), options)
FUZZ_COMMANDS: dict[str, tuple[str, int, list[str]]] = {
    "GET": ("s", 0, []), "SET": ("s", 1, ["NX", "XX", "GET", "KEEPTTL", "EX"]), "GETSET": ("s", 1, []),
    "DEL": ("", -1, []), "EXISTS": ("", -1, []), "INCR": ("s", 0, []), "INCRBY": ("s", 1, []), "DECR": ("s", 0, []),
    "DECRBY": ("s", 1, []), "APPEND": ("s", 1, []), "STRLEN": ("s", 0, []), "MGET": ("", -1, []),
    "MSET": ("s", 1, []), "EXPIRE": ("", 1, ["NX", "XX", "GT", "LT", "bogus"]), "TTL": ("", 0, []),
    "PERSIST": ("", 0, []), "TYPE": ("", 0, []), "LPUSH": ("l", -1, []), "RPUSH": ("l", -1, []),
    "LPOP": ("l", 0, ["COUNT"]), "RPOP": ("l", 0, ["COUNT"]), "LRANGE": ("l", 2, []), "LLEN": ("l", 0, []),
    "HSET": ("h", -2, []), "HGET": ("h", 1, []), "HGETALL": ("h", 0, []), "HDEL": ("h", -1, []),
    "SADD": ("t", -1, []), "SREM": ("t", -1, []), "SMEMBERS": ("t", 0, []), "SCARD": ("t", 0, []),
    "ZADD": ("z", -2, ["NX", "XX", "GT", "LT", "CH", "INCR"]), "ZSCORE": ("z", 1, []),
    "ZRANGE": ("z", 2, ["WITHSCORES", "REV", "BYSCORE", "BYLEX", "LIMIT", "junk"]),
    "ZREVRANGE": ("z", 2, ["WITHSCORES", "LIMIT"]), "ZPOPMIN": ("z", 0, ["COUNT"]),
}  # fmt: skip
FUZZ_INTS = ["0", "1", "-1", "2", "3", "-3", "100", "9223372036854775807", "-9223372036854775808"]
FUZZ_SCORES = ["0", "1", "-1", "2.5", "1e-3", "inf", "-inf", "0x1p3", "3"]


def fuzz_value(rng: random.Random, name: str, position: int) -> str:
    """A random argument, biased towards what the command expects at ``position``."""
    if rng.random() < 0.2:
        return rng.choice(FUZZ_VALUES)
    if name in ("DEL", "EXISTS", "MGET") or (name == "MSET" and position % 2 == 1):
        return rng.choice(FUZZ_ALL_KEYS)
    if name in ("INCRBY", "DECRBY", "LRANGE", "ZRANGE", "ZREVRANGE"):
        return rng.choice(FUZZ_INTS)
    if name == "ZADD" and position % 2 == 0:
        return rng.choice(FUZZ_SCORES)
    return rng.choice(FUZZ_VALUES)


def fuzz_command(rng: random.Random) -> list[str]:
    """One random command, mostly well-formed, over a few keys of each type."""
    name = rng.choice(list(FUZZ_COMMANDS))
    family, nargs, options = FUZZ_COMMANDS[name]
    key = rng.choice(FUZZ_KEYS.get(family, FUZZ_ALL_KEYS) if rng.random() < 0.85 else FUZZ_ALL_KEYS)
    argv = [rng.choice([name, name.lower()]), key]
    opts = [rng.choice(options) for _ in range(rng.randrange(1, 3))] if options and rng.random() < 0.5 else []
    if name == "ZADD":  # ZADD's options come before the score/member pairs
        argv += opts
        opts = []
    if name in ("DEL", "EXISTS", "MGET"):
        n = rng.randrange(4)
    elif name in ("MSET", "HSET", "ZADD"):
        n = 2 * rng.randrange(1, 3) - (1 if name == "MSET" else 0)
    else:
        n = nargs if nargs >= 0 else -nargs + rng.randrange(3)
    argv += [fuzz_value(rng, name, i) for i in range(n)]
    if name == "EXPIRE":
        argv[2] = rng.choice(FUZZ_TTLS)
    for opt in opts:
        if opt == "COUNT":
            argv.append(rng.choice(FUZZ_INTS + FUZZ_VALUES))
            break
        argv.append(opt)
        if opt == "EX":
            argv.append(rng.choice(FUZZ_TTLS))
        elif opt == "LIMIT":
            argv += [rng.choice(FUZZ_INTS), rng.choice(FUZZ_INTS)]
    if rng.random() < 0.03:  # wrong arity
        argv = argv[: rng.randrange(1, len(argv) + 1)]
    return argv


def fuzz_commands(seed: int, count: int) -> list[list[str]]:
    """``count`` random commands, the same for a given seed."""
    rng = random.Random(seed)
    return [fuzz_command(rng) for _ in range(count)]


def run_batched(port: int, commands: list[list[str]], batch: int = 64) -> list[bytes]:
    """Send the commands pipelined in batches; return every reply."""
    replies = []
    with connect(port) as sock:
        reader = ReplyReader(sock)
        sock.sendall(resp("FLUSHALL"))
        reader.read()
        for i in range(0, len(commands), batch):
            chunk = commands[i : i + batch]
            sock.sendall(b"".join(resp(*c) for c in chunk))
            replies += [reader.read() for _ in chunk]
    return replies


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_differential_fuzz(real: int, ours: int, seed: int) -> None:
    commands = fuzz_commands(seed, 3000)
    want, got = run_batched(real, commands), run_batched(ours, commands)
    bad = []
    for argv, a, b in zip(commands, want, got, strict=True):
        name = argv[0].upper()
        if name == "SMEMBERS" and a.startswith(b"*"):
            a, b = sorted(array_items(a)), sorted(array_items(b))  # type: ignore[assignment]
        elif name == "TTL" and a[:1] == b[:1] == b":" and abs(int(a[1:-2]) - int(b[1:-2])) <= 1:
            continue
        if a != b:
            bad.append(f"{argv!r}: redis {a!r} ours {b!r}")
    assert not bad, "\n".join(bad[:20])


WIRE_CASES = [
    b"*1\r\nx\r\n",
    b"*abc\r\n",
    b"*1\r\n$2147483648\r\n",
    b"*1\r\n$-5\r\n",
    b"PING\r\n*1\r\n$4\r\nECHO\r\n*2\r\n\xff\r\n",
    b'PING\r\necho "unbalanced\r\n',
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03junk\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nvXY*1\r\n$4\r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\n" * 3 + b"*1\r\n$4\r\n",
    b"*0\r\n*-1\r\nPING\r\n",
    b"GET\r\nfoo bar\r\n\r\n\n",
    b"x" * (MAX_INLINE_LEN + 100),
    # inline requests: quoting, escapes, blanks, odd bytes
    b"echo \"a b\"\r\nECHO 'c d'\nping\r\n",
    b'ECHO "\\x41\\x4g\\n\\q\\""\r\n',
    b"echo 'it\\'s'\r\necho 'a\\b'\r\n",
    b"echo a\x0bb\r\necho \x0c c \x0b\r\n",
    b"echo a\rb\r\n",
    b"echo \"\"\r\necho ''\r\n",
    b"echo a\x00b\r\n",
    b"   \r\nSET ik iv\r\nGET ik\r\nDEL ik\r\n",
    b"\xff\xfe\r\n",
    b"*1\r\n$4\r\nPING\r\n*1\x00\r\n",
    b"*2\r\n$4\r\nECHO\r\n$a\x00\r\n",
    b"*1\rX$4\rXPING\rX",
]


@pytest.mark.parametrize("data", WIRE_CASES, ids=range(len(WIRE_CASES)))
def test_differential_wire_bytes(real: int, ours: int, data: bytes) -> None:
    assert exchange(ours, data) == exchange(real, data)
    with connect(ours) as sock:  # still serving
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"


# ===========================================================================
# Our server alone
# ===========================================================================


def test_script_mode_and_ready_line() -> None:
    proc, port = start_ours(module=False)
    try:
        assert exchange(port, b"PING\r\n") == (b"+PONG\r\n", False)
    finally:
        stop_process(proc)
    assert proc.returncode == 0


def test_sigint_exits_cleanly() -> None:
    proc, port = start_ours()
    with connect(port):  # an open client must not block shutdown
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0


def test_pipeline_answered_in_one_segment(ours: int) -> None:
    with connect(ours) as sock:
        sock.sendall(b"".join(resp("ECHO", str(i)) for i in range(100)))
        want = b"".join(b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(100))
        got = b""
        deadline = time.monotonic() + IO_TIMEOUT
        while len(got) < len(want) and time.monotonic() < deadline:
            got += sock.recv(65536)
        assert got == want


def test_large_values_and_slow_reader(ours: int) -> None:
    big = os.urandom(3 * 1024 * 1024)
    with connect(ours) as sock:
        sock.sendall(resp("SET", "big", big))
        reader = ReplyReader(sock)
        assert reader.read() == b"+OK\r\n"
        sock.sendall(resp("GET", "big") * 4)  # 12 MB of replies: exercises buffered writes
        time.sleep(0.2)
        for _ in range(4):
            assert reader.read() == b"$%d\r\n%b\r\n" % (len(big), big)
        sock.sendall(resp("DEL", "big"))
        assert reader.read() == b":1\r\n"


@pytest.mark.parametrize(
    ("data", "reply"),
    [(b"*1\r\n$2147483648\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
     (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
     (b"\xde\xad\xbe\xef*\r\n", None),
     (os.urandom(4096), None),
     (b"x" * (MAX_INLINE_LEN + 10), b"-ERR Protocol error: too big inline request\r\n")],
)  # fmt: skip
def test_malformed_never_crashes(ours: int, data: bytes, reply: bytes | None) -> None:
    got, _closed = exchange(ours, data, quiet=0.2)
    if reply is not None:
        assert got == reply
    with connect(ours) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"


def test_disconnect_mid_command(ours: int) -> None:
    partials = [
        b"*3\r\n$3\r\nSET\r\n$1\r\nk",
        b"*2\r\n$3\r\nGET\r\n$100\r\nabc",
        b"PIN",
        b"*1\r\n$536870912\r\n" + b"x" * 100000,  # 512 MB announced, 100 kB sent
    ]
    for partial in partials:
        with connect(ours) as sock:
            sock.sendall(partial)
        with connect(ours) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16) == b"+PONG\r\n"


def test_reset_by_peer_with_pending_output(ours: int) -> None:
    sock = connect(ours)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(resp("ECHO", "x" * 100000) * 50)
    sock.close()  # RST while the server is writing
    with connect(ours) as s2:
        s2.sendall(b"PING\r\n")
        assert s2.recv(16) == b"+PONG\r\n"


def test_two_hundred_concurrent_clients(ours: int) -> None:
    n_clients = 200
    errors: list[str] = []
    barrier = threading.Barrier(n_clients, timeout=20)

    def client(i: int) -> None:
        try:
            with connect(ours) as sock:
                reader = ReplyReader(sock)
                barrier.wait()
                for j in range(5):
                    key, val = f"conc:{i}:{j}", f"value-{i}-{j}"
                    sock.sendall(resp("SET", key, val))
                    assert reader.read() == b"+OK\r\n"
                    sock.sendall(resp("GET", key))
                    assert reader.read() == b"$%d\r\n%b\r\n" % (len(val), val.encode())
                sock.sendall(resp("INCR", "conc:counter"))
                assert reader.read().startswith(b":")
        except Exception as exc:
            errors.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads)
    with connect(ours) as sock:
        sock.sendall(resp("GET", "conc:counter"))
        assert ReplyReader(sock).read() == b"$3\r\n200\r\n"


# ===========================================================================
# redis-py against our server
# ===========================================================================


@pytest.fixture
def client(redis_py, ours):  # type: ignore[no-untyped-def]
    # redis-py >= 8 defaults to RESP3 (HELLO 3); this server speaks RESP2 only.
    r = redis_py.Redis(host=HOST, port=ours, protocol=2, socket_timeout=IO_TIMEOUT)
    r.flushall()
    yield r
    r.close()


def test_redis_py_strings(client) -> None:  # type: ignore[no-untyped-def]
    assert client.ping() is True
    assert client.set("s", "v") is True
    assert client.get("s") == b"v"
    assert client.set("s", "w", nx=True) is None
    assert client.set("s", "w", xx=True, get=True) == b"v"
    assert client.incr("n") == 1 and client.incrby("n", 9) == 10 and client.decrby("n", 3) == 7
    assert client.append("s", "!") == 2 and client.strlen("s") == 2
    assert client.mset({"a": "1", "b": "2"}) is True
    assert client.mget("a", "b", "zz") == [b"1", b"2", None]
    assert client.getset("a", "x") == b"1"
    assert client.exists("a", "b", "zz") == 2 and client.delete("a", "b") == 2
    assert sorted(client.keys("*")) == [b"n", b"s"] and client.dbsize() == 2
    with pytest.raises(redis_py_error(client)):
        client.lpush("s", "x")


def redis_py_error(client):  # type: ignore[no-untyped-def]
    import redis

    return redis.exceptions.ResponseError


def test_redis_py_lists_hashes_sets(client) -> None:  # type: ignore[no-untyped-def]
    assert client.rpush("l", "a", "b", "c") == 3 and client.lpush("l", "z") == 4
    assert client.lrange("l", 0, -1) == [b"z", b"a", b"b", b"c"]
    assert client.lpop("l") == b"z" and client.rpop("l", 2) == [b"c", b"b"] and client.llen("l") == 1
    assert client.hset("h", mapping={"f1": "1", "f2": "2"}) == 2
    assert client.hget("h", "f1") == b"1" and client.hgetall("h") == {b"f1": b"1", b"f2": b"2"}
    assert client.hdel("h", "f1", "nope") == 1
    assert client.sadd("st", "a", "b", "c") == 3 and client.srem("st", "a") == 1
    assert client.smembers("st") == {b"b", b"c"} and client.scard("st") == 2
    assert client.spop("st") in (b"b", b"c") and client.scard("st") == 1


def test_redis_py_sorted_sets(client) -> None:  # type: ignore[no-untyped-def]
    assert client.zadd("z", {"a": 1, "b": 2.5, "c": 0.1}) == 3
    assert client.zrange("z", 0, -1, withscores=True) == [(b"c", 0.1), (b"a", 1.0), (b"b", 2.5)]
    assert client.zrange("z", 0, 0, desc=True) == [b"b"]
    assert client.zscore("z", "b") == 2.5 and client.zscore("z", "nope") is None
    assert client.zadd("z", {"a": 4}, incr=True) == 5.0
    assert client.zpopmin("z") == [(b"c", 0.1)]
    assert client.zpopmin("z", 5) == [(b"b", 2.5), (b"a", 5.0)]


def test_redis_py_pipeline_and_expiry(client) -> None:  # type: ignore[no-untyped-def]
    pipe = client.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"p{i}", i)
    for i in range(100):
        pipe.get(f"p{i}")
    results = pipe.execute()
    assert results[:100] == [True] * 100 and results[100:] == [str(i).encode() for i in range(100)]
    assert client.set("tmp", "v", px=150) is True
    assert 0 < client.pttl("tmp") <= 150
    assert client.expire("p0", 100) is True and client.ttl("p0") == 100
    assert client.persist("p0") is True and client.ttl("p0") == -1
    time.sleep(0.3)
    assert client.get("tmp") is None and client.ttl("tmp") == -2
    assert client.client_setname("me") is True and client.client_getname() == "me"
    assert client.info("server")["redis_version"] == "7.0.15"
