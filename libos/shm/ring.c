/*
 * ring.c -- single-producer single-consumer ring of variable-size,
 * multi-segment elements in a shared memory mapping (the data path of the
 * `shm` library OS).
 *
 * Compiled through cffi (see _ring_build.py); no Python API is used here.
 *
 * Mapping layout (all integers in host byte order):
 *
 *   offset 0     struct ring_shared (RING_HDR_SIZE bytes, one page)
 *     line 0       magic, version, hdr_size, capacity      (written once)
 *     line 1       head     -- bytes ever published; written by the producer
 *     line 2       tail     -- bytes ever consumed;  written by the consumer
 *     line 3       consumer sleeping flag + futex word "readable"
 *     line 4       producer sleeping flag + futex word "writable"
 *     line 5       producer-closed (EOF) and consumer-closed flags
 *   offset RING_HDR_SIZE   data area, `capacity` bytes (a power of two)
 *
 * head and tail are 64-bit monotonically increasing byte counters; the byte
 * at counter value c lives at data[c & (capacity - 1)].  head - tail is the
 * number of bytes in the ring.
 *
 * A record starts at an 8-byte aligned offset and never wraps:
 *
 *   u32 total   sum of the segment lengths
 *   u16 nsegs   number of segments (<= RING_MAX_SEGS)
 *   u16 flags   0 for a data record, RING_FLAG_WRAP for a wrap marker
 *   u32 len[nsegs]
 *   segment bytes, back to back
 *   padding to the next multiple of 8
 *
 * When a record does not fit between its position and the end of the data
 * area, the producer writes a wrap marker there (only the 8-byte header is
 * meaningful; the marker covers everything up to the end of the data area)
 * and writes the record at offset 0; marker and record are published and
 * consumed together.  Every record is thus contiguous, and
 * its payload can be handed to Python as a zero-copy view.  A record never
 * exceeds capacity / 2, so that wrap marker + record always fit in an
 * empty ring.
 *
 * Trust model: the peer process maps the same memory and may write anything
 * at any time.  Every value read from shared memory (indices, record
 * headers, segment lengths) is loaded exactly once into a local, validated
 * against the capacity that was copied into the private handle at attach
 * time, and only then used; an inconsistency returns -EBADMSG.  No access
 * is ever made outside [mem, mem + RING_HDR_SIZE + capacity).  What a
 * malicious peer can still do is garble the payload or stall the ring,
 * which it could do anyway.
 *
 * Waiting: a waiter spins (with a pause instruction) for a bounded time,
 * then sets its "sleeping" flag, re-checks its condition and sleeps with
 * FUTEX_WAIT (shared, not FUTEX_PRIVATE) on its futex word.  The other side
 * publishes its index with a sequentially consistent store, then loads the
 * flag; only when the flag is set does it clear it, bump the futex word and
 * issue FUTEX_WAKE.  (Store index / load flag on one side and store flag /
 * load index on the other, all seq_cst, cannot both miss each other.)  So
 * when both sides are busy no system call is made.  Each direction supports
 * one sleeping waiter at a time (single producer, single consumer).
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

#define RING_MAGIC      0x31474e4952594450ULL  /* "PDYRING1" read little-endian */
#define RING_VERSION    1u
#define RING_HDR_SIZE   4096u
#define RING_MIN_CAP    4096u
#define RING_MAX_CAP    (1u << 30)
#define RING_MAX_SEGS   1024u
#define RING_REC_HDR    8u
#define RING_FLAG_WRAP  1u
#define RING_CACHELINE  64

#define RING_OFF_HEAD   64
#define RING_OFF_TAIL   128

typedef struct ring_shared {
    /* line 0: immutable after ring_init */
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t capacity;
    /* line 1: producer index */
    _Alignas(RING_CACHELINE) uint64_t head;
    /* line 2: consumer index */
    _Alignas(RING_CACHELINE) uint64_t tail;
    /* line 3: the consumer waits here for data */
    _Alignas(RING_CACHELINE) uint32_t cons_sleeping;
    uint32_t readable_futex;
    /* line 4: the producer waits here for space */
    _Alignas(RING_CACHELINE) uint32_t prod_sleeping;
    uint32_t writable_futex;
    /* line 5: written once each, read on every push / on an empty pop */
    _Alignas(RING_CACHELINE) uint32_t prod_closed;
    uint32_t cons_closed;
} ring_shared_t;

_Static_assert(offsetof(ring_shared_t, head) == RING_OFF_HEAD, "layout");
_Static_assert(offsetof(ring_shared_t, tail) == RING_OFF_TAIL, "layout");
_Static_assert(sizeof(ring_shared_t) <= RING_HDR_SIZE, "header too big");

