"""The stdlib objects demishim replaces, captured once before any patching.

Everything in the shim that needs the real thing (a kernel socket, the kernel's select, the
builtin ``open``) takes it from here, so patching can never recurse into itself.
"""
from __future__ import annotations

import _io
import builtins
import io
import select
import selectors
import signal
import socket

socket_cls = socket.socket
create_connection = socket.create_connection
create_server = socket.create_server
socketpair = socket.socketpair
fromfd = socket.fromfd
SocketType = socket.SocketType
set_wakeup_fd = signal.set_wakeup_fd

select_fn = select.select
poll_fn = select.poll
select_attrs = {name: getattr(select, name)
                for name in ("epoll", "kqueue", "kevent", "devpoll") if hasattr(select, name)}

SelectSelector_select = selectors.SelectSelector._select
PollSelector_selector_cls = selectors.PollSelector._selector_cls
DefaultSelector = selectors.DefaultSelector
selector_classes = {name: getattr(selectors, name)
                    for name in ("EpollSelector", "KqueueSelector", "DevpollSelector")
                    if hasattr(selectors, name)}

builtins_open = builtins.open
io_open = io.open
_io_open = _io.open
