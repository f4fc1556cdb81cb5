"""The C socket methods (libos/inet/_tcpfast.c: sock_push, sock_pop, sock_on_event and
be_kick_connection) against the Python ones they replace.

``TcpSocket.push``, ``TcpSocket.pop``, ``TcpSocket.on_event`` and ``Backend.kick_connection``
are C method descriptors when libos.inet.sockets.C_SOCKET_PATHS (the C send path on, and no
DEMI_INET_NO_C_SOCK): the common case of an unframed connected stream in C, anything else
handed to the Python methods (``_push_py``, ``_pop_py``, ``_on_event_py``,
``_kick_connection_py``) before anything changed.  Here two identical worlds (a LibOS("inet")
over an in-process device with a manual clock, and a peer Stack driven by hand, seeded alike)
go through the same random application calls and traffic, one with the C methods, the other
with the Python ones (every other C path on in both: they are compared with Python in
tests/test_inet_tcpfast.py, test_inet_rxfast.py, test_inet_txfast.py): pushes of every shape
and size (filling the send buffer: backpressure), pops of every size, before and after data,
end of stream, a reset, SHUT_RD, SHUT_WR, close, delayed transmission or not.  After every
step the results (every token's QResult, every error's type and errno), the frames on the
wire, the queue's stats(), the socket's fields, every slot of the connection and the stack's
tables must be equal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import queueapi as dq  # noqa: E402
from test_inet_rxfast import MUTATIONS, stack_state, step_both, typed  # noqa: E402

from libos.inet import backend as backend_mod  # noqa: E402
from libos.inet import sockets as sockets_mod  # noqa: E402
from libos.inet import stack as stack_mod  # noqa: E402
from libos.inet.backend import Backend  # noqa: E402
from libos.inet.device.base import Device  # noqa: E402
from libos.inet.sockets import TcpSocket  # noqa: E402
from libos.inet.stack import Stack  # noqa: E402
from libos.inet.tcp import TcpConfig, TcpState  # noqa: E402
from libos.inet.tcp import connection as connection_mod  # noqa: E402

try:
    from libos.inet import _tcpfast
except ImportError:  # not built
    _tcpfast = None

needs_c = pytest.mark.skipif(not sockets_mod.C_SOCKET_PATHS, reason="the C socket methods are not in use")

S_MAC, P_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
S_IP, P_IP = "10.0.0.1", "10.0.0.2"
PORT = 6379


def test_c_socket_methods_are_installed_with_the_c_send_path() -> None:
    want = sockets_mod._send is not None and not os.environ.get("DEMI_INET_NO_C_SOCK")
    assert sockets_mod.C_SOCKET_PATHS == want
    assert backend_mod.C_KICK == want
    assert (backend_mod._rx_frames is not None) == want
    assert stack_mod.C_FIRE_DUE == (connection_mod.C_FAST_PATHS and not os.environ.get("DEMI_INET_NO_C_SOCK"))
    if want:
        assert TcpSocket.push is not TcpSocket._push_py
        assert type(TcpSocket.__dict__["pop"]).__name__ == "method_descriptor"
        assert type(TcpSocket.__dict__["on_event"]).__name__ == "method_descriptor"
        assert type(Backend.__dict__["kick_connection"]).__name__ == "method_descriptor"


class WireDev(Device):
    """A device whose frames the test carries by hand."""

    def __init__(self) -> None:
        self.mac = bytes.fromhex(S_MAC.replace(":", ""))
        self.mtu = 1500
        self.name = "test0"
        self.inbox: list[tuple[bytes, bool]] = []
        self.sent: list[bytes] = []
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def receive(self):
        got, self.inbox = self.inbox, []
        return [(memoryview(f), not_ready) for f, not_ready in got]

    def transmit(self, frames) -> int:
        self.sent += [bytes(f) for f in frames]
        return len(frames)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_PY = {"push": "_push_py", "pop": "_pop_py", "on_event": "_on_event_py"}


class World:
    """A LibOS("inet") with one accepted connection from the peer stack ``p``."""

    def __init__(self, python: bool, defer_tx: bool = True, send_buffer: int = 8192) -> None:
        self.python = python
        self.now = 1.0
        self.dev = WireDev()
        self.qts: list[int] = []
        self.got: list = []
        self.peer_got = bytearray()
        with self.mode():
            self.los = dq.LibOS("inet", config={
                "device_object": self.dev, "ipv4": S_IP, "mac": S_MAC, "clock": lambda: self.now,
                "defer_tx": defer_tx, "tx_batch": 4, "send_buffer": send_buffer, "recv_buffer": 16384})
            self.backend = self.los.backend
            self.s: Stack = self.backend.stack
            self.s.rng = random.Random(1)
            self.p = Stack(P_MAC, P_IP, rng=random.Random(2), tcp_config=TcpConfig(push_ack_delay=0.001))
            lq = self.los.socket()
            self.los.bind(lq, (S_IP, PORT))
            self.los.listen(lq, 8)
            qt = self.los.accept(lq)
            self.peer_conn = self.p.tcp_connect(int(self.s.ip), PORT, self.now)
            r = None
            for _ in range(20):
                self.now += 0.001
                self._deliver_p()
                self._to_peer()
                self.backend.poll(0.0)
                with contextlib.suppress(TimeoutError):
                    r = self.los.wait(qt, 0)
                if r is not None and self.peer_conn.state is TcpState.ESTABLISHED:
                    break
            assert r is not None and r.new_qd is not None
            self.qd = r.new_qd
            self.q = self.los._queues[self.qd]
            self.conn = self.q.conn

    @contextlib.contextmanager
    def mode(self):
        """The Python methods for the reference world."""
        if not self.python:
            yield
            return
        saved = ({k: TcpSocket.__dict__[k] for k in _PY}, Backend.__dict__["kick_connection"],
                 backend_mod._rx_frames, Stack.__dict__["_fire_due"])
        for k, py in _PY.items():
            setattr(TcpSocket, k, getattr(TcpSocket, py))
        Backend.kick_connection = Backend._kick_connection_py
        backend_mod._rx_frames = None
        Stack._fire_due = Stack._fire_due_py
        try:
            yield
        finally:
            for k, v in saved[0].items():
                setattr(TcpSocket, k, v)
            Backend.kick_connection = saved[1]
            backend_mod._rx_frames = saved[2]
            Stack._fire_due = saved[3]

    def _deliver_p(self) -> None:
        self.dev.inbox += [(bytes(f), False) for f in self.p.poll(self.now)]

    def _to_peer(self) -> None:
        for f in self.dev.sent:
            self.p.receive(f, self.now)
        self.dev.sent = []
        with contextlib.suppress(OSError):
            self.peer_got += self.peer_conn.recv()

    def step(self, op: tuple) -> object:
        with self.mode():
            return self._step(op)

    def _call(self, fn, *args) -> object:
        try:
            return ("ok", fn(*args))
        except OSError as e:
            return ("error", type(e).__name__, e.errno)

    def _step(self, op: tuple) -> object:
        kind = op[0]
        los = self.los
        if kind == "push":
            size, shape = op[1], op[2]
            data = bytes(random.Random(size).randrange(256) for _ in range(size))
            if shape == "bytearray":
                data = bytearray(data)
            elif shape == "memoryview":
                data = memoryview(data)
            elif shape == "list":
                data = [data[:size // 2], data[size // 2:]]
            r = self._call(los.push, self.qd, data)
            if r[0] == "ok":
                self.qts.append(r[1])
            return r
        if kind == "pop":
            r = self._call(los.pop, self.qd, op[1]) if op[1] is not None else self._call(los.pop, self.qd)
            if r[0] == "ok":
                self.qts.append(r[1])
            return r
        if kind == "reap":   # the completed tokens, in order (wait polls once when one is not)
            out = []
            for qt in list(self.qts):
                try:
                    r = los.wait(qt, 0)
                except TimeoutError:
                    continue
                except OSError as e:
                    out.append((qt, "error", e.errno))
                    self.qts.remove(qt)
                    continue
                self.qts.remove(qt)
                data = r.sga.tobytes() if r.sga is not None else None
                out.append((qt, r.opcode.name, r.qd == self.qd, r.ret, data, r.new_qd, r.addr))
            self.got += out
            return out
        if kind == "poll":
            self.backend.poll(0.0)
        elif kind == "peer_send":
            if not self.peer_conn.closed:
                with contextlib.suppress(OSError):
                    self.peer_conn.send(bytes((i * 7 + op[1]) & 255 for i in range(op[1])))
            self._deliver_p()
        elif kind == "peer_send_mut":   # frames altered on the way (test_inet_rxfast.MUTATIONS)
            if not self.peer_conn.closed:
                with contextlib.suppress(OSError):
                    self.peer_conn.send(bytes((i * 5 + op[1]) & 255 for i in range(op[1])))
            for f in self.p.poll(self.now):
                frame, csum_ok = MUTATIONS[op[2]](bytes(f))
                self.dev.inbox.append((bytes(frame), not csum_ok or op[3]))
        elif kind == "peer_burst":   # more than half the receive buffer, as fast as it goes
            with contextlib.suppress(OSError):
                self.peer_conn.send(bytes(i & 255 for i in range(op[1])))
            for _ in range(4):
                self._deliver_p()
                self.backend.poll(0.0)
                self._to_peer()
        elif kind == "peer_close":
            self.peer_conn.close()
            self._deliver_p()
        elif kind == "peer_abort":
            self.peer_conn.abort()
            self._deliver_p()
        elif kind == "to_peer":
            self._to_peer()
            self._deliver_p()
        elif kind == "time":
            self.now += op[1]
        elif kind == "shutdown":
            return self._call(los.shutdown, self.qd, op[1])
        elif kind == "close":
            return self._call(los.close, self.qd)
        elif kind == "nodelay":
            return self._call(los.setsockopt, self.qd, socket.IPPROTO_TCP, socket.TCP_NODELAY, op[1])
        elif kind == "kick":   # kick_connection alone, as a push makes it
            with los.lock:
                self.backend.kick_connection(self.conn)
        elif kind == "on_event":   # an event for the socket without a stack event
            with los.lock:
                self.q.on_event()
        return None

    def state(self) -> dict:
        q = self.q
        stats = q.stats()
        return {
            "stack": stack_state(self.s),
            "peer": stack_state(self.p),
            "sent": self.dev.sent, "inbox": self.dev.inbox,
            "txq": [bytes(f) for f in self.backend._txq],
            "backend": (self.backend._tx_frames, self.backend._rx_frames, self.backend._polls),
            "stats": {k: typed(v) for k, v in stats.items() if k != "qd"},
            "sock": (q.state, q.shut_wr, q._rd_shut, q._shut_after_pushes, len(q._pops),
                     [(typed(s),) for _, s in q._pops], [len(v) for _, v in q._pushes],
                     [bytes(b) for _, v in q._pushes for b in v], len(q._pushback)),
            "pending": list(self.qts), "got": self.got, "peer_got": bytes(self.peer_got),
            "now": typed(self.now),
        }

    def close(self) -> None:
        with self.mode():
            self.los.shutdown_libos()


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3000), st.just("bytes")),
        st.tuples(st.just("push"), st.integers(1, 200), st.just("bytes")),
        st.tuples(st.just("push"), st.integers(1, 20000), st.sampled_from(["bytes", "bytearray", "memoryview", "list"])),
        st.tuples(st.just("pop"), st.sampled_from([None, 1, 3, 100, 8192, 65536])),
        st.tuples(st.just("pop"), st.sampled_from([None, 5])),
        st.tuples(st.just("reap")),
        st.tuples(st.just("reap")),
        st.tuples(st.just("poll")),
        st.tuples(st.just("poll")),
        st.tuples(st.just("peer_send"), st.integers(1, 3000)),
        st.tuples(st.just("peer_send"), st.integers(1, 100)),
        st.tuples(st.just("peer_burst"), st.integers(3000, 14000)),
        st.tuples(st.just("peer_send_mut"), st.integers(1, 2000), st.sampled_from(sorted(MUTATIONS)), st.booleans()),
        st.tuples(st.just("to_peer")),
        st.tuples(st.just("to_peer")),
        st.tuples(st.just("time"), st.sampled_from([0.0, 0.0001, 0.002, 0.05, 0.3, 2.0])),
        st.tuples(st.just("kick")),
        st.tuples(st.just("on_event")),
        st.tuples(st.just("nodelay"), st.sampled_from([0, 1])),
        st.tuples(st.just("peer_close")),
        st.tuples(st.just("peer_abort")),
        st.tuples(st.just("shutdown"), st.sampled_from([socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR])),
        st.tuples(st.just("close")),
    ),
    min_size=5,
    max_size=60,
)

_RARE = {"peer_abort", "close", "shutdown", "peer_close"}


def run_both(ops: list, **kw) -> tuple[World, World]:
    c, py = World(python=False, **kw), World(python=True, **kw)
    try:
        assert c.state() == py.state()
        closed = False
        for i, op in enumerate(ops):
            if closed and op[0] in ("kick", "on_event"):
                continue   # (the queue is gone from the LibOS: only its methods would run)
            step_both(i, op, c, py)
            closed = closed or op[0] == "close"
    finally:
        c.close()
        py.close()
    return c, py


def _requests(n: int, size: int = 40, reply: int = 5) -> list:
    """Request/response rounds, as a Redis client makes them."""
    ops: list = [("pop", 8192)]
    for _ in range(n):
        ops += [("peer_send", size), ("poll",), ("reap",), ("push", reply, "bytes"), ("pop", 8192),
                ("to_peer",), ("time", 0.0001)]
    return ops


@needs_c
def test_request_response_rounds_take_the_c_paths() -> None:
    before, rx_before = _tcpfast.sock_counts(), _tcpfast.rx_frames_counts()
    c, py = run_both(_requests(30) + [("reap",)])
    after, rx_after = _tcpfast.sock_counts(), _tcpfast.rx_frames_counts()
    for name in ("push", "pop", "on_event", "kick_connection"):
        assert after[name][0] - before[name][0] >= 30, (name, before, after)
    if stack_mod._rx_fast is not None:   # (else every frame goes to Stack.receive)
        assert rx_after[0] - rx_before[0] >= 30
    assert _tcpfast.fire_due_counts()[0] > 0
    assert len(c.got) >= 60 and c.got == py.got
    reply = bytes(random.Random(5).randrange(256) for _ in range(5))
    assert c.peer_got == py.peer_got and bytes(c.peer_got) in (reply * 29, reply * 30)


@needs_c
@pytest.mark.parametrize("defer_tx", [True, False])
def test_backpressure_and_end_of_stream(defer_tx: bool) -> None:
    ops = _requests(3) + [("push", 20000, "bytes"), ("push", 10, "bytes"), ("reap",), ("pop", 3),
                          ("peer_send", 10), ("poll",), ("reap",), ("to_peer",), ("poll",), ("reap",),
                          ("to_peer",), ("poll",), ("reap",), ("peer_close",), ("poll",), ("pop", None),
                          ("reap",), ("pop", 5), ("reap",), ("shutdown", socket.SHUT_WR), ("push", 4, "bytes"),
                          ("poll",), ("to_peer",), ("poll",), ("close",), ("reap",)]
    c, py = run_both(ops, defer_tx=defer_tx)
    assert c.got == py.got and any(g[4] == b"" for g in c.got)


@needs_c
def test_reset_fails_pending_pops() -> None:
    ops = _requests(2) + [("pop", 100), ("peer_abort",), ("poll",), ("reap",), ("pop", 100), ("reap",),
                          ("push", 5, "bytes"), ("reap",)]
    c, py = run_both(ops)
    assert any(g[1] == "FAILED" and g[3] == errno.ECONNRESET for g in c.got if len(g) > 3), c.got


@needs_c
@pytest.mark.parametrize("size", [None, 1000, 65536])
def test_a_pop_that_opens_the_window(size) -> None:
    ops = _requests(1) + [("peer_burst", 12000), ("pop", size), ("pop", size), ("reap",), ("to_peer",),
                          ("poll",), ("pop", size), ("reap",), ("poll",), ("to_peer",)]
    c, py = run_both(ops)
    assert c.q.stats()["tcp"]["window_updates"] > 0 or size == 1000


@needs_c
def test_shut_rd_and_data_before_the_pop() -> None:
    ops = _requests(1) + [("peer_send", 300), ("poll",), ("pop", 100), ("pop", 1), ("pop", None), ("reap",),
                          ("shutdown", socket.SHUT_RD), ("pop", 10), ("reap",)]
    c, py = run_both(ops)
    assert c.got == py.got


@needs_c
def test_a_subclass_takes_the_python_methods() -> None:
    class Sub(TcpSocket):
        pass

    before = _tcpfast.sock_counts()
    w = World(python=False)
    try:
        w.q.__class__ = Sub
        ops = _requests(2) + [("reap",)]
        for op in ops:
            w.step(op)
        after = _tcpfast.sock_counts()
        assert after["push"][0] == before["push"][0] and after["push"][1] >= before["push"][1] + 2
        assert after["pop"][0] == before["pop"][0]
        assert len(w.got) == 4
    finally:
        w.close()


@needs_c
@settings(max_examples=int(os.environ.get("SOCKFAST_EXAMPLES", "120")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ops=_OPS, defer_tx=st.booleans(), send_buffer=st.sampled_from([4096, 8192, 65536]))
def test_c_socket_methods_match_python(ops: list, defer_tx: bool, send_buffer: int) -> None:
    run_both(ops, defer_tx=defer_tx, send_buffer=send_buffer)


# ------------------------------------------------------------------ Stack._fire_due alone

import test_inet_rxfast as rxfast  # noqa: E402


class FireDueWorld(rxfast.World):
    """test_inet_rxfast's two worlds (all C against all Python), with Stack._fire_due's
    Python method in the Python world as well."""

    @contextlib.contextmanager
    def mode(self):
        if not self.python:
            yield
            return
        saved = Stack.__dict__["_fire_due"]
        Stack._fire_due = Stack._fire_due_py
        try:
            with super().mode():
                yield
        finally:
            Stack._fire_due = saved


def test_fire_due_is_installed_with_the_c_paths() -> None:
    assert stack_mod.C_FIRE_DUE == (Stack._fire_due is not Stack._fire_due_py)


@pytest.mark.skipif(not stack_mod.C_FIRE_DUE, reason="the C _fire_due is not in use")
@settings(max_examples=int(os.environ.get("SOCKFAST_EXAMPLES", "120")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ops=rxfast._OPS)
def test_fire_due_matches_python(ops: list) -> None:
    before = _tcpfast.fire_due_counts()
    rxfast.run_both(ops, world=FireDueWorld)
    assert _tcpfast.fire_due_counts()[1] == before[1]   # (no call handed to Python)
