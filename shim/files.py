"""``open()`` of regular files over library-OS file queues.

``open(path, mode)`` for a regular file in mode ``r``, ``w``, ``a`` or ``x`` (binary or text)
opens a file queue (``LibOS.open``) and returns the standard io stack that the builtin
``open`` builds: ``DemiFileIO`` (a raw file: ``readinto`` pops, ``write`` pushes) wrapped in
``BufferedReader``/``BufferedWriter`` and ``TextIOWrapper``. ``fileno()`` is the qd.

What stays with the kernel:

* fds (``open(3)``, ``os.fdopen``, ``tempfile``), ``opener=``, and anything that is not a
  regular file (pipes, devices, directories): passed to the builtin ``open`` untouched;
* ``+`` modes (one offset shared by reads and writes), a ``seek()`` to another position and
  ``truncate()``: a file queue has separate, forward-only read and write offsets, so these
  are kernel fallbacks (counted, refused by ``--strict``). After a seek the raw file keeps its
  qd but reads and writes at its own offset through a kernel fd of the same file.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
import weakref
from typing import Any

from queueapi.types import Opcode
from shim import _orig, runtime

__all__ = ["open", "DemiFileIO", "file_of", "os_lseek"]

_VALID_NEWLINES = (None, "", "\n", "\r", "\r\n")
_READALL_CHUNK = 1 << 20


class DemiFileIO(io.RawIOBase):
    """A raw binary file over a library-OS file queue (what ``FileIO`` is for the kernel)."""

    def __init__(self, rt: runtime.Runtime, name: Any, path: str, qd: int, mode: str,
                 flags: int, pos: int) -> None:
        super().__init__()
        self._rt = rt
        self._los = rt.los
        self.name = name
        self._path = path
        self._qd = qd
        self._demi_qd = qd
        self._mode = mode            # "rb", "wb", "ab", "xb"
        self._flags = flags
        self._readable = mode[0] == "r"
        self._writable = not self._readable
        self._append = mode[0] == "a"
        self._pos = pos
        self._kfd = -1               # a kernel fd of the same file, after a seek/truncate
        rt.files[qd] = weakref.ref(self)  # for os.lseek/os.sendfile on the qd

    # ------------------------------------------------------------------ identity
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def closefd(self) -> bool:
        return True

    def __repr__(self) -> str:
        if self.closed:
            return "<shim.files.DemiFileIO [closed]>"
        return f"<shim.files.DemiFileIO name={self.name!r} mode={self._mode!r} closefd=True>"

    def fileno(self) -> int:
        self._check_closed()
        return self._qd

    def readable(self) -> bool:
        self._check_closed()
        return self._readable

    def writable(self) -> bool:
        self._check_closed()
        return self._writable

    def seekable(self) -> bool:
        self._check_closed()
        return True

    def isatty(self) -> bool:
        self._check_closed()
        return False

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    # ------------------------------------------------------------------ data
    def readinto(self, b: Any) -> int:
        self._check_closed()
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        mv = memoryview(b).cast("B")
        n = len(mv)
        if n == 0:
            return 0
        if self._kfd >= 0:
            data = os.pread(self._kfd, n, self._pos)
            k = len(data)
            mv[:k] = data
            self._pos += k
            return k
        los = self._los
        r = los.wait(los.pop(self._qd, n))
        if r.opcode == Opcode.FAILED:
            raise OSError(r.ret, os.strerror(r.ret))
        sga = r.sga
        k = 0
        for seg in sga.segments:
            ln = len(seg)
            mv[k:k + ln] = seg
            k += ln
        try:
            sga.free()
        except (OSError, ValueError):
            pass
        self._pos += k
        return k

    def readall(self) -> bytes:
        self._check_closed()
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        chunks = []
        if self._kfd >= 0:
            while True:
                data = os.pread(self._kfd, _READALL_CHUNK, self._pos)
                if not data:
                    break
                self._pos += len(data)
                chunks.append(data)
            return b"".join(chunks)
        los = self._los
        while True:
            r = los.wait(los.pop(self._qd, _READALL_CHUNK))
            if r.opcode == Opcode.FAILED:
                raise OSError(r.ret, os.strerror(r.ret))
            sga = r.sga
            data = sga.tobytes()
            try:
                sga.free()
            except (OSError, ValueError):
                pass
            if not data:
                break
            self._pos += len(data)
            chunks.append(data)
        return b"".join(chunks)

    def write(self, b: Any) -> int:
        self._check_closed()
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        mv = memoryview(b).cast("B")
        n = len(mv)
        if n == 0:
            return 0
        if self._kfd >= 0:
            if self._append:
                k = os.write(self._kfd, mv)
                self._pos = os.lseek(self._kfd, 0, os.SEEK_END)
            else:
                k = os.pwrite(self._kfd, mv, self._pos)
                self._pos += k
            return k
        los = self._los
        r = los.wait(los.push(self._qd, mv))  # completes once written: b may be reused after
        if r.opcode == Opcode.FAILED:
            raise OSError(r.ret, os.strerror(r.ret))
        self._pos += n
        return n

    # ------------------------------------------------------------------ position
    def tell(self) -> int:
        self._check_closed()
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._check_closed()
        if not isinstance(pos, int):
            raise TypeError(f"'{type(pos).__name__}' object cannot be interpreted as an integer")
        if whence == os.SEEK_SET:
            target = pos
        elif whence == os.SEEK_CUR:
            target = self._pos + pos
        elif whence == os.SEEK_END:
            target = self._size() + pos
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if target != self._pos:
            self._to_kernel(f"seek({pos}, {whence})")
            self._pos = target
        return target

    def truncate(self, size: int | None = None) -> int:
        self._check_closed()
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        if size is None:
            size = self._pos
        self._to_kernel(f"truncate({size})")
        os.ftruncate(self._kfd, size)
        return size

    def _size(self) -> int:
        if self._kfd >= 0:
            return os.fstat(self._kfd).st_size
        try:
            return os.fstat(self._qd).st_size  # the qd is the file's own fd on posix
        except OSError:
            return os.stat(self._path).st_size

    def _to_kernel(self, call: str) -> None:
        """Serve the rest of this file's reads and writes from a kernel fd (a fallback)."""
        if self._kfd >= 0:
            return
        self._rt.fallback("file", f"{call} on {self.name!r}",
                          "a file queue only moves forward")
        flags = self._flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        self._kfd = os.open(self._path, flags | os.O_CLOEXEC)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flush
        finally:
            rt = self._rt
            ref = rt.files.get(self._qd)
            if ref is not None and ref() is self:
                del rt.files[self._qd]
            rt.note_closed(self._qd)
            try:
                self._los.close(self._qd)
            except OSError:
                pass
            if self._kfd >= 0:
                os.close(self._kfd)
                self._kfd = -1

    def _dealloc_warn(self, source: Any) -> None:
        """Called by the buffered/text object over this file when it is collected open."""
        if not self.closed:
            warnings.warn(f"unclosed file {source!r}", ResourceWarning, stacklevel=2,
                          source=source)

    def __del__(self) -> None:
        if not self.closed:
            try:
                warnings.warn(f"unclosed file {self!r}", ResourceWarning, source=self)
            except Exception:
                pass
        super().__del__()

    def __getstate__(self) -> Any:
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")


