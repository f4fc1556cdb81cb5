"""The data path of one shm connection: two rings (one per direction), a control socket to
the peer (liveness), and the peer's doorbell eventfd.

Pushes copy the element into the transmit ring; pops copy the next element out of the
receive ring and release it at once, so the ring never waits on the application. No system
call is made unless the peer dozes (then its doorbell eventfd is written once) or this side
goes to sleep. Everything read from the shared rings is checked by the C ring: a corrupted
or hostile ring fails the connection with ``ECONNRESET``; it never crashes the process.

The common case runs in C: a ``queueapi._fast.Lane`` per channel pushes and pops straight
from ``LibOS.push``/``pop`` when the element can move at once, keeps pops that must wait in
order, and lets ``wait`` spin on the ring. Whatever is unusual (partial pops, several
segments, pushed-back elements, end of stream, errors, backpressure) is done here in Python:
the lane's pending pops are handed over first, and the lane stays off (``pop_ok``/``push_ok``)
while this side has pending ops of its own, so order is kept.

A peer that closes cleanly sets end of stream in its ring, so pops drain what is left and
then return end of stream. A peer that dies (even by SIGKILL) leaves the end-of-stream flag
unset but its control socket hangs up: pops drain what is left, then fail ``ECONNRESET``.
An abortive close (``SO_LINGER`` on with a zero timeout, the kernel's RST) does the same on
purpose, and first writes ``_RESET`` on the control socket, so that the peer's
``getpeername`` fails with ``ENOTCONN`` at once, as after a TCP reset.
"""
from __future__ import annotations

import errno
import functools
import os
import weakref
import socket as _socket
from collections import deque
from typing import Any

from libos.base import Op, failed
from libos.shm._ring import ffi, lib
from libos.shm.ring import Ring, RingCorruptedError
from queueapi import _fast
from queueapi.types import SGArray, popped, popped_sga, pushed

_EMPTY = b""
_RESET = b"R"  # written on the control socket by an abortive close (see abort)


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


_fast.set_ring_api(*(_address(ffi.addressof(lib, name)) for name in (
    "ring_push1", "ring_peek_packed", "ring_release", "ring_readable", "ring_data",
    "ring_take_doorbell")))


