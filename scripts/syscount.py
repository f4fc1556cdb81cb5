#!/usr/bin/env python3
"""Count the system calls a process makes, with python-ptrace.

As a library: ``TracedProcess(argv)`` runs a command under ptrace and counts its system calls
as it goes; ``calls_per_message(argv_for_n, n1, n2)`` runs a command twice with two message counts and
returns (calls(n2) - calls(n1)) / (n2 - n1): start-up and tear-down cancel out.

As a script it prints calls per 64-byte echo round trip for each path, client and server side
by side:  ``python scripts/syscount.py [--libos posix] [--n 2000]``
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

from ptrace.debugger import PtraceDebugger
from ptrace.debugger.child import createChild
from ptrace.debugger.process_event import ProcessExit, NewProcessEvent
from ptrace.debugger.ptrace_signal import ProcessSignal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TracedProcess:
    """Runs ``argv`` under ptrace in a tracer thread, counting system-call entries of all its
    threads and children in ``calls`` (readable at any time). Standard output is discarded."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.calls = 0
        self.pid: int | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error:
            raise self._error

    def _run(self) -> None:  # every ptrace call must come from this one thread
        dbg = PtraceDebugger()
        try:
            dbg.traceClone()
            dbg.traceFork()
            self.pid = createChild(self.argv, no_stdout=True, env=None)
            dbg.addProcess(self.pid, is_attached=True)
        except BaseException as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        entering: dict[int, bool] = {}
        for proc in list(dbg):
            proc.syscall()
        try:
            while dbg:
                try:
                    proc = dbg.waitSyscall().process
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
                    self.calls += 1
                entering[proc.pid] = not inside
                proc.syscall()
        finally:
            dbg.quit()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; the total number of system calls."""
        self._thread.join(timeout)
        return self.calls

    def terminate(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._thread.join(30)


def count_run(argv: list[str]) -> int:
    """Run ``argv`` to completion under ptrace; the number of system calls it made."""
    return TracedProcess(argv).wait()


def calls_per_message(argv_for_n: Callable[[int], list[str]], n1: int, n2: int) -> float:
    """Per-message system calls of a command whose message count is a parameter:
    start-up and tear-down cancel out in the difference of two runs (a difference below
    zero is run-to-run noise in start-up work, reported as 0)."""
    return max(0.0, (count_run(argv_for_n(n2)) - count_run(argv_for_n(n1))) / (n2 - n1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def server_calls_per_message(server_argv: list[str], port: int,
                             client_for_n: Callable[[int], list[str]], n1: int, n2: int) -> float:
    """Per-message system calls of a server (traced) serving a client run with n1, then n2
    messages; connection set-up and tear-down cancel out."""
    server = TracedProcess(server_argv)
    try:
        wait_for_port(port)
        counts = []
        for n in (n1, n2):
            before = server.calls
            subprocess.run(client_for_n(n), check=True, capture_output=True, timeout=600)
            time.sleep(0.05)  # let the server finish closing the connection
            counts.append(server.calls - before)
        return max(0.0, (counts[1] - counts[0]) / (n2 - n1))  # below 0: noise
    finally:
        server.terminate()


def python_argv(shim: str | None = None) -> list[str]:
    """The command that starts Python, under ``demishim --libos shim`` if given."""
    if shim is None:
        return [sys.executable]
    return [sys.executable, "-m", "demishim", "--libos", shim]


def echo_syscalls(kind: str, libos: str, n: int = 2000,
                  shim: str | None = None) -> tuple[float, float]:
    """(client, server) system calls per 64-byte echo round trip for one path."""
    echo = os.path.join(ROOT, "scripts", "echo.py")
    py = python_argv(shim)
    port = free_port()
    server = subprocess.Popen([*py, echo, "server", "--kind", kind, "--libos", libos,
                               "--port", str(port)], stdout=subprocess.DEVNULL)

    def client(count: int) -> list[str]:
        return [*py, echo, "client", "--kind", kind, "--libos", libos,
                "--port", str(port), "--n", str(count), "--warmup", "0"]

    try:
        wait_for_port(port)
        client_calls = calls_per_message(client, n // 4, n)
    finally:
        server.terminate()
        server.wait(10)
    port = free_port()
    server_argv = [*py, echo, "server", "--kind", kind, "--libos", libos, "--port", str(port)]
    server_calls = server_calls_per_message(server_argv, port, client, n // 4, n)
    return client_calls, server_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libos", action="append", help="library OS to measure (repeatable)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--spin-us", type=float,
                    help="shm: spin this long before sleeping, never yielding the CPU (a long "
                         "spin = 'spinning mode', cores dedicated to the two sides)")
    a = ap.parse_args()
    if a.spin_us is not None:  # children read it from the config file named by DEMI_CONFIG
        import tempfile
        cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        cfg.write(f"[shm]\nspin_us = {a.spin_us}\nspin_yield_us = -1\n")
        cfg.close()
        os.environ["DEMI_CONFIG"] = cfg.name
    paths = [("plain sockets", "plain", "posix")]
    paths += [(f"queue API on {l}", "queue", l) for l in (a.libos or ["posix"])]
    print(f"{'path':<24} {'client calls/msg':>17} {'server calls/msg':>17}")
    for label, kind, libos in paths:
        c, s = echo_syscalls(kind, libos, a.n)
        print(f"{label:<24} {c:>17.2f} {s:>17.2f}")


if __name__ == "__main__":
    main()
