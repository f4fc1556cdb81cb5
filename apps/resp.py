"""Sans-IO RESP2 request parser and reply encoders, behaving as redis-server 7.0 does.

The parser knows nothing about sockets: feed it the bytes a client sent, in any
chunking, and it returns the complete commands found so far, each as a list of
``bytes`` arguments. It accepts what Redis accepts:

* multibulk requests (``*N\\r\\n$len\\r\\narg\\r\\n...``),
* inline requests (a line of space-separated words, with Redis's ``"..."`` and
  ``'...'`` quoting and ``\\xHH`` escapes),
* any number of requests in one chunk (pipelining).

Malformed input raises :class:`ProtocolError` whose text is exactly what Redis
replies (``Protocol error: invalid bulk length`` ...); Redis then closes the
connection, and so should the caller. The parser is dead after an error.

The common case, well-formed multibulk requests, is parsed in C (apps/_resp.c, built
with the package) when it is built, with results identical to the Python loop, which
handles everything else; ``APPS_NO_C=1`` turns the C part off.

Memory stays bounded by what actually arrived: a bulk length of up to 512 MB is
accepted (as Redis does) but nothing is allocated for it up front, and a line
still missing its terminator may grow to 64 KiB only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

try:  # the C scanner of plain multibulk requests (apps/_resp.c), unless APPS_NO_C is set
    from apps._resp import scan as _c_scan
except ImportError:  # not built: the Python loop does everything
    _c_scan = None
if os.environ.get("APPS_NO_C"):
    _c_scan = None

__all__ = [
    "MAX_BULK_LEN",
    "MAX_INLINE_LEN",
    "MAX_MULTIBULK_LEN",
    "NULL_ARRAY",
    "NULL_BULK",
    "OK",
    "Parser",
    "ProtocolError",
    "encode_array",
    "encode_bulk",
    "encode_error",
    "encode_integer",
    "encode_raw_array",
    "encode_simple",
    "parse_ll",
    "split_inline",
]

#: Largest bulk argument accepted (Redis's default ``proto-max-bulk-len``).
MAX_BULK_LEN = 512 * 1024 * 1024
#: Largest multibulk count accepted. Redis 7.0 accepts up to INT_MAX (6.2 and
#: older stopped at 1024*1024); arguments are only stored as they arrive.
MAX_MULTIBULK_LEN = 2**31 - 1
#: Largest line (inline request, or ``*N``/``$N`` header) kept while waiting
#: for its terminator (Redis's ``PROTO_INLINE_MAX_SIZE``).
MAX_INLINE_LEN = 64 * 1024

_LLONG_MAX = 2**63 - 1
_LLONG_MIN = -(2**63)

OK = b"+OK\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"


class ProtocolError(Exception):
    """A request Redis would reject with ``-ERR Protocol error: ...``.

    ``text`` is the error text without the ``ERR`` prefix (bytes, since Redis
    may echo a raw byte of the request), ``reply`` the encoded error reply, and
    ``commands`` the complete commands parsed, in the same ``feed`` call, before
    the malformed part: the caller runs them, sends their replies, then the
    error, then closes the connection.
    """

    def __init__(self, text: bytes, commands: list[list[bytes]] | None = None) -> None:
        super().__init__(text.decode("latin-1"))
        self.text = text
        self.reply = b"-ERR " + text + b"\r\n"
        self.commands: list[list[bytes]] = commands if commands is not None else []


def parse_ll(s: bytes) -> int | None:
    """Parse ``s`` as Redis's ``string2ll`` does, or return None.

    Accepted: an optional ``-`` then decimal digits, no leading zero (``0``
    itself is fine, ``-0`` is not), no sign ``+``, no spaces, within the range
    of a signed 64-bit integer.
    """
    n = len(s)
    if n == 0 or n >= 21:
        return None
    if s.isdigit():  # bytes.isdigit is ASCII-only
        if s[0] == 48 and n > 1:
            return None
        v = int(s)
        return v if v <= _LLONG_MAX else None
    if s[0] == 45 and n > 1 and s[1] != 48 and s[1:].isdigit():
        v = -int(s[1:])
        return v if v >= _LLONG_MIN else None
    return None


# ---------------------------------------------------------------------------
# Inline requests
# ---------------------------------------------------------------------------

_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_BLANKS = b" \t\n\v\f\r"  # C isspace()
_TOKEN_END = b" \n\r\t"  # what ends an unquoted word in sdssplitargs
_SIMPLE_LINE = re.compile(rb"[^\"'\x0b\x0c]*")


def split_inline(line: bytes) -> list[bytes] | None:
    """Split one inline request line into arguments as Redis's ``sdssplitargs``.

    Returns None when quotes are unbalanced, or when a closing quote is not
    followed by a blank or the end of the line. ``line`` must not contain the
    terminating newline nor a NUL byte.
    """
    if _SIMPLE_LINE.fullmatch(line):
        return line.split()
    return _split_quoted(line)


def _split_quoted(line: bytes) -> list[bytes] | None:
    """Slow path of :func:`split_inline`, for lines with quotes or \\v / \\f."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            c = line[i] if i < n else 0
            if inq:
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
            elif insq:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
            elif i >= n or c in _TOKEN_END:
                break
            elif c == 34:
                inq = True
            elif c == 39:
                insq = True
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

