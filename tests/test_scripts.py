"""The benchmark scripts: the system-call counter counts right, and compare.py writes the
results.json rows the README and issue promise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import syscount  # noqa: E402


def _ptrace_allowed() -> bool:
    try:
        return syscount.count_run([sys.executable, "-c", "pass"]) > 0
    except Exception:
        return False


@pytest.mark.skipif(not _ptrace_allowed(), reason="ptrace is not permitted here")
def test_syscount_counts_one_call_per_getppid():
    def argv(n: int) -> list[str]:
        return [sys.executable, "-c", f"import os\nfor _ in range({n}): os.getppid()"]

    per = syscount.calls_per_message(argv, 200, 2200)
    assert 0.95 <= per <= 1.05, per


def test_compare_quick_writes_results(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--quick",
                          "--jobs", "echo", "--no-syscalls", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {r["path"]: r for r in data["rows"]}
    assert {"plain sockets", "queue API on posix", "queue API on shm"} <= set(rows)
    for r in data["rows"]:
        assert {"path", "p50_us", "p99_us", "ops_per_s", "syscalls_per_op",
                "cpu_us_per_op"} <= set(r)
        assert not r["note"].startswith("failed"), r
        assert 0 < r["p50_us"] <= r["p99_us"] and r["ops_per_s"] > 0 and r["cpu_us_per_op"] > 0
    assert (tmp_path / "latency_cdf.png").stat().st_size > 1000
    assert "I/O paths side by side" in out.stdout


@pytest.mark.skipif(not __import__("shutil").which("redis-benchmark"),
                    reason="needs redis-benchmark")
def test_compare_redis_jobs_run_every_path_in_rounds(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--quick",
                          "--jobs", "redis,redis-py", "--no-syscalls", "--rounds", "3",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    redis = [r for r in rows if r["job"] == "redis"]
    pairs = [r for r in rows if r["job"] == "redis-py"]
    assert {"plain sockets", "queue API on posix"} <= {r["path"] for r in redis}
    assert len(pairs) == len(redis) + 1  # and redis-py alone
    for r in redis:
        assert "median of 3 rounds" in r["note"] and r["ops_per_s"] > 0, r
        assert r["cpu_us_per_op"] > 0, r
    for r in pairs:
        assert not r["note"].startswith("failed"), r
        assert 0 < r["p50_us"] <= r["p99_us"] and r["ops_per_s"] > 0, r
    assert pairs[-1]["path"] == "redis-py alone, no I/O"
    for r in redis + pairs:  # a value per round, redis-py alone's too
        assert len(r["rounds"]) == 3 and all(x > 0 for x in r["rounds"]), r
    by = {(r["job"], r["path"]): r["rounds"] for r in rows}
    targets = json.loads((tmp_path / "results.json").read_text())["targets"]
    assert [t["ratio"] for t in targets] == [
        "queue API on posix / plain sockets", "plain under demishim posix / plain sockets",
        "plain sockets / plain under demishim shm"]
    for t in targets:
        a, b = t["ratio"].split(" / ")
        want = [x / y for x, y in zip(by[(t["job"], a)], by[(t["job"], b)])]
        assert t["per_round"] == pytest.approx(want, rel=1e-3), t
        ra, rb = (next(r for r in rows if (r["job"], r["path"]) == (t["job"], x)) for x in (a, b))
        key = "ops_per_s" if t["measure"] == "throughput" else "p50_us"
        assert t["of_rows"] == pytest.approx(ra[key] / rb[key], rel=1e-3), t
        assert t["ratio"] in out.stdout and f"median {t['median']:.2f}" in out.stdout
        if t["job"] == "redis-py":  # bounded by redis-py alone, in the same rounds
            b = t["bound"]
            assert b["ratio"] == "plain sockets / redis-py alone, no I/O", b
            want = [x / y for x, y in zip(by[("redis-py", "plain sockets")],
                                          by[("redis-py", "redis-py alone, no I/O")])]
            assert b["per_round"] == pytest.approx(want, rel=1e-3), b
            assert f"its bound in this run, {b['ratio']}" in out.stdout
        else:
            assert "bound" not in t, t


def test_compare_targets_pair_the_paths_round_by_round():
    """The ratio of each target is taken round by round (the two paths ran in the same
    round) and the median of those is reported; a path without rounds gives no ratio."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare
    rows = [compare.Row("redis", "plain sockets", rounds=[100.0, 200.0, 50.0], ops_per_s=100.0),
            compare.Row("redis", "queue API on posix", rounds=[110.0, 180.0, 60.0],
                        ops_per_s=110.0),
            compare.Row("redis-py", "plain sockets", rounds=[250.0, 200.0]),
            compare.Row("redis-py", "plain under demishim shm", rounds=[50.0, 50.0])]
    got = {t["ratio"]: t for t in compare.targets(rows)}
    assert set(got) == {"queue API on posix / plain sockets",
                        "plain sockets / plain under demishim shm"}
    q = got["queue API on posix / plain sockets"]
    assert q["per_round"] == [1.1, 0.9, 1.2] and q["median"] == 1.1 and q["of_rows"] == 1.1
    lat = got["plain sockets / plain under demishim shm"]
    assert lat["per_round"] == [5.0, 4.0] and lat["of_rows"] is None  # (no p50 in these rows)
    assert "bound" not in lat  # (no redis-py alone row)
    rows.append(compare.Row("redis-py", compare.ALONE, rounds=[40.0, 50.0], p50_us=45.0))
    rows[-2].p50_us, rows[-3].p50_us = 50.0, 225.0
    lat = {t["ratio"]: t for t in compare.targets(rows)}["plain sockets / plain under demishim shm"]
    assert lat["of_rows"] == 4.5
    assert lat["bound"] == {"ratio": "plain sockets / redis-py alone, no I/O",
                            "per_round": [6.25, 4.0], "median": 5.125, "of_rows": 5.0}


