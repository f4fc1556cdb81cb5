"""Redis command layer, pure (no I/O): a keyspace and the commands acting on it.

``execute(store, argv, session)`` runs one command (``argv`` as the parser
yields it, a non-empty list of ``bytes``) and returns ``(reply, close)``:
the RESP2-encoded reply, byte-identical to what redis-server 7.0 sends for
the supported commands (error texts included), and whether the connection must
be closed once the reply is sent (QUIT).

A :class:`Store` holds 16 databases (SELECT) and the clock used for expiry. A
:class:`Session` is the per-connection state (selected database, client id and
name); each connection should get its own from :meth:`Store.new_session`.
Keys with a TTL expire lazily when touched, and actively when the I/O loop
calls :meth:`Store.expire_cycle` (about ten times a second, as Redis does).

Value types: ``bytes`` (string), ``collections.deque`` (list), ``dict``
(hash), ``set`` (set) and :class:`ZSet` (sorted set).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import os
import platform
import re
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from apps.resp import NULL_ARRAY, NULL_BULK, OK, parse_ll

__all__ = [
    "REDIS_VERSION",
    "Command",
    "Keyspace",
    "Session",
    "Store",
    "ZSet",
    "execute",
    "format_double",
    "glob_match",
    "parse_double",
]

REDIS_VERSION = "7.0.15"

_LLONG_MAX = 2**63 - 1
_LLONG_MIN = -(2**63)
_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)
_INF = float("inf")
_MAX_STRING = 512 * 1024 * 1024

# Shared replies.
PONG = b"+PONG\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
EMPTY_ARRAY = b"*0\r\n"
WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
SYNTAX_ERR = b"-ERR syntax error\r\n"
NOT_INT = b"-ERR value is not an integer or out of range\r\n"
NOT_FLOAT = b"-ERR value is not a valid float\r\n"
NOT_POSITIVE = b"-ERR value is out of range, must be positive\r\n"
OVERFLOW = b"-ERR increment or decrement would overflow\r\n"


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _array(items: list[bytes]) -> bytes:
    """Array of bulk strings (no None items)."""
    return b"*%d\r\n" % len(items) + b"".join([b"$%d\r\n%b\r\n" % (len(x), x) for x in items])


def _error(msg: bytes) -> bytes:
    """``-ERR msg`` with CR/LF mapped to spaces (user text may be echoed)."""
    return b"-ERR " + msg.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def _cstr(b: bytes) -> bytes:
    """What C's ``%s`` prints of ``b``: up to the first NUL."""
    z = b.find(b"\0")
    return b if z < 0 else b[:z]


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

_BLANKS = b" \t\n\v\f\r"
_FLOAT_RE = re.compile(
    rb"[+-]?(?:"
    rb"(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
    rb"|(?P<dec>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    rb"|(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    rb"|(?P<nan>[nN][aA][nN](?:\([0-9A-Za-z_]*\))?)"
    rb")"
)
_NONZERO_DEC = re.compile(rb"[1-9]")
_NONZERO_HEX = re.compile(rb"[1-9a-fA-F]")


def _strtod_value(m: re.Match[bytes]) -> tuple[float, bool]:
    """Value of a matched C float literal and whether strtod reports ERANGE
    with a zero or infinite result (underflow to 0, overflow)."""
    text = m.group(0)
    if m.group("nan") is not None:
        return float("nan"), False
    if m.group("inf") is not None:
        return float(text), False
    if m.group("hex") is not None:
        mant = re.split(rb"[pP]", m.group("hex")[2:])[0]
        try:
            v = float.fromhex(text.decode())
        except OverflowError:
            return (-_INF if text[:1] == b"-" else _INF), True
        return v, v == 0.0 and _NONZERO_HEX.search(mant) is not None
    v = float(text)
    if v in (_INF, -_INF):
        return v, True
    mant = re.split(rb"[eE]", m.group("dec"))[0]
    return v, v == 0.0 and _NONZERO_DEC.search(mant) is not None


def parse_double(s: bytes) -> float | None:
    """Parse ``s`` as Redis's ``string2d`` (used by ZADD) does, or return None.

    A whole C float literal (decimal, hex, ``inf``/``infinity``) with no blank
    around it; NaN, overflow and underflow to zero are rejected.
    """
    if not s or s[0] in _BLANKS:
        return None
    m = _FLOAT_RE.match(s)
    if m is None or m.end() != len(s):
        return None
    v, erange = _strtod_value(m)
    if erange or v != v:
        return None
    return v


def _strtod_loose(s: bytes) -> float | None:
    """``strtod`` then "nothing left but NUL", as Redis checks score range bounds."""
    s = _cstr(s)
    if not s:
        return 0.0
    stripped = s.lstrip(_BLANKS)
    m = _FLOAT_RE.match(stripped)
    if m is None or m.end() != len(stripped):
        return None
    v, _ = _strtod_value(m)
    return None if v != v else v


def format_double(d: float) -> bytes:
    """A double as Redis 7.0 replies it: ``inf``, ``-inf``, else C's ``%.17g``."""
    if d == _INF:
        return b"inf"
    if d == -_INF:
        return b"-inf"
    return b"%.17g" % d


def _get_long(s: bytes) -> int | None:
    return parse_ll(s)


def _get_positive(s: bytes) -> int | None:
    v = parse_ll(s)
    return v if v is not None and v >= 0 else None


# ---------------------------------------------------------------------------
# Glob patterns (KEYS, CONFIG GET)
# ---------------------------------------------------------------------------


def _signed(c: int) -> int:
    return c - 256 if c > 127 else c


def _class_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """Unsigned byte ranges of a signed-char range [lo, hi] (C compares chars signed)."""
    if lo >= 0:
        return [(lo, hi)]
    if hi < 0:
        return [(lo + 256, hi + 256)]
    return [(lo + 256, 255), (0, hi)]


def _bracket(p: bytes, i: int) -> tuple[bytes, int]:
    """Translate a ``[...]`` set starting after ``[`` at ``i``; return (regex, next index)."""
    n = len(p)
    negate = i < n and p[i] == 94  # '^'
    if negate:
        i += 1
    ranges: list[tuple[int, int]] = []
    while True:
        if i < n and p[i] == 92 and n - i >= 2:  # backslash escape
            ranges.append((p[i + 1], p[i + 1]))
            i += 2
        elif i < n and p[i] == 93:  # ']'
            i += 1
            break
        elif i >= n:
            break
        elif n - i >= 3 and p[i + 1] == 45:  # 'a-z'
            lo, hi = _signed(p[i]), _signed(p[i + 2])
            if lo > hi:
                lo, hi = hi, lo
            ranges.extend(_class_ranges(lo, hi))
            i += 3
        else:
            ranges.append((p[i], p[i]))
            i += 1
    if not ranges:
        return (b"[\\x00-\\xff]" if negate else b"(?!)"), i
    body = b"".join(b"\\x%02x-\\x%02x" % r for r in ranges)
    return b"[" + (b"^" if negate else b"") + body + b"]", i


@lru_cache(maxsize=512)
def _glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Compile a Redis glob (``stringmatchlen`` semantics) to a regular expression."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i < n and pattern[i] == 42:
                i += 1
            out.append(b".*")
            continue
        if c == 63:  # '?'
            out.append(b".")
            i += 1
        elif c == 91:  # '['
            rx, i = _bracket(pattern, i + 1)
            out.append(rx)
        else:
            if c == 92 and n - i >= 2:
                i += 1
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
    return re.compile(b"".join(out), re.DOTALL)


def glob_match(pattern: bytes, s: bytes) -> bool:
    """True when ``s`` matches the glob ``pattern`` exactly as Redis matches keys.

    ``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x`` escapes, with Redis's quirks:
    an unterminated ``[`` set runs to the end of the pattern, and an empty
    string only matches the empty pattern.
    """
    if not s:
        return not pattern
    return _glob_regex(pattern).fullmatch(s) is not None


# ---------------------------------------------------------------------------
# Data structures
# ---------------------------------------------------------------------------


class ZSet:
    """Sorted set: member -> score, plus the (score, member) pairs kept sorted."""

    __slots__ = ("order", "scores")

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}
        self.order: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, member: bytes, score: float) -> None:
        """Insert ``member`` or move it to ``score``."""
        if score == 0.0:
            score = 0.0  # Redis (listpack) stores -0 as 0
        old = self.scores.get(member)
        if old is not None:
            if old == score:
                return
            del self.order[bisect.bisect_left(self.order, (old, member))]
        self.scores[member] = score
        bisect.insort(self.order, (score, member))

    def remove(self, member: bytes) -> bool:
        """Remove ``member``; return whether it was there."""
        old = self.scores.pop(member, None)
        if old is None:
            return False
        del self.order[bisect.bisect_left(self.order, (old, member))]
        return True

    def pop_min(self, count: int) -> list[tuple[float, bytes]]:
        """Remove and return the ``count`` lowest (score, member) pairs."""
        taken = self.order[:count]
        del self.order[:count]
        for _, member in taken:
            del self.scores[member]
        return taken