class Channel:
    """Pending ops and the rings of one connection; all methods run with the LibOS lock."""

    def __init__(self, backend: Any, qd: int) -> None:
        self.backend = backend
        self.core = backend.core
        self.qd = qd
        self.tx: Ring | None = None
        self.rx: Ring | None = None
        self.ctrl: _socket.socket | None = None
        self.peer_doorbell = -1
        self.peer_gone = False
        self.peer_reset = False  # the peer closed abortively (_RESET on the control socket)
        self.error = 0
        self.eof = False
        self.closed = False
        self._pops: deque[tuple[Op, int | None]] = deque()
        self._pushes: deque[tuple[Op, tuple[Any, ...]]] = deque()
        self._partial: memoryview | None = None  # rest of an element split by a small pop
        self._pushback: deque[Any] = deque()  # elements a closed combinator gave back
        self.doorbells = 0
        self.sleeps = 0
        self.lane: Any = None  # the C fast lane, once attached
        self.zc_min = int(getattr(backend, "zero_copy_min", 0))  # 0: pops copy
        self._zc_held = False  # a zero-copy element is handed out and not freed yet
        self._zc_gen = 0
        self._zc_dropped: deque[int] = deque()  # elements garbage-collected without free()
        self._resv: SGArray | None = None  # an sga allocated in the tx ring, not pushed yet
        # set before a fork (Backend's at-fork hook): (a, b), a socketpair every process
        # holding this connection shares; a close that leaves other holders does not end
        # the stream (see close)
        self.holders: tuple[Any, Any] | None = None
        self.shut_wr = False      # shutdown_write() was called
        self._shut_pending = False  # ... with pushes queued: end of stream after them

    @property
    def attached(self) -> bool:
        return self.rx is not None

    def attach(self, tx: Ring, rx: Ring, ctrl: _socket.socket, peer_doorbell: int,
               watch: bool = True) -> None:
        """The handshake is done: start moving data. ``watch=False`` when the owner already
        watches ``ctrl`` and forwards its events to ``on_events``."""
        self.tx, self.rx, self.ctrl, self.peer_doorbell = tx, rx, ctrl, peer_doorbell
        self.lane = _fast.Lane(self.core._fc, self.qd, _address(tx._r), _address(rx._r), (tx, rx),
                               rx._mm, peer_doorbell, self._lane_pending)
        self.lane.zc_min = self.zc_min
        self.core._lanes[self.qd] = self.lane
        if watch:
            self.backend.watch_fd(ctrl.fileno(), self)
        self.service()

    # ------------------------------------------------------------------ events
    def on_events(self, ev: int) -> None:
        """The control socket: a hang-up means the peer's process closed or died."""
        if ev & (0x10 | 0x2000 | 0x8 | 0x1):  # EPOLLHUP | EPOLLRDHUP | EPOLLERR | EPOLLIN
            try:
                data = self.ctrl.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = _EMPTY
            if _RESET in data:
                self.peer_reset = True
                try:
                    data = self.ctrl.recv(64)  # the hang-up follows at once
                except OSError:
                    data = _EMPTY
            if not data:
                self.peer_gone = True
                self._take_lane_pops()  # what is left and then ECONNRESET: the Python path
                self.service()

    def reset_by_peer(self) -> bool:
        """Has the peer closed abortively (as a TCP reset)? Looks at the control socket
        without waiting, so it is right before the event loop has seen the hang-up."""
        if self.peer_reset:
            return True
        ctrl = self.ctrl
        if ctrl is None or self.closed:
            return False
        try:
            self.peer_reset = ctrl.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == _RESET
        except OSError:
            pass
        return self.peer_reset

    def abort(self) -> None:
        """An abortive close (SO_LINGER on, zero timeout): what is queued is dropped, the
        peer's pops drain what it already has and then fail ECONNRESET (no end of stream),
        its getpeername fails ENOTCONN."""
        if self.closed:
            return
        if self.rx is not None and self.ctrl is not None:
            try:
                self.ctrl.send(_RESET, _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL)
            except OSError:
                pass
            self.shut_wr = True  # no end of stream in the ring: the peer sees a reset
        self.close()

    def _ring_peer(self) -> None:
        self.doorbells += 1
        try:
            os.eventfd_write(self.peer_doorbell, 1)
        except OSError:
            pass

    # ------------------------------------------------------------------ the C lane
    def _lane_pending(self) -> None:
        """The lane holds a pending pop now: serve this channel while waiting."""
        self.backend.want(self)

    def _take_lane_pops(self) -> None:
        """Move the lane's pending pops (older than ours) to the Python path."""
        lane = self.lane
        if lane is not None:
            lane.pop_ok = 0
            if lane.pending:
                self._pops.extendleft(reversed(lane.take_pending()))

    def _sync_lane(self) -> None:
        """Let the lane work again when this side has nothing pending or unusual."""
        lane = self.lane
        if lane is not None and not lane.closed:
            bad = self.error or self.closed or self.peer_gone
            lane.pop_ok = not (bad or self._pops or self.eof or self._pushback
                               or self._partial is not None or self._zc_held)
            lane.push_ok = not (bad or self._pushes or self.shut_wr or self._resv is not None)

    # ------------------------------------------------------------------ ring memory
    def sgaalloc_on(self, size: int) -> SGArray | None:
        """An sga over ``size`` bytes reserved in the transmit ring (one at a time), or None
        (ordinary memory then). Until it is pushed or freed, other pushes fail ``EBUSY``: the
        ring's next element is that space."""
        tx = self.tx
        if tx is None or self._resv is not None or self._pushes or self.error or self.closed \
                or self.shut_wr:
            return None
        try:
            view = tx.reserve(size)
        except (OSError, ValueError):
            return None  # bigger than the ring can ever hold, or the ring is closed
        if view is None:
            return None
        sga = SGArray((view,))
        sga._release = functools.partial(self._resv_cancel, sga)
        self._resv = sga
        if self.lane is not None:
            self.lane.push_ok = 0
        return sga

    def _resv_cancel(self, sga: SGArray) -> None:
        """Freed without a push: give the space back."""
        with self.core.lock:
            if self._resv is sga:
                self._resv = None
                if self.tx is not None and not self.closed:
                    self.tx.cancel()
                self.service()

    def _push_reserved(self, op: Op, segs: tuple[Any, ...]) -> None:
        """``push`` of the ring-allocated sga; other data is refused while it is out."""
        resv = self._resv
        if len(segs) != 1 or segs[0] is not resv._bufs[0]:
            raise OSError(errno.EBUSY, "an sga allocated in this connection's ring "
                          "(sgaalloc(size, qd=...)) must be pushed or freed first")
        self._resv = None
        resv._release = None  # its memory is the element now
        view = segs[0]
        try:
            self.tx.commit(view.nbytes)
        except (OSError, ValueError) as e:
            self.core.complete(op, failed(op, getattr(e, "errno", None) or errno.EPIPE))
            return
        if self.tx.take_doorbell():
            self._ring_peer()
        self.core.complete(op, pushed(op.qd, op.qt))

    # ------------------------------------------------------------------ push
    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        if self.error:
            self.core.complete(op, failed(op, self.error))
            return
        if self._resv is not None:
            self._push_reserved(op, segs)
            self._sync_lane()
            return
        if self._pushes or self.tx is None or not self._try_push(op, segs):
            self._pushes.append((op, segs))
            if self.lane is not None:
                self.lane.push_ok = 0
            self.backend.want(self)

    def _try_push(self, op: Op, segs: tuple[Any, ...]) -> bool:
        tx = self.tx
        try:
            rc = tx.push(segs[0] if len(segs) == 1 else segs)
        except RingCorruptedError:
            self._fail(errno.ECONNRESET)
            return True
        except BrokenPipeError:
            self.core.complete(op, failed(op, errno.ECONNRESET if self.peer_gone else errno.EPIPE))
            return True
        except OSError as e:
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return True
        if rc:
            if self.peer_gone:
                self.core.complete(op, failed(op, errno.ECONNRESET))
                return True
            return False
        if tx.take_doorbell():
            self._ring_peer()
        self.core.complete(op, pushed(op.qd, op.qt))
        return True

    # ------------------------------------------------------------------ pop
    def pop(self, op: Op, size: int | None) -> None:
        lane = self.lane
        if lane is not None and lane.pop_ok and lane.pop_op(op, size):
            return
        if self._pops or self.rx is None or not self._try_pop(op, size):
            self._pops.append((op, size))
            if lane is not None:
                lane.pop_ok = 0
            self.backend.want(self)
        else:
            self._sync_lane()

    def cancel(self, op: Op) -> bool:
        if self.lane is not None and self.lane.cancel(op):
            return True
        for item in self._pops:
            if item[0] is op:
                self._pops.remove(item)
                return True
        return False

    def unpop(self, result: Any) -> bool:
        self._take_lane_pops()
        self._pushback.appendleft(result)
        self.service()
        return True

    def _try_pop(self, op: Op, size: int | None) -> bool:
        core = self.core
        if self._pushback:
            core.complete(op, self._pushback.popleft()._replace(qd=op.qd, qt=op.qt))
            return True
        part = self._partial
        if part is not None:
            if size is None or size >= len(part):
                self._partial = None
                core.complete(op, popped(op.qd, op.qt, part))
            else:
                self._partial = part[size:]
                core.complete(op, popped(op.qd, op.qt, part[:size]))
            return True
        if self.error:
            core.complete(op, failed(op, self.error))
            return True
        if self.eof:
            core.complete(op, popped(op.qd, op.qt, _EMPTY))
            return True
        if self._zc_dropped:
            self._zc_apply_dropped()
        if self._zc_held:
            return False  # the ring's next element comes after the one handed out is freed
        rx = self.rx
        try:
            views = rx.try_pop()
        except EOFError:
            self.eof = True
            core.complete(op, popped(op.qd, op.qt, _EMPTY))
            return True
        except (RingCorruptedError, ValueError):
            self._fail(errno.ECONNRESET)
            return True
        if views is None:
            if self.peer_gone:  # died without closing: what it sent is drained
                self.error = errno.ECONNRESET
                core.complete(op, failed(op, self.error))
                return True
            return False
        if len(views) == 1 and self.zc_min and views[0].nbytes >= self.zc_min \
                and (size is None or views[0].nbytes <= size):
            core.complete(op, popped_sga(op.qd, op.qt, self._zero_copy(views[0])))
            return True
        if len(views) == 1:
            data = views[0].tobytes()
            rx.release()
            if size is not None and len(data) > size:
                mv = memoryview(data)
                self._partial = mv[size:]
                data = mv[:size]
            result = popped(op.qd, op.qt, data)
        else:
            segs = [v.tobytes() for v in views]
            rx.release()
            total = sum(map(len, segs))
            if size is not None and total > size:
                mv = memoryview(b"".join(segs))
                self._partial = mv[size:]
                result = popped(op.qd, op.qt, mv[:size])
            else:
                result = popped_sga(op.qd, op.qt, SGArray(segs))
        if rx.take_doorbell():
            self._ring_peer()
        core.complete(op, result)
        return True

    def _zero_copy(self, view: memoryview) -> SGArray:
        """An sga over ``view`` in the ring; the ring moves on once it is freed (or dropped)."""
        self._zc_held = True
        self._zc_gen += 1
        sga = SGArray((view,), release=functools.partial(self._zc_release, self._zc_gen))
        # dropped without free(): noted here (any thread, even inside the core), applied by
        # the next pop or poll of this channel
        fin = weakref.finalize(sga, self._zc_note_dropped, self._zc_gen)
        fin.atexit = False
        return sga

    def _zc_note_dropped(self, gen: int) -> None:
        if self.closed:
            return
        self._zc_dropped.append(gen)
        try:
            self.backend.wake()
        except OSError:
            pass

    def _zc_apply_dropped(self) -> None:
        while self._zc_dropped:
            if self._zc_dropped.popleft() == self._zc_gen:
                self._zc_release(self._zc_gen, serve=False)

    def _zc_release(self, gen: int, serve: bool = True) -> None:
        """The zero-copy element ``gen`` was freed: release it in the ring, serve pops."""
        with self.core.lock:
            if not self._zc_held or gen != self._zc_gen or self.closed or self.rx is None:
                return
            self._zc_held = False
            try:
                self.rx.release()
            except (ValueError, OSError):
                pass
            if self.rx.take_doorbell():
                self._ring_peer()
            if serve:
                self.service()
                if self.core._deferred:
                    self.core.drain()

    # ------------------------------------------------------------------ progress
    @property
    def pending(self) -> bool:
        return bool(self._pops or self._pushes or (self.lane is not None and self.lane.pending))

    def service(self) -> bool:
        """Move what can move now; True if some op completed."""
        if self.rx is None:
            return False
        done = False
        lane = self.lane
        if lane is not None and lane.pending:
            done = lane.service() > 0
            if lane.need_python:
                self._take_lane_pops()
        pops = self._pops
        while pops:
            op, size = pops[0]
            if not self._try_pop(op, size):
                break
            if pops and pops[0][0] is op:  # (a failure may have emptied the queue)
                pops.popleft()
            done = True
        pushes = self._pushes
        while pushes:
            op, segs = pushes[0]
            if not self._try_push(op, segs):
                break
            if pushes and pushes[0][0] is op:
                pushes.popleft()
            done = True
        if self._shut_pending and not pushes:
            self.shutdown_write()
        self._sync_lane()
        if not pops and not pushes and not (lane is not None and lane.pending):
            self.backend.unwant(self)
        return done

    def ready_hint(self) -> bool:
        """Cheap check used while spinning: might ``service`` complete something?"""
        lane = self.lane
        return bool(self._pops or (lane is not None and lane.pending)) and self.rx is not None \
            and (not self._zc_held or bool(self._zc_dropped)) \
            and (self.rx.readable() or self.peer_gone)

    def doze(self) -> bool:
        """Announce sleep on the rings this channel waits for; False if it must not sleep."""
        if self.rx is None:
            return True
        if self._zc_dropped:
            return False  # a dropped zero-copy element to release first
        if (self._pops or (self.lane is not None and self.lane.pending)) and not self._zc_held:
            if self._partial is not None or self._pushback or self.peer_gone \
                    or not self.rx.doze_readable():
                return False
        if self._pushes:
            segs = self._pushes[0][1]
            size = sum(memoryview(s).nbytes for s in segs)
            try:
                if not self.tx.doze_writable(size, len(segs)):
                    return False
            except OSError:
                return False
        return True

    def wake_up(self) -> None:
        if self.rx is not None:
            self.rx.wake_up(False)
            self.tx.wake_up(True)

    # ------------------------------------------------------------------ end
    def _fail(self, code: int) -> None:
        """A broken or hostile connection: fail everything pending, keep failing."""
        self.error = code
        self._take_lane_pops()
        self._sync_lane()
        core = self.core
        while self._pops:
            op, _ = self._pops.popleft()
            core.complete(op, failed(op, code))
        while self._pushes:
            op, _ = self._pushes.popleft()
            core.complete(op, failed(op, code))

    def shutdown_write(self) -> None:
        self.shut_wr = True
        if self.lane is not None:
            self.lane.push_ok = 0
        if self._pushes and not self.closed and not self.error:
            self._shut_pending = True  # the queued pushes go first (as the kernel sends them)
            return
        self._shut_pending = False
        if self.tx is not None:
            self.tx.close_producer()
            if self.tx.take_doorbell():
                self._ring_peer()

    def close(self) -> None:
        """Cancel pending ops, tell the peer (end of stream), release everything."""
        if self.closed:
            return
        self.closed = True
        self._resv = None  # an sga still out keeps its (now unused) memory mapped
        core = self.core
        lane = self.lane
        if lane is not None:
            self._take_lane_pops()
            lane.close()
            if core._lanes.get(self.qd) is lane:
                del core._lanes[self.qd]
        for op, _ in self._pops:
            core.complete(op, failed(op, errno.ECANCELED))
        for op, _ in self._pushes:
            core.complete(op, failed(op, errno.ECANCELED))
        self._pops.clear()
        self._pushes.clear()
        self.backend.unwant(self)
        if self.rx is not None and not self._last_holder():
            # another process (forked after this connection was made) still holds it, as
            # with a kernel socket: release this process's copies, leave the stream open
            self.backend.unwatch_fd(self.ctrl.fileno(), self)
            self.ctrl.close()
            self.tx.close()
            self.rx.close()
            os.close(self.peer_doorbell)
            return
        if self.rx is not None:
            if not self.shut_wr:
                self.shutdown_write()
            self.rx.close_consumer()
            if self.rx.take_doorbell():
                self._ring_peer()
            self.backend.unwatch_fd(self.ctrl.fileno(), self)
            self.ctrl.close()
            self.tx.close()
            self.rx.close()
            os.close(self.peer_doorbell)

    def _last_holder(self) -> bool:
        """Is this process the last one holding the connection? Every holder keeps a copy of
        ``holders[0]``; once a process has closed its copy, ``holders[1]`` reads end of file
        only if no other process holds one (the kernel counts the references)."""
        pair = self.holders
        if pair is None:
            return True
        self.holders = None
        a, b = pair
        a.close()
        try:
            last = b.recv(1, _socket.MSG_DONTWAIT | _socket.MSG_PEEK) == b""
        except BlockingIOError:
            last = False
        except OSError:
            last = True
        b.close()
        return last

    def add_lane_counts(self, s: dict[str, Any]) -> None:
        """Add what the C lane moved to a queue's ``pushes``/``pops``/``bytes_*`` counts."""
        lane = self.lane
        if lane is not None:
            s["pushes"] += lane.pushes
            s["pops"] += lane.pops
            s["bytes_out"] += lane.bytes_out
            s["bytes_in"] += lane.bytes_in

    def stats(self) -> dict[str, Any]:
        lane = self.lane
        s: dict[str, Any] = {"path": "shm", "peer_gone": self.peer_gone,
                             "doorbells_rung": self.doorbells + (lane.doorbells if lane else 0)}
        if lane is not None:
            s.update(fast_pushes=lane.pushes, fast_pops=lane.pops, fast_bytes_out=lane.bytes_out,
                     fast_bytes_in=lane.bytes_in, wait_spins=lane.spins,
                     wait_spin_hits=lane.spin_hits, wait_spin_yields=lane.spin_yields)
        if self.rx is not None:
            s["rx_ring"] = self.rx.stats
            s["tx_ring"] = self.tx.stats
            s["ring_capacity"] = self.rx.capacity
        return s
