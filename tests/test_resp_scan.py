"""apps/_resp.c (the C scanner of plain multibulk requests) against the pure-Python parser.

Both parsers get the same byte stream in the same chunks; after every ``feed`` they must
have returned the same commands, or raised the same protocol error with the same commands
before it, and hold the same state.  The streams mix well-formed requests with every kind
of element the scanner must leave to the Python loop (inline requests, signs, leading
zeros, oversized counts and lengths, NULs, wrong type bytes, partial headers and payloads).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import resp
from apps.resp import Parser, ProtocolError


class PyParser(Parser):
    """The parser with the C scanner off."""

    __slots__ = ()
    _scan = None


needs_c = pytest.mark.skipif(resp._c_scan is None, reason="apps._resp not in use")


def test_c_scanner_is_used_when_built() -> None:
    """The comparison below must not compare the Python loop with itself."""
    if os.environ.get("APPS_NO_C"):
        assert Parser._scan is None
        return
    if importlib.util.find_spec("apps._resp") is None:
        pytest.skip("apps._resp is not built")
    assert Parser._scan is not None
    assert type(Parser._scan).__name__ == "builtin_function_or_method"


def _request(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


_ODD = [  # elements the scanner leaves to the Python loop (most are errors there)
    b"PING\r\n", b"set a b\n", b"\r\n", b"*0\r\n", b"*-1\r\n", b"*-5\r\n", b"*01\r\n",
    b"*+1\r\n", b"* 1\r\n", b"*\r\n", b"*2147483647\r\n", b"*2147483648\r\n",
    b"*99999999999\r\n", b"*1\x00\r\n", b"$3\r\n", b"$-1\r\n", b"$03\r\n", b"$\r\n",
    b"$99999999\r\n", b"$100000000\r\n", b"$536870913\r\n", b"$1\x00\r\n", b"x\r\n",
    b"*1\r\nx\r\n", b"\x00", b"*", b"$", b"\r", b'echo "a\r\n', b"*1\r\n$4\r\npingXY",
]
_ARG = st.binary(max_size=40) | st.sampled_from([b"SET", b"GET", b"\r\n", b"*1\r\n", b"$"])
_PIECE = st.one_of(
    st.lists(_ARG, min_size=1, max_size=4).map(_request),
    st.sampled_from(_ODD),
    st.binary(max_size=12),
)


def _state(p: Parser) -> tuple[object, ...]:
    return (p._buf, b"".join(p._pending), p._pending_len, p._need, p._left, p._bulklen,
            p._argv, p.buffered)


def _feed(p: Parser, chunk: bytes) -> tuple[str, object]:
    try:
        return ("ok", p.feed(chunk))
    except ProtocolError as err:
        return ("error", (err.text, err.commands))


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECE, max_size=12), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_c_scanner_matches_python_parser(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    c, py = Parser(), PyParser()
    for lo, hi in zip(bounds, bounds[1:]):
        got, want = _feed(c, stream[lo:hi]), _feed(py, stream[lo:hi])
        assert got == want, (lo, hi)
        assert _state(c) == _state(py), (lo, hi)
        if want[0] == "error":
            break


@needs_c
def test_c_scanner_parses_a_pipeline_alone() -> None:
    """A chunk of plain requests never reaches the Python loop: scan consumed all of it."""
    reqs = [[b"SET", b"key:%d" % i, b"v" * i] for i in range(50)]
    stream = b"".join(_request(r) for r in reqs)
    left_over: list[int] = []

    class Spy(Parser):
        __slots__ = ()

        @staticmethod
        def _scan(buf, left, bulklen, argv, commands):  # type: ignore[no-untyped-def]
            out = resp._c_scan(buf, left, bulklen, argv, commands)
            left_over.append(len(buf) - out[0])
            return out

    assert Spy().feed(stream) == reqs
    assert left_over == [0]


@needs_c
def test_c_scanner_rejects_wrong_arguments() -> None:
    with pytest.raises(TypeError):
        resp._c_scan("*1\r\n", 0, -1, [], [])
    with pytest.raises(TypeError):
        resp._c_scan(b"*1\r\n", 0, -1, [])
