"""cffi (API mode) build script for ``libos.inet._csum``: the Internet checksum, the
outgoing TCP frame builders, the incoming TCP frame check and the TPACKET_V2 ring walk of
the stack's fast paths, in C.

Registered in setup.py's ``cffi_modules``; for development build in place from the
repository root with ``python libos/inet/_csum_build.py`` (leaves
``libos/inet/_csum.*.so``; note that an in-place ``_csum.cpython-*.so`` takes precedence
over the ``_csum.abi3.so`` pip builds: rebuild both after a change).  The stack's fast
paths use it when it is importable and fall back to pure Python otherwise.

``inet_sum(buf, len)`` returns the 16-bit ones'-complement sum of ``buf`` (RFC 1071; a
final odd byte is padded with zero), folded with end-around carry: 0 only for all-zero
data, otherwise 1..0xFFFF, congruent modulo 0xFFFF to the buffer read as one big-endian
integer (the pure-Python form), so the two are interchangeable.

``tcp_frame(buf, cap, dmac, smac, src, dst, ident, ttl, sport, dport, seq, ack,
off_flags, window, olen, plen)`` builds an outgoing IPv4/TCP frame in ``buf`` (``cap``
bytes) whose TCP options (``olen`` bytes, a multiple of 4, at most 40) and payload
(``plen`` bytes) the caller has already written at offsets 54 and ``54 + olen``: it writes
the Ethernet header (``dmac``, ``smac``: 6 bytes each, EtherType IPv4), the IPv4 header
(no options, DF, the given ``ident`` and ``ttl``, protocol TCP, header checksum) and the
TCP header (data offset from ``olen``, the low 9 bits of ``off_flags`` as flags, urgent
pointer 0, the checksum over the pseudo-header and the segment) and returns the frame's
length, or -1 when the lengths do not fit ``cap`` or the IPv4 total length, or the
options are malformed in size.  Byte for byte what ``Stack._send_tcp``'s Python form
writes (tests/test_inet_cbuild.py checks it on random fields).

``tcp_data_frame(buf, cap, dmac, smac, src, dst, ident, ttl, sport, dport, seq, ack,
off_flags, window, data, dlen, off, plen)`` is ``tcp_frame`` without options for a payload
of ``plen`` bytes taken from ``data`` (``dlen`` bytes long) at offset ``off``: it copies
them to offset 54 itself (the connection's send buffer is passed as is, no slice of it is
made), then builds the frame; -1 when ``off + plen`` exceeds ``dlen`` or the frame does not
fit ``cap``.  ``Stack.poll_connection`` sends a data segment with it.

``v2_walk(ring, ring_len, offsets, n, cur, limit, frame_size, out, st)`` is
``libos.inet.device.afpacket.walk_frames_v2`` in C: from slot ``cur`` of the ``n`` slots
(``offsets[i]``: where slot ``i`` starts in the ``ring_len``-byte ring) it takes at most
``limit`` slots whose ``tp_status`` (read with acquire ordering) has TP_STATUS_USER, and
writes three uint32 per slot taken to ``out``: the slot offset, the frame's offset in the
ring, and its length with bit 30 set for TP_STATUS_CSUMNOTREADY, or (offset, 0, bit 31)
for a slot to skip (``tp_mac``/``tp_snaplen`` outside the slot: a ring error; ``tp_snaplen
< tp_len``: truncated).  ``st`` gets the next slot and the frames, truncated and ring
error counts; returns the slots taken, or -1 for arguments that do not describe a ring.
``v2_release(ring, ring_len, offsets, n, first, count)`` gives ``count`` slots from
``first`` (wrapping, a slot taken twice in one walk of a tiny ring counted twice) back to the kernel (TP_STATUS_KERNEL, release ordering); -1 on bad
arguments.

``tcp_rx(frame, len, mac, ip, csum_ok)`` checks an incoming frame for the stack's fast path:
an untagged IPv4 frame for ``mac`` (6 bytes) and ``ip``, header without options, not
fragmented, protocol TCP, total length within the frame, TCP header length within the
segment, the IPv4 header checksum and (when ``csum_ok``) the TCP checksum.  Returns the
IPv4 total length (>= 40) when all hold, 0 when the frame is not such a frame or too
short (the caller's layered parsers take it), -1 when a checksum is wrong.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

CDEF = """
uint32_t inet_sum(const char *buf, size_t len);
int tcp_frame(char *buf, size_t cap, const char *dmac, const char *smac, uint32_t src,
              uint32_t dst, unsigned int ident, unsigned int ttl, unsigned int sport,
              unsigned int dport, uint32_t seq, uint32_t ack, unsigned int off_flags,
              unsigned int window, size_t olen, size_t plen);
