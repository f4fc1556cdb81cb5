"""Tests disabled under the shim, per Python minor version, gevent-style.

``DISABLED[(major, minor)]`` maps a full unittest id (``test.test_mod.Class.method``, or a
glob pattern over such ids) to the reason it cannot pass under the shim. Every entry must
carry a non-empty reason. The runner passes them to regrtest with ``--ignorefile`` (for the
plain run as well, so both runs cover the same tests), prints how many tests of each module
they remove and refuses a module where they remove more than ``MAX_DISABLED_FRACTION``.

``EXCLUDED`` maps a module to patterns that are left out for reasons unrelated to the shim
(hardware or kernel features this machine lacks); they are shown but not counted towards
the limit.
"""
from __future__ import annotations

MAX_DISABLED_FRACTION = 0.03

_FD_MODE = ("checks the fd's O_NONBLOCK flag, which the library OS keeps set; the shim "
            "emulates blocking mode with timeouts (gevent disables the same test)")

DISABLED: dict[tuple[int, int], dict[str, str]] = {
    (3, 11): {
        "test.test_socket.NonBlockingTCPTests.testSetBlocking": _FD_MODE,
        "test.test_socket.NonBlockingTCPTests.testSetBlocking_overflow": _FD_MODE,
        "test.test_socket.NonblockConstantTest.test_SOCK_NONBLOCK": _FD_MODE,
    },
}

EXCLUDED: dict[str, dict[str, str]] = {
    "test_socket": {
        "*VSOCK*": "AF_VSOCK needs a vsock transport (a VM host); unrelated to the shim",
    },
}


def disabled_for(version: tuple[int, int]) -> dict[str, str]:
    return dict(DISABLED.get(tuple(version[:2]), {}))
