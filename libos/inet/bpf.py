"""Classic BPF for the AF_PACKET socket of the inet library OS: UDP port filters in the kernel.

:func:`compile_udp_filters` turns the offloaded filters of the stack's bound UDP ports
(:class:`queueapi.Match`) into one classic BPF program (a pure function: the same rules give
the same bytes), which :class:`~libos.inet.device.afpacket.AfPacketDevice` attaches with
``SO_ATTACH_FILTER``.  The program decides only about frames *in scope*: an IPv4 UDP
datagram (first fragment) whose destination port is one of the rules' ports.  Such a frame
passes if it satisfies at least one Match of its port (source address prefix, source
port range) and is dropped in the kernel otherwise.  Everything else passes untouched,
because the stack needs it: ARP (resolution, and answering the kernel's unicast NUD
probes), ICMP, every TCP segment, UDP to other ports (ICMP port unreachable), IPv4
fragments after the first one (they carry no port: the stack reassembles them and the
endpoint applies the same Match on the CPU), other ethertypes (counted and ignored).

The frame layout it reads: Ethernet II without a VLAN tag (the stack drops tagged frames),
ethertype at 12, IPv4 header at 14 (IHL from byte 14, protocol at 23, flags/fragment
offset at 20, source address at 26), the UDP header at 14 + IHL*4 (source port +0,
destination port +2).  A load beyond the end of a frame makes the kernel drop it; only
frames too short to be an IPv4 UDP datagram in scope can get there, and the stack would
drop them as malformed.

:func:`run` is a small interpreter for the opcodes used here, for tests and debugging.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Insn", "compile_udp_filters", "to_bytes", "run", "ACCEPT", "DROP", "MAX_INSNS"]

# opcodes (linux/filter.h, linux/bpf_common.h)
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_ABS, BPF_IND, BPF_MSH = 0x20, 0x40, 0xA0
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K = 0x00

LD_H_ABS = BPF_LD | BPF_H | BPF_ABS        # 0x28
LD_B_ABS = BPF_LD | BPF_B | BPF_ABS        # 0x30
LD_W_ABS = BPF_LD | BPF_W | BPF_ABS        # 0x20
LD_H_IND = BPF_LD | BPF_H | BPF_IND        # 0x48
LDX_B_MSH = BPF_LDX | BPF_B | BPF_MSH      # 0xb1
AND_K = BPF_ALU | BPF_AND | BPF_K          # 0x54
JEQ_K = BPF_JMP | BPF_JEQ | BPF_K          # 0x15
JGT_K = BPF_JMP | BPF_JGT | BPF_K          # 0x25
JGE_K = BPF_JMP | BPF_JGE | BPF_K          # 0x35
JSET_K = BPF_JMP | BPF_JSET | BPF_K        # 0x45
RET_K = BPF_RET | BPF_K                    # 0x06

ACCEPT = 0x40000   # bytes of the frame to keep: all of it
DROP = 0
MAX_INSNS = 4096   # BPF_MAXINSNS
_SOCK_FILTER = struct.Struct("=HBBI")

#: one instruction: (code, jt, jf, k), as struct sock_filter
Insn = tuple[int, int, int, int]


class _Label:
    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos: int | None = None


def _rule_of(match: Any) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(source network, mask) and (source port range) of a Match, None where unconstrained."""
    return getattr(match, "_net", None), getattr(match, "_src", None)