typedef struct ring_stats {
    uint64_t pushes;      /* elements committed */
    uint64_t push_bytes;  /* payload bytes committed */
    uint64_t pops;        /* elements released */
    uint64_t pop_bytes;   /* payload bytes released */
    uint64_t full;        /* reserve/push refused with -EAGAIN */
    uint64_t empty;       /* peek found nothing (-EAGAIN) */
    uint64_t wakes;       /* FUTEX_WAKE system calls issued */
    uint64_t sleeps;      /* FUTEX_WAIT system calls issued */
    uint64_t corrupt;     /* -EBADMSG returned */
} ring_stats_t;

/* Process-private handle.  Nothing in here is reachable by the peer. */
typedef struct ring {
    ring_shared_t *sh;     /* NULL when detached */
    uint8_t *data;
    uint64_t cap;          /* validated copy; never re-read from shared memory */
    uint64_t mask;
    uint64_t tail_cache;   /* producer: a tail seen earlier (<= the real tail) */
    uint64_t head_cache;   /* consumer: a head seen earlier (<= the real head) */
    /* producer reservation (ring_reserve .. ring_commit) */
    uint64_t resv_base;    /* head value at which the record starts */
    uint64_t resv_pos;     /* data offset of the record header */
    uint32_t resv_len;
    uint32_t resv_nsegs;
    uint32_t resv_active;
    /* consumer: element returned by the last peek, pending release */
    uint32_t peek_active;
    uint64_t peek_next_tail;
    uint64_t peek_off;
    uint32_t peek_len;
    uint32_t peek_nsegs;
    uint32_t peek_count;   /* elements covered by the pending release */
    uint32_t doorbell;     /* set when the peer dozes on its doorbell and must be rung */
    uint64_t peek_bytes;
    uint32_t peek_lens[RING_MAX_SEGS];
    ring_stats_t st;
} ring_t;

/* ------------------------------------------------------------------ */
/* helpers                                                            */

#define LOAD_RLX(p)   __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p)   __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_SC(p)    __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_SC(p, v)  __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static inline uint64_t align8(uint64_t x) { return (x + 7u) & ~(uint64_t)7u; }

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint64_t record_size(uint64_t len, uint64_t nsegs)
{
    return align8(RING_REC_HDR + 4u * nsegs + len);
}

