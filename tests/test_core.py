"""queueapi core: tokens, waiting, timeouts, fairness, threads, signals, sgas, configuration."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import queueapi as dq
from queueapi import LibOS, Opcode, QResult, SGArray


@pytest.fixture
def los():
    lib = LibOS("posix")
    yield lib
    lib.shutdown_libos()


def test_push_pop_memory_queue(los):
    qd = los.queue()
    qt = los.push(qd, b"hello")
    r = los.wait(qt, timeout=1)
    assert r.opcode == Opcode.PUSH and r.qd == qd and r.qt == qt and r.ret == 0
    r = los.wait(los.pop(qd), timeout=1)
    assert r.opcode == Opcode.POP and r.sga.tobytes() == b"hello"


def test_qresult_is_frozen():
    r = QResult(Opcode.PUSH, 3, 4)
    with pytest.raises(AttributeError):
        r.ret = 5  # type: ignore[misc]


def test_qresult_has_a_namedtuples_interface_and_always_seven_fields():
    """QResult's fields are slots of a C base that reads them without a bounds check, so
    every instance must hold exactly seven items: the ways to make a shorter one are
    refused; the rest is a namedtuple's interface."""
    import copy
    import pickle

    r = QResult(Opcode.POP, 3, 4, sga=b"s", addr=("h", 1))
    assert r == (Opcode.POP, 3, 4, 0, b"s", None, ("h", 1)) and isinstance(r, tuple)
    assert (r.opcode, r.qd, r.qt, r.ret, r.sga, r.new_qd, r.addr) == tuple(r)
    assert QResult._fields == ("opcode", "qd", "qt", "ret", "sga", "new_qd", "addr")
    assert r._replace(qd=9, ret=1) == (Opcode.POP, 9, 4, 1, b"s", None, ("h", 1))
    assert type(r._replace()) is QResult
    assert r._asdict()["addr"] == ("h", 1) and QResult._make(list(r)) == r
    assert repr(QResult(Opcode.PUSH, 1, 2)) == (
        "QResult(opcode=<Opcode.PUSH: 1>, qd=1, qt=2, ret=0, sga=None, new_qd=None, addr=None)")
    assert copy.copy(r) == r and pickle.loads(pickle.dumps(r)) == r
    match r:
        case QResult(Opcode.POP, qd, qt):
            assert (qd, qt) == (3, 4)
        case _:
            pytest.fail("no match")

    class Sub(QResult):
        __slots__ = ()

    for cls in (QResult, Sub):
        with pytest.raises(TypeError, match="not safe"):
            tuple.__new__(cls, ())
    with pytest.raises(TypeError):
        QResult(Opcode.PUSH, 3)
    with pytest.raises(TypeError):
        QResult(Opcode.PUSH, 3, 4, 0, None, None, None, "eighth")
    with pytest.raises(TypeError):
        QResult._make((Opcode.PUSH, 3))
    with pytest.raises(ValueError):
        r._replace(nope=1)
    assert Sub(Opcode.PUSH, 1, 2).qt == 2


def test_completion_queue_compaction_keeps_the_unconsumed_in_order(los):
    """Completions consumed by a wait on their token stay in the completion queue until it
    is compacted (when it holds 4096 more entries than twice the live tokens): the
    compaction drops exactly those, and wait_next_n still returns the others oldest first."""
    qd = los.queue()
    kept = [los.push(qd, b"k%d" % i) for i in range(50)]  # completed, never consumed
    for i in range(6000):  # each completes and is consumed at once: its entry stays behind
        los.wait(los.push(qd, b"x"), 0)
    later = [los.push(qd, b"l%d" % i) for i in range(50)]
    assert len(los._done) < 6000, "no compaction happened"
    got = []
    while True:
        try:
            got += [r.qt for r in los.wait_next_n(64, 0)]
        except TimeoutError:
            break
    assert got == kept + later


def test_tokens_are_one_shot(los):
    qd = los.queue()
    qt = los.push(qd, b"x")
    los.wait(qt, timeout=1)
    with pytest.raises(OSError) as e:
        los.wait(qt, timeout=1)
    assert e.value.errno == errno.EINVAL
    for bad in (0, 2**64 - 1, -1):
        with pytest.raises(OSError) as e:
            los.wait(bad, timeout=0)
        assert e.value.errno == errno.EINVAL


def test_timeout_keeps_token_valid(los):
    qd = los.queue()
    qt = los.pop(qd)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        los.wait(qt, timeout=0.05)
    assert e.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - t0 >= 0.05
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=0)  # poll once
    los.push(qd, b"late")
    assert los.wait(qt, timeout=1).sga.tobytes() == b"late"


