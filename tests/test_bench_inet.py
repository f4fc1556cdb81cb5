"""scripts/bench_inet.py --quick: runs (root; it creates namespaces) and writes the JSON the
README table comes from.  Skips without root/iproute2 (fails under CI, like the live tests)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from test_inet_live import ROOT, _live_missing, require

NUMERIC = ["bulk_up_MBps", "bulk_down_MBps", "rtt_p50_us", "rtt_p99_us", "cpu_us_per_frame_bulk",
           "frames_per_syscall_bulk"]


def test_bench_inet_quick_writes_json(tmp_path) -> None:
    require(_live_missing())
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_inet.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "bench_inet.json").read_text())
    assert data["schema"] == 1 and data["meta"]["quick"] is True
    assert data["meta"]["seconds"] < 60, data["meta"]
    rows = {r["path"]: r for r in data["rows"]}
    assert {"inet (queue API)", "Linux kernel"} <= set(rows), rows
    redis = shutil.which("redis-benchmark") is not None
    for r in rows.values():
        assert not r.get("note"), r
        for k in NUMERIC + (["redis_set_rps", "redis_get_rps", "cpu_us_per_frame_redis"] if redis else []):
            assert isinstance(r.get(k), (int, float)) and r[k] > 0, (r["path"], k, r.get(k))
        assert r["rtt_p50_us"] <= r["rtt_p99_us"]
    assert rows["inet (queue API)"]["frames_per_syscall_bulk"] > 1   # the ring and sendmmsg batch
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5).stdout
    assert data["meta"]["namespaces"] not in left, left           # always removed
    assert "| inet (queue API) |" in out.stdout