static inline long futex_op(uint32_t *addr, int op, uint32_t val,
                            const struct timespec *ts)
{
    /* Not FUTEX_PRIVATE_FLAG: the word lives in a MAP_SHARED mapping that
     * another process waits on / wakes through its own mapping. */
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

/* Wake the peer sleeping on (flag, word) if it announced that it sleeps. */
/* A flag value of SLEEP_FUTEX means the peer sleeps in FUTEX_WAIT on the word; SLEEP_DOORBELL
 * means it sleeps elsewhere (an eventfd in its epoll) and the caller must ring it: we only
 * set r->doorbell, and the caller (Python) writes the peer's eventfd. */
#define SLEEP_FUTEX     1u
#define SLEEP_DOORBELL  2u

static inline void wake_if_sleeping(ring_t *r, uint32_t *flag, uint32_t *word)
{
    uint32_t old;
    if (LOAD_SC(flag) && (old = __atomic_exchange_n(flag, 0u, __ATOMIC_SEQ_CST)) != 0) {
        if (old == SLEEP_DOORBELL) {
            r->doorbell = 1;
            return;
        }
        __atomic_fetch_add(word, 1u, __ATOMIC_SEQ_CST);
        futex_op(word, FUTEX_WAKE, INT_MAX, NULL);
        r->st.wakes++;
    }
}

static inline int64_t corrupt(ring_t *r)
{
    r->st.corrupt++;
    return -EBADMSG;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */

static int valid_cap(uint64_t cap)
{
    return cap >= RING_MIN_CAP && cap <= RING_MAX_CAP && (cap & (cap - 1)) == 0;
}

static void handle_setup(ring_t *r, void *mem, uint64_t cap)
{
    memset(r, 0, sizeof *r);
    r->sh = (ring_shared_t *)mem;
    r->data = (uint8_t *)mem + RING_HDR_SIZE;
    r->cap = cap;
    r->mask = cap - 1;
    uint64_t t = LOAD_ACQ(&r->sh->tail);
    r->tail_cache = t;
    r->head_cache = t;   /* "looks empty": the first peek loads head */
}

/* Initialise a ring in `mem` (len bytes, 64-byte aligned, zero or garbage).
 * len - RING_HDR_SIZE is the capacity and must be a power of two in
 * [RING_MIN_CAP, RING_MAX_CAP].  Fills the private handle *r.
 * Returns 0 or -EINVAL. */
int ring_init(ring_t *r, void *mem, size_t len)
{
    if (r == NULL || mem == NULL || ((uintptr_t)mem & (RING_CACHELINE - 1)))
        return -EINVAL;
    if (len < RING_HDR_SIZE || !valid_cap((uint64_t)len - RING_HDR_SIZE))
        return -EINVAL;
    uint64_t cap = (uint64_t)len - RING_HDR_SIZE;
    ring_shared_t *sh = (ring_shared_t *)mem;
    STORE_RLX(&sh->magic, 0);
    memset(mem, 0, RING_HDR_SIZE);
    sh->version = RING_VERSION;
    sh->hdr_size = RING_HDR_SIZE;
    sh->capacity = cap;
    STORE_REL(&sh->magic, RING_MAGIC);   /* last: attach sees a complete header */
    handle_setup(r, mem, cap);
    return 0;
}

/* Attach to a ring that ring_init prepared (possibly in another process).
 * Validates magic, version, header size and that the capacity is a power of
 * two that fits in len.  Returns 0, -EINVAL (bad arguments) or -EBADMSG
 * (the header is not a valid ring of this version). */
int ring_attach(ring_t *r, void *mem, size_t len)
{
    if (r == NULL || mem == NULL || ((uintptr_t)mem & (RING_CACHELINE - 1)))
        return -EINVAL;
    if (len < RING_HDR_SIZE)
        return -EBADMSG;
    ring_shared_t *sh = (ring_shared_t *)mem;
    if (LOAD_ACQ(&sh->magic) != RING_MAGIC)
        return -EBADMSG;
    uint32_t version = LOAD_RLX(&sh->version);
    uint32_t hdr_size = LOAD_RLX(&sh->hdr_size);
    uint64_t cap = LOAD_RLX(&sh->capacity);
    if (version != RING_VERSION || hdr_size != RING_HDR_SIZE || !valid_cap(cap)
        || cap > (uint64_t)len - RING_HDR_SIZE)
        return -EBADMSG;
    handle_setup(r, mem, cap);
    return 0;
}

/* Forget the mapping: every later call on r returns -EBADF. */
void ring_detach(ring_t *r)
{
    if (r != NULL) {
        r->sh = NULL;
        r->data = NULL;
        r->resv_active = 0;
        r->peek_active = 0;
    }
}

uint64_t ring_capacity(const ring_t *r) { return r && r->sh ? r->cap : 0; }

/* Largest payload one element of nsegs segments may carry, or -EMSGSIZE if
 * no such element fits, -EINVAL for nsegs > RING_MAX_SEGS, -EBADF. */
int64_t ring_max_payload(const ring_t *r, uint32_t nsegs)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    if (nsegs > RING_MAX_SEGS)
        return -EINVAL;
    /* cap / 2 is a multiple of 8, so align8(x) <= cap / 2 iff x <= cap / 2. */
    uint64_t lim = r->cap / 2, fixed = RING_REC_HDR + 4u * (uint64_t)nsegs;
    if (fixed > lim)
        return -EMSGSIZE;
    uint64_t p = lim - fixed;
    return (int64_t)(p > UINT32_MAX ? UINT32_MAX : p);
}

/* ------------------------------------------------------------------ */
/* producer                                                           */

static inline int closed_for_push(const ring_t *r)
{
    return LOAD_RLX(&r->sh->prod_closed) | LOAD_RLX(&r->sh->cons_closed);
}

/* Free space for a record of `rec` bytes at head h.  Sets *need_out to the
 * bytes needed at head (the record, plus the rest of the data area when it
 * must wrap) and returns the free byte count, re-reading the consumer's tail
 * only when the cached one says "too full"; -EBADMSG if the indices are
 * inconsistent. */
static inline int64_t space_check(ring_t *r, uint64_t h, uint64_t rec,
                                  uint64_t *need_out)
{
    uint64_t cap = r->cap;
    if (h & 7u)
        return -EBADMSG;
    uint64_t to_end = cap - (h & r->mask);
    uint64_t need = rec <= to_end ? rec : to_end + rec;
    uint64_t used = h - r->tail_cache;
    if (used > cap || cap - used < need) {
        uint64_t t = LOAD_ACQ(&r->sh->tail);
        r->tail_cache = t;
        used = h - t;
        if (used > cap || (t & 7u))
            return -EBADMSG;
    }
    *need_out = need;
    return (int64_t)(cap - used);
}

/* Reserve room for one element of `len` payload bytes in `nsegs` segments.
 * Returns the data-area offset where the payload (segments back to back)
 * must be written, then ring_commit publishes it.  Errors: -EAGAIN (full
 * now), -EMSGSIZE (can never fit), -EPIPE (either side closed), -EINVAL
 * (nsegs > RING_MAX_SEGS), -EBADMSG (indices corrupt), -EBADF (detached).
 * A second reserve replaces an uncommitted one. */
int64_t ring_reserve(ring_t *r, uint64_t len, uint32_t nsegs)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    r->resv_active = 0;
    if (nsegs > RING_MAX_SEGS)
        return -EINVAL;
    uint64_t rec = record_size(len, nsegs);
    if (len > UINT32_MAX || rec > r->cap / 2)
        return -EMSGSIZE;
    if (closed_for_push(r))
        return -EPIPE;
    uint64_t h = LOAD_RLX(&r->sh->head);   /* ours: only we write it */
    uint64_t need = 0;
    int64_t free_ = space_check(r, h, rec, &need);
    if (free_ < 0)
        return corrupt(r);
    if ((uint64_t)free_ < need) {
        r->st.full++;
        return -EAGAIN;
    }
    uint64_t pos = h & r->mask, base = h;
    if (rec > r->cap - pos) {
        /* Wrap marker; published together with the record by commit. */
        uint64_t marker = (uint64_t)RING_FLAG_WRAP << 48;
        STORE_RLX((uint64_t *)(r->data + pos), marker);
        base = h + (r->cap - pos);
        pos = 0;
    }
    r->resv_base = base;
    r->resv_pos = pos;
    r->resv_len = (uint32_t)len;
    r->resv_nsegs = nsegs;
    r->resv_active = 1;
    return (int64_t)(pos + RING_REC_HDR + 4u * (uint64_t)nsegs);
}

