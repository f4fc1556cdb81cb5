"""Link-layer devices under the sans-IO ``inet`` stack: one small interface, three backends.

:class:`Device` (see :mod:`.base` for the contract)::

    transmit(frames: Sequence[bytes | bytearray | memoryview]) -> int   # how many went out
    receive() -> list[tuple[memoryview, bool]]   # (frame, csum_not_ready); never blocks
    fileno() -> int                              # for epoll/selectors
    close() -> None
    wait(timeout) -> bool                        # convenience: poll fileno()
    name, mac, mtu                               # attributes

Backends:

- :class:`AfPacketDevice` (``.afpacket``): AF_PACKET with a TPACKET_V3 RX ring
  (no system call per received frame), ``sendmmsg`` batches for TX.
- :class:`TapDevice` (``.tap``): ``/dev/net/tun`` TAP, non-blocking batched reads.
- :class:`WireLink` / :class:`WireDevice` / :func:`wire_pair` (``.wire``): an
  in-process link with seeded loss, duplication, reordering, corruption and delay
  on a clock the caller advances.

:func:`in_netns` / :func:`enter_netns` (``.netns``) run code in a network
namespace made by ``ip netns`` (scripts/netns.py), e.g. to open an
AfPacketDevice on the veth end that lives there.
"""

from .afpacket import AfPacketDevice
from .base import Device, Frame, RxFrame
from .netns import current_netns_id, enter_netns, in_netns
from .tap import TapDevice
from .wire import Impairment, WireDevice, WireLink, wire_pair

__all__ = [
    "Device", "RxFrame", "Frame",
    "AfPacketDevice", "TapDevice",
    "WireLink", "WireDevice", "Impairment", "wire_pair",
    "enter_netns", "in_netns", "current_netns_id",
]