_ERR_BULK = b"Protocol error: invalid bulk length"
_ERR_MBULK = b"Protocol error: invalid multibulk length"
_ERR_INLINE = b"Protocol error: too big inline request"
_ERR_MBULK_STR = b"Protocol error: too big mbulk count string"
_ERR_BULK_STR = b"Protocol error: too big bulk count string"
_ERR_QUOTES = b"Protocol error: unbalanced quotes in request"


class _NeedMore(Exception):
    """Internal: the buffer ends inside a line (a quirk makes it look so)."""


class Parser:
    """Incremental RESP2 request parser for one connection.

    Contract: ``feed(data)`` takes the next bytes of the stream (any chunking)
    and returns the list of commands completed by them, in order; each command
    is a non-empty list of ``bytes``. Empty inline lines and ``*0``/``*-1``
    requests yield nothing, as in Redis. On malformed input it raises
    :class:`ProtocolError` (carrying the commands completed before the error);
    every later call raises the same error.
    """

    __slots__ = ("_argv", "_buf", "_bulklen", "_error", "_left", "_need", "_pending", "_pending_len")

    #: apps._resp.scan, or None: the pure-Python parser (tests compare the two)
    _scan = _c_scan

    def __init__(self) -> None:
        self._buf = b""  # unparsed bytes
        self._pending: list[bytes] = []  # chunks received while waiting for a long bulk
        self._pending_len = 0
        self._need = 0  # bytes needed in _buf before parsing can progress (0: unknown)
        self._argv: list[bytes] = []  # arguments of the multibulk request in progress
        self._left = 0  # arguments still expected by that request
        self._bulklen = -1  # length of the bulk being read, -1 before its header
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held by the parser and not yet turned into commands."""
        return len(self._buf) + self._pending_len + sum(map(len, self._argv))

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Consume ``data``; return the commands it completes (see class doc)."""
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)
        if self._need:
            have = len(self._buf) + self._pending_len + len(data)
            if have < self._need:
                self._pending.append(data)
                self._pending_len += len(data)
                return []
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
            self._need = 0
        buf = self._buf + data if self._buf else data
        commands: list[list[bytes]] = []
        pos = 0
        if self._scan is not None:  # the plain multibulk requests, in C
            pos, self._left, self._bulklen, self._argv = self._scan(
                buf, self._left, self._bulklen, self._argv, commands)
        if pos < len(buf):
            try:
                pos = self._parse(buf, pos, commands)
            except ProtocolError as err:
                self._buf = b""
                self._argv = []
                err.commands = commands
                self._error = err
                raise
        self._buf = buf[pos:] if pos < len(buf) else b""
        if self._bulklen >= 0:
            self._need = self._bulklen + 2
        return commands

    def _parse(self, buf: bytes, pos: int, commands: list[list[bytes]]) -> int:
        """Parse complete commands of ``buf[pos:]`` into ``commands``; return the end offset.

        ``_scan`` (apps/_resp.c, when built) has parsed the well-formed multibulk requests
        before ``pos``; this loop goes on from there and alone decides every error, limit
        and incomplete element.  One flat loop over local variables.
        """
        n = len(buf)
        left, bulklen, argv = self._left, self._bulklen, self._argv
        find = buf.find
        try:
            while pos < n:
                if not left:
                    if buf[pos] != 42:  # not '*': inline request
                        pos = self._inline(buf, pos, commands)
                        if pos < 0:
                            return -pos - 1
                        continue
                    cr = find(b"\r", pos)
                    if cr < 0 or cr + 1 >= n:
                        if cr < 0 and n - pos > MAX_INLINE_LEN:
                            raise ProtocolError(_ERR_MBULK_STR)
                        break
                    count = parse_ll(buf[pos + 1 : cr])
                    if count is None or count > MAX_MULTIBULK_LEN:
                        if find(b"\0", pos, cr) >= 0:  # Redis's strchr stops at NUL: it waits
                            return self._wait_line(n, pos, _ERR_MBULK_STR)
                        raise ProtocolError(_ERR_MBULK)
                    pos = cr + 2
                    if count <= 0:
                        continue
                    left = count
                    argv = []
                while left:
                    if bulklen < 0:
                        cr = find(b"\r", pos)
                        if cr < 0 or cr + 1 >= n:
                            if cr < 0 and n - pos > MAX_INLINE_LEN:
                                raise ProtocolError(_ERR_BULK_STR)
                            break
                        digits = buf[pos + 1 : cr]
                        if (
                            buf[pos] == 36
                            and digits.isdigit()
                            and len(digits) < 9
                            and (digits[0] != 48 or len(digits) == 1)
                        ):
                            bulklen = int(digits)  # fast path: a plain length below 10**8
                        else:
                            bulklen = self._bulk_header(buf, pos, cr)
                            if bulklen < 0:  # a NUL hides the line end from Redis: wait
                                self._wait_line(n, pos, _ERR_BULK_STR)
                                break
                        pos = cr + 2
                    end = pos + bulklen
                    if end + 2 > n:
                        break
                    # Like Redis, the two bytes after the payload are skipped unchecked.
                    argv.append(buf[pos:end])
                    pos = end + 2
                    bulklen = -1
                    left -= 1
                if left:
                    break
                commands.append(argv)
                argv = []
        finally:
            self._left, self._bulklen, self._argv = left, bulklen, argv
        return pos

    @staticmethod
    def _inline(buf: bytes, pos: int, commands: list[list[bytes]]) -> int:
        """Parse one inline line at ``pos``; return the next offset, or -(pos+1) to wait."""
        n = len(buf)
        nl = buf.find(b"\n", pos)
        if nl < 0 or buf.find(b"\0", pos, nl) >= 0:  # Redis's strchr stops at NUL
            if n - pos > MAX_INLINE_LEN:
                raise ProtocolError(_ERR_INLINE)
            return -pos - 1
        end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        args = split_inline(buf[pos:end])
        if args is None:
            raise ProtocolError(_ERR_QUOTES)
        if args:
            commands.append(args)
        return nl + 1

    @staticmethod
    def _bulk_header(buf: bytes, pos: int, cr: int) -> int:
        """Slow path of a ``$len`` line: the length, -1 to wait, or ProtocolError."""
        if buf[pos] != 36:  # '$'
            if buf.find(b"\0", pos, cr) >= 0:
                return -1
            got = buf[pos : pos + 1]
            if got in (b"\r", b"\n"):
                got = b" "
            raise ProtocolError(b"Protocol error: expected '$', got '" + got + b"'")
        bl = parse_ll(buf[pos + 1 : cr])
        if bl is None or bl < 0 or bl > MAX_BULK_LEN:
            if buf.find(b"\0", pos, cr) >= 0:
                return -1
            raise ProtocolError(_ERR_BULK)
        return bl

    @staticmethod
    def _wait_line(n: int, pos: int, err: bytes) -> int:
        """A header line holds a NUL: Redis does not see its end, so wait (bounded)."""
        if n - pos > MAX_INLINE_LEN:
            raise ProtocolError(err)
        return pos


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------


