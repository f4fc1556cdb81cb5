"""``selectors`` over the shim's select/poll, patched in place as gevent does.

``SelectSelector`` and ``PollSelector`` keep their classes (socketserver, subprocess and
multiprocessing bound them at import) but call the shim's ``select``/``poll``;
``DefaultSelector`` is ``DemiSelector``; the epoll/kqueue/devpoll selectors are removed, since
they would wait in the kernel only and never see a library-OS socket.
"""
from __future__ import annotations

import math
import selectors as _selectors
from typing import Any

from shim import select as _select
from shim.socket import SPEEDUPS

__all__ = ["DemiSelector"]

_c_keys = SPEEDUPS.keys if SPEEDUPS is not None else None
_base_key_from_fd = _selectors._BaseSelectorImpl._key_from_fd
_Poll = _select._Poll
_SelectorKey = _selectors.SelectorKey


class DemiSelector(_selectors._PollLikeSelector):  # type: ignore[name-defined,misc]
    """The default selector under demishim: poll-like, over queue tokens and kernel fds."""

    _selector_cls = staticmethod(_select.poll)
    _EVENT_READ = _select.POLLIN
    _EVENT_WRITE = _select.POLLOUT

    def select(self, timeout: Any = None) -> list:
        # _PollLikeSelector.select, with the poll's result read as a dict and the keys made
        # in C (shim._speedups.keys), unless a subclass changed how keys are found
        if _c_keys is None or type(self)._key_from_fd is not _base_key_from_fd \
                or type(self._selector) is not _Poll:
            return super().select(timeout)
        if timeout is None:
            pass
        elif timeout <= 0:
            timeout = 0
        else:
            # poll() has a resolution of 1 millisecond, round away from zero to wait *at
            # least* timeout seconds
            timeout = math.ceil(timeout * 1e3)
        try:
            ready = self._selector._poll_ready(timeout)
        except InterruptedError:
            return []
        return _c_keys(ready, self._fd_to_key, _SelectorKey)


if SPEEDUPS is not None:  # the C select (the Python one above stays as _py_select)
    SPEEDUPS.install_selector(DemiSelector, _base_key_from_fd, _SelectorKey)
