#!/usr/bin/env python3
"""Count the system calls a process makes, with python-ptrace.

As a library: ``count_while(pid, action)`` attaches to a running process (all its threads),
runs ``action()``, and returns how many system calls the process entered meanwhile.
``calls_per_message(argv_for_n, n1, n2)`` runs a command twice with two message counts and
returns (calls(n2) - calls(n1)) / (n2 - n1): start-up and tear-down cancel out.

As a script it prints calls per 64-byte echo round trip for each path, client and server side
by side:  ``python scripts/syscount.py [--libos posix] [--n 2000]``
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

from ptrace.debugger import PtraceDebugger
from ptrace.debugger.child import createChild
from ptrace.debugger.process_event import ProcessExit, NewProcessEvent
from ptrace.debugger.ptrace_signal import ProcessSignal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trace(debugger: PtraceDebugger, stop: Callable[[], bool]) -> int:
    """Resume every traced thread until ``stop()`` or all exit; count syscall entries."""
    calls = 0
    entering: dict[int, bool] = {}
    for proc in list(debugger):
        proc.syscall()
    while debugger and not stop():
        try:
            proc = debugger.waitSyscall().process
        except ProcessExit as ev:
            entering.pop(ev.process.pid, None)
            continue
        except ProcessSignal as ev:
            ev.process.syscall(ev.signum)
            continue
        except NewProcessEvent as ev:
            ev.process.syscall()
            ev.process.parent.syscall()
            continue
        inside = entering.get(proc.pid, False)
        if not inside:
            calls += 1
        entering[proc.pid] = not inside
        proc.syscall()
    return calls


def _new_debugger() -> PtraceDebugger:
    dbg = PtraceDebugger()
    dbg.traceClone()
    dbg.traceFork()
    return dbg


def count_run(argv: list[str]) -> int:
    """Run ``argv`` to completion under ptrace; the number of system calls it made."""
    dbg = _new_debugger()
    pid = createChild(argv, no_stdout=True, env=None)
    dbg.addProcess(pid, is_attached=True)
    try:
        return _trace(dbg, lambda: False)
    finally:
        dbg.quit()


def count_while(pid: int, action: Callable[[], object]) -> int:
    """System calls made by process ``pid`` (every thread) while ``action()`` runs."""
    dbg = _new_debugger()
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        dbg.addProcess(tid, is_attached=False)
    done = threading.Event()
    result: list[object] = []

    def run() -> None:
        try:
            result.append(action())
        finally:
            done.set()
            os.kill(pid, signal.SIGCONT)  # makes the tracee stop once more so we notice `done`

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        return _trace(dbg, done.is_set)
    finally:
        dbg.quit()
        t.join()


def calls_per_message(argv_for_n: Callable[[int], list[str]], n1: int, n2: int) -> float:
    """Per-message system calls of a command whose message count is a parameter."""
    return (count_run(argv_for_n(n2)) - count_run(argv_for_n(n1))) / (n2 - n1)


def echo_syscalls(kind: str, libos: str, n: int = 2000) -> tuple[float, float]:
    """(client, server) system calls per 64-byte echo round trip for one path."""
    echo = os.path.join(ROOT, "scripts", "echo.py")
    server = subprocess.Popen([sys.executable, echo, "server", "--kind", kind, "--libos", libos],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])

        def client(count: int) -> list[str]:
            return [sys.executable, echo, "client", "--kind", kind, "--libos", libos,
                    "--port", str(port), "--n", str(count), "--warmup", "0"]

        client_calls = calls_per_message(client, n // 4, n)
        server_calls = count_while(server.pid, lambda: subprocess.run(client(n), check=True,
                                                                      capture_output=True))
        # the server also accepted and closed one connection: negligible over n round trips
        return client_calls, server_calls / n
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libos", action="append", help="library OS to measure (repeatable)")
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    paths = [("plain sockets", "plain", "posix")]
    paths += [(f"queue API on {l}", "queue", l) for l in (a.libos or ["posix"])]
    print(f"{'path':<24} {'client calls/msg':>17} {'server calls/msg':>17}")
    for label, kind, libos in paths:
        c, s = echo_syscalls(kind, libos, a.n)
        print(f"{label:<24} {c:>17.2f} {s:>17.2f}")


if __name__ == "__main__":
    main()
