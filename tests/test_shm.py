"""The shm library OS between real processes: shared-memory connections, kernel fallback both
ways, pipes, peer death, backpressure, hostile rings, and an integrity run."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from queueapi import LibOS, Opcode

T = 10.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def los():
    lib = LibOS("shm")
    yield lib
    lib.shutdown_libos()


def listener(los: LibOS) -> tuple[int, int]:
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd)
    return lqd, los.getsockname(lqd)[1]


def child(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


ECHO_CLIENT = """
    import sys, queueapi as dq
    from queueapi import Opcode
    los = dq.LibOS("shm")
    qd = los.socket()
    r = los.wait(los.connect(qd, ("127.0.0.1", int(sys.argv[1]))), timeout=10)
    assert r.opcode == Opcode.CONNECT, r
    print(los.stats(qd)["path"], flush=True)
    for i in range(int(sys.argv[2])):
        msg = b"%d:" % i + b"x" * (i % 100)
        los.wait(los.push(qd, msg), timeout=10)
        assert los.blocking_pop(qd, timeout=10).tobytes() == msg
    mode = sys.argv[3]
    if mode == "close":
        los.close(qd)
    elif mode == "hang":
        los.wait(los.push(qd, b"last words"), timeout=10)
        print("hanging", flush=True)
        import time; time.sleep(60)