class Keyspace:
    """One database: key -> value, key -> absolute expiry time (ms).

    Lookups delete a key whose time has come (lazy expiry), as Redis does.
    """

    __slots__ = ("_heap", "_now", "data", "expires")

    def __init__(self, now: Callable[[], int]) -> None:
        self.data: dict[bytes, object] = {}
        self.expires: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._now = now

    def lookup(self, key: bytes) -> object | None:
        """The live value of ``key``, or None (expiring it if due)."""
        expires = self.expires
        if expires:
            when = expires.get(key)
            if when is not None and when <= self._now():
                del expires[key]
                del self.data[key]
                return None
        return self.data.get(key)

    def is_live(self, key: bytes, now: int) -> bool:
        """Whether ``key`` exists and is not past its expiry (no side effect)."""
        when = self.expires.get(key)
        return key in self.data and (when is None or when > now)

    def set(self, key: bytes, value: object, keep_ttl: bool = False) -> None:
        """Store ``value`` at ``key``, dropping any TTL unless ``keep_ttl``."""
        self.data[key] = value
        if not keep_ttl and self.expires:
            self.expires.pop(key, None)

    def delete(self, key: bytes) -> bool:
        """Remove ``key`` and its TTL; return whether it existed (and was live)."""
        if self.lookup(key) is None:
            return False
        del self.data[key]
        if self.expires:
            self.expires.pop(key, None)
        return True

    def set_expire(self, key: bytes, when: int) -> None:
        """Make the existing ``key`` expire at ``when`` (ms)."""
        self.expires[key] = when
        heapq.heappush(self._heap, (when, key))

    def clear(self) -> None:
        self.data.clear()
        self.expires.clear()
        self._heap.clear()

    def expire_due(self, now: int, budget: int) -> int:
        """Delete up to ``budget`` keys whose expiry is past; return how many."""
        heap, expires, data = self._heap, self.expires, self.data
        done = 0
        while heap and heap[0][0] <= now and done < budget:
            when, key = heapq.heappop(heap)
            if expires.get(key) == when:
                del expires[key]
                del data[key]
                done += 1
        if len(heap) > 2 * len(expires) + 1024:  # drop stale entries
            self._heap = [(w, k) for k, w in expires.items()]
            heapq.heapify(self._heap)
        return done


class Session:
    """Per-connection state: selected database, client id and name, QUIT flag."""

    __slots__ = ("closing", "db", "db_index", "id", "lib_name", "lib_ver", "name", "store")

    def __init__(self, store: Store, client_id: int) -> None:
        self.store = store
        self.id = client_id
        self.name: bytes | None = None
        self.db = store.dbs[0]
        self.db_index = 0
        self.closing = False
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None


def _default_clock() -> Callable[[], float]:
    """Monotonic seconds, anchored to the wall clock at start (so EXAT/PXAT make sense)."""
    offset = time.time() - time.monotonic()
    mono = time.monotonic
    return lambda: mono() + offset


class Store:
    """The server's data: databases, clock, configuration and counters.

    ``clock`` returns seconds as a float (``time.monotonic``-like; default: a
    monotonic clock anchored to Unix time). Tests inject a fake one to drive
    expiry.
    """

    def __init__(self, clock: Callable[[], float] | None = None, databases: int = 16) -> None:
        self.clock = clock or _default_clock()
        self.dbs = [Keyspace(self.now_ms) for _ in range(databases)]
        self.config: dict[bytes, bytes] = {
            b"save": b"",
            b"appendonly": b"no",
            b"databases": b"%d" % databases,
            b"port": b"6379",
            b"bind": b"127.0.0.1",
            b"maxmemory": b"0",
            b"maxmemory-policy": b"noeviction",
            b"maxclients": b"10000",
            b"timeout": b"0",
            b"tcp-keepalive": b"300",
            b"proto-max-bulk-len": b"%d" % _MAX_STRING,
            b"appendfsync": b"everysec",
            b"loglevel": b"notice",
            b"daemonize": b"no",
            b"io-threads": b"1",
        }
        self.started = time.monotonic()
        self.connected_clients = 0
        self.total_connections = 0
        self.commands_processed = 0
        self._next_id = 1
        self.default_session = self.new_session()

    def now_ms(self) -> int:
        """Current time in integer milliseconds."""
        return int(self.clock() * 1000)

    def new_session(self) -> Session:
        """State for a new connection, with a fresh client id."""
        s = Session(self, self._next_id)
        self._next_id += 1
        return s

    def expire_cycle(self, budget: int = 1000) -> int:
        """Actively delete up to ``budget`` due keys over all databases."""
        now = self.now_ms()
        done = 0
        for db in self.dbs:
            if db.expires:
                done += db.expire_due(now, budget - done)
        return done


# ---------------------------------------------------------------------------
# Command table and dispatch
# ---------------------------------------------------------------------------