/* Publish the reserved element with the given segment lengths.  nsegs must
 * equal the reserved count and the lengths may sum to less than (not more
 * than) the reserved payload.  Returns 0, -EINVAL (no reservation or a
 * mismatch; the reservation is kept) or -EBADF. */
int ring_commit(ring_t *r, const uint32_t *lens, uint32_t nsegs)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    if (!r->resv_active || nsegs != r->resv_nsegs || (nsegs && lens == NULL))
        return -EINVAL;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < nsegs; i++)
        sum += lens[i];
    if (sum > r->resv_len)
        return -EINVAL;
    uint8_t *rec = r->data + r->resv_pos;
    uint64_t w = sum | ((uint64_t)nsegs << 32);
    memcpy(rec, &w, sizeof w);
    memcpy(rec + RING_REC_HDR, lens, 4u * (size_t)nsegs);
    r->resv_active = 0;
    r->st.pushes++;
    r->st.push_bytes += sum;
    STORE_SC(&r->sh->head, r->resv_base + record_size(sum, nsegs));
    wake_if_sleeping(r, &r->sh->cons_sleeping, &r->sh->readable_futex);
    return 0;
}

/* ring_commit for a single-segment reservation. */
int ring_commit1(ring_t *r, uint32_t len)
{
    return ring_commit(r, &len, 1);
}

/* Drop an uncommitted reservation (nothing was published). */
void ring_cancel(ring_t *r)
{
    if (r != NULL)
        r->resv_active = 0;
}

/* Copy one element of nsegs segments into the ring and publish it.
 * Returns 0, -EAGAIN (full), -EMSGSIZE (can never fit), -EPIPE (closed),
 * -EINVAL (bad arguments), -EBADMSG (indices corrupt) or -EBADF. */
int ring_push(ring_t *r, const void *const *segs, const uint32_t *lens,
              uint32_t nsegs)
{
    if (nsegs > RING_MAX_SEGS || (nsegs && (segs == NULL || lens == NULL)))
        return r && r->sh ? -EINVAL : -EBADF;
    uint64_t total = 0;
    for (uint32_t i = 0; i < nsegs; i++)
        total += lens[i];
    int64_t off = ring_reserve(r, total, nsegs);
    if (off < 0)
        return (int)off;
    uint8_t *p = r->data + off;
    for (uint32_t i = 0; i < nsegs; i++) {
        memcpy(p, segs[i], lens[i]);
        p += lens[i];
    }
    return ring_commit(r, lens, nsegs);
}