def compile_udp_filters(rules: Iterable[tuple[int, Sequence[Any]]]) -> list[Insn]:
    """The program for ``rules``: ``(udp_port, [Match, ...])`` pairs (see the module docstring).

    A port with an empty list of matches drops every datagram to it.  Ports are sorted, and
    duplicate matches are kept in order, so equal input gives equal output.  Raises
    ValueError if the program would not fit classic BPF's 8-bit jump offsets (far more
    rules than a socket has filters)."""
    by_port: dict[int, list[Any]] = {}
    for port, matches in rules:
        if not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"a UDP port is 1..65535, not {port!r}")
        by_port.setdefault(port, []).extend(matches)
    prog: list[list[Any]] = []   # [code, jt, jf, k] with labels for jt/jf until resolved
    accept, drop = _Label(), _Label()

    def emit(code: int, k: int = 0, jt: Any = 0, jf: Any = 0) -> None:
        prog.append([code, jt, jf, k])

    def here(label: _Label) -> None:
        label.pos = len(prog)

    nxt = _Label()
    emit(LD_H_ABS, 12)                         # ethertype
    emit(JEQ_K, 0x0800, 0, accept)             # not IPv4: the stack decides
    emit(LD_B_ABS, 23)                         # IP protocol
    emit(JEQ_K, 17, 0, accept)                 # not UDP
    emit(LD_H_ABS, 20)                         # flags | fragment offset
    emit(JSET_K, 0x1FFF, accept, 0)            # a later fragment: no ports in it
    emit(LDX_B_MSH, 14)                        # X = IHL * 4
    emit(LD_H_IND, 16)                         # UDP destination port (14 + IHL*4 + 2)
    ports = sorted(by_port)
    port_labels = [_Label() for _ in ports]
    for port, lab in zip(ports, port_labels):
        emit(JEQ_K, port, lab, 0)
    emit(RET_K, ACCEPT)                        # a port without offloaded filters
    for port, lab in zip(ports, port_labels):
        here(lab)
        for m in by_port[port]:
            net, sport = _rule_of(m)
            fail = _Label()
            if net is not None:
                emit(LD_W_ABS, 26)             # source address
                if net[1] != 0xFFFFFFFF:
                    emit(AND_K, net[1])
                emit(JEQ_K, net[0], 0, fail)
            if sport is not None:
                emit(LD_H_IND, 14)             # UDP source port
                if sport[0] == sport[1]:
                    emit(JEQ_K, sport[0], 0, fail)
                else:
                    if sport[0] > 0:
                        emit(JGE_K, sport[0], 0, fail)
                    if sport[1] < 0xFFFF:
                        emit(JGT_K, sport[1], fail, 0)
            emit(RET_K, ACCEPT)
            here(fail)
        emit(RET_K, DROP)
    here(accept)
    emit(RET_K, ACCEPT)
    del drop, nxt
    out: list[Insn] = []
    for i, (code, jt, jf, k) in enumerate(prog):
        offs = []
        for j in (jt, jf):
            if isinstance(j, _Label):
                off = j.pos - i - 1
                if not 0 <= off <= 255:
                    raise ValueError("too many UDP filter rules for one classic BPF program")
                offs.append(off)
            else:
                offs.append(j)
        out.append((code, offs[0], offs[1], k & 0xFFFFFFFF))
    if len(out) > MAX_INSNS:
        raise ValueError(f"BPF program of {len(out)} instructions exceeds {MAX_INSNS}")
    return out


def to_bytes(prog: Sequence[Insn]) -> bytes:
    """The program as an array of ``struct sock_filter`` (host byte order)."""
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in prog)


def run(prog: Sequence[Insn], frame: bytes | bytearray | memoryview) -> int:
    """Run ``prog`` on ``frame`` as the kernel would; returns the kept length (0: dropped)."""
    data = bytes(frame)
    n = len(data)
    a = x = 0
    pc = 0
    for _ in range(len(prog) + 1):   # no backward jumps in classic BPF: bounded
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == RET_K:
            return k
        if code in (LD_H_ABS, LD_B_ABS, LD_W_ABS, LD_H_IND):
            off = k + (x if code == LD_H_IND else 0)
            size = 1 if code == LD_B_ABS else 4 if code == LD_W_ABS else 2
            if off + size > n:
                return 0
            a = int.from_bytes(data[off:off + size], "big")
        elif code == LDX_B_MSH:
            if k >= n:
                return 0
            x = (data[k] & 0xF) * 4
        elif code == AND_K:
            a &= k
        elif code in (JEQ_K, JGT_K, JGE_K, JSET_K):
            cond = (a == k if code == JEQ_K else a > k if code == JGT_K else a >= k if code == JGE_K
                    else bool(a & k))
            pc += jt if cond else jf
        else:
            raise ValueError(f"opcode {code:#x} is not supported by this interpreter")
    raise ValueError("program ran off its end")