Handler = Callable[[Session, list[bytes]], bytes]


class Command:
    """A command: handler, Redis arity (negative: at least), key positions."""

    __slots__ = ("arity", "arity_error", "first_key", "handler", "last_key", "name", "step", "subcommands")

    def __init__(
        self,
        name: str,
        handler: Handler,
        arity: int,
        keys: tuple[int, int, int] = (0, 0, 0),
        subcommands: dict[bytes, Command] | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.arity = arity
        self.first_key, self.last_key, self.step = keys
        self.subcommands = subcommands
        self.arity_error = b"-ERR wrong number of arguments for '%s' command\r\n" % name.encode()


_TABLE: dict[bytes, Command] = {}


def execute(store: Store, argv: list[bytes], session: Session | None = None) -> tuple[bytes, bool]:
    """Run one command; return (encoded reply, close connection after the reply).

    ``argv`` is non-empty. ``session`` defaults to the store's own session.
    """
    if session is None:
        session = store.default_session
    store.commands_processed += 1
    cmd = _TABLE.get(argv[0])
    if cmd is None:
        cmd = _TABLE.get(argv[0].lower())
        if cmd is None:
            return _unknown_command(argv), False
    n = len(argv)
    if cmd.subcommands is not None and n > 1:
        sub = cmd.subcommands.get(argv[1].lower())
        if sub is None:
            return _unknown_subcommand(argv), False
        cmd = sub
    arity = cmd.arity
    if (arity > 0 and arity != n) or n < -arity:
        return cmd.arity_error, False
    return cmd.handler(session, argv), session.closing


def _unknown_command(argv: list[bytes]) -> bytes:
    args = b""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += b"'" + _cstr(a)[: 128 - len(args)] + b"' "
    return _error(b"unknown command '%b', with args beginning with: %b" % (_cstr(argv[0])[:128], args))


def _unknown_subcommand(argv: list[bytes]) -> bytes:
    return _error(b"unknown subcommand '%b'. Try %b HELP." % (_cstr(argv[1])[:128], _cstr(argv[0]).upper()))


def _register(cmd: Command) -> None:
    for key in (cmd.name.encode(), cmd.name.upper().encode()):
        _TABLE[key] = cmd


# ---------------------------------------------------------------------------
# Connection and server commands
# ---------------------------------------------------------------------------


def cmd_ping(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 2:
        return b"-ERR wrong number of arguments for 'ping' command\r\n"
    return PONG if len(argv) == 1 else _bulk(argv[1])


def cmd_echo(s: Session, argv: list[bytes]) -> bytes:
    return _bulk(argv[1])


def cmd_quit(s: Session, argv: list[bytes]) -> bytes:
    s.closing = True
    return OK


def cmd_select(s: Session, argv: list[bytes]) -> bytes:
    idx = parse_ll(argv[1])
    if idx is None:
        return NOT_INT
    if idx < _INT_MIN or idx > _INT_MAX:
        return b"-ERR value is out of range, value must between %d and %d\r\n" % (_INT_MIN, _INT_MAX)
    if not 0 <= idx < len(s.store.dbs):
        return b"-ERR DB index is out of range\r\n"
    s.db_index = idx
    s.db = s.store.dbs[idx]
    return OK


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


_BAD_NAME = b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"


def cmd_hello(s: Session, argv: list[bytes]) -> bytes:
    """HELLO for a RESP2-only server: protover 3 is refused with NOPROTO."""
    j = 1
    if len(argv) >= 2:
        ver = parse_ll(argv[1])
        if ver is None:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if ver != 2:
            return b"-NOPROTO unsupported protocol version\r\n"
        j = 2
    user = name = None
    while j < len(argv):
        opt = argv[j].lower()
        more = len(argv) - 1 - j
        if opt == b"auth" and more >= 2:
            user = argv[j + 1]
            j += 3
        elif opt == b"setname" and more >= 1:
            name = argv[j + 1]
            if not _valid_name(name):
                return _BAD_NAME
            j += 2
        else:
            return _error(b"Syntax error in HELLO option '%b'" % _cstr(argv[j]))
    if user is not None and user != b"default":
        return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    if name is not None:
        s.name = name or None
    fields = [
        _bulk(b"server"), _bulk(b"redis"),
        _bulk(b"version"), _bulk(REDIS_VERSION.encode()),
        _bulk(b"proto"), b":2\r\n",
        _bulk(b"id"), b":%d\r\n" % s.id,
        _bulk(b"mode"), _bulk(b"standalone"),
        _bulk(b"role"), _bulk(b"master"),
        _bulk(b"modules"), EMPTY_ARRAY,
    ]  # fmt: skip
    return b"*14\r\n" + b"".join(fields)


def cmd_client(s: Session, argv: list[bytes]) -> bytes:  # only reached with argc == 1
    return b"-ERR wrong number of arguments for 'client' command\r\n"


def cmd_client_setname(s: Session, argv: list[bytes]) -> bytes:
    if not _valid_name(argv[2]):
        return _BAD_NAME
    s.name = argv[2] or None
    return OK


def cmd_client_getname(s: Session, argv: list[bytes]) -> bytes:
    return NULL_BULK if s.name is None else _bulk(s.name)


def cmd_client_id(s: Session, argv: list[bytes]) -> bytes:
    return b":%d\r\n" % s.id


def cmd_client_setinfo(s: Session, argv: list[bytes]) -> bytes:
    """CLIENT SETINFO LIB-NAME|LIB-VER value (Redis 7.2; accepted here for redis-py)."""
    attr = argv[2].lower()
    if attr not in (b"lib-name", b"lib-ver"):
        return _error(b"Unrecognized option '%b'" % _cstr(argv[2]))
    if not _valid_name(argv[3]):
        return _error(b"%b cannot contain spaces, newlines or special characters." % attr)
    if attr == b"lib-name":
        s.lib_name = argv[3] or None
    else:
        s.lib_ver = argv[3] or None
    return OK


def cmd_config_get(s: Session, argv: list[bytes]) -> bytes:
    """CONFIG GET pattern...: name/value pairs, names echoed as asked when exact."""
    config = s.store.config
    found: dict[bytes, tuple[bytes, bytes]] = {}
    for pat in argv[2:]:
        lowered = pat.lower()
        if not any(c in pat for c in b"[*?"):
            if lowered in config and lowered not in found:
                found[lowered] = (pat, config[lowered])
            continue
        for name, value in config.items():
            if name not in found and glob_match(lowered, name):
                found[name] = (name, value)
    return b"*%d\r\n" % (2 * len(found)) + b"".join(_bulk(k) + _bulk(v) for k, v in found.values())


def cmd_config(s: Session, argv: list[bytes]) -> bytes:
    return b"-ERR wrong number of arguments for 'config' command\r\n"


def _command_entry(cmd: Command) -> bytes:
    """COMMAND INFO entry: name, arity, flags, first/last key, step, and empty extras."""
    return (
        b"*10\r\n"
        + _bulk(cmd.name.encode())
        + b":%d\r\n*0\r\n:%d\r\n:%d\r\n:%d\r\n" % (cmd.arity, cmd.first_key, cmd.last_key, cmd.step)
        + EMPTY_ARRAY * 4
    )


def _all_commands() -> list[Command]:
    seen: dict[str, Command] = {}
    for cmd in _TABLE.values():
        seen.setdefault(cmd.name, cmd)
    return list(seen.values())


def cmd_command(s: Session, argv: list[bytes]) -> bytes:
    cmds = _all_commands()
    return b"*%d\r\n" % len(cmds) + b"".join(_command_entry(c) for c in cmds)


def cmd_command_count(s: Session, argv: list[bytes]) -> bytes:
    return b":%d\r\n" % len(_all_commands())


def cmd_command_docs(s: Session, argv: list[bytes]) -> bytes:
    """COMMAND DOCS: no documentation is served (an empty map)."""
    return EMPTY_ARRAY


def cmd_command_info(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) == 2:
        return cmd_command(s, argv)
    parts = []
    for name in argv[2:]:
        cmd = _TABLE.get(name.lower())
        parts.append(NULL_BULK if cmd is None else _command_entry(cmd))
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def cmd_command_list(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) != 2:
        return SYNTAX_ERR
    return _array([c.name.encode() for c in _all_commands()])


def cmd_info(s: Session, argv: list[bytes]) -> bytes:
    """INFO [section ...]: Server, Clients, Stats and Keyspace sections."""
    st = s.store
    wanted = {a.lower() for a in argv[1:]} or {b"default"}
    everything = bool(wanted & {b"all", b"everything", b"default"})
    sections = []
    for name, render in _INFO_SECTIONS:
        if everything or name.lower().encode() in wanted:
            sections.append(render(st))
    return _bulk(b"\r\n".join(sections))


def _info_server(st: Store) -> bytes:
    uptime = int(time.monotonic() - st.started)
    lines = [
        "# Server",
        f"redis_version:{REDIS_VERSION}",
        "redis_mode:standalone",
        f"os:{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits:64",
        "multiplexing_api:python-selectors",
        f"python_version:{platform.python_version()}",
        f"process_id:{os.getpid()}",
        f"tcp_port:{st.config[b'port'].decode()}",
        f"uptime_in_seconds:{uptime}",
        f"uptime_in_days:{uptime // 86400}",
        "hz:10",
        "executable:" + os.path.abspath(__file__),
        "config_file:",
    ]
    return "\r\n".join(lines).encode() + b"\r\n"


def _info_clients(st: Store) -> bytes:
    return b"# Clients\r\nconnected_clients:%d\r\nmaxclients:10000\r\nblocked_clients:0\r\n" % st.connected_clients


def _info_stats(st: Store) -> bytes:
    return b"# Stats\r\ntotal_connections_received:%d\r\ntotal_commands_processed:%d\r\n" % (
        st.total_connections,
        st.commands_processed,
    )


def _info_keyspace(st: Store) -> bytes:
    lines = [b"# Keyspace\r\n"]
    for i, db in enumerate(st.dbs):
        if db.data:
            lines.append(b"db%d:keys=%d,expires=%d,avg_ttl=0\r\n" % (i, len(db.data), len(db.expires)))
    return b"".join(lines)


_INFO_SECTIONS: list[tuple[str, Callable[[Store], bytes]]] = [
    ("Server", _info_server),
    ("Clients", _info_clients),
    ("Stats", _info_stats),
    ("Keyspace", _info_keyspace),
]


def cmd_dbsize(s: Session, argv: list[bytes]) -> bytes:
    return b":%d\r\n" % len(s.db.data)


def _flush_args_ok(argv: list[bytes]) -> bool:
    return len(argv) == 1 or (len(argv) == 2 and argv[1].lower() in (b"sync", b"async"))


def cmd_flushall(s: Session, argv: list[bytes]) -> bytes:
    if not _flush_args_ok(argv):
        return SYNTAX_ERR
    for db in s.store.dbs:
        db.clear()
    return OK


def cmd_flushdb(s: Session, argv: list[bytes]) -> bytes:
    if not _flush_args_ok(argv):
        return SYNTAX_ERR
    s.db.clear()
    return OK


# ---------------------------------------------------------------------------
# Keys and expiry
# ---------------------------------------------------------------------------


def cmd_del(s: Session, argv: list[bytes]) -> bytes:
    delete = s.db.delete
    return b":%d\r\n" % sum(1 for k in argv[1:] if delete(k))


def cmd_exists(s: Session, argv: list[bytes]) -> bytes:
    lookup = s.db.lookup
    return b":%d\r\n" % sum(1 for k in argv[1:] if lookup(k) is not None)


_TYPE_NAMES = {bytes: b"+string\r\n", deque: b"+list\r\n", dict: b"+hash\r\n", set: b"+set\r\n", ZSet: b"+zset\r\n"}


def cmd_type(s: Session, argv: list[bytes]) -> bytes:
    v = s.db.lookup(argv[1])
    return b"+none\r\n" if v is None else _TYPE_NAMES[type(v)]


def cmd_keys(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    pattern = argv[1]
    now = s.store.now_ms()
    live = db.is_live if db.expires else (lambda k, now: True)
    if pattern == b"*":
        keys = [k for k in db.data if live(k, now)]
    else:
        rx = _glob_regex(pattern).fullmatch
        keys = [k for k in db.data if (rx(k) is not None if k else not pattern) and live(k, now)]
    return _array(keys)


def _expire_time_error(name: bytes) -> bytes:
    return b"-ERR invalid expire time in '%b' command\r\n" % name


def _parse_expire_flags(argv: list[bytes]) -> set[bytes] | bytes:
    flags = set()
    for opt in argv[3:]:
        o = opt.lower()
        if o not in (b"nx", b"xx", b"gt", b"lt"):
            return _error(b"Unsupported option " + _cstr(opt))
        flags.add(o)
    if b"nx" in flags and len(flags) > 1:
        return b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    if b"gt" in flags and b"lt" in flags:
        return b"-ERR GT and LT options at the same time are not compatible\r\n"
    return flags


def _expire_generic(s: Session, argv: list[bytes], unit_ms: int, name: bytes) -> bytes:
    flags = _parse_expire_flags(argv)
    if isinstance(flags, bytes):
        return flags
    when = parse_ll(argv[2])
    if when is None:
        return NOT_INT
    if unit_ms == 1000:
        if when > _LLONG_MAX // 1000 or when < -(_LLONG_MAX // 1000):
            return _expire_time_error(name)
        when *= 1000
    now = s.store.now_ms()
    if when > _LLONG_MAX - now:
        return _expire_time_error(name)
    when += now
    db = s.db
    key = argv[1]
    if db.lookup(key) is None:
        return ZERO
    if flags:
        current = db.expires.get(key, -1)
        if b"nx" in flags and current != -1:
            return ZERO
        if b"xx" in flags and current == -1:
            return ZERO
        if b"gt" in flags and (when <= current or current == -1):
            return ZERO
        if b"lt" in flags and current != -1 and when >= current:
            return ZERO
    if when <= now:
        db.delete(key)
    else:
        db.set_expire(key, when)
    return ONE


def cmd_expire(s: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(s, argv, 1000, b"expire")


def cmd_pexpire(s: Session, argv: list[bytes]) -> bytes:
    return _expire_generic(s, argv, 1, b"pexpire")


def _ttl_ms(s: Session, key: bytes) -> int | None:
    """Remaining ms (>= 0), -1 without TTL, None when the key does not exist."""
    db = s.db
    if db.lookup(key) is None:
        return None
    when = db.expires.get(key)
    if when is None:
        return -1
    return max(when - s.store.now_ms(), 0)


def cmd_ttl(s: Session, argv: list[bytes]) -> bytes:
    ttl = _ttl_ms(s, argv[1])
    if ttl is None:
        return b":-2\r\n"
    return b":-1\r\n" if ttl < 0 else b":%d\r\n" % ((ttl + 500) // 1000)


def cmd_pttl(s: Session, argv: list[bytes]) -> bytes:
    ttl = _ttl_ms(s, argv[1])
    return b":-2\r\n" if ttl is None else b":%d\r\n" % ttl


def cmd_persist(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    if db.lookup(argv[1]) is None:
        return ZERO
    return ONE if db.expires.pop(argv[1], None) is not None else ZERO


# ---------------------------------------------------------------------------
# Strings
# ---------------------------------------------------------------------------


def cmd_get(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    v = db.lookup(argv[1]) if db.expires else db.data.get(argv[1])
    if v is None:
        return NULL_BULK
    if type(v) is not bytes:
        return WRONGTYPE
    return b"$%d\r\n%b\r\n" % (len(v), v)


_EX, _PX, _EXAT, _PXAT = b"ex", b"px", b"exat", b"pxat"


def _parse_set_options(argv: list[bytes]) -> tuple[bool, bool, bool, bool, bytes | None, bytes | None] | None:
    """SET options as Redis parses them: (nx, xx, get, keepttl, unit, expire) or None."""
    nx = xx = get = keepttl = False
    unit = expire = None
    j, n = 3, len(argv)
    while j < n:
        opt = argv[j].lower()
        has_next = j + 1 < n
        if opt == b"nx" and not xx:
            nx = True
        elif opt == b"xx" and not nx:
            xx = True
        elif opt == b"get":
            get = True
        elif opt == b"keepttl" and unit is None:
            keepttl = True
        elif opt in (_EX, _PX, _EXAT, _PXAT) and not keepttl and unit in (None, opt) and has_next:
            unit = opt
            expire = argv[j + 1]
            j += 1
        else:
            return None
        j += 1
    return nx, xx, get, keepttl, unit, expire


def _set_deadline(s: Session, unit: bytes, expire: bytes) -> int | bytes:
    """Absolute expiry (ms) of a SET option, or the error reply."""
    ms = parse_ll(expire)
    if ms is None:
        return NOT_INT
    seconds = unit in (_EX, _EXAT)
    if ms <= 0 or (seconds and ms > _LLONG_MAX // 1000):
        return _expire_time_error(b"set")
    if seconds:
        ms *= 1000
    if unit in (_EX, _PX):
        ms += s.store.now_ms()
        if ms > _LLONG_MAX:
            return _expire_time_error(b"set")
    return ms


def cmd_set(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    key = argv[1]
    if len(argv) == 3:
        db.data[key] = argv[2]
        if db.expires:
            db.expires.pop(key, None)
        return OK
    opts = _parse_set_options(argv)
    if opts is None:
        return SYNTAX_ERR
    nx, xx, get, keepttl, unit, expire = opts
    deadline: int | None = None
    if unit is not None and expire is not None:
        when = _set_deadline(s, unit, expire)
        if isinstance(when, bytes):
            return when
        deadline = when
    old = db.lookup(key)
    reply = OK
    if get:
        if old is None:
            reply = NULL_BULK
        elif type(old) is not bytes:
            return WRONGTYPE
        else:
            reply = _bulk(old)
    if (nx and old is not None) or (xx and old is None):
        return reply if get else NULL_BULK
    db.set(key, argv[2], keep_ttl=keepttl)
    if deadline is not None:
        db.set_expire(key, deadline)
    return reply


def cmd_getset(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    old = db.lookup(argv[1])
    if old is not None and type(old) is not bytes:
        return WRONGTYPE
    db.set(argv[1], argv[2])
    return NULL_BULK if old is None else _bulk(old)


def _incr(s: Session, key: bytes, delta: int) -> bytes:
    db = s.db
    v = db.lookup(key)
    cur = 0
    if v is not None:
        if type(v) is not bytes:
            return WRONGTYPE
        parsed = parse_ll(v)
        if parsed is None:
            return NOT_INT
        cur = parsed
    new = cur + delta
    if new > _LLONG_MAX or new < _LLONG_MIN:
        return OVERFLOW
    db.data[key] = b"%d" % new  # keeps the TTL, as Redis does
    return b":%d\r\n" % new


def cmd_incr(s: Session, argv: list[bytes]) -> bytes:
    return _incr(s, argv[1], 1)


def cmd_decr(s: Session, argv: list[bytes]) -> bytes:
    return _incr(s, argv[1], -1)


def cmd_incrby(s: Session, argv: list[bytes]) -> bytes:
    delta = parse_ll(argv[2])
    return NOT_INT if delta is None else _incr(s, argv[1], delta)


def cmd_decrby(s: Session, argv: list[bytes]) -> bytes:
    delta = parse_ll(argv[2])
    if delta is None:
        return NOT_INT
    if delta == _LLONG_MIN:
        return b"-ERR decrement would overflow\r\n"
    return _incr(s, argv[1], -delta)


def cmd_append(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    key = argv[1]
    v = db.lookup(key)
    if v is None:
        db.data[key] = argv[2]
        return b":%d\r\n" % len(argv[2])
    if type(v) is not bytes:
        return WRONGTYPE
    if len(v) + len(argv[2]) > _MAX_STRING:
        return b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    v += argv[2]
    db.data[key] = v  # keeps the TTL
    return b":%d\r\n" % len(v)


def cmd_strlen(s: Session, argv: list[bytes]) -> bytes:
    v = s.db.lookup(argv[1])
    if v is None:
        return ZERO
    if type(v) is not bytes:
        return WRONGTYPE
    return b":%d\r\n" % len(v)


def cmd_mget(s: Session, argv: list[bytes]) -> bytes:
    lookup = s.db.lookup
    parts = [b"*%d\r\n" % (len(argv) - 1)]
    for key in argv[1:]:
        v = lookup(key)
        parts.append(b"$%d\r\n%b\r\n" % (len(v), v) if type(v) is bytes else NULL_BULK)
    return b"".join(parts)


def cmd_mset(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 0:
        return b"-ERR wrong number of arguments for 'mset' command\r\n"
    db = s.db
    for i in range(1, len(argv), 2):
        db.set(argv[i], argv[i + 1])
    return OK


# ---------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------


def _push(s: Session, argv: list[bytes], left: bool) -> bytes:
    db = s.db
    v = db.lookup(argv[1])
    if v is None:
        v = deque()
        db.data[argv[1]] = v
    elif type(v) is not deque:
        return WRONGTYPE
    if left:
        v.extendleft(argv[2:])
    else:
        v.extend(argv[2:])
    return b":%d\r\n" % len(v)


def cmd_lpush(s: Session, argv: list[bytes]) -> bytes:
    return _push(s, argv, True)


def cmd_rpush(s: Session, argv: list[bytes]) -> bytes:
    return _push(s, argv, False)


def _pop(s: Session, argv: list[bytes], left: bool) -> bytes:
    if len(argv) > 3:
        return b"-ERR wrong number of arguments for '%b' command\r\n" % (b"lpop" if left else b"rpop")
    count = None
    if len(argv) == 3:
        count = _get_positive(argv[2])
        if count is None:
            return NOT_POSITIVE
    db = s.db
    v = db.lookup(argv[1])
    if v is None:
        return NULL_BULK if count is None else NULL_ARRAY
    if type(v) is not deque:
        return WRONGTYPE
    pop = v.popleft if left else v.pop
    if count is None:
        item = pop()
        out = _bulk(item)
    elif count == 0:
        return EMPTY_ARRAY
    else:
        out = _array([pop() for _ in range(min(count, len(v)))])
    if not v:
        db.delete(argv[1])
    return out


def cmd_lpop(s: Session, argv: list[bytes]) -> bytes:
    return _pop(s, argv, True)


def cmd_rpop(s: Session, argv: list[bytes]) -> bytes:
    return _pop(s, argv, False)


def _clamp_range(start: int, end: int, length: int) -> tuple[int, int] | None:
    """Redis's index range normalisation; None when the range is empty."""
    if start < 0:
        start += length
    if end < 0:
        end += length
    if start < 0:
        start = 0
    if start > end or start >= length:
        return None
    return start, min(end, length - 1)


def cmd_lrange(s: Session, argv: list[bytes]) -> bytes:
    start, end = parse_ll(argv[2]), parse_ll(argv[3])
    if start is None or end is None:
        return NOT_INT
    v = s.db.lookup(argv[1])
    if v is None:
        return EMPTY_ARRAY
    if type(v) is not deque:
        return WRONGTYPE
    r = _clamp_range(start, end, len(v))
    if r is None:
        return EMPTY_ARRAY
    return _array(list(itertools.islice(v, r[0], r[1] + 1)))


def cmd_llen(s: Session, argv: list[bytes]) -> bytes:
    v = s.db.lookup(argv[1])
    if v is None:
        return ZERO
    if type(v) is not deque:
        return WRONGTYPE
    return b":%d\r\n" % len(v)


# ---------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------


def cmd_hset(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 1:
        return b"-ERR wrong number of arguments for 'hset' command\r\n"
    db = s.db
    h = db.lookup(argv[1])
    if h is None:
        h = {}
        db.data[argv[1]] = h
    elif type(h) is not dict:
        return WRONGTYPE
    added = 0
    for i in range(2, len(argv), 2):
        if argv[i] not in h:
            added += 1
        h[argv[i]] = argv[i + 1]
    return b":%d\r\n" % added


def cmd_hget(s: Session, argv: list[bytes]) -> bytes:
    h = s.db.lookup(argv[1])
    if h is None:
        return NULL_BULK
    if type(h) is not dict:
        return WRONGTYPE
    v = h.get(argv[2])
    return NULL_BULK if v is None else _bulk(v)


def cmd_hgetall(s: Session, argv: list[bytes]) -> bytes:
    h = s.db.lookup(argv[1])
    if h is None:
        return EMPTY_ARRAY
    if type(h) is not dict:
        return WRONGTYPE
    return _array([x for pair in h.items() for x in pair])


def cmd_hdel(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    h = db.lookup(argv[1])
    if h is None:
        return ZERO
    if type(h) is not dict:
        return WRONGTYPE
    removed = sum(1 for f in argv[2:] if h.pop(f, None) is not None)
    if not h:
        db.delete(argv[1])
    return b":%d\r\n" % removed


# ---------------------------------------------------------------------------
# Sets
# ---------------------------------------------------------------------------


def cmd_sadd(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    v = db.lookup(argv[1])
    if v is None:
        v = set()
        db.data[argv[1]] = v
    elif type(v) is not set:
        return WRONGTYPE
    before = len(v)
    v.update(argv[2:])
    return b":%d\r\n" % (len(v) - before)


def cmd_srem(s: Session, argv: list[bytes]) -> bytes:
    db = s.db
    v = db.lookup(argv[1])
    if v is None:
        return ZERO
    if type(v) is not set:
        return WRONGTYPE
    before = len(v)
    v.difference_update(argv[2:])
    removed = before - len(v)
    if not v:
        db.delete(argv[1])
    return b":%d\r\n" % removed


def cmd_smembers(s: Session, argv: list[bytes]) -> bytes:
    v = s.db.lookup(argv[1])
    if v is None:
        return EMPTY_ARRAY
    if type(v) is not set:
        return WRONGTYPE
    return _array(_set_order(v))


_INTSET_MAX = 512  # Redis's set-max-intset-entries


def _set_order(v: set[bytes]) -> list[bytes]:
    """Members in reply order: ascending numbers when Redis would hold the set
    as an intset (all members integers, at most 512), else arbitrary."""
    if len(v) <= _INTSET_MAX:
        nums = [n for n in map(parse_ll, v) if n is not None]
        if len(nums) == len(v):
            return [b"%d" % n for n in sorted(nums)]
    return list(v)


def cmd_scard(s: Session, argv: list[bytes]) -> bytes:
    v = s.db.lookup(argv[1])
    if v is None:
        return ZERO
    if type(v) is not set:
        return WRONGTYPE
    return b":%d\r\n" % len(v)


def cmd_spop(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 3:
        return SYNTAX_ERR
    count = None
    if len(argv) == 3:
        count = _get_positive(argv[2])
        if count is None:
            return NOT_POSITIVE
    db = s.db
    v = db.lookup(argv[1])
    if v is None:
        return NULL_BULK if count is None else EMPTY_ARRAY
    if type(v) is not set:
        return WRONGTYPE
    if count is None:
        out = _bulk(v.pop())
    elif count == 0:
        return EMPTY_ARRAY
    else:
        out = _array([v.pop() for _ in range(min(count, len(v)))])
    if not v:
        db.delete(argv[1])
    return out


# ---------------------------------------------------------------------------
# Sorted sets
# ---------------------------------------------------------------------------

_ZADD_FLAGS = (b"nx", b"xx", b"ch", b"incr", b"gt", b"lt")


def cmd_zadd(s: Session, argv: list[bytes]) -> bytes:
    flags: set[bytes] = set()
    idx = 2
    while idx < len(argv) and argv[idx].lower() in _ZADD_FLAGS:
        flags.add(argv[idx].lower())
        idx += 1
    nx, xx, gt, lt, incr = (f in flags for f in (b"nx", b"xx", b"gt", b"lt", b"incr"))
    elements = len(argv) - idx
    if elements % 2 or not elements:
        return SYNTAX_ERR
    if nx and xx:
        return b"-ERR XX and NX options at the same time are not compatible\r\n"
    if (gt and nx) or (lt and nx) or (gt and lt):
        return b"-ERR GT, LT, and/or NX options at the same time are not compatible\r\n"
    if incr and elements > 2:
        return b"-ERR INCR option supports a single increment-element pair\r\n"
    scores = []
    for j in range(idx, len(argv), 2):
        d = parse_double(argv[j])
        if d is None:
            return NOT_FLOAT
        scores.append(d)
    db = s.db
    z = db.lookup(argv[1])
    if z is None:
        if xx:
            return NULL_BULK if incr else ZERO
        z = ZSet()
        db.data[argv[1]] = z
    elif type(z) is not ZSet:
        return WRONGTYPE
    added = updated = processed = 0
    score = 0.0
    for score, member in zip(scores, argv[idx + 1 :: 2], strict=True):
        cur = z.scores.get(member)
        if cur is None:
            if xx:
                continue
            z.add(member, score)
            added += 1
            processed += 1
            continue
        if nx:
            continue
        if incr:
            score += cur
            if score != score:
                return b"-ERR resulting score is not a number (NaN)\r\n"
        if (lt and score >= cur) or (gt and score <= cur):
            continue
        processed += 1
        if score != cur:
            z.add(member, score)
            updated += 1
    if incr:
        return _bulk(format_double(score)) if processed else NULL_BULK
    return b":%d\r\n" % (added + updated if b"ch" in flags else added)


def cmd_zscore(s: Session, argv: list[bytes]) -> bytes:
    z = s.db.lookup(argv[1])
    if z is None:
        return NULL_BULK
    if type(z) is not ZSet:
        return WRONGTYPE
    score = z.scores.get(argv[2])
    return NULL_BULK if score is None else _bulk(format_double(score))


def cmd_zpopmin(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 3:
        return SYNTAX_ERR
    count = 1
    if len(argv) == 3:
        c = _get_positive(argv[2])
        if c is None:
            return NOT_POSITIVE
        count = c
    db = s.db
    z = db.lookup(argv[1])
    if z is None:
        return EMPTY_ARRAY
    if type(z) is not ZSet:
        return WRONGTYPE
    if count == 0:
        return EMPTY_ARRAY
    taken = z.pop_min(count)
    if not z:
        db.delete(argv[1])
    return _array([x for score, member in taken for x in (member, format_double(score))])


def _parse_score_bound(b: bytes) -> tuple[float, bool] | None:
    """A BYSCORE bound: (value, exclusive) or None."""
    if b[:1] == b"(":
        v = _strtod_loose(b[1:])
        return None if v is None else (v, True)
    v = _strtod_loose(b)
    return None if v is None else (v, False)


_LEX_MIN, _LEX_MAX = object(), object()


def _parse_lex_bound(b: bytes) -> tuple[object, bool] | None:
    """A BYLEX bound: (value or -/+ sentinel, exclusive) or None."""
    c = b[:1]
    if c in (b"+", b"-"):
        if len(b) > 1 and b[1] != 0:
            return None
        return (_LEX_MAX if c == b"+" else _LEX_MIN), True
    if c == b"(":
        return b[1:], True
    if c == b"[":
        return b[1:], False
    return None


def _lex_cmp(a: object, b: object) -> int:
    if a is b:
        return 0
    if a is _LEX_MIN or b is _LEX_MAX:
        return -1
    if a is _LEX_MAX or b is _LEX_MIN:
        return 1
    return (a > b) - (a < b)  # type: ignore[operator]


class _ZRangeSpec:
    """Parsed ZRANGE arguments."""

    __slots__ = ("by", "hi", "limit", "lo", "offset", "rev", "withscores")

    def __init__(self) -> None:
        self.by = "rank"
        self.rev = False
        self.withscores = False
        self.offset = 0
        self.limit = -1
        self.lo: Any = None  # rank: int; score: (float, exclusive); lex: (bytes or sentinel, exclusive)
        self.hi: Any = None


def _parse_zrange(argv: list[bytes], reverse_only: bool = False) -> _ZRangeSpec | bytes:
    """ZRANGE arguments (or ZREVRANGE's with ``reverse_only``), or the error reply."""
    spec = _ZRangeSpec()
    spec.rev = by_set = reverse_only
    j = 4
    while j < len(argv):
        opt = argv[j].lower()
        left = len(argv) - j - 1
        if opt == b"withscores":
            spec.withscores = True
        elif opt == b"limit" and left >= 2:
            offset, limit = parse_ll(argv[j + 1]), parse_ll(argv[j + 2])
            if offset is None or limit is None:
                return NOT_INT
            spec.offset, spec.limit = offset, limit
            j += 2
        elif opt == b"rev" and not spec.rev and not reverse_only:
            spec.rev = True
        elif opt in (b"bylex", b"byscore") and not by_set:
            spec.by = "lex" if opt == b"bylex" else "score"
            by_set = True
        else:
            return SYNTAX_ERR
        j += 1
    if spec.limit != -1 and spec.by == "rank":
        return b"-ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX\r\n"
    if spec.withscores and spec.by == "lex":
        return b"-ERR syntax error, WITHSCORES not supported in combination with BYLEX\r\n"
    lo, hi = argv[2], argv[3]
    if spec.rev and spec.by != "rank":
        lo, hi = hi, lo
    if spec.by == "rank":
        spec.lo, spec.hi = parse_ll(lo), parse_ll(hi)
        if spec.lo is None or spec.hi is None:
            return NOT_INT
    elif spec.by == "score":
        spec.lo, spec.hi = _parse_score_bound(lo), _parse_score_bound(hi)
        if spec.lo is None or spec.hi is None:
            return b"-ERR min or max is not a float\r\n"
    else:
        spec.lo, spec.hi = _parse_lex_bound(lo), _parse_lex_bound(hi)
        if spec.lo is None or spec.hi is None:
            return b"-ERR min or max not valid string range item\r\n"
    return spec


def _zrange_rank(z: ZSet, spec: _ZRangeSpec) -> list[tuple[float, bytes]]:
    r = _clamp_range(spec.lo, spec.hi, len(z))
    if r is None:
        return []
    start, end = r
    order = z.order
    if spec.rev:
        n = len(order)
        return order[n - 1 - end : n - start][::-1]
    return order[start : end + 1]


def _score_filter(spec: _ZRangeSpec) -> tuple[Callable[[float], bool], Callable[[float], bool]] | None:
    """(>= min test, <= max test) of a score range, or None when it is empty."""
    (mn, mnex), (mx, mxex) = spec.lo, spec.hi
    if mn > mx or (mn == mx and (mnex or mxex)):
        return None

    def gte(v: float) -> bool:
        return v > mn if mnex else v >= mn

    def lte(v: float) -> bool:
        return v < mx if mxex else v <= mx

    return gte, lte


def _lex_filter(spec: _ZRangeSpec) -> tuple[Callable[[bytes], bool], Callable[[bytes], bool]] | None:
    """(>= min test, <= max test) of a lex range, or None when it is empty."""
    (mn, mnex), (mx, mxex) = spec.lo, spec.hi
    c = _lex_cmp(mn, mx)
    if c > 0 or (c == 0 and (mnex or mxex)):
        return None

    def gte(v: bytes) -> bool:
        return _lex_cmp(v, mn) > (0 if mnex else -1)

    def lte(v: bytes) -> bool:
        return _lex_cmp(v, mx) < (0 if mxex else 1)

    return gte, lte


def _zrange_filtered(z: ZSet, spec: _ZRangeSpec) -> list[tuple[float, bytes]]:
    """BYSCORE / BYLEX: walk from the first element in range, honouring LIMIT."""
    tests = _score_filter(spec) if spec.by == "score" else _lex_filter(spec)
    if tests is None or spec.offset < 0 or (spec.offset > 0 and spec.offset >= len(z)):
        return []
    field = 0 if spec.by == "score" else 1
    # Walking forward, start at the first element >= min and stop after max;
    # walking backward (REV), the other way round.
    start_test, stop_test = (tests[1], tests[0]) if spec.rev else tests
    walk = reversed(z.order) if spec.rev else iter(z.order)
    walk = itertools.dropwhile(lambda e: not start_test(e[field]), walk)  # type: ignore[arg-type]
    out = []
    limit = spec.limit
    for e in itertools.islice(walk, spec.offset, None):
        if limit == 0 or not stop_test(e[field]):  # type: ignore[arg-type]
            break
        out.append(e)
        limit -= 1
    return out


def cmd_zrange(s: Session, argv: list[bytes], reverse_only: bool = False) -> bytes:
    spec = _parse_zrange(argv, reverse_only)
    if isinstance(spec, bytes):
        return spec
    z = s.db.lookup(argv[1])
    if z is None:
        return EMPTY_ARRAY
    if type(z) is not ZSet:
        return WRONGTYPE
    items = _zrange_rank(z, spec) if spec.by == "rank" else _zrange_filtered(z, spec)
    if spec.withscores:
        return _array([x for score, member in items for x in (member, format_double(score))])
    return _array([member for _, member in items])


def cmd_zrevrange(s: Session, argv: list[bytes]) -> bytes:
    return cmd_zrange(s, argv, reverse_only=True)


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

_K1 = (1, 1, 1)
_KALL = (1, -1, 1)


def _build_table() -> None:
    plain = [
        ("ping", cmd_ping, -1, (0, 0, 0)),
        ("echo", cmd_echo, 2, (0, 0, 0)),
        ("quit", cmd_quit, -1, (0, 0, 0)),
        ("select", cmd_select, 2, (0, 0, 0)),
        ("hello", cmd_hello, -1, (0, 0, 0)),
        ("info", cmd_info, -1, (0, 0, 0)),
        ("dbsize", cmd_dbsize, 1, (0, 0, 0)),
        ("flushall", cmd_flushall, -1, (0, 0, 0)),
        ("flushdb", cmd_flushdb, -1, (0, 0, 0)),
        ("keys", cmd_keys, 2, (0, 0, 0)),
        ("del", cmd_del, -2, _KALL),
        ("exists", cmd_exists, -2, _KALL),
        ("type", cmd_type, 2, _K1),
        ("expire", cmd_expire, -3, _K1),
        ("pexpire", cmd_pexpire, -3, _K1),
        ("ttl", cmd_ttl, 2, _K1),
        ("pttl", cmd_pttl, 2, _K1),
        ("persist", cmd_persist, 2, _K1),
        ("get", cmd_get, 2, _K1),
        ("set", cmd_set, -3, _K1),
        ("getset", cmd_getset, 3, _K1),
        ("incr", cmd_incr, 2, _K1),
        ("decr", cmd_decr, 2, _K1),
        ("incrby", cmd_incrby, 3, _K1),
        ("decrby", cmd_decrby, 3, _K1),
        ("append", cmd_append, 3, _K1),
        ("strlen", cmd_strlen, 2, _K1),
        ("mget", cmd_mget, -2, _KALL),
        ("mset", cmd_mset, -3, (1, -1, 2)),
        ("lpush", cmd_lpush, -3, _K1),
        ("rpush", cmd_rpush, -3, _K1),
        ("lpop", cmd_lpop, -2, _K1),
        ("rpop", cmd_rpop, -2, _K1),
        ("lrange", cmd_lrange, 4, _K1),
        ("llen", cmd_llen, 2, _K1),
        ("hset", cmd_hset, -4, _K1),
        ("hget", cmd_hget, 3, _K1),
        ("hgetall", cmd_hgetall, 2, _K1),
        ("hdel", cmd_hdel, -3, _K1),
        ("sadd", cmd_sadd, -3, _K1),
        ("srem", cmd_srem, -3, _K1),
        ("smembers", cmd_smembers, 2, _K1),
        ("scard", cmd_scard, 2, _K1),
        ("spop", cmd_spop, -2, _K1),
        ("zadd", cmd_zadd, -4, _K1),
        ("zrange", cmd_zrange, -4, _K1),
        ("zrevrange", cmd_zrevrange, -4, _K1),
        ("zscore", cmd_zscore, 3, _K1),
        ("zpopmin", cmd_zpopmin, -2, _K1),
    ]
    for name, handler, arity, keys in plain:
        _register(Command(name, handler, arity, keys))
    containers = {
        "client": (cmd_client, -2, [
            ("setname", cmd_client_setname, 3),
            ("getname", cmd_client_getname, 2),
            ("id", cmd_client_id, 2),
            ("setinfo", cmd_client_setinfo, 4),
        ]),
        "config": (cmd_config, -2, [("get", cmd_config_get, -3)]),
        "command": (cmd_command, -1, [
            ("count", cmd_command_count, 2),
            ("docs", cmd_command_docs, -2),
            ("info", cmd_command_info, -2),
            ("list", cmd_command_list, -2),
        ]),
    }  # fmt: skip
    for name, (handler, arity, subs) in containers.items():
        table = {sub.encode(): Command(f"{name}|{sub}", h, a) for sub, h, a in subs}
        _register(Command(name, handler, arity, subcommands=table))


_build_table()
