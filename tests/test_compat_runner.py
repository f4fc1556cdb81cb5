"""Fast tests of compat_tests: the regrtest output parser, the disabled list, one real run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


from compat_tests import disabled, parse_counts, parse_stats
from compat_tests.runner import count_matching, patterns_for

ROOT = Path(__file__).resolve().parent.parent

SAMPLE_OK = """\
0:00:00 load avg: 0.35 Run tests sequentially
0:00:00 load avg: 0.35 [1/1] test_select
test_errno (test.test_select.SelectTestCase.test_errno) ... ok
test_select (test.test_select.SelectTestCase.test_select) ... b'testing...\\n'
timeout = None
ok
test_returned_list_identity (test.test_select.SelectTestCase.test_returned_list_identity) ... ok

----------------------------------------------------------------------
Ran 3 tests in 1.547s

OK

== Tests result: SUCCESS ==

1 test OK.
"""

SAMPLE_SKIP = """\
test_poll1 (test.test_poll.PollTests.test_poll1) ... ok
test_poll_blocks_with_negative_ms (test.test_poll.PollTests.test_poll_blocks_with_negative_ms) ... skipped 'test needs threading'
test_poll2 (test.test_poll.PollTests.test_poll2) ... ok

----------------------------------------------------------------------
Ran 3 tests in 0.5s

OK (skipped=1)

== Tests result: SUCCESS ==
"""

SAMPLE_FAIL = """\
test_a (test.test_x.T.test_a) ... ok
test_b (test.test_x.T.test_b) ... FAIL
test_c (test.test_x.T.test_c) ... ERROR
test_d (test.test_x.T.test_d) ... skipped 'no'
test_e (test.test_x.T.test_e) ... expected failure
setUpClass (test.test_x.U) ... ERROR

======================================================================
ERROR: test_c (test.test_x.T.test_c)
----------------------------------------------------------------------
Traceback (most recent call last):
OSError: boom

======================================================================
ERROR: setUpClass (test.test_x.U)
----------------------------------------------------------------------
Traceback (most recent call last):
OSError: boom

======================================================================
FAIL: test_b (test.test_x.T.test_b) (i=1)
----------------------------------------------------------------------
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 5 tests in 0.01s

FAILED (failures=1, errors=2, skipped=1, expected failures=1)
test test_x failed
== Tests result: FAILURE ==
"""

SAMPLE_STATS = """\
Result: SUCCESS
demishim stats, library OS 'posix':
  through the library OS: 12 sockets, 1 file (30 pushes, 31 pops, 100 bytes out, 90 bytes in)
  fell back to the kernel: 2 sockets, 0 files, 3 calls
    2 x socket(AF_UNIX)
    3 x os.sendfile
  left to the kernel (fds, pipes, devices): 2 files
"""


def test_parse_pass():
    c = parse_counts(SAMPLE_OK)
    assert (c.run, c.passed, c.skipped, c.failures, c.errors) == (3, 3, 0, 0, 0)
    assert c.summary_seen and c.result == "SUCCESS" and c.failed_ids == []


def test_parse_skip():
    c = parse_counts(SAMPLE_SKIP)
    assert (c.run, c.passed, c.skipped) == (3, 2, 1)


def test_parse_fail_error():
    c = parse_counts(SAMPLE_FAIL)
    assert (c.run, c.failures, c.errors, c.skipped, c.expected_failures) == (5, 1, 2, 1, 1)
    assert c.passed == 1
    assert c.result == "FAILURE"
    assert c.failed_ids == ["test.test_x.T.test_c", "test.test_x.U.setUpClass",
                            "test.test_x.T.test_b"]


def test_parse_crash_has_no_summary():
    c = parse_counts("Fatal Python error: Segmentation fault\n")
    assert not c.summary_seen and c.run == 0


def test_parse_stats():
    s = parse_stats(SAMPLE_STATS)
    assert s.found and (s.sockets, s.files) == (12, 1)
    assert (s.socket_fallbacks, s.file_fallbacks, s.call_fallbacks) == (2, 0, 3)
    assert s.calls == {"socket(AF_UNIX)": 2, "os.sendfile": 3}
    assert not parse_stats("no stats here").found


def test_disabled_entries_have_reasons():
    assert disabled.DISABLED, "no versions listed"
    for ver, entries in disabled.DISABLED.items():
        assert isinstance(ver, tuple) and len(ver) == 2
        for tid, why in entries.items():
            assert tid.startswith("test.test_"), tid
            assert isinstance(why, str) and why.strip(), f"{ver} {tid}: empty reason"
    for mod, entries in disabled.EXCLUDED.items():
        for pat, why in entries.items():
            assert isinstance(why, str) and why.strip(), f"{mod} {pat}: empty reason"


def test_disabled_known_311_entries_match():
    entries = disabled.disabled_for((3, 11))
    sock = patterns_for("test_socket", entries)
    cases = ["test.test_socket.NonBlockingTCPTests.testSetBlocking",
             "test.test_socket.NonBlockingTCPTests.testSetBlocking_overflow",
             "test.test_socket.NonblockConstantTest.test_SOCK_NONBLOCK",
             "test.test_socket.NonBlockingTCPTests.testAccept"]
    assert count_matching(cases, sock) == 3
    # os.sendfile to a library-OS socket pushes the file: asyncio's native sendfile path
    # runs under the shim, so nothing of test_sendfile is disabled any more
    assert patterns_for("test.test_asyncio.test_sendfile", entries) == {}


def test_end_to_end_test_select(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "compat_tests", "--libos", "posix",
                        "--module", "test_select", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "test_select" in p.stdout
    d = json.loads(out.read_text())
    (m,) = d["modules"]
    plain, shim = m["plain"], m["shim"]
    assert plain["counts"]["run"] > 0
    assert shim["counts"]["run"] == plain["counts"]["run"]
    assert shim["counts"]["skipped"] == plain["counts"]["skipped"]
    assert shim["counts"]["failures"] == shim["counts"]["errors"] == 0
    assert shim["stats"]["found"]
    assert m["new_failures"] == []


def test_compare_flags_only_new_failures():
    from compat_tests.runner import ModuleResult, RunResult, compare
    plain, shim = RunResult(rc=1), RunResult(rc=1)
    plain.counts = parse_counts(SAMPLE_FAIL)
    shim.counts = parse_counts(SAMPLE_FAIL)
    mr = ModuleResult("test_x", plain=plain, shim=shim)
    compare(mr)
    assert not mr.regressed                  # the same failures as the plain run
    shim.counts = parse_counts(SAMPLE_FAIL.replace("test_a (test.test_x.T.test_a) ... ok",
                                                   "") + "\nFAIL: test_a (test.test_x.T.test_a)\n")
    compare(mr)
    assert mr.new_failures == ["test.test_x.T.test_a"] and mr.regressed
    shim.counts = parse_counts("Fatal Python error\n")   # the shim run crashed
    compare(mr)
    assert mr.regressed


def test_parse_skipped_ids():
    c = parse_counts(SAMPLE_SKIP)
    assert c.skipped_ids == {
        "test.test_poll.PollTests.test_poll_blocks_with_negative_ms": "test needs threading"}