/* ring_push of a single segment. */
int ring_push1(ring_t *r, const char *buf, size_t len)
{
    if (len > UINT32_MAX)
        return r && r->sh ? -EMSGSIZE : -EBADF;
    int64_t off = ring_reserve(r, len, 1);
    if (off < 0)
        return (int)off;
    memcpy(r->data + off, buf, len);
    uint32_t l = (uint32_t)len;
    return ring_commit(r, &l, 1);
}

/* Mark end of stream: the consumer gets -EPIPE once the ring is drained,
 * and further pushes fail with -EPIPE.  Wakes a sleeping consumer. */
void ring_close_producer(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return;
    STORE_SC(&r->sh->prod_closed, 1u);
    wake_if_sleeping(r, &r->sh->cons_sleeping, &r->sh->readable_futex);
}

/* The consumer is gone: pushes fail with -EPIPE and a waiting producer is
 * woken. */
void ring_close_consumer(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return;
    STORE_SC(&r->sh->cons_closed, 1u);
    wake_if_sleeping(r, &r->sh->prod_sleeping, &r->sh->writable_futex);
}

/* ------------------------------------------------------------------ */
/* consumer                                                           */

static inline void advance_tail(ring_t *r, uint64_t t)
{
    STORE_SC(&r->sh->tail, t);
    wake_if_sleeping(r, &r->sh->prod_sleeping, &r->sh->writable_futex);
}

/* Load the indices for a peek.  Returns 1 with *t_out and *h_out set when there
 * is something (h != t, both validated), else -EAGAIN, -EPIPE or -EBADMSG.
 * Unless `fresh`, a head seen earlier is used while it shows data, which
 * keeps the producer's cache line alone while a backlog is drained. */
static inline int load_indices(ring_t *r, uint64_t *t_out, uint64_t *h_out, int fresh)
{
    ring_shared_t *sh = r->sh;
    const uint64_t cap = r->cap;
    uint64_t t = LOAD_RLX(&sh->tail);   /* ours: only we write it */
    uint64_t h = r->head_cache;
    if (fresh || h - t - 1u >= cap) {   /* looks empty, or cache unusable */
        h = LOAD_ACQ(&sh->head);
        if (h == t) {
            if (!LOAD_ACQ(&sh->prod_closed)) {
                r->st.empty++;
                return -EAGAIN;
            }
            h = LOAD_ACQ(&sh->head);     /* a last push before the close? */
            if (h == t)
                return -EPIPE;
        }
        r->head_cache = h;
    }
    if (h - t > cap || ((h | t) & 7u))
        return (int)corrupt(r);
    *t_out = t;
    *h_out = h;
    return 1;
}

/* Parse the element whose record (or wrap marker + record) starts at byte
 * counter t, given the published head h (h - t in [1, cap], both 8-aligned).
 * Copies the validated segment lengths to lens (RING_MAX_SEGS entries) and
 * returns 0 with the payload offset, total, segment count and the counter
 * just past the record; or -EBADMSG.  Each shared word is read once. */
static int parse_element(ring_t *r, uint64_t t, uint64_t h, uint64_t *off,
                         uint32_t *total_out, uint32_t *nsegs_out,
                         uint32_t *lens, uint64_t *next)
{
    const uint64_t cap = r->cap;
    uint64_t avail = h - t;
    uint64_t pos = t & r->mask;
    uint64_t to_end = cap - pos;            /* >= 8: pos is 8-aligned, < cap */
    if (avail < RING_REC_HDR)
        return (int)corrupt(r);
    uint64_t w = LOAD_RLX((const uint64_t *)(r->data + pos));
    if ((uint32_t)(w >> 48) == RING_FLAG_WRAP) {
        /* The producer never wraps at offset 0 and publishes a marker only
         * together with the record that follows it at offset 0. */
        if (pos == 0 || to_end >= avail)
            return (int)corrupt(r);
        t += to_end;
        avail -= to_end;
        if (avail < RING_REC_HDR)
            return (int)corrupt(r);
        pos = 0;
        to_end = cap;
        w = LOAD_RLX((const uint64_t *)r->data);
    }
    uint32_t total = (uint32_t)w;
    uint32_t nsegs = (uint32_t)(w >> 32) & 0xffffu;
    uint32_t flags = (uint32_t)(w >> 48);
    if (flags != 0 || nsegs > RING_MAX_SEGS)
        return (int)corrupt(r);
    uint64_t rec = record_size(total, nsegs);
    if (rec > to_end || rec > avail || rec > cap / 2)
        return (int)corrupt(r);
    const uint32_t *lp = (const uint32_t *)(r->data + pos + RING_REC_HDR);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < nsegs; i++) {
        uint32_t l = LOAD_RLX(&lp[i]);
        lens[i] = l;
        sum += l;
    }
    if (sum != total)
        return (int)corrupt(r);
    *off = pos + RING_REC_HDR + 4u * (uint64_t)nsegs;
    *total_out = total;
    *nsegs_out = nsegs;
    *next = t + rec;
    return 0;
}