"""


def test_two_process_echo_over_shared_memory(los):
    lqd, port = listener(los)
    p = child(ECHO_CLIENT, str(port), "500", "close")
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    assert los.stats(s)["path"] == "shm"
    n = 0
    while True:
        r = los.wait(los.pop(s), timeout=T)
        assert r.opcode == Opcode.POP
        if not len(r.sga):
            break  # clean close: end of stream
        los.wait(los.push(s, r.sga), timeout=T)
        n += 1
    assert p.wait(T) == 0, p.stderr.read()
    assert p.stdout.readline().strip() == "shm"
    assert n == 500
    st = los.stats(s)
    assert st["pops"] == 501 and st["pushes"] == 500


def test_peer_killed_gives_econnreset_quickly(los):
    lqd, port = listener(los)
    p = child(ECHO_CLIENT, str(port), "10", "hang")
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    for _ in range(10):
        los.wait(los.push(s, los.blocking_pop(s, timeout=T)), timeout=T)
    assert p.stdout.readline().strip() == "shm"
    assert p.stdout.readline().strip() == "hanging"
    assert los.blocking_pop(s, timeout=T).tobytes() == b"last words"  # data sent is kept
    qt = los.pop(s)
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=0.05)
    killed = time.monotonic()
    p.send_signal(signal.SIGKILL)
    r = los.wait(qt, timeout=T)
    elapsed = time.monotonic() - killed
    p.wait(T)
    assert (r.opcode, r.ret) == (Opcode.FAILED, errno.ECONNRESET)
    assert elapsed < 0.5, f"reset noticed after {elapsed * 1000:.0f} ms"
    r = los.wait(los.push(s, b"to the dead"), timeout=T)
    assert r.opcode == Opcode.FAILED and r.ret in (errno.ECONNRESET, errno.EPIPE)


def _probe_wait(los, qt):
    return los.wait(qt, 0)


def _probe_wait_any(los, qt):
    i, r = los.wait_any([qt], 0)
    assert i == 0
    return r


@pytest.mark.parametrize("probe", [_probe_wait, _probe_wait_any], ids=["wait", "wait_any"])
def test_probes_with_zero_timeout_see_data_and_a_dead_peer(los, probe):
    """wait(qt, 0) and wait_any([qt], 0) on a pending shm pop (a program probing for input,
    as redis-py does before every command: a recv at timeout 0, or with hiredis a
    select.poll(0) that the shim turns into wait_any) look at the ring in C and poll the
    whole library OS only now and then: they still return the element as soon as it is
    there, and a loop of probes still sees the peer's death (ECONNRESET), not only
    timeouts."""
    lqd, port = listener(los)
    p = child(ECHO_CLIENT, str(port), "3", "hang")
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    for _ in range(3):
        los.wait(los.push(s, los.blocking_pop(s, timeout=T)), timeout=T)
    assert p.stdout.readline().strip() == "shm"
    assert p.stdout.readline().strip() == "hanging"
    qt = los.pop(s)
    deadline = time.monotonic() + T
    while True:  # the "last words" arrive: a probe returns them
        try:
            r = probe(los, qt)
            break
        except TimeoutError:
            assert time.monotonic() < deadline
    assert r.sga.tobytes() == b"last words"
    qt = los.pop(s)
    for _ in range(1000):
        with pytest.raises(TimeoutError):
            probe(los, qt)
    killed = time.monotonic()
    p.send_signal(signal.SIGKILL)
    while True:
        try:
            r = probe(los, qt)
            break
        except TimeoutError:
            assert time.monotonic() - killed < T, "a loop of probes never saw the reset"
    elapsed = time.monotonic() - killed
    p.wait(T)
    assert (r.opcode, r.ret) == (Opcode.FAILED, errno.ECONNRESET)
    assert elapsed < 0.5, f"reset noticed after {elapsed * 1000:.0f} ms"


def test_kernel_client_reaches_shm_server(los):
    lqd, port = listener(los)
    k = socket.create_connection(("127.0.0.1", port), timeout=T)
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    assert los.stats(s)["path"] == "kernel"
    k.sendall(b"ping")
    assert los.blocking_pop(s, timeout=T).tobytes() == b"ping"
    los.blocking_push(s, b"pong", timeout=T)
    assert k.recv(10) == b"pong"
    k.close()


def test_shm_client_falls_back_to_kernel_server(los):
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    qd = los.socket()
    r = los.wait(los.connect(qd, ("127.0.0.1", port)), timeout=T)
    assert r.opcode == Opcode.CONNECT
    assert los.stats(qd)["path"] == "kernel"
    conn, _ = srv.accept()
    los.blocking_push(qd, b"hello kernel", timeout=T)
    assert conn.recv(100) == b"hello kernel"
    conn.close()
    srv.close()
    assert len(los.blocking_pop(qd, timeout=T)) == 0


def test_shm_pair_in_one_process_reports_addresses(los):
    lqd, port = listener(los)
    c = los.socket()
    ct = los.connect(c, ("127.0.0.1", port))
    at = los.accept(lqd)
    rc, ra = los.wait_all([ct, at], timeout=T)
    s = ra.new_qd
    assert los.stats(c)["path"] == los.stats(s)["path"] == "shm"
    assert los.getpeername(c) == ("127.0.0.1", port)
    assert los.getsockname(s) == ("127.0.0.1", port)
    assert los.getpeername(s) == los.getsockname(c) == ra.addr
    # elements are preserved, multi-segment ones too; a small pop splits an element
    los.blocking_push(c, [b"ab", b"cd"], timeout=T)
    assert [bytes(x) for x in los.blocking_pop(s, timeout=T).segments] == [b"ab", b"cd"]
    los.blocking_push(c, b"0123456789", timeout=T)
    assert los.blocking_pop(s, 4, timeout=T).tobytes() == b"0123"
    assert los.blocking_pop(s, timeout=T).tobytes() == b"456789"
    los.shutdown(c, socket.SHUT_WR)
    assert len(los.blocking_pop(s, timeout=T)) == 0
    with pytest.raises(OSError) as e:
        los.push(c, b"after shutdown")
    assert e.value.errno == errno.EPIPE


def test_fork_leaves_a_connect_in_progress_to_the_parent(los):
    """A connect whose handshake is in progress when the process forks (another thread's, in
    a forking server) stays the parent's: the child does not watch the control socket the
    two share, so it cannot read the server's reply, and the parent's connect completes."""
    from libos.shm.backend import _ClientHandshake
    lqd, port = listener(los)
    c = los.socket()
    ct = los.connect(c, ("127.0.0.1", port))  # hello sent; the reply comes once polled
    assert any(isinstance(h, _ClientHandshake) for h in los.backend._watched.values())
    pid = os.fork()
    if pid == 0:  # the child polls as a busy child would, then reports what it watched
        code = 1
        try:
            for _ in range(20):
                los.backend.poll(0.01)
            code = 3 if any(isinstance(h, _ClientHandshake)
                            for h in los.backend._watched.values()) else 0
        except BaseException:
            import traceback
            traceback.print_exc()  # (shown with the failure)
        finally:
            os._exit(code)
    at = los.accept(lqd)
    rc, ra = los.wait_all([ct, at], timeout=T)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rc.opcode == Opcode.CONNECT and ra.opcode == Opcode.ACCEPT
    assert los.stats(c)["path"] == "shm"
    los.blocking_push(c, b"after the fork", timeout=T)
    assert los.blocking_pop(ra.new_qd, timeout=T).tobytes() == b"after the fork"


def test_backpressure_bounds_memory():
    los = LibOS("shm", {"ring_capacity": 8192})
    try:
        lqd, port = listener(los)
        c = los.socket()
        ct, at = los.connect(c, ("127.0.0.1", port)), los.accept(lqd)
        s = los.wait_all([ct, at], timeout=T)[1].new_qd
        chunk = b"z" * 1000
        qts = [los.push(c, chunk) for _ in range(40)]  # 40 kB into an 8 kB ring
        done = 0
        for qt in qts:
            try:
                los.wait(qt, timeout=0)
                done += 1
            except TimeoutError:
                break
        assert 0 < done < 40  # the ring filled: the rest pend
        got = 0
        while got < 40:
            assert los.blocking_pop(s, timeout=T).tobytes() == chunk
            got += 1
        for qt in qts[done:]:
            assert los.wait(qt, timeout=T).opcode == Opcode.PUSH
    finally:
        los.shutdown_libos()


PIPE_PEER = """
    import sys, queueapi as dq
    los = dq.LibOS("shm")
    qd = los.open_pipe(sys.argv[1])
    while True:
        sga = los.blocking_pop(qd, timeout=10)
        if not len(sga):
            break
        los.blocking_push(qd, [bytes(s)[::-1] for s in sga.segments], timeout=10)
    los.close(qd)