def test_compare_rounds_rotate_the_order_of_the_paths():
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare

    ps = ["a", "b", "c"]
    order = list(compare.rotations(ps, 3))  # type: ignore[arg-type]
    assert [p for _, p in order] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for r, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.skipif(not (__import__("shutil").which("valgrind")
                         and __import__("shutil").which("redis-benchmark")),
                    reason="needs valgrind and redis-benchmark")
def test_instructions_counts_the_requests_only(tmp_path):
    """instructions.py counts what the server executes for the requests, not its start-up:
    twice the requests cost about twice the instructions."""
    def count(n: int) -> float:
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "instructions.py"),
                              "--paths", "plain", "--requests", str(n), "--clients", "5",
                              "--json", str(tmp_path / f"{n}.json")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        data = json.loads((tmp_path / f"{n}.json").read_text())
        return data["instructions_per_request"]["plain"] * 2 * n

    small, large = count(300), count(600)
    assert 5_000 < small / 600 < 500_000, small  # per request: the Redis server's order
    assert 1.6 < large / small < 2.4, (small, large)


@pytest.mark.parametrize("libos", ["posix", "shm"])
def test_probe_cost_times_every_probe_kind_on_both_sides(libos):
    """probe_cost.py runs each probe plainly and under the shim; its children check that an
    idle connection is never reported ready and that the byte of 'new after recv' arrives
    (a probe that wrongly reported input, or a lost byte, makes it exit non-zero)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_cost.py"), "--libos",
                          libos, "--n", "300", "--rounds", "1", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    med = json.loads(out.stdout)
    assert set(med) == {"kernel", f"demishim {libos}"}
    for side in med.values():
        assert set(side) == {"recv(t=0)", "poll, new", "poll, kept", "select",
                             "selector, kept", "new after recv"}
        assert all(0 < us < 10_000 for us in side.values()), side


def test_redis_py_latency_beside_alone_reports_both_at_matched_moments():
    """--beside-alone alternates blocks of GETs to the server with redis-py alone in one
    process: both p50s come back, and a GET over the kernel to a real server costs more than
    redis-py's own work."""
    port = syscount.free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "apps" / "redis_server.py"), "--port",
                               str(port)], stdout=subprocess.DEVNULL)
    try:
        syscount.wait_for_port(port)
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "redis_py_latency.py"),
                              "--port", str(port), "--n", "300", "--beside-alone"],
                             capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < res["alone_p50_us"] < res["p50_us"] <= res["p99_us"], res
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "redis_py_latency.py"),
                          "--no-io", "--beside-alone"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--beside-alone needs --port" in bad.stderr


def test_bench_threads_runs_every_path():
    """bench_threads.py runs the unmodified threaded server plainly and under the shim on
    posix and shm, and prints a row of numbers for each."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_threads.py"), "--quick",
                          "--n", "200"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for path in ("plain sockets", "plain under demishim posix", "plain under demishim shm"):
        row = next(line for line in out.stdout.splitlines() if path in line)
        nums = [float(x) for x in row.replace("│", " ").split()[len(path.split()):]]
        assert len(nums) == 4 and all(x > 0 for x in nums), row
        assert nums[0] <= nums[1] <= nums[2], row  # p50 <= p90 <= p99
