"""``selectors`` over the shim's select/poll, patched in place as gevent does.

``SelectSelector`` and ``PollSelector`` keep their classes (socketserver, subprocess and
multiprocessing bound them at import) but call the shim's ``select``/``poll``;
``DefaultSelector`` is ``DemiSelector``; the epoll/kqueue/devpoll selectors are removed, since
they would wait in the kernel only and never see a library-OS socket.
"""
from __future__ import annotations

import selectors as _selectors

from shim import select as _select

__all__ = ["DemiSelector"]


class DemiSelector(_selectors._PollLikeSelector):  # type: ignore[name-defined,misc]
    """The default selector under demishim: poll-like, over queue tokens and kernel fds."""

    _selector_cls = staticmethod(_select.poll)
    _EVENT_READ = _select.POLLIN
    _EVENT_WRITE = _select.POLLOUT