"""


def test_pipe_between_processes(los):
    name = f"t{os.getpid()}-{random.randrange(10**9)}"
    qd = los.create_pipe(name)
    early = los.push(qd, [b"abc", b"def"])  # before the peer opens: pends, then completes
    with pytest.raises(OSError) as e:
        los.create_pipe(name)  # the name is taken until the pipe is opened
    assert e.value.errno == errno.EEXIST
    p = child(PIPE_PEER, name)
    assert los.wait(early, timeout=T).opcode == Opcode.PUSH
    sga = los.blocking_pop(qd, timeout=T)
    assert [bytes(s) for s in sga.segments] == [b"cba", b"fed"]
    for i in range(200):
        los.blocking_push(qd, b"%05d" % i, timeout=T)
        assert los.blocking_pop(qd, timeout=T).tobytes() == (b"%05d" % i)[::-1]
    assert los.stats(qd)["path"] == "shm"
    los.shutdown(qd)
    assert p.wait(T) == 0, p.stderr.read()
    assert len(los.blocking_pop(qd, timeout=T)) == 0
    with pytest.raises(OSError) as e:
        los.open_pipe(name + "-missing")
    assert e.value.errno == errno.ENOENT


def test_hostile_ring_fails_only_that_connection(los):
    """A peer that scribbles over the ring it shares gets ECONNRESET; others keep working."""
    from libos.shm import rendezvous as rdv

    lqd, port = listener(los)
    ctrl = rdv.dial(f"inet:{port}")
    assert ctrl is not None
    ctrl.setblocking(True)
    doorbell = os.eventfd(0)
    tx, rx = rdv.send_hello(ctrl, ("127.0.0.1", port), ("127.0.0.1", 1), 1 << 16, doorbell)
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    assert los.stats(s)["path"] == "shm"
    tx.push(b"fine")
    assert los.blocking_pop(s, timeout=T).tobytes() == b"fine"
    qt = los.pop(s)
    # scribble: a head index far beyond the capacity
    mm = tx._mm
    struct.pack_into("<Q", mm, 64, 2**63 + 12345)
    os.eventfd_write(los.backend.doorbell, 1)
    r = los.wait(qt, timeout=T)
    assert (r.opcode, r.ret) == (Opcode.FAILED, errno.ECONNRESET)
    # the library OS and its other connections are fine
    c = los.socket()
    ct, at = los.connect(c, ("127.0.0.1", port)), los.accept(lqd)
    s2 = los.wait_all([ct, at], timeout=T)[1].new_qd
    los.blocking_push(c, b"still ok", timeout=T)
    assert los.blocking_pop(s2, timeout=T).tobytes() == b"still ok"
    ctrl.close()
    os.close(doorbell)


INTEGRITY_SENDER = """
    import hashlib, random, struct, sys, queueapi as dq
    los = dq.LibOS("shm")
    qd = los.socket()
    los.wait(los.connect(qd, ("127.0.0.1", int(sys.argv[1]))), timeout=10)
    rng = random.Random(int(sys.argv[3]))
    qts = []
    for i in range(int(sys.argv[2])):
        n = min(65536, int(rng.lognormvariate(5, 2.5)) + 1)
        body = rng.randbytes(n)
        qts.append(los.push(qd, struct.pack("!I", i) + hashlib.blake2b(body, digest_size=16).digest() + body))
        if len(qts) >= 64:
            for qt in qts:
                assert los.wait(qt, timeout=30).opcode == dq.Opcode.PUSH
            qts.clear()
    for qt in qts:
        assert los.wait(qt, timeout=30).opcode == dq.Opcode.PUSH
    los.close(qd)
