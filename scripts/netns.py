#!/usr/bin/env python3
"""Create (and delete) the two network namespaces the ``inet`` libOS is tested in.

    scripts/netns.py up --prefix P      # prints one JSON line
    scripts/netns.py down --prefix P    # idempotent

``up`` creates:

- ``P-stack``: one veth end for the user-space stack.  Link up, **no kernel IPv4
  address**, IPv6 disabled (no ND/MLD noise for the stack, no kernel replies),
  offloads off (tx/rx checksumming, TSO, GSO, GRO, VLAN tag offload), so frames
  in the AF_PACKET ring are what is on the wire.
- ``P-peer``: the other veth end with a Linux address; its offloads are off too
  (tx checksumming, TSO, GSO), so Linux puts real checksums and at most
  MTU-sized frames on the link (reference/tcp-stack.md section 0, gotchas 1, 2).

The veth pair is created directly inside the two namespaces (never in the host
namespace, never bridged anywhere).  Addresses come from ``10.77.N.0/24`` with N
derived from the prefix; they exist only inside the namespaces.  A TOML config for
the inet libOS is written (table ``[inet]``), by default to
``$TMPDIR/P-inet.toml``; ``down`` deletes the namespaces (which deletes the veth
pair with them) and that file.

Importable too: :func:`up`, :func:`down`, and the context manager
:func:`namespaces` that tests use (it always calls :func:`down`).

Needs root and ``ip`` (iproute2).  Offloads are switched with ``ethtool`` when it is
installed, else with the SIOCETHTOOL ioctl run inside the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator

__all__ = ["up", "down", "namespaces", "names", "NetnsError"]

STACK_IF = "dkstack0"
PEER_IF = "dkpeer0"
MTU = 1500
PREFIX_LEN = 24
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_TIMEOUT = 10.0  # seconds for any one command


class NetnsError(RuntimeError):
    """A command failed; the message says which and what it printed."""


def names(prefix: str) -> dict:
    """Everything ``up`` would create for ``prefix``, without creating anything."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} must be 1-41 characters of letters, digits, '_', '.', '-'")
    h = zlib.crc32(prefix.encode())
    n = 1 + h % 250                       # 10.77.1.0/24 .. 10.77.250.0/24
    tail = [(h >> 8) & 0xFF, (h >> 16) & 0xFF, (h >> 24) & 0xFF]
    # locally administered, unicast (02:...), different last octet for each end
    stack_mac = ":".join(f"{b:02x}" for b in [0x02, 0xd7, *tail, 0x01])
    peer_mac = ":".join(f"{b:02x}" for b in [0x02, 0xd7, *tail, 0x02])
    return {
        "prefix": prefix,
        "stack_ns": f"{prefix}-stack",
        "peer_ns": f"{prefix}-peer",
        "stack_if": STACK_IF,
        "peer_if": PEER_IF,
        "stack_ip": f"10.77.{n}.1",
        "peer_ip": f"10.77.{n}.2",
        "prefix_len": PREFIX_LEN,
        "stack_mac": stack_mac,
        "peer_mac": peer_mac,
        "mtu": MTU,
        "config": os.path.join(tempfile.gettempdir(), f"{prefix}-inet.toml"),
    }


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=_TIMEOUT)
    except FileNotFoundError:
        raise NetnsError(f"{args[0]!r} is not installed (apt-get install -y iproute2 ethtool)") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(args)} did not finish in {_TIMEOUT} s") from None
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def _ns_exists(ns: str) -> bool:
    return os.path.exists(f"/var/run/netns/{ns}")


def _ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ip", "netns", "exec", ns, *args, check=check)


def _sysctl(ns: str, key: str, value: str) -> None:
    # /proc/sys/net is per network namespace; `ip netns exec` gives the namespace's view.
    path = "/proc/sys/" + key.replace(".", "/")
    _ns(ns, sys.executable, "-c", f"open({path!r}, 'w').write({value!r})")


# SIOCETHTOOL fallback, run with `ip netns exec NS python -c` (an ioctl acts in the
# caller's namespace).  ETHTOOL_S{TXCSUM,RXCSUM,TSO,GSO,GRO} = 0x17, 0x15, 0x1f, 0x24, 0x2c.
_ETHTOOL_IOCTL = r"""
import ctypes, fcntl, socket, struct, sys
ifname, cmds = sys.argv[1].encode(), [int(c, 0) for c in sys.argv[2:]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for cmd in cmds:
    val = ctypes.create_string_buffer(struct.pack("II", cmd, 0), 8)
    ifr = struct.pack("16sP16x", ifname, ctypes.addressof(val))
    try:
        fcntl.ioctl(s.fileno(), 0x8946, ifr)
    except OSError as e:  # e.g. EOPNOTSUPP for a feature the driver fixes
        print(f"ethtool cmd {cmd:#x}: {e}", file=sys.stderr)
"""