/* Find the next element: returns the data-area offset of its payload and
 * records its length, segments and release point in the handle; or
 * -EAGAIN, -EPIPE, -EBADMSG, -EBADF. */
static int64_t peek_core(ring_t *r)
{
    if (r->sh == NULL)
        return -EBADF;
    r->peek_active = 0;
    uint64_t t, h, off, next;
    uint32_t total, nsegs;
    int rc = load_indices(r, &t, &h, 0);
    if (rc < 0)
        return rc;
    rc = parse_element(r, t, h, &off, &total, &nsegs, r->peek_lens, &next);
    if (rc < 0)
        return rc;
    r->peek_off = off;
    r->peek_len = total;
    r->peek_nsegs = nsegs;
    r->peek_next_tail = next;
    r->peek_count = 1;
    r->peek_bytes = total;
    r->peek_active = 1;
    return (int64_t)off;
}

/* Look at the next element without consuming it.  On success (0) *off is
 * the data-area offset of the payload, *total its length, *nsegs the
 * segment count; the segment lengths are in r->peek_lens.  The payload is
 * contiguous and stays in place until ring_release.  Returns 0, -EAGAIN
 * (empty), -EPIPE (producer closed and ring drained), -EBADMSG (the shared
 * state is inconsistent) or -EBADF.  Peeking again without a release
 * returns the same element. */
int ring_peek(ring_t *r, uint64_t *off, uint32_t *total, uint32_t *nsegs)
{
    if (r == NULL)
        return -EBADF;
    int64_t rc = peek_core(r);
    if (rc < 0)
        return (int)rc;
    if (off) *off = r->peek_off;
    if (total) *total = r->peek_len;
    if (nsegs) *nsegs = r->peek_nsegs;
    return 0;
}

static inline uint64_t pack_desc(uint64_t off, uint32_t total, uint32_t nsegs)
{
    return off | ((uint64_t)total << 31) | ((uint64_t)(nsegs != 1) << 62);
}

/* Peek, returning a packed descriptor for the Python fast path:
 *   >= 0: bits 0..30 payload offset, bits 31..61 total length,
 *         bit 62 set when the element has other than one segment (read
 *         r->peek_nsegs and r->peek_lens then);
 *   <  0: -errno as ring_peek. */
int64_t ring_peek_packed(ring_t *r)
{
    if (r == NULL)
        return -EBADF;
    int64_t rc = peek_core(r);
    if (rc < 0)
        return rc;
    return (int64_t)pack_desc(r->peek_off, r->peek_len, r->peek_nsegs);
}

/* Peek at up to max_elems consecutive elements; one ring_release consumes
 * them all.  Writes into out (out_words >= RING_MAX_SEGS + 2 entries), per
 * element, the packed descriptor of ring_peek_packed and, when bit 62 is
 * set, the segment count followed by the segment lengths.  Returns the
 * number of words written (> 0), or -EAGAIN / -EPIPE / -EBADMSG / -EBADF /
 * -EINVAL when not even one element is returned.  A corrupt record after
 * the first element ends the batch; the next call reports it. */
int ring_peek_many(ring_t *r, uint64_t *out, uint32_t out_words, uint32_t max_elems)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    r->peek_active = 0;
    if (out == NULL || out_words < RING_MAX_SEGS + 2 || out_words > INT_MAX || max_elems == 0)
        return -EINVAL;
    uint64_t t, h, off = 0;
    uint32_t total = 0, nsegs = 0, words = 0, n = 0;
    uint64_t bytes = 0;
    int rc = load_indices(r, &t, &h, 1);
    if (rc < 0)
        return rc;
    while (n < max_elems && t != h) {
        uint64_t next;
        rc = parse_element(r, t, h, &off, &total, &nsegs, r->peek_lens, &next);
        if (rc < 0) {
            if (n == 0)
                return rc;
            r->st.corrupt--;   /* reported again by the next call */
            break;
        }
        uint32_t need = nsegs == 1 ? 1u : 2u + nsegs;
        if (need > out_words - words)
            break;
        out[words++] = pack_desc(off, total, nsegs);
        if (nsegs != 1) {
            out[words++] = nsegs;
            for (uint32_t i = 0; i < nsegs; i++)
                out[words++] = r->peek_lens[i];
        }
        bytes += total;
        t = next;
        n++;
    }
    r->peek_off = off;            /* the last element, as ring_peek reports */
    r->peek_len = total;
    r->peek_nsegs = nsegs;
    r->peek_next_tail = t;
    r->peek_count = n;
    r->peek_bytes = bytes;
    r->peek_active = 1;
    return (int)words;
}