def _parse_mode(mode: Any) -> tuple[str, bool, bool] | None:
    """(kind, binary, plus) for a valid mode, else None (the builtin open reports it)."""
    if not isinstance(mode, str):
        return None
    chars = set(mode)
    if len(chars) != len(mode) or not chars <= set("rwaxbt+"):
        return None
    kinds = chars & set("rwax")
    if len(kinds) != 1 or ("b" in chars and "t" in chars):
        return None
    return kinds.pop(), "b" in chars, "+" in chars


def open(file: Any, mode: str = "r", buffering: int = -1, encoding: str | None = None,
         errors: str | None = None, newline: str | None = None, closefd: bool = True,
         opener: Any = None) -> Any:
    """``open()``: regular files go through the library OS (see the module docstring)."""
    rt = runtime.current()
    if rt is None or runtime.internal_open_caller():
        return _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                   opener)
    parsed = _parse_mode(mode)
    if (parsed is None or opener is not None or not closefd
            or isinstance(file, (int, bool)) or not isinstance(file, (str, bytes, os.PathLike))
            or not isinstance(buffering, int)
            or (parsed[1] and (encoding is not None or errors is not None or newline is not None))
            or (not parsed[1] and buffering == 0) or newline not in _VALID_NEWLINES):
        # fds, openers and every argument error: the builtin open (and its exact messages)
        f = _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                opener)
        with rt.lock:
            rt.stats.passthrough_files += 1
        return f
    kind, binary, plus = parsed
    try:
        path = os.fspath(file)
    except TypeError:
        return _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                   opener)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None and kind == "r":  # missing: the builtin open raises exactly as it should
        return _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                   opener)
    if st is not None and not stat.S_ISREG(st.st_mode):
        f = _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                opener)
        with rt.lock:
            rt.stats.passthrough_files += 1
        return f
    if plus:
        rt.fallback("file", f"open({file!r}, {mode!r})",
                    "a file queue has no shared read/write offset")
        return _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                   opener)
    flags = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
             "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[kind]
    try:
        qd = rt.los.open(path, flags, 0o666)
    except OSError as e:
        if not runtime.unsupported(e):
            if e.errno == errno.EISDIR or e.filename is None:
                # the builtin open raises the same error with its usual message
                return _orig.builtins_open(file, mode, buffering, encoding, errors, newline,
                                           closefd, opener)
            raise
        rt.fallback("file", f"open({file!r}, {mode!r})",
                    f"the {rt.los.name} library OS has no files: {e.strerror}")
        return _orig.builtins_open(file, mode, buffering, encoding, errors, newline, closefd,
                                   opener)
    with rt.lock:
        rt.stats.files += 1
    pos = 0
    if kind == "a":
        try:
            pos = os.fstat(qd).st_size
        except OSError:
            pos = os.stat(path).st_size
    raw = DemiFileIO(rt, file, path, qd, kind + "b", flags, pos)
    result: Any = raw
    try:
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering = -1
            line_buffering = True
        if buffering < 0:
            try:
                bs = os.fstat(qd).st_blksize
            except OSError:
                bs = 0
            buffering = bs if bs > 1 else io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if binary:
                return result
            raise ValueError("can't have unbuffered text I/O")  # checked above; for safety
        if binary and line_buffering:
            warnings.warn("line buffering (buffering=1) isn't supported in binary mode, "
                          "the default buffer size will be used", RuntimeWarning, 2)
        buffer: Any
        if kind == "r":
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        result = buffer
        if binary:
            buffer._demi_qd = qd
            return result
        text = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
        result = text
        text.mode = mode
        text._demi_qd = qd
        return result
    except BaseException:
        result.close()
        raise


def file_of(fd: Any) -> DemiFileIO | None:
    """The open shim file whose qd is ``fd``, if any."""
    rt = runtime.current()
    if rt is None or fd.__class__ is not int:
        return None
    ref = rt.files.get(fd)
    raw = ref() if ref is not None else None
    if raw is None or raw.closed:
        return None
    return raw


_orig_os_lseek = os.lseek


def os_lseek(fd: Any, position: int, whence: int, /) -> int:
    """``os.lseek`` on the qd of a file the shim opened moves that file's position (what
    ``tell()`` reports, where the next read or write happens), as it would move a kernel
    file's; asyncio's native sendfile sets the file position this way."""
    raw = file_of(fd)
    if raw is None:
        return _orig_os_lseek(fd, position, whence)
    return raw.seek(position, whence)