def test_zero_timeout_returns_completed_result(los):
    qd = los.queue()
    los.push(qd, b"a")
    assert los.wait(los.pop(qd), timeout=0).sga.tobytes() == b"a"


def test_wait_any_keeps_other_completions(los):
    a, b = los.queue(), los.queue()
    qa, qb = los.pop(a), los.pop(b)
    los.push(a, b"A")
    los.push(b, b"B")
    i, r = los.wait_any([qa], timeout=1)
    assert (i, r.sga.tobytes()) == (0, b"A")
    # qb completed while nobody waited on it: it is still there
    assert los.wait(qb, timeout=0).sga.tobytes() == b"B"


def test_wait_any_is_fair(los):
    queues = [los.queue() for _ in range(4)]
    for q in queues:
        for _ in range(40):
            los.push(q, b"x")
    qts = [los.pop(q) for q in queues]
    wins = [0] * 4
    for _ in range(100):
        i, r = los.wait_any(qts, timeout=1)
        wins[i] += 1
        qts[i] = los.pop(r.qd)
    assert min(wins) >= 15, wins  # round-robin start: no bias to index 0


def test_wait_any_timeout_and_errors(los):
    qd = los.queue()
    qt = los.pop(qd)
    with pytest.raises(TimeoutError):
        los.wait_any([qt], timeout=0.01)
    with pytest.raises(OSError) as e:
        los.wait_any([], timeout=0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        los.wait_any([qt, 999999], timeout=0)
    assert e.value.errno == errno.EINVAL


def test_wait_all_consumes_nothing_on_timeout(los):
    a, b = los.queue(), los.queue()
    qa, qb = los.pop(a), los.pop(b)
    los.push(a, b"1")
    with pytest.raises(TimeoutError):
        los.wait_all([qa, qb], timeout=0.02)
    los.push(b, b"2")
    rs = los.wait_all([qa, qb], timeout=1)
    assert [r.sga.tobytes() for r in rs] == [b"1", b"2"]


def test_blocking_calls(los):
    qd = los.queue()
    assert los.blocking_push(qd, [b"ab", b"cd"]) == 4
    sga = los.blocking_pop(qd)
    assert [bytes(s) for s in sga.segments] == [b"ab", b"cd"] and len(sga) == 4
    los.close(qd)
    with pytest.raises(OSError) as e:
        los.blocking_pop(qd)
    assert e.value.errno == errno.EBADF


def test_blocking_pop_raises_failed_errno(los):
    qd = los.queue()
    qt = los.pop(qd)
    los.close(qd)
    r = los.wait(qt, timeout=1)
    assert r.opcode == Opcode.FAILED and r.ret == errno.ECANCELED


def test_empty_and_bad_elements(los):
    qd = los.queue()
    for empty in (b"", bytearray(), [], [b"", b""]):
        with pytest.raises(OSError) as e:
            los.push(qd, empty)
        assert e.value.errno == errno.EINVAL
    for wrong in ("text", 5, None, [b"a", "b"]):
        with pytest.raises(TypeError):
            los.push(qd, wrong)
    # the queue still works
    los.push(qd, b"ok")
    assert los.blocking_pop(qd).tobytes() == b"ok"


def test_sga_alloc_free(los):
    sga = los.sgaalloc(100)
    assert len(sga) == 100 and len(sga.segments) == 1
    sga.segments[0][:3] = b"abc"
    qd = los.queue()
    qt = los.push(qd, sga)
    los.sgafree(sga)  # free protection: allowed before the push completes
    los.wait(qt, timeout=1)
    assert los.blocking_pop(qd).tobytes()[:3] == b"abc"
    with pytest.raises(OSError) as e:
        los.sgafree(sga)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        los.push(qd, sga)
    assert e.value.errno == errno.EINVAL
    for bad in (0, -5):
        with pytest.raises(OSError) as e:
            los.sgaalloc(bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        los.sgaalloc("10")
    with SGArray.from_bytes(b"zz") as s:
        assert s.tobytes() == b"zz"
    assert s.freed


def test_qds_are_real_fds_and_close_is_once(los):
    qd = los.queue()
    os.fstat(qd)  # a real fd the process owns: never collides with another fd
    los.close(qd)
    with pytest.raises(OSError) as e:
        los.close(qd)
    assert e.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        los.close("3")


def test_async_close_completes_close(los):
    qd = los.queue()
    pending = los.pop(qd)
    qt = los.async_close(qd)
    assert los.wait(qt, timeout=1).opcode == Opcode.CLOSE
    r = los.wait(pending, timeout=1)
    assert (r.opcode, r.ret) == (Opcode.FAILED, errno.ECANCELED)


def test_memory_queue_backpressure(los):
    qd = los.queue(capacity=10)
    assert los.wait(los.push(qd, b"x" * 8), timeout=1).opcode == Opcode.PUSH
    blocked = los.push(qd, b"y" * 8)
    with pytest.raises(TimeoutError):
        los.wait(blocked, timeout=0)
    assert los.blocking_pop(qd).tobytes() == b"x" * 8
    assert los.wait(blocked, timeout=1).opcode == Opcode.PUSH
    assert los.blocking_pop(qd).tobytes() == b"y" * 8


def test_memory_queue_eof_after_shutdown(los):
    qd = los.queue()
    los.push(qd, b"last")
    los.shutdown(qd)
    assert los.blocking_pop(qd).tobytes() == b"last"
    assert len(los.blocking_pop(qd)) == 0
    with pytest.raises(OSError) as e:
        los.push(qd, b"more")
    assert e.value.errno == errno.EPIPE


def test_stats_count(los):
    qd = los.queue()
    for _ in range(3):
        los.push(qd, b"abcd")
    for _ in range(2):
        los.blocking_pop(qd)
    s = los.stats(qd)
    assert (s["pushes"], s["pops"], s["bytes_out"], s["bytes_in"]) == (3, 2, 12, 8)
    assert s["libos"] == "posix" and s["kind"] == "memory"


def test_threads_each_get_their_own_completion(los):
    n = 8
    queues = [los.queue() for _ in range(n)]
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def waiter(i: int) -> None:
        try:
            r = los.wait(los.pop(queues[i]), timeout=10)
            got[i] = r.sga.tobytes()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # all threads blocked in wait
    for i in reversed(range(n)):
        los.push(queues[i], f"for-{i}".encode())
    for t in threads:
        t.join(10)
    assert not errors
    assert got == {i: f"for-{i}".encode() for i in range(n)}


def test_threads_wake_exactly_the_waiter(los):
    """A completion of one thread's token does not return another thread's wait."""
    a, b = los.queue(), los.queue()
    qb = los.pop(b)
    returned = threading.Event()

    def wait_b() -> None:
        los.wait(qb, timeout=10)
        returned.set()

    t = threading.Thread(target=wait_b)
    t.start()
    time.sleep(0.05)
    qa = los.pop(a)
    los.push(a, b"1")
    assert los.wait(qa, timeout=1).sga.tobytes() == b"1"
    time.sleep(0.1)
    assert not returned.is_set()
    los.push(b, b"2")
    t.join(5)
    assert returned.is_set()


def test_poller_is_woken_only_for_its_own_tokens(los):
    """A thread blocked in a wait runs the library OS's poll; completions made meanwhile by
    another thread wake that poller only if it waits for them: the other thread's own pushes
    and pops must not (they cost the poller a wake-up and the process a GIL hand-off)."""
    wakes = []
    wake = los.backend.wake
    los.backend.wake = lambda: (wakes.append(threading.get_ident()), wake())[1]
    a, b = los.queue(), los.queue()
    qa = los.pop(a)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(los.wait(qa, timeout=10).sga.tobytes()))
    t.start()
    deadline = time.monotonic() + 5
    while los._poller is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert los._poller == t.ident  # the waiting thread polls
    for i in range(20):  # this thread's own operations, complete at once
        los.wait(los.push(b, b"x%d" % i), timeout=1)
        assert los.wait(los.pop(b), timeout=1).sga.tobytes() == b"x%d" % i
    assert wakes == []
    t0 = time.monotonic()
    los.push(a, b"for the poller")
    t.join(5)
    assert got == [b"for the poller"] and time.monotonic() - t0 < 1
    assert wakes  # its own token completed in this thread: it was woken for it


def test_threads_sockets_in_parallel(los):
    """Many threads each run their own TCP ping-pong through one LibOS."""
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd)
    addr = los.getsockname(lqd)
    n, rounds = 6, 50
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            qd = los.socket()
            assert los.wait(los.connect(qd, addr), timeout=10).opcode == Opcode.CONNECT
            for k in range(rounds):
                msg = f"{i}:{k}".encode()
                los.blocking_push(qd, msg, timeout=10)
                assert los.blocking_pop(qd, timeout=10).tobytes() == msg
            los.close(qd)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    conns = [los.wait(los.accept(lqd), timeout=10).new_qd for _ in range(n)]
    pops = [los.pop(c) for c in conns]
    served = 0
    deadline = time.monotonic() + 30
    while served < n * rounds and time.monotonic() < deadline:
        i, r = los.wait_any(pops, timeout=10)
        assert r.opcode == Opcode.POP
        if not len(r.sga):  # that client is done
            los.close(r.qd)
            del pops[i]
            continue
        los.blocking_push(r.qd, r.sga, timeout=10)
        pops[i] = los.pop(r.qd)
        served += 1
    for t in threads:
        t.join(10)
    assert not errors and served == n * rounds


