"""Enter a network namespace by name (``/var/run/netns/NAME``, as ``ip netns`` creates them).

A network namespace is a property of a *thread* (``setns(2)`` with
``CLONE_NEWNET``), and every socket keeps the namespace it was created in.  So
the way to get a device for an interface in another namespace is::

    with in_netns("P-stack"):
        dev = AfPacketDevice("dkstack0")   # socket + bind happen inside
    # back in the original namespace; dev keeps working

:func:`enter_netns` switches for good (a child process that should live in the
namespace, like ``ip netns exec`` but without exec).  Threads started after the
switch inherit the namespace; threads that already exist do not.  Note that
``/sys`` and ``/proc/net`` are not remounted (``ip netns exec`` does that), so
read interface facts through sockets/ioctls, not sysfs.  Needs CAP_SYS_ADMIN.
Python 3.12 has ``os.setns``; on 3.11 this calls libc's ``setns`` through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

__all__ = ["enter_netns", "in_netns", "netns_path", "current_netns_id"]

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = None


def netns_path(name: str) -> str:
    """``/var/run/netns/NAME``; rejects names with a slash (no path games)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a network namespace name: {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)} (needs root / CAP_SYS_ADMIN)")


def current_netns_id() -> int:
    """The inode of this thread's network namespace (equal inodes = same namespace)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def enter_netns(name: str) -> None:
    """Move the calling thread into the named network namespace, for good."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"no network namespace {name!r} ({path} is missing; `ip netns list`)") from None
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the ``with`` body in the named namespace, then return to the current one."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