int tcp_rx(const char *frame, size_t len, const char *mac, uint32_t ip, int csum_ok);
int tcp_data_frame(char *buf, size_t cap, const char *dmac, const char *smac, uint32_t src,
                   uint32_t dst, unsigned int ident, unsigned int ttl, unsigned int sport,
                   unsigned int dport, uint32_t seq, uint32_t ack, unsigned int off_flags,
                   unsigned int window, const char *data, size_t dlen, size_t off, size_t plen);
int v2_walk(const char *ring, size_t ring_len, const uint32_t *offsets, uint32_t n, uint32_t cur,
            uint32_t limit, uint32_t frame_size, uint32_t *out, uint32_t *st);
int v2_release(char *ring, size_t ring_len, const uint32_t *offsets, uint32_t n, uint32_t first,
               uint32_t count);
"""

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

static uint32_t fold16(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

static inline void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static inline uint32_t get16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int tcp_frame(char *buf, size_t cap, const char *dmac, const char *smac, uint32_t src,
              uint32_t dst, unsigned int ident, unsigned int ttl, unsigned int sport,
              unsigned int dport, uint32_t seq, uint32_t ack, unsigned int off_flags,
              unsigned int window, size_t olen, size_t plen)
{
    unsigned char *f = (unsigned char *)buf;
    if (olen > 40 || (olen & 3) || plen > 65535 - 40 - olen)
        return -1;
    size_t tlen = 20 + olen + plen;           /* TCP header + options + payload */
    size_t total = 20 + tlen;                 /* IPv4 total length, <= 65535 */
    if (cap < 14 || 14 + total > cap)
        return -1;
    memcpy(f, dmac, 6);
    memcpy(f + 6, smac, 6);
    f[12] = 0x08; f[13] = 0x00;
    unsigned char *ip = f + 14;
    ip[0] = 0x45; ip[1] = 0;
    put16(ip + 2, (uint32_t)total);
    put16(ip + 4, ident & 0xFFFF);
    put16(ip + 6, 0x4000);                    /* DF */
    ip[8] = (unsigned char)ttl; ip[9] = 6;
    put16(ip + 10, 0);
    put32(ip + 12, src);
    put32(ip + 16, dst);
    uint64_t s = 0x4500 + (uint64_t)total + (ident & 0xFFFF) + 0x4000 + (((ttl & 0xFF) << 8) | 6)
               + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF);
    put16(ip + 10, ~fold16(s) & 0xFFFF);
    unsigned char *t = f + 34;
    put16(t, sport & 0xFFFF);
    put16(t + 2, dport & 0xFFFF);
    put32(t + 4, seq);
    put32(t + 8, ack);
    put16(t + 12, (uint32_t)(((20 + olen) << 10) | (off_flags & 0x1FF)));
    put16(t + 14, window & 0xFFFF);
    put16(t + 16, 0);
    put16(t + 18, 0);
    s = (uint64_t)inet_sum((const char *)t, tlen) + (src >> 16) + (src & 0xFFFF) + (dst >> 16)
        + (dst & 0xFFFF) + 6 + tlen;
    put16(t + 16, ~fold16(s) & 0xFFFF);
    return (int)(14 + total);
}

int tcp_data_frame(char *buf, size_t cap, const char *dmac, const char *smac, uint32_t src,
                   uint32_t dst, unsigned int ident, unsigned int ttl, unsigned int sport,
                   unsigned int dport, uint32_t seq, uint32_t ack, unsigned int off_flags,
                   unsigned int window, const char *data, size_t dlen, size_t off, size_t plen)
{
    if (off > dlen || plen > dlen - off || cap < 54 || plen > cap - 54)
        return -1;
    memcpy(buf + 54, data + off, plen);
    return tcp_frame(buf, cap, dmac, smac, src, dst, ident, ttl, sport, dport, seq, ack, off_flags,
                     window, 0, plen);
}

/* struct tpacket2_hdr: tp_status @0, tp_len @4, tp_snaplen @8 (u32), tp_mac @12 (u16); 32 bytes */
#define V2_HDR_LEN 32u
#define V2_SKIP 0x80000000u
#define V2_CSUM_NOT_READY 0x40000000u

int v2_walk(const char *ring, size_t ring_len, const uint32_t *offsets, uint32_t n, uint32_t cur,
            uint32_t limit, uint32_t frame_size, uint32_t *out, uint32_t *st)
{
    uint32_t k = 0, frames = 0, trunc = 0, errs = 0;
    if (cur >= n || frame_size < V2_HDR_LEN || frame_size >= V2_CSUM_NOT_READY)
        return -1;
    while (k < limit) {
        uint32_t off = offsets[cur];
        if ((uint64_t)off + frame_size > ring_len)
            return -1;
        const unsigned char *h = (const unsigned char *)ring + off;
        uint32_t status = __atomic_load_n((const uint32_t *)(const void *)h, __ATOMIC_ACQUIRE);
        if (!(status & 1u))                  /* TP_STATUS_USER */
            break;
        uint32_t wirelen, snaplen;
        uint16_t mac;
        memcpy(&wirelen, h + 4, 4);
        memcpy(&snaplen, h + 8, 4);
        memcpy(&mac, h + 12, 2);
        cur = cur + 1 < n ? cur + 1 : 0;
        out[3 * k] = off;
        out[3 * k + 1] = 0;
        if (mac < V2_HDR_LEN || (uint64_t)mac + snaplen > frame_size || snaplen < 14) {
            errs++;
            out[3 * k + 2] = V2_SKIP;
        } else if (snaplen < wirelen) {
            trunc++;
            out[3 * k + 2] = V2_SKIP;
        } else {
            frames++;
            out[3 * k + 1] = off + mac;
            out[3 * k + 2] = snaplen | ((status & 8u) ? V2_CSUM_NOT_READY : 0);   /* CSUMNOTREADY */
        }
        k++;
    }
    st[0] = cur;
    st[1] = frames;
    st[2] = trunc;
    st[3] = errs;
    return (int)k;
}

int v2_release(char *ring, size_t ring_len, const uint32_t *offsets, uint32_t n, uint32_t first,
               uint32_t count)
{
    if (first >= n)
        return -1;
    for (uint32_t i = 0, idx = first; i < count; i++, idx = idx + 1 < n ? idx + 1 : 0) {
        uint32_t off = offsets[idx];
        if ((uint64_t)off + 4 > ring_len)
            return -1;
        __atomic_store_n((uint32_t *)(void *)(ring + off), 0u, __ATOMIC_RELEASE);   /* TP_STATUS_KERNEL */
    }
    return 0;
}

int tcp_rx(const char *frame, size_t len, const char *mac, uint32_t myip, int csum_ok)
{
    const unsigned char *f = (const unsigned char *)frame;
    if (len < 54 || memcmp(f, mac, 6) != 0 || f[12] != 0x08 || f[13] != 0x00)
        return 0;
    const unsigned char *ip = f + 14;
    if (ip[0] != 0x45 || ip[9] != 6 || (get16(ip + 6) & 0x3FFF) || get32(ip + 16) != myip)
        return 0;
    uint32_t total = get16(ip + 2);
    if (total < 40 || total > len - 14)
        return 0;
    uint32_t tlen = total - 20;
    uint32_t hlen = (uint32_t)(ip[20 + 12] >> 4) << 2;
    if (hlen < 20 || hlen > tlen)
        return 0;
    if (fold16(inet_sum((const char *)ip, 20)) != 0xFFFF)
        return -1;
    if (csum_ok) {
        uint32_t src = get32(ip + 12);
        uint64_t s = (uint64_t)inet_sum((const char *)ip + 20, tlen) + (src >> 16) + (src & 0xFFFF)
                     + (myip >> 16) + (myip & 0xFFFF) + 6 + tlen;
        if (fold16(s) != 0xFFFF)
            return -1;
    }
    return (int)total;
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
