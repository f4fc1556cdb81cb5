"""End-to-end data integrity between two processes.

100 000 elements of random size (1 B .. 64 KiB, most of them small) go through a
``framing=True`` TCP connection on 127.0.0.1, and 20 000 through a ``create_pipe`` pipe, from
this process to a child started with ``subprocess`` (a small script written to ``tmp_path``
that uses the queue API). Every element is two segments: a 40-byte header (a sequence number
and the SHA-256 of the payload) and the payload. The child checks each element as it arrives
and reports counts and a rolling SHA-256 of everything it received; nothing may be lost,
duplicated, corrupted or reordered, and the segment boundaries must survive.

The generator is seeded, so a failure can be replayed. Every wait has a timeout and every loop
is bounded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from queueapi import LibOS, Opcode

T = 10.0  # seconds: the timeout of every single wait
CHILD_T = 60.0  # seconds: the longest a child may take to finish after the last element
SEED = 20240611
BATCH = 128  # pushes in flight at once
HEAD = 40  # 8-byte sequence number + 32-byte SHA-256 of the payload
MAX_SIZE = 64 * 1024

RECEIVER = textwrap.dedent(r'''
    """Receiver for test_integrity.py: argv = kind (tcp|pipe), port or pipe name, count."""
    import hashlib, json, socket, sys
    from queueapi import LibOS, Opcode

    T = 10.0
    HEAD = 40
    kind, where, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    los = LibOS("posix")
    if kind == "tcp":
        qd = los.socket(socket.AF_INET, socket.SOCK_STREAM, framing=True)
        r = los.wait(los.connect(qd, ("127.0.0.1", int(where))), timeout=T)
        if r.opcode != Opcode.CONNECT:
            print(json.dumps({"error": "connect", "ret": r.ret}), flush=True)
            sys.exit(2)
    else:
        qd = los.open_pipe(where)
        r = los.wait(los.push(qd, b"ready"), timeout=T)
        if r.opcode != Opcode.PUSH:
            print(json.dumps({"error": "ready", "ret": r.ret}), flush=True)
            sys.exit(2)

    rolling = hashlib.sha256()
    seen = bytearray(expected)  # how often each sequence number arrived
    n = nbytes = corrupt = malformed = out_of_order = duplicates = unknown = 0
    first_bad = None
    eof = False
    error = 0
    min_size, max_size = 1 << 30, 0
    for _ in range(expected + 1000):  # bounded: at most 1000 more than announced
        r = los.wait(los.pop(qd), timeout=T)
        if r.opcode != Opcode.POP:
            error = r.ret
            break
        if len(r.sga) == 0:
            eof = True
            break
        segs = r.sga.segments
        if len(segs) != 2 or len(segs[0]) != HEAD:
            malformed += 1
            first_bad = first_bad if first_bad is not None else n
            data = r.sga.tobytes()
            head, payload = data[:HEAD], memoryview(data)[HEAD:]
        else:
            head, payload = bytes(segs[0]), segs[1]
        seq = int.from_bytes(head[:8], "big")
        if hashlib.sha256(payload).digest() != head[8:]:
            corrupt += 1
            first_bad = first_bad if first_bad is not None else n
        if seq >= expected:
            unknown += 1
        else:
            if seen[seq]:
                duplicates += 1
            seen[seq] = min(seen[seq] + 1, 255)
        if seq != n:
            out_of_order += 1
            first_bad = first_bad if first_bad is not None else n
        rolling.update(head)
        rolling.update(payload)
        n += 1
        nbytes += len(payload)
        min_size, max_size = min(min_size, len(payload)), max(max_size, len(payload))
    report = {"count": n, "bytes": nbytes, "missing": seen.count(0), "duplicates": duplicates,
              "corrupt": corrupt, "malformed": malformed, "out_of_order": out_of_order,
              "unknown": unknown, "first_bad": first_bad, "eof": eof, "error": error,
              "min_size": min_size, "max_size": max_size, "digest": rolling.hexdigest()}
    if kind == "tcp" and eof:
        # report back over the connection too (the sender only shut its write side)
        r = los.wait(los.push(qd, json.dumps(report).encode()), timeout=T)
        report["report_push"] = int(r.opcode)
    print(json.dumps(report), flush=True)
    los.close(qd)
''')


# =============================================================================================
# Helpers
# =============================================================================================
@pytest.fixture
def los() -> Iterator[LibOS]:
    lib = LibOS("posix")
    yield lib
    lib.shutdown_libos()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Any]:
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    procs: list[subprocess.Popen] = []

    def start(*args: Any) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(script), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=5)


def element_size(rng: random.Random, i: int, n: int) -> int:
    """Mostly small: 85% up to 128 B, 12% up to 4 KiB, 3% up to 64 KiB; the first element is
    1 byte and the second and the last are 64 KiB, so both ends of the range are covered."""
    if i == 0:
        return 1
    if i == 1 or i == n - 1:
        return MAX_SIZE
    u = rng.random()
    if u < 0.85:
        return rng.randint(1, 128)
    if u < 0.97:
        return rng.randint(129, 4096)
    return rng.randint(4097, MAX_SIZE)


def send_elements(los: LibOS, qd: int, n: int, seed: int) -> dict[str, Any]:
    """Push ``n`` checked elements; returns what the receiver must report."""
    rng = random.Random(seed)
    rolling = hashlib.sha256()
    nbytes = 0
    deadline = time.monotonic() + 120
    for start in range(0, n, BATCH):
        assert time.monotonic() < deadline, "sending took too long"
        qts = []
        for i in range(start, min(start + BATCH, n)):
            payload = rng.randbytes(element_size(rng, i, n))
            head = i.to_bytes(8, "big") + hashlib.sha256(payload).digest()
            rolling.update(head)
            rolling.update(payload)
            nbytes += len(payload)
            qts.append(los.push(qd, [head, payload]))
        for r in los.wait_all(qts, timeout=T):
            assert r.opcode == Opcode.PUSH, r
    return {"count": n, "bytes": nbytes, "digest": rolling.hexdigest()}


def finish(p: subprocess.Popen) -> dict[str, Any]:
    out, err = p.communicate(timeout=CHILD_T)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, \
        f"receiver failed ({p.returncode}): {out.decode()!r} {err.decode()}"
    return json.loads(lines[-1])


def check(report: dict[str, Any], sent: dict[str, Any]) -> None:
    problems = {k: report[k] for k in ("missing", "duplicates", "corrupt", "malformed",
                                       "out_of_order", "unknown", "error") if report[k]}
    assert not problems, f"integrity problems (first bad element {report['first_bad']}): " \
                         f"{problems}"
    assert report["eof"], "the receiver saw no end of stream"
    assert (report["count"], report["bytes"]) == (sent["count"], sent["bytes"])
    assert report["min_size"] == 1 and report["max_size"] == MAX_SIZE
    assert report["digest"] == sent["digest"], "rolling digests differ"


# =============================================================================================
# Tests
# =============================================================================================
def test_element_sizes_are_mostly_small() -> None:
    rng = random.Random(SEED)
    sizes = [element_size(rng, i, 100_000) for i in range(100_000)]
    assert min(sizes) == 1 and max(sizes) == MAX_SIZE
    assert sum(1 for s in sizes if s <= 128) > 80_000
    assert sum(sizes) < 200 * 1024 * 1024


def test_integrity_framed_tcp_100k(los: LibOS, receiver) -> None:
    n = 100_000
    lqd = los.socket(socket.AF_INET, socket.SOCK_STREAM, framing=True)
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 1)
    port = los.getsockname(lqd)[1]
    p = receiver("tcp", port, n)
    r = los.wait(los.accept(lqd), timeout=T)
    assert r.opcode == Opcode.ACCEPT, r
    qd = r.new_qd
    los.close(lqd)
    t0 = time.monotonic()
    sent = send_elements(los, qd, n, SEED)
    los.shutdown(qd)  # end of stream for the receiver; our read side stays open
    # the receiver's report comes back over the connection, then its end of stream
    r = los.wait(los.pop(qd), timeout=CHILD_T)
    assert r.opcode == Opcode.POP and len(r.sga) > 0, r
    over_wire = json.loads(r.sga.tobytes())
    r = los.wait(los.pop(qd), timeout=T)
    assert r.opcode == Opcode.POP and len(r.sga) == 0, r
    report = finish(p)
    elapsed = time.monotonic() - t0
    assert over_wire == {k: v for k, v in report.items() if k != "report_push"}
    check(report, sent)
    assert elapsed < 60, f"{n} elements took {elapsed:.1f} s"


def test_integrity_pipe_20k(los: LibOS, receiver) -> None:
    n = 20_000
    name = f"integrity-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    qd = los.create_pipe(name)
    p = receiver("pipe", name, n)
    r = los.wait(los.pop(qd), timeout=T)  # the receiver has opened the pipe
    assert r.opcode == Opcode.POP and r.sga.tobytes() == b"ready", r
    sent = send_elements(los, qd, n, SEED + 1)
    los.close(qd)  # end of stream for the receiver
    check(finish(p), sent)