def test_ctrl_c_reaches_a_blocked_wait():
    code = textwrap.dedent("""
        import sys, time, queueapi as dq
        qd = dq.queue()
        qt = dq.pop(qd)
        print("waiting", flush=True)
        try:
            dq.wait(qt)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(3)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    line = p.stdout.readline().split()
    assert p.wait(5) == 3
    assert line[0] == "interrupted"
    assert float(line[1]) - sent < 0.1


def test_ctrl_c_reaches_a_wait_in_a_threaded_program():
    code = textwrap.dedent("""
        import sys, threading, time, queueapi as dq
        los = dq.default_libos()
        qd = dq.queue()
        threads = [threading.Thread(target=lambda: dq.wait(dq.pop(dq.queue()), timeout=3), daemon=True)
                   for _ in range(3)]
        for t in threads: t.start()
        time.sleep(0.1)
        print("waiting", flush=True)
        try:
            dq.wait(dq.pop(qd))
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(3)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    line = p.stdout.readline().split()
    assert p.wait(5) == 3
    assert float(line[1]) - sent < 0.1


def test_names_aliases_and_errors(monkeypatch):
    assert LibOS("catnap").name == "posix"
    with pytest.raises(ValueError, match="unknown library OS"):
        LibOS("nope")
    monkeypatch.setenv("DEMI_LIBOS", "catnap")
    assert dq.init().name == "posix"
    assert dq.default_libos().name == "posix"


def test_unbuilt_libos_says_so():
    with pytest.raises(OSError) as e:
        LibOS("uring")
    assert e.value.errno == errno.ENOSYS and "not available" in str(e.value)


def test_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "demi.toml"
    cfg.write_text('[posix]\nanswer = 42\n')
    monkeypatch.setenv("DEMI_CONFIG", str(cfg))
    assert LibOS("posix").backend.config == {"answer": 42}
    cfg.write_text("not toml [")
    with pytest.raises(ValueError, match="not valid TOML"):
        LibOS("posix")
    monkeypatch.setenv("DEMI_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(OSError, match="does not exist"):
        LibOS("posix")


def test_module_functions_use_default():
    dq.init("posix")
    qd = dq.queue()
    dq.blocking_push(qd, b"m")
    assert dq.blocking_pop(qd).tobytes() == b"m"
    assert dq.stats(qd)["libos"] == "posix"


def test_fork_inherits_queues(los):
    """A forked child keeps using an inherited socket; the parent sees its data and EOF."""
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd)
    c = los.socket()
    ct = los.connect(c, los.getsockname(lqd))
    s = los.wait(los.accept(lqd), timeout=5).new_qd
    los.wait(ct, timeout=5)
    pid = os.fork()
    if pid == 0:  # child: push through the inherited queue, then exit
        code = 0
        try:
            los.blocking_push(c, b"from-child", timeout=5)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert los.blocking_pop(s, timeout=5).tobytes() == b"from-child"
    los.close(c)  # the last holder closes: the peer sees end of stream
    assert len(los.blocking_pop(s, timeout=5)) == 0


def test_wait_next_n_takes_completions_in_order(los):
    qs = [los.queue() for _ in range(3)]
    qts = [los.pop(q) for q in qs]
    with pytest.raises(TimeoutError):
        los.wait_next_n(4, timeout=0.01)
    los.push(qs[2], b"c")
    los.push(qs[0], b"a")
    got = los.wait_next_n(10, timeout=1)
    # the two pops and the two pushes, in completion order; each token is consumed
    assert [(r.opcode, r.qd) for r in got] == [(Opcode.POP, qs[2]), (Opcode.PUSH, qs[2]),
                                               (Opcode.POP, qs[0]), (Opcode.PUSH, qs[0])]
    with pytest.raises(OSError):
        los.wait(qts[2], timeout=0)
    # a token consumed by wait() is not returned again by wait_next_n
    los.push(qs[1], b"b")
    assert los.wait(qts[1], timeout=1).sga.tobytes() == b"b"
    assert [r.opcode for r in los.wait_next_n(5, timeout=1)] == [Opcode.PUSH]
    with pytest.raises(OSError) as e:
        los.wait_next_n(0)
    assert e.value.errno == errno.EINVAL


def test_wait_next_n_limits_count_and_wakes_a_thread(los):
    q = los.queue()
    for i in range(5):
        los.wait(los.push(q, b"%d" % i), timeout=1)
    for _ in range(5):
        los.pop(q)
    first = los.wait_next_n(2, timeout=1)
    rest = los.wait_next_n(10, timeout=1)
    assert [r.sga.tobytes() for r in first + rest] == [b"0", b"1", b"2", b"3", b"4"]
    out: list = []
    t = threading.Thread(target=lambda: out.extend(los.wait_next_n(1, timeout=5)))
    other = los.queue()
    hold = los.pop(other)  # the main thread polls for this one meanwhile
    t.start()
    time.sleep(0.05)
    qt = los.pop(q)
    los.push(q, b"late")
    t.join(5)
    assert not t.is_alive()
    assert out and out[0].opcode in (Opcode.POP, Opcode.PUSH)
    del hold, qt


def test_wait_next_n_only_leaves_other_completions(los):
    """``only``: completions of other tokens stay for their own waiters, in order, and a
    thread waiting with ``only`` wakes for its tokens even while another thread waits too."""
    qa, qb = los.queue(), los.queue()
    pa, pb = los.pop(qa), los.pop(qb)
    theirs = los.push(qb, b"b")          # completes pb and theirs: not ours
    with pytest.raises(TimeoutError):
        los.wait_next_n(4, timeout=0.05, only={pa})
    mine = los.push(qa, b"a")
    got = los.wait_next_n(4, timeout=1, only={pa, mine})
    assert [(r.qt, r.opcode) for r in got] == [(pa, Opcode.POP), (mine, Opcode.PUSH)]
    assert los.wait(pb, timeout=0).sga.tobytes() == b"b"  # still there for its waiter
    assert [r.qt for r in los.wait_next_n(4, timeout=1)] == [theirs]
    # two threads, each with its own tokens
    p1, p2 = los.pop(qa), los.pop(qb)
    out: dict = {}

    def waiter(name, qt):
        out[name] = [r.qt for r in los.wait_next_n(4, timeout=5, only={qt})]
    ts = [threading.Thread(target=waiter, args=("1", p1)), threading.Thread(target=waiter,
                                                                             args=("2", p2))]
    for t in ts:
        t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    los.wait(los.push(qb, b"y"), timeout=1)
    los.wait(los.push(qa, b"x"), timeout=1)
    for t in ts:
        t.join(5)
    assert out == {"1": [p1], "2": [p2]}
    assert time.monotonic() - t0 < 1


def test_wait_any_finds_its_tokens_behind_many_unwaited_completions(los):
    """Completed tokens the application never waits on do not hide the ones it waits on."""
    junk = los.queue()
    for _ in range(3000):
        los.push(junk, b"j")  # completed at once, never waited on
    q = los.queue()
    qt = los.pop(q)
    for k in range(50):
        los.push(q, b"%d" % k)
        i, r = los.wait_any([los.pop(junk), qt][1:], timeout=1)
        assert (i, r.sga.tobytes()) == (0, b"%d" % k)
        qt = los.pop(q)


def test_a_qd_closed_behind_the_library_os_is_forgotten_when_its_fd_is_reused() -> None:
    """os.close() on a qd (or code such as ssl taking the fd over) then a new socket with the
    same fd number: the new queue registers, the stale one's pending pop is cancelled."""
    import os
    los = LibOS("posix")
    try:
        lqd = los.socket()
        los.bind(lqd, ("127.0.0.1", 0))
        los.listen(lqd, 8)
        at = los.accept(lqd)
        c = los.socket()
        los.wait(los.connect(c, los.getsockname(lqd)), timeout=5)
        s = los.wait(at, timeout=5).new_qd
        stale_pop = los.pop(s)
        os.close(s)  # behind the library OS's back
        at2 = los.accept(lqd)
        c2 = los.socket()
        los.wait(los.connect(c2, los.getsockname(lqd)), timeout=5)
        r = los.wait(at2, timeout=5)
        assert s in (c2, r.new_qd)  # the kernel reused the lowest free number
        assert los.wait(stale_pop, timeout=5).ret == errno.ECANCELED
        los.wait(los.push(c2, b"fresh"))
        assert los.wait(los.pop(r.new_qd), timeout=5).sga.tobytes() == b"fresh"
    finally:
        los.shutdown_libos()
