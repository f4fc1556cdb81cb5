"""cffi (API mode) build script for ``libos.inet._csum``: the Internet checksum in C.

Registered in setup.py's ``cffi_modules``; for development build in place from the
repository root with ``python libos/inet/_csum_build.py`` (leaves
``libos/inet/_csum.*.so``).  :mod:`libos.inet.wire.checksum` and the stack's fast paths
use it for long buffers when it is importable and fall back to pure Python otherwise.

``inet_sum(buf, len)`` returns the 16-bit ones'-complement sum of ``buf`` (RFC 1071; a
final odd byte is padded with zero), folded with end-around carry: 0 only for all-zero
data, otherwise 1..0xFFFF, congruent modulo 0xFFFF to the buffer read as one big-endian
integer (the pure-Python form), so the two are interchangeable.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

CDEF = "uint32_t inet_sum(const char *buf, size_t len);"

SOURCE = r"""
#include <stdint.h>
#include <string.h>

uint32_t inet_sum(const char *buf, size_t n)
{
    const unsigned char *p = (const unsigned char *)buf;
    uint64_t s = 0;
    while (n >= 8) {                 /* big-endian 32-bit words: 2^16 == 1 (mod 0xFFFF) */
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        s += __builtin_bswap32(a);
        s += __builtin_bswap32(b);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        s += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        n -= 2;
    }
    if (n)
        s += (uint32_t)p[0] << 8;
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("libos.inet._csum", SOURCE, extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])


def build_in_place() -> Path:
    """Compile in a scratch directory and copy only the extension next to this file."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="csum_build_") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        target = _HERE / built.name
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