/* Consume what the last successful peek returned (one element, or the
 * batch of ring_peek_many): that memory may be reused by the producer from
 * now on.  Returns 0, -EINVAL (nothing peeked) or -EBADF. */
int ring_release(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    if (!r->peek_active)
        return -EINVAL;
    r->peek_active = 0;
    r->st.pops += r->peek_count;
    r->st.pop_bytes += r->peek_bytes;
    advance_tail(r, r->peek_next_tail);
    return 0;
}

/* ------------------------------------------------------------------ */
/* waiting                                                            */

enum { WAIT_READABLE, WAIT_WRITABLE };

/* The readiness checks below run after the waiter's seq_cst store of its
 * sleeping flag; their loads of what the peer publishes (head, tail, the
 * closed flags) are seq_cst too, pairing with the peer's seq_cst store of
 * that value followed by its load of the flag. */

/* Readable: something to peek, end of stream, or a state peek will reject. */
static inline int is_readable(ring_t *r)
{
    ring_shared_t *sh = r->sh;
    return LOAD_SC(&sh->head) != LOAD_RLX(&sh->tail) || LOAD_SC(&sh->prod_closed);
}

/* Writable: a push of a record of `rec` bytes would not return -EAGAIN. */
static inline int is_writable(ring_t *r, uint64_t rec)
{
    ring_shared_t *sh = r->sh;
    if (LOAD_SC(&sh->cons_closed) | LOAD_RLX(&sh->prod_closed))
        return 1;
    uint64_t h = LOAD_RLX(&sh->head);
    uint64_t t = LOAD_SC(&sh->tail);
    uint64_t cap = r->cap;
    if ((h | t) & 7u)
        return 1;
    uint64_t used = h - t;
    if (used > cap)
        return 1;
    uint64_t to_end = cap - (h & r->mask);
    uint64_t need = rec <= to_end ? rec : to_end + rec;
    return cap - used >= need;
}

static inline int ready(ring_t *r, int kind, uint64_t rec)
{
    return kind == WAIT_READABLE ? is_readable(r) : is_writable(r, rec);
}

static int wait_common(ring_t *r, int kind, uint64_t rec, int64_t spin_ns,
                       int64_t timeout_ns)
{
    if (ready(r, kind, rec))
        return 0;
    if (timeout_ns == 0)
        return -ETIMEDOUT;
    int64_t start = now_ns();
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : start + timeout_ns;
    if (spin_ns > 0) {
        int64_t spin_end = spin_ns < deadline - start ? start + spin_ns : deadline;
        for (;;) {
            for (int i = 0; i < 16; i++) {
                cpu_relax();
                if (ready(r, kind, rec))
                    return 0;
            }
            if (now_ns() >= spin_end)
                break;
        }
    }
    ring_shared_t *sh = r->sh;
    uint32_t *flag = kind == WAIT_READABLE ? &sh->cons_sleeping : &sh->prod_sleeping;
    uint32_t *word = kind == WAIT_READABLE ? &sh->readable_futex : &sh->writable_futex;
    for (;;) {
        uint32_t seen = LOAD_ACQ(word);
        STORE_SC(flag, 1u);
        if (ready(r, kind, rec)) {
            STORE_RLX(flag, 0u);
            return 0;
        }
        int64_t now = now_ns();
        if (now >= deadline) {
            STORE_RLX(flag, 0u);
            return -ETIMEDOUT;
        }
        struct timespec ts, *tsp = NULL;
        if (deadline != INT64_MAX) {
            int64_t rel = deadline - now;
            ts.tv_sec = rel / 1000000000LL;
            ts.tv_nsec = rel % 1000000000LL;
            tsp = &ts;
        }
        r->st.sleeps++;
        long rc = futex_op(word, FUTEX_WAIT, seen, tsp);
        int err = rc < 0 ? errno : 0;
        STORE_RLX(flag, 0u);
        if (ready(r, kind, rec))
            return 0;
        if (err == EINTR)
            return -EINTR;
        /* woken without progress, value changed, or timed out: re-check */
    }
}

/* Wait until the ring is readable (an element, end of stream, or a state
 * that ring_peek reports as -EBADMSG).  Spins for up to spin_ns, then
 * sleeps on the futex.  timeout_ns < 0 waits without limit, 0 polls.
 * Returns 0, -ETIMEDOUT, -EINTR (a signal arrived) or -EBADF.  Called
 * without the GIL. */
