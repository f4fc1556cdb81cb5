"""Sans-IO TCP for the ``inet`` library OS: connection state machine and listener.

Pure protocol logic over :mod:`libos.inet.wire`: no clocks, no sockets, no
threads.  Time comes in as ``now`` (float seconds) on every call that needs
it; segments go out as :class:`OutSegment` values that the caller encodes with
:meth:`OutSegment.to_bytes` / :meth:`OutSegment.emit_into`.

Client::

    conn = TcpConnection(49152, 80, local_addr=me, remote_addr=server, config=TcpConfig())
    conn.connect(now)
    for out in conn.poll(now):          # the SYN
        transmit(out.to_bytes())
    ...
    conn.on_segment(TcpSegment.parse(ip.payload, ip.src, ip.dst), now)
    conn.send(b"GET / HTTP/1.0\\r\\n\\r\\n"); conn.recv(65536); conn.close()
    sleep_until(conn.next_deadline())

Server: a :class:`TcpListener` takes the segments of its port that match no
accepted connection (``listener.on_segment(seg, now, remote_addr=ip.src)``),
``listener.poll(now)`` returns its SYN-ACKs, ``listener.accept()`` hands out
established connections.  For segments nobody wants, send :func:`reset_for`.

Modules: ``connection`` (TcpConnection, TcpCounters), ``listener``,
``segment`` (OutSegment, reset_for), ``config`` (TcpConfig), ``state``
(TcpState), ``rtt`` (RFC 6298), ``congestion`` (RFC 5681/6582 NewReno),
``reassembly`` (out-of-order queue with SACK block selection).
"""

from .config import DEFAULT_CONFIG, TcpConfig
from .congestion import NewReno, initial_window
from .connection import TcpConnection, TcpCounters
from .listener import TcpListener
from .reassembly import OutOfOrderQueue
from .rtt import RttEstimator
from .segment import OutSegment, reset_for
from .state import TcpState

__all__ = [
    "TcpConnection",
    "TcpCounters",
    "TcpListener",
    "TcpState",
    "TcpConfig",
    "DEFAULT_CONFIG",
    "OutSegment",
    "reset_for",
    "RttEstimator",
    "NewReno",
    "initial_window",
    "OutOfOrderQueue",
]
