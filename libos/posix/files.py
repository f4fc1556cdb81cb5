"""File queues of the posix library OS: ``pwritev``/``pread`` at queue offsets.

A file queue has a write offset (0, or the end with ``O_APPEND``) and a read offset (0).
A push writes one element at the write offset; a pop reads the next bytes at the read
offset, and a zero-length pop is end of file. With ``framing=True`` each element is stored as
one v0.0 frame (see ``queueapi.framing``), so the file is a durable element log; a record cut
short (a torn write) or a bad header pops as ``FAILED``/``EIO``. File I/O completes within
the call (regular files do not block on readiness).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Any

from libos.base import Op, Queue, failed, oserror
from queueapi.framing import HEADER, FrameDecoder, FramingError, encode_iovecs
from queueapi.types import SGArray, popped_sga, pushed

DEFAULT_POP = 8192


class FileQueue(Queue):
    kind = "file"

    def __init__(self, core: Any, path: str, flags: int, mode: int, framing: bool) -> None:
        fd = os.open(path, flags | os.O_CLOEXEC, mode)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise oserror(errno.EISDIR, path)
        except BaseException:
            os.close(fd)
            raise
        super().__init__(core, fd)
        acc = flags & os.O_ACCMODE
        self.path = path
        self.can_read = acc in (os.O_RDONLY, os.O_RDWR)
        self.can_write = acc in (os.O_WRONLY, os.O_RDWR)
        self.append = bool(flags & os.O_APPEND)
        self.framing = framing
        self.element_preserving = framing
        self.roff = 0
        self.woff = st.st_size if self.append else 0
        self.closed = False
        self.syscalls = 0

    def _check(self, writing: bool) -> None:
        if self.closed:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if writing and not self.can_write:
            raise oserror(errno.EBADF, f"{self.path!r} was not opened for writing")
        if not writing and not self.can_read:
            raise oserror(errno.EBADF, f"{self.path!r} was not opened for reading")

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check(True)
        bufs = encode_iovecs(segs) if self.framing else list(segs)
        total = sum(memoryview(b).nbytes for b in bufs)
        try:
            done = 0
            while done < total:
                self.syscalls += 1
                if self.append:
                    n = os.writev(self.qd, bufs)
                else:
                    n = os.pwritev(self.qd, bufs, self.woff + done)
                done += n
                if done < total:  # a short write: continue after what was written
                    bufs = _advance(bufs, n)
        except OSError as e:
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return
        self.woff += total
        self.core.complete(op, pushed(op.qd, op.qt))

    def pop(self, op: Op, size: int | None) -> None:
        self._check(False)
        try:
            sga = self._read_frame() if self.framing else self._read(size or DEFAULT_POP)
        except OSError as e:
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return
        self.core.complete(op, popped_sga(op.qd, op.qt, sga))

    def _read(self, size: int) -> SGArray:
        self.syscalls += 1
        data = os.pread(self.qd, size, self.roff)
        self.roff += len(data)
        return SGArray.from_bytes(data)

    def _read_frame(self) -> SGArray:
        self.syscalls += 1
        head = os.pread(self.qd, HEADER.size, self.roff)
        if not head:
            return SGArray.from_bytes(b"")
        if len(head) < HEADER.size:
            raise oserror(errno.EIO, f"torn record header at offset {self.roff} of {self.path!r}")
        dec = FrameDecoder()
        dec.feed(head)
        try:
            dec.next_element()  # validates the header (magic, counts, size limit)
        except FramingError as e:
            raise oserror(errno.EIO, f"bad record at offset {self.roff} of {self.path!r}: {e}") from None
        _, nbytes, _ = HEADER.unpack(head)
        self.syscalls += 1
        body = os.pread(self.qd, nbytes, self.roff + HEADER.size)
        if len(body) < nbytes:
            raise oserror(errno.EIO, f"torn record at offset {self.roff} of {self.path!r}")
        dec.feed(body)
        try:
            segs = dec.next_element()
        except FramingError as e:
            raise oserror(errno.EIO, f"bad record at offset {self.roff} of {self.path!r}: {e}") from None
        self.roff += HEADER.size + nbytes
        return SGArray(segs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.qd)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(path="kernel", file=self.path, framing=self.framing, read_offset=self.roff,
                 write_offset=self.woff, syscalls=self.syscalls)
        return s


def _advance(bufs: list[Any], n: int) -> list[Any]:
    """``bufs`` without their first ``n`` bytes."""
    out = []
    for b in bufs:
        mv = memoryview(b).cast("B")
        if n >= len(mv):
            n -= len(mv)
            continue
        out.append(mv[n:])
        n = 0
    return out
