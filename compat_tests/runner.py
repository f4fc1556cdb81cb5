"""Run CPython's test modules plainly and under demishim, and compare the counts."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

from . import disabled as disabled_mod

TIERS: dict[str, list[str]] = {
    "1": ["test_socket", "test_selectors", "test_select", "test_poll", "test_socketserver",
          "test.test_asyncio.test_sock_lowlevel", "test.test_asyncio.test_streams",
          "test.test_asyncio.test_events", "test.test_asyncio.test_base_events",
          "test.test_asyncio.test_server", "test.test_asyncio.test_sendfile"],
    "2": ["test_httplib", "test_httpservers", "test_urllib2_localnet", "test_wsgiref",
          "test_smtplib", "test_imaplib", "test_timeout"],
    "3": ["test_fileio", "test_file", "test_io", "test_univnewlines"],
}

# regrtest resources a module needs to run at all (test_socketserver requires 'network'
# at import; it only uses localhost; test_timeout needs it too, its external-host tests
# skip themselves when offline).
RESOURCES: dict[str, list[str]] = {"test_socketserver": ["network"], "test_timeout": ["network"]}

DEFAULT_TIMEOUT = 600.0


# ----------------------------------------------------------------------------- parsing
@dataclass
class Counts:
    run: int = 0
    passed: int = 0
    skipped: int = 0
    failures: int = 0
    errors: int = 0
    expected_failures: int = 0
    unexpected_successes: int = 0
    summary_seen: bool = False          # a unittest "Ran N tests" line was found
    failed_ids: list[str] = field(default_factory=list)   # FAIL:/ERROR: test ids
    skipped_ids: dict[str, str] = field(default_factory=dict)  # test id -> skip reason
    result: str = ""                    # regrtest's "Tests result" (SUCCESS, FAILURE, ...)


_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s", re.M)
_OUTCOME = re.compile(r"^(OK|FAILED)(?: \(([^)]*)\))?\s*$", re.M)
_FAILLINE = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)\s]+)\)", re.M)
_SKIPLINE = re.compile(r"^\w+ \(([\w.]+)\)[^\n]*? \.\.\. skipped (.*)$", re.M)
_RESULT = re.compile(r"^== Tests result: (.+?) ==\s*$", re.M)
_KEYS = {"failures": "failures", "errors": "errors", "skipped": "skipped",
         "expected failures": "expected_failures",
         "unexpected successes": "unexpected_successes"}


def parse_counts(text: str) -> Counts:
    """Counts from the output of ``python -m test -v MODULE`` (or plain unittest -v).

    Several "Ran N tests" blocks (several modules, or re-runs) are summed."""
    c = Counts()
    rans = [m for m in _RAN.finditer(text)]
    for m in rans:
        c.run += int(m.group(1))
        c.summary_seen = True
        o = _OUTCOME.search(text, m.end())
        if not o:
            continue
        for part in (o.group(2) or "").split(","):
            if "=" not in part:
                continue
            k, v = part.strip().split("=", 1)
            attr = _KEYS.get(k.strip())
            if attr and v.strip().isdigit():
                setattr(c, attr, getattr(c, attr) + int(v))
    ids = []
    for m in _FAILLINE.finditer(text):
        tid = m.group(3)
        name = m.group(2)
        if not tid.endswith("." + name) and name not in ("setUpClass", "tearDownClass",
                                                         "setUpModule", "tearDownModule"):
            tid = f"{tid}.{name}"
        elif name in ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule"):
            tid = f"{tid}.{name}"
        if tid not in ids:
            ids.append(tid)
    c.failed_ids = ids
    c.skipped_ids = {m.group(1): m.group(2).strip().strip("'\"") for m in _SKIPLINE.finditer(text)}
    r = _RESULT.findall(text)
    if r:
        c.result = r[-1].strip()
    c.passed = max(0, c.run - c.skipped - c.failures - c.errors - c.unexpected_successes)
    return c


@dataclass
class ShimStats:
    found: bool = False
    sockets: int = 0
    files: int = 0
    socket_fallbacks: int = 0
    file_fallbacks: int = 0
    call_fallbacks: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def fallbacks(self) -> int:
        return self.socket_fallbacks + self.file_fallbacks + self.call_fallbacks


_ST_LIBOS = re.compile(r"through the library OS: (\d+) sockets?, (\d+) files?")
_ST_FALLBACK = re.compile(r"fell back to the kernel: (\d+) sockets?, (\d+) files?, (\d+) calls?")
_ST_CALL = re.compile(r"^    (\d+) x (.+)$")


def parse_stats(text: str) -> ShimStats:
    """The block demishim ``--stats`` prints at exit (shim/runtime.py Stats.report)."""
    s = ShimStats()
    idx = text.rfind("demishim stats, library OS")
    if idx < 0:
        return s
    block = text[idx:]
    m = _ST_LIBOS.search(block)
    if m:
        s.found = True
        s.sockets, s.files = int(m.group(1)), int(m.group(2))
    m = _ST_FALLBACK.search(block)
    if m:
        s.socket_fallbacks, s.file_fallbacks, s.call_fallbacks = map(int, m.groups())
        for line in block[m.end():].splitlines()[1:]:
            cm = _ST_CALL.match(line)
            if not cm:
                break
            s.calls[cm.group(2)] = int(cm.group(1))
    return s


# ----------------------------------------------------------------------------- disabled
def full_prefix(module: str) -> str:
    return module if module.startswith("test.") else "test." + module


def list_cases(module: str, python: str, timeout: float = 120,
               launcher: list[str] | None = None) -> list[str]:
    """The test ids regrtest would run (``--list-cases``), plainly or, with ``launcher``
    (``["-m", "demishim", "--libos", L]``), under the shim, where e.g. the epoll-based
    classes are gone because the shim removes select.epoll."""
    args = [python, *(launcher or []), "-m", "test", "--list-cases", module]
    for r in RESOURCES.get(module, []):
        args += ["-u", r]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return []
    return [ln.strip() for ln in p.stdout.splitlines() if ln.startswith("test.")]


def patterns_for(module: str, entries: dict[str, str]) -> dict[str, str]:
    pre = full_prefix(module) + "."
    return {k: v for k, v in entries.items() if k.startswith(pre)}


def count_matching(cases: Iterable[str], patterns: Iterable[str]) -> int:
    pats = list(patterns)
    return sum(1 for c in cases if any(fnmatch.fnmatchcase(c, p) for p in pats))


# ----------------------------------------------------------------------------- running
@dataclass
class RunResult:
    rc: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    counts: Counts = field(default_factory=Counts)
    stats: ShimStats = field(default_factory=ShimStats)
    tail: str = ""

    @property
    def status(self) -> str:
        if self.timed_out:
            return "timeout"
        if not self.counts.summary_seen:
            if self.counts.result.startswith("NO TESTS RAN") or "skipped" in self.tail[-300:]:
                return "skipped"
            return f"crashed (rc={self.rc})"
        return "ok" if self.rc == 0 else f"rc={self.rc}"


@dataclass
class ModuleResult:
    module: str
    total_cases: int = 0
    disabled: int = 0
    excluded: int = 0
    shim_cases: int = 0                 # tests that exist under the shim
    refused: bool = False
    plain: RunResult | None = None
    shim: RunResult | None = None
    new_failures: list[str] = field(default_factory=list)
    new_skips: dict[str, str] = field(default_factory=dict)   # skipped only under the shim

    @property
    def regressed(self) -> bool:
        if self.refused:
            return True
        if self.plain is None or self.shim is None:
            return False
        return bool(self.new_failures)


_children: set[int] = set()
_children_lock = threading.Lock()


def run_one(argv: list[str], timeout: float) -> RunResult:
    rr = RunResult()
    tmp = tempfile.mkdtemp(prefix="compat_tests_")
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", cwd=tmp, env=env, start_new_session=True)
    with _children_lock:
        _children.add(p.pid)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        rr.timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)   # the session this run started
        except ProcessLookupError:
            pass
        out, _ = p.communicate()
    finally:
        with _children_lock:
            _children.discard(p.pid)
        shutil.rmtree(tmp, ignore_errors=True)
    rr.seconds = time.monotonic() - t0
    rr.rc = p.returncode
    rr.counts = parse_counts(out)
    rr.stats = parse_stats(out)
    rr.tail = out[-4000:]
    return rr


def regrtest_args(module: str, ignorefile: str | None) -> list[str]:
    a = ["-m", "test", "-v"]
    for r in RESOURCES.get(module, []):
        a += ["-u", r]
    if ignorefile:
        a += ["--ignorefile", ignorefile]
    return a + [module]


def compare(mr: ModuleResult) -> None:
    p, s = mr.plain, mr.shim
    if p is None or s is None:
        return
    plain_bad = set(p.counts.failed_ids)
    new = [t for t in s.counts.failed_ids if t not in plain_bad]
    if not s.counts.summary_seen and p.counts.summary_seen:
        new.append(f"<shim run {s.status}>")
    elif (not new and s.counts.failures + s.counts.errors
          > p.counts.failures + p.counts.errors):
        new.append("<more failures/errors than the plain run>")
    mr.new_failures = new
    mr.new_skips = {t: why for t, why in s.counts.skipped_ids.items()
                    if t not in p.counts.skipped_ids}


# ----------------------------------------------------------------------------- output
def _fmt_run(r: RunResult | None, shim: bool) -> list[str]:
    if r is None:
        return ["-"] * (4 if shim else 3)
    c = r.counts
    if not c.summary_seen:
        cells = [r.status, "", ""]
    else:
        cells = [str(c.run), str(c.passed), str(c.skipped)]
    if shim:
        cells.append(f"{c.failures}/{c.errors}" if c.summary_seen else "")
    return cells


def print_table(results: list[ModuleResult], libos: str, file=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(file=file or sys.stdout, width=200)
    t = Table(title=f"CPython {sys.version_info[0]}.{sys.version_info[1]} test modules: "
                    f"plain vs demishim --libos {libos}")
    for col, just in [("module", "left"), ("disabled", "right"), ("plain run", "right"),
                      ("pass", "right"), ("skip", "right"), ("shim run", "right"),
                      ("pass", "right"), ("skip", "right"), ("fail/err", "right"),
                      ("libOS socks/files", "right"), ("fallbacks", "right"),
                      ("notes", "left")]:
        t.add_column(col, justify=just)
    for mr in results:
        notes = []
        if mr.refused:
            notes.append(f"REFUSED: {mr.disabled}/{mr.shim_cases} disabled")
        if mr.shim_cases and mr.shim_cases != mr.total_cases:
            notes.append(f"{mr.total_cases - mr.shim_cases} plain-only")
        st = mr.shim.stats if mr.shim else None
        if mr.shim and st is not None:
            if not st.found:
                notes.append("(no --stats output)")
            elif st.sockets + st.files == 0:
                notes.append("(libOS unused)")
            elif st.sockets == 0 and mr.module not in TIERS["3"]:
                notes.append("(no libOS sockets)")
        if mr.new_failures:
            notes.append("NEW: " + ", ".join(x.rsplit(".", 2)[-2] + "." + x.rsplit(".", 1)[-1]
                                            if x.count(".") >= 2 else x
                                            for x in mr.new_failures[:4])
                         + (f" (+{len(mr.new_failures) - 4})" if len(mr.new_failures) > 4 else ""))
        elif mr.shim and mr.plain and mr.shim.status == "ok":
            notes.append("no new failures")
        if mr.new_skips:
            notes.append(f"{len(mr.new_skips)} skipped only under the shim")
        dis = str(mr.disabled) + (f" (+{mr.excluded} excl)" if mr.excluded else "")
        libos_cell = fb_cell = ""
        if st is not None and st.found:
            libos_cell = f"{st.sockets}/{st.files}"
            fb_cell = (f"{st.socket_fallbacks}s {st.file_fallbacks}f {st.call_fallbacks}c"
                       if st.fallbacks else "0")
        t.add_row(mr.module.replace("test.test_asyncio.", "asyncio."), dis,
                  *_fmt_run(mr.plain, False), *_fmt_run(mr.shim, True),
                  libos_cell, fb_cell, "; ".join(notes))
    console.print(t)


def to_json(results: list[ModuleResult], libos: str) -> dict:
    def rr(r: RunResult | None):
        if r is None:
            return None
        d = asdict(r)
        d["status"] = r.status
        d.pop("tail", None)
        return d
    return {"python": sys.version.split()[0], "libos": libos,
            "modules": [{"module": m.module, "total_cases": m.total_cases,
                         "shim_cases": m.shim_cases,
                         "disabled": m.disabled, "excluded": m.excluded,
                         "refused": m.refused, "new_failures": m.new_failures,
                         "new_skips": m.new_skips,
                         "plain": rr(m.plain), "shim": rr(m.shim)} for m in results]}


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m compat_tests",
                                 description="Run CPython test modules plainly and under demishim.")
    ap.add_argument("--libos", default="posix")
    ap.add_argument("--tier", default="1", choices=["1", "2", "3", "all"])
    ap.add_argument("--module", nargs="+", action="extend", default=[],
                    help="run these modules instead of a tier")
    ap.add_argument("--jobs", type=int, default=1, choices=[1, 2])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help="per run (module x mode) timeout in seconds")
    ap.add_argument("--shim-only", action="store_true", help="skip the plain runs")
    ap.add_argument("--max-disabled", type=float, default=disabled_mod.MAX_DISABLED_FRACTION,
                    metavar="FRACTION",
                    help="refuse (flag, exit non-zero) a module where more than this "
                         "fraction of its tests is disabled (default %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    modules = a.module or (sum(TIERS.values(), []) if a.tier == "all" else TIERS[a.tier])
    py = sys.executable
    ver = sys.version_info[:2]
    dis_all = disabled_mod.disabled_for(ver)
    log = sys.stderr
    results: list[ModuleResult] = []
    ignorefiles: dict[str, str | None] = {}
    tmpdir = tempfile.mkdtemp(prefix="compat_tests_ignore_")
    print(f"compat_tests: Python {ver[0]}.{ver[1]}, libos {a.libos}, {len(modules)} modules, "
          f"jobs {a.jobs}, timeout {a.timeout:.0f}s per run", file=log, flush=True)
    for mod in modules:
        mr = ModuleResult(mod)
        plain_cases = list_cases(mod, py)
        cases = list_cases(mod, py, launcher=["-m", "demishim", "--libos", a.libos])
        dis = patterns_for(mod, dis_all)
        exc = disabled_mod.EXCLUDED.get(mod, {})
        mr.total_cases = len(plain_cases)
        mr.shim_cases = len(cases)
        mr.disabled = count_matching(cases, dis)
        mr.excluded = count_matching(cases, exc)
        base = len(cases) - mr.excluded
        frac = mr.disabled / base if base > 0 else 0.0
        mr.refused = frac > a.max_disabled
        print(f"  {mod}: {mr.total_cases} tests ({mr.shim_cases} under the shim), "
              f"{mr.disabled} disabled ({frac:.1%})"
              + (f", {mr.excluded} excluded" if mr.excluded else "")
              + (f" -- REFUSED: more than {a.max_disabled:.0%} disabled" if mr.refused else ""),
              file=log, flush=True)
        for pat, why in dis.items():
            n = count_matching(cases, [pat])
            print(f"      - {pat} [{n}]: {why}", file=log, flush=True)
        pats = list(dis) + list(exc)
        if pats:
            path = os.path.join(tmpdir, mod.replace(".", "_") + ".ignore")
            with open(path, "w") as f:
                f.write("\n".join(pats) + "\n")
            ignorefiles[mod] = path
        else:
            ignorefiles[mod] = None
        results.append(mr)

    jobs = []
    for mr in results:   # a refused module still runs (for the record) but fails the run
        ig = ignorefiles[mr.module]
        if not a.shim_only:
            jobs.append((mr, "plain", [py] + regrtest_args(mr.module, ig)))
        jobs.append((mr, "shim", [py, "-m", "demishim", "--libos", a.libos, "--stats"]
                     + regrtest_args(mr.module, ig)))
    done = 0
    lock = threading.Lock()
    t_start = time.monotonic()

    def work(job):
        nonlocal done
        mr, kind, argv_ = job
        r = run_one(argv_, a.timeout)
        with lock:
            setattr(mr, kind, r)
            done += 1
            c = r.counts
            extra = ""
            if kind == "shim":
                extra = (f", libOS {r.stats.sockets} sockets/{r.stats.files} files, "
                         f"{r.stats.fallbacks} fallbacks")
            print(f"[{done}/{len(jobs)} {time.monotonic() - t_start:6.0f}s] {mr.module} "
                  f"{kind}: {r.status}, run={c.run} skip={c.skipped} fail={c.failures} "
                  f"err={c.errors} in {r.seconds:.0f}s{extra}", file=log, flush=True)
        return r

    try:
        with cf.ThreadPoolExecutor(max_workers=a.jobs) as ex:
            list(ex.map(work, jobs))
    except KeyboardInterrupt:
        with _children_lock:
            for pid in list(_children):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    for mr in results:
        compare(mr)
    print_table(results, a.libos)
    for mr in results:
        st = mr.shim.stats if mr.shim else None
        if st is not None and st.calls:
            top = sorted(st.calls.items(), key=lambda kv: -kv[1])[:3]
            print(f"{mr.module} fallbacks: "
                  + "; ".join(f"{k} x {c[:70]}" for c, k in top))
        if mr.new_skips:
            reasons: dict[str, int] = {}
            for why in mr.new_skips.values():
                why = why or "(no reason given)"
                reasons[why[:90]] = reasons.get(why[:90], 0) + 1
            print(f"{mr.module} skipped only under the shim: "
                  + "; ".join(f"{n} x {w}" for w, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]))
    bad = [mr for mr in results if mr.regressed]
    for mr in bad:
        if mr.refused:
            print(f"{mr.module}: refused ({mr.disabled} of {mr.shim_cases} tests disabled)")
        else:
            print(f"{mr.module}: new under the shim: " + ", ".join(mr.new_failures))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(to_json(results, a.libos), f, indent=2)
    return 1 if bad else 0