def _offloads_off(ns: str, ifname: str, features: list[str]) -> str:
    """Switch offloads off inside ``ns``; returns the tool used ("ethtool" or "ioctl")."""
    if shutil.which("ethtool"):
        for feat in features:  # one per call: ethtool refuses a whole command if one is fixed
            _ns(ns, "ethtool", "-K", ifname, feat, "off", check=False)
        return "ethtool"
    # the legacy ioctls cover these five (not VLAN offload, and TSO only for the classic
    # bits: 6.18's tx-tcp-accecn-segmentation stays on, unused without tx checksumming)
    codes = {"tx": "0x17", "rx": "0x15", "tso": "0x1f", "gso": "0x24", "gro": "0x2c"}
    _ns(ns, sys.executable, "-c", _ETHTOOL_IOCTL, ifname, *[codes[f] for f in features if f in codes],
        check=False)
    return "ioctl"


def _config_toml(n: dict) -> str:
    q = json.dumps  # a JSON string literal is a valid TOML basic string for these values
    return (
        "# inet libOS configuration written by scripts/netns.py up; deleted by down.\n"
        "[inet]\n"
        f"interface = {q(n['stack_if'])}\n"
        f"ipv4 = {q(n['stack_ip'])}\n"
        f"prefix_len = {n['prefix_len']}\n"
        f"mac = {q(n['stack_mac'])}\n"
        f"mtu = {n['mtu']}\n"
        f"gateway = {q(n['peer_ip'])}\n"
        f"peer = {q(n['peer_ip'])}\n"
        f"peer_mac = {q(n['peer_mac'])}\n"
        f"netns = {q(n['stack_ns'])}\n"
        f"peer_netns = {q(n['peer_ns'])}\n"
        f"device = \"afpacket\"\n"
    )


def up(prefix: str, *, config: str | None = None) -> dict:
    """Create ``prefix-stack`` and ``prefix-peer`` joined by a veth pair; return their description.

    The returned dict has ``stack_ns, peer_ns, stack_ip, peer_ip, config`` plus
    ``stack_if, peer_if, stack_mac, peer_mac, mtu, prefix_len``.  Refuses (NetnsError)
    if either namespace already exists: run ``down`` first.  On any failure, what
    was created is deleted again.
    """
    if os.geteuid() != 0:
        raise NetnsError("creating network namespaces needs root")
    if shutil.which("ip") is None:
        raise NetnsError("`ip` is not installed (apt-get install -y iproute2)")
    n = names(prefix)
    if config:
        n["config"] = os.path.abspath(config)
    for ns in (n["stack_ns"], n["peer_ns"]):
        if _ns_exists(ns):
            raise NetnsError(f"namespace {ns} already exists; run `scripts/netns.py down --prefix {prefix}` first")
    stack, peer, sif, pif = n["stack_ns"], n["peer_ns"], n["stack_if"], n["peer_if"]
    try:
        _run("ip", "netns", "add", stack)
        _run("ip", "netns", "add", peer)
        # both ends are born inside their namespaces: nothing appears in the host's
        _run("ip", "link", "add", sif, "netns", stack, "address", n["stack_mac"], "mtu", str(n["mtu"]),
             "type", "veth", "peer", "name", pif, "netns", peer, "address", n["peer_mac"], "mtu", str(n["mtu"]))
        for ns, ifname in ((stack, sif), (peer, pif)):
            _sysctl(ns, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
            _ns(ns, "ip", "link", "set", "lo", "up")
        n["offload_tool"] = _offloads_off(stack, sif, ["tx", "rx", "tso", "gso", "gro", "rxvlan", "txvlan"])
        _offloads_off(peer, pif, ["tx", "tso", "gso", "gro"])
        _ns(peer, "ip", "addr", "add", f"{n['peer_ip']}/{n['prefix_len']}", "dev", pif)
        _ns(stack, "ip", "link", "set", sif, "up")
        _ns(peer, "ip", "link", "set", pif, "up")
        with open(n["config"], "w") as f:
            f.write(_config_toml(n))
    except BaseException:
        down(prefix, config=n["config"])
        raise
    return n


def down(prefix: str, *, config: str | None = None) -> None:
    """Delete what :func:`up` created for ``prefix`` (idempotent; missing parts are fine).

    Deleting a namespace deletes the veth end in it, and with it the pair.
    Processes still running inside keep the namespace alive until they exit.
    """
    n = names(prefix)
    for ns in (n["stack_ns"], n["peer_ns"]):
        if _ns_exists(ns):
            _run("ip", "netns", "del", ns, check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config or n["config"])


@contextlib.contextmanager
def namespaces(prefix: str, *, config: str | None = None) -> Iterator[dict]:
    """``with namespaces("t123") as ns: ...``: :func:`up`, then always :func:`down`.

    If ``up`` fails (e.g. the namespaces already exist) nothing is deleted here:
    ``up`` has removed whatever it had created itself."""
    info = up(prefix, config=config)
    try:
        yield info
    finally:
        down(prefix, config=config)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--prefix", required=True, help="namespaces are PREFIX-stack and PREFIX-peer")
    p.add_argument("--config", help="where to write the TOML config (default $TMPDIR/PREFIX-inet.toml)")
    a = p.parse_args(argv)
    try:
        if a.action == "up":
            n = up(a.prefix, config=a.config)
            print(json.dumps(n, sort_keys=False))
        else:
            down(a.prefix, config=a.config)
    except (NetnsError, ValueError) as exc:
        print(f"netns.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