def encode_simple(s: bytes) -> bytes:
    """``+s\\r\\n``; ``s`` must not contain CR or LF."""
    return b"+" + s + b"\r\n"


def encode_error(s: bytes) -> bytes:
    """``-s\\r\\n``, with CR and LF in ``s`` replaced by spaces as Redis does.

    ``s`` carries its own prefix (``ERR ...``, ``WRONGTYPE ...``).
    """
    if b"\r" in s or b"\n" in s:
        s = s.replace(b"\r", b" ").replace(b"\n", b" ")
    return b"-" + s + b"\r\n"


def encode_integer(n: int) -> bytes:
    """``:n\\r\\n``."""
    return b":%d\r\n" % n


def encode_bulk(b: bytes | None) -> bytes:
    """``$len\\r\\nb\\r\\n``, or the null bulk ``$-1\\r\\n`` for None."""
    if b is None:
        return NULL_BULK
    return b"$%d\r\n%b\r\n" % (len(b), b)


def encode_array(items: Iterable[bytes | None] | None) -> bytes:
    """An array of bulk strings (None items are null bulks); None is the null array."""
    if items is None:
        return NULL_ARRAY
    parts = [b"$%d\r\n%b\r\n" % (len(x), x) if x is not None else NULL_BULK for x in items]
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def encode_raw_array(encoded: list[bytes]) -> bytes:
    """An array whose elements are already-encoded replies."""
    return b"*%d\r\n" % len(encoded) + b"".join(encoded)