"""


@pytest.mark.parametrize("count", [int(os.environ.get("SHM_INTEGRITY_COUNT", "30000"))])
def test_integrity_random_elements_between_processes(los, count):
    lqd, port = listener(los)
    p = child(INTEGRITY_SENDER, str(port), str(count), "7")
    s = los.wait(los.accept(lqd), timeout=T).new_qd
    assert los.stats(s)["path"] == "shm"
    expect = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sga = los.blocking_pop(s, timeout=30)
        if not len(sga):
            break
        data = sga.tobytes()
        seq, digest, body = struct.unpack("!I", data[:4])[0], data[4:20], data[20:]
        assert seq == expect, f"element {expect} expected, got {seq}"
        assert hashlib.blake2b(body, digest_size=16).digest() == digest, f"element {seq} corrupt"
        expect += 1
    assert p.wait(T) == 0, p.stderr.read()
    assert expect == count


SPIN_WAITER = """
import os, sys, time
from queueapi import LibOS
los = LibOS("shm", {"spin_us": 200000, "spin_yield_us": float(sys.argv[1])})
lqd = los.socket(); los.bind(lqd, ("127.0.0.1", 0)); los.listen(lqd)
addr = los.getsockname(lqd)
if os.fork() == 0:  # the peer: connects, answers the first element 50 ms late
    c = los.socket()
    los.wait(los.connect(c, addr), timeout=10)
    los.blocking_push(c, b"first", timeout=10)
    time.sleep(0.05)
    los.blocking_push(c, b"late", timeout=10)
    los.blocking_pop(c, timeout=10)
    os._exit(0)
s = los.wait(los.accept(lqd), timeout=10).new_qd
assert los.blocking_pop(s, timeout=10).tobytes() == b"first"
assert los.wait(los.pop(s), timeout=10).sga.tobytes() == b"late"   # spins ~50 ms on the ring
print(los.stats(s)["wait_spin_yields"])
los.blocking_push(s, b"bye", timeout=10)
os.wait()
los.shutdown_libos()
"""


def test_spin_yields_the_cpu_after_spin_yield_us(tmp_path: Path) -> None:
    """A wait that spins longer than ``spin_yield_us`` gives the CPU away at each check of the
    clock (sched_yield), counted in the queue's ``wait_spin_yields``; a negative value never
    yields; the default is 20 µs."""
    script = tmp_path / "spin_waiter.py"
    script.write_text(SPIN_WAITER)

    def yields(spin_yield_us: str) -> int:
        out = subprocess.run([sys.executable, str(script), spin_yield_us], capture_output=True,
                             text=True, timeout=60, check=True)
        return int(out.stdout.split()[-1])

    assert yields("-1") == 0
    assert yields("0") > 100  # ~50 ms of spinning: a yield every few µs
    assert LibOS("shm")._fc.spin_yield_ns == 20_000


THREAD_WAITER = """
import os, struct, threading, time
from queueapi import LibOS
los = LibOS("shm")
lqd = los.socket(); los.bind(lqd, ("127.0.0.1", 0)); los.listen(lqd)
addr = los.getsockname(lqd)
N = 7
if os.fork() == 0:  # the peer: 20 ms after each "go", sends its clock
    c = los.socket()
    los.wait(los.connect(c, addr), timeout=10)
    for _ in range(N):
        los.blocking_pop(c, timeout=10)
        time.sleep(0.02)
        los.blocking_push(c, struct.pack("d", time.monotonic()), timeout=10)
    los.blocking_pop(c, timeout=10)
    os._exit(0)
s = los.wait(los.accept(lqd), timeout=10).new_qd
idle = los.queue()
qt_idle = los.pop(idle)
t = threading.Thread(target=los.wait, args=(qt_idle, 30))  # polls meanwhile, for its own token
t.start()
deadline = time.monotonic() + 5
while los._poller != t.ident and time.monotonic() < deadline:
    time.sleep(0.01)
assert los._poller == t.ident
lat = []
for _ in range(N):
    los.blocking_push(s, b"go", timeout=10)
    (sent,) = struct.unpack("d", los.blocking_pop(s, timeout=10).tobytes())
    lat.append(time.monotonic() - sent)
los.blocking_push(s, b"bye", timeout=10)
los.push(idle, b"done")
t.join(10)
os.wait()
print(sorted(lat)[N // 2])
"""


def test_thread_that_sleeps_while_another_polls_gets_its_data_at_once(tmp_path: Path) -> None:
    """A thread whose pop pends while another thread is the poller (asleep in epoll for its
    own token, not watching that ring) wakes the poller as it goes to sleep, so the element
    that arrives later is served at once: not when the poller's 50 ms slice ends."""
    script = tmp_path / "thread_waiter.py"
    script.write_text(THREAD_WAITER)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 0.010  # median delay from the peer's send