int ring_wait_readable(ring_t *r, int64_t spin_ns, int64_t timeout_ns)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    return wait_common(r, WAIT_READABLE, 0, spin_ns, timeout_ns);
}

/* Wait until an element of `len` payload bytes in `nsegs` segments could be
 * pushed (or a push would fail for another reason than -EAGAIN).
 * Same spinning, timeout and return values as ring_wait_readable, plus
 * -EMSGSIZE / -EINVAL when such an element can never be pushed. */
int ring_wait_writable(ring_t *r, uint64_t len, uint32_t nsegs,
                       int64_t spin_ns, int64_t timeout_ns)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    if (nsegs > RING_MAX_SEGS)
        return -EINVAL;
    uint64_t rec = record_size(len, nsegs);
    if (len > UINT32_MAX || rec > r->cap / 2)
        return -EMSGSIZE;
    return wait_common(r, WAIT_WRITABLE, rec, spin_ns, timeout_ns);
}

/* Wait until readable (as ring_wait_readable), then peek: returns what
 * ring_peek_packed returns, or -ETIMEDOUT / -EINTR / -EBADF.  One call for
 * a blocking pop. */
int64_t ring_wait_peek(ring_t *r, int64_t spin_ns, int64_t timeout_ns)
{
    if (r == NULL)
        return -EBADF;
    int64_t v = ring_peek_packed(r);
    if (v != -EAGAIN || timeout_ns == 0)
        return v == -EAGAIN ? -ETIMEDOUT : v;
    int rc = wait_common(r, WAIT_READABLE, 0, spin_ns, timeout_ns);
    if (rc != 0)
        return rc;
    return ring_peek_packed(r);
}

/* Bytes currently in the ring (head - tail), or -EBADMSG if inconsistent. */
int64_t ring_used(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    uint64_t h = LOAD_ACQ(&r->sh->head), t = LOAD_ACQ(&r->sh->tail);
    return h - t > r->cap ? -EBADMSG : (int64_t)(h - t);
}


/* ------------------------------------------------------------------ */
/* doorbell sleeping (a process waiting on many rings at once)        */

/* Announce that the consumer is about to sleep outside the ring (on an eventfd the
 * producer rings when it sees the flag).  Returns 1 if the ring is readable already
 * (the flag is withdrawn: do not sleep), 0 if the caller may sleep, or -EBADF. */
int ring_doze_readable(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    STORE_SC(&r->sh->cons_sleeping, SLEEP_DOORBELL);
    if (ready(r, WAIT_READABLE, 0)) {
        STORE_SC(&r->sh->cons_sleeping, 0u);
        return 1;
    }
    return 0;
}

/* The producer's counterpart: it waits for room for an element of len bytes in nsegs
 * segments.  Returns 1 (room now: do not sleep), 0 (may sleep), -EMSGSIZE or -EBADF. */
int ring_doze_writable(ring_t *r, uint64_t len, uint32_t nsegs)
{
    if (r == NULL || r->sh == NULL)
        return -EBADF;
    uint64_t rec = record_size(len, nsegs);
    if (len > UINT32_MAX || nsegs > RING_MAX_SEGS || rec > r->cap / 2)
        return -EMSGSIZE;
    STORE_SC(&r->sh->prod_sleeping, SLEEP_DOORBELL);
    if (ready(r, WAIT_WRITABLE, rec)) {
        STORE_SC(&r->sh->prod_sleeping, 0u);
        return 1;
    }
    return 0;
}

/* Withdraw a doze announcement after waking (kind 0: readable, 1: writable). */
void ring_wake_up(ring_t *r, int kind)
{
    if (r == NULL || r->sh == NULL)
        return;
    STORE_RLX(kind == 0 ? &r->sh->cons_sleeping : &r->sh->prod_sleeping, 0u);
}

/* Nonzero if the ring is readable now (an element, end of stream, or corruption). */
int ring_readable(ring_t *r)
{
    if (r == NULL || r->sh == NULL)
        return 0;
    return ready(r, WAIT_READABLE, 0);
}

/* For queueapi's C fast lane (queueapi/_fast.c), which calls this file's functions through
 * pointers: the data area that ring_peek_packed offsets are relative to, and the doorbell
 * flag (set when the last operation found the peer dozing on its eventfd), taken once. */
const uint8_t *ring_data(ring_t *r)
{
    return r ? r->data : NULL;
}

int ring_take_doorbell(ring_t *r)
{
    if (r == NULL || !r->doorbell)
        return 0;
    r->doorbell = 0;
    return 1;
}
