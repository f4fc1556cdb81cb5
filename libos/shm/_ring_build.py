"""cffi (API mode) build script for the shared-memory ring, ``libos.shm._ring``.

The C source lives next to this file in ``ring.c`` and is compiled verbatim
into the extension.  Registered in setup.py as
``cffi_modules=["libos/shm/_ring_build.py:ffibuilder"]``; for development,
build in place from the repository root with::

    python libos/shm/_ring_build.py

which leaves ``libos/shm/_ring.*.so`` importable as ``libos.shm._ring``.

Every function declared below is called by cffi with the GIL released (the
generated wrappers bracket the call with Py_BEGIN/END_ALLOW_THREADS), which
is what lets ``ring_wait_*`` sleep without blocking other Python threads.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

CDEF = r"""
#define RING_HDR_SIZE 4096
#define RING_MIN_CAP 4096
#define RING_MAX_CAP 1073741824
#define RING_MAX_SEGS 1024
#define RING_REC_HDR 8
#define RING_FLAG_WRAP 1
#define RING_OFF_HEAD 64
#define RING_OFF_TAIL 128

typedef struct ring_stats {
    uint64_t pushes;
    uint64_t push_bytes;
    uint64_t pops;
    uint64_t pop_bytes;
    uint64_t full;
    uint64_t empty;
    uint64_t wakes;
    uint64_t sleeps;
    uint64_t corrupt;
} ring_stats_t;

typedef struct ring {
    uint64_t peek_off;
    uint32_t peek_len;
    uint32_t peek_nsegs;
    uint32_t peek_lens[...];
    uint32_t doorbell;
    ring_stats_t st;
    ...;
} ring_t;

int ring_init(ring_t *r, void *mem, size_t len);
int ring_doze_readable(ring_t *r);
int ring_doze_writable(ring_t *r, uint64_t len, uint32_t nsegs);
void ring_wake_up(ring_t *r, int kind);
int ring_readable(ring_t *r);
int ring_attach(ring_t *r, void *mem, size_t len);
void ring_detach(ring_t *r);
uint64_t ring_capacity(const ring_t *r);
int64_t ring_max_payload(const ring_t *r, uint32_t nsegs);
int64_t ring_used(ring_t *r);
const uint8_t *ring_data(ring_t *r);
int ring_take_doorbell(ring_t *r);

int64_t ring_reserve(ring_t *r, uint64_t len, uint32_t nsegs);
int ring_commit(ring_t *r, const uint32_t *lens, uint32_t nsegs);
int ring_commit1(ring_t *r, uint32_t len);
void ring_cancel(ring_t *r);
int ring_push(ring_t *r, const void *const *segs, const uint32_t *lens, uint32_t nsegs);
int ring_push1(ring_t *r, const char *buf, size_t len);
void ring_close_producer(ring_t *r);
void ring_close_consumer(ring_t *r);

int ring_peek(ring_t *r, uint64_t *off, uint32_t *total, uint32_t *nsegs);
int64_t ring_peek_packed(ring_t *r);
int ring_peek_many(ring_t *r, uint64_t *out, uint32_t out_words, uint32_t max_elems);
int ring_release(ring_t *r);

int ring_wait_readable(ring_t *r, int64_t spin_ns, int64_t timeout_ns);
int64_t ring_wait_peek(ring_t *r, int64_t spin_ns, int64_t timeout_ns);
int ring_wait_writable(ring_t *r, uint64_t len, uint32_t nsegs, int64_t spin_ns, int64_t timeout_ns);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "libos.shm._ring",
    (_HERE / "ring.c").read_text(encoding="utf-8"),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)


def build_in_place() -> Path:
    """Compile in a scratch directory and copy only the extension next to
    this file (no generated C or object files are left in the tree).
    Returns the path of the installed extension."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ring_build_") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=True))
        target = _HERE / built.name
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
