/* queueapi._fast: the data path of queueapi in C.
 *
 * Python costs about a microsecond per layer on the data path (an object, a dict entry, a
 * method call each), so a push that crosses the core, the socket queue, the channel and the
 * ring costs several.  This module keeps the same objects and rules as the Python core and
 * does the common case in one C call:
 *
 *   Op    the pending operation behind a token (replaces a Python class with the same
 *         attributes: qt, qd, result, waiter, callback, plus lane and counted).
 *   Core  the handles of one LibOS that the fast paths need: its token table (_ops), its
 *         completion queue (_done), its lock, the QResult and SGArray types.
 *   Lane  one connection over a pair of single-producer single-consumer rings (the shm
 *         library OS): push and pop complete at once when the ring has room or data,
 *         pending pops are kept here in order, and wait() can spin on the ring.
 *
 * The ring itself is libos/shm/ring.c, reached through function pointers handed over by
 * set_ring_api() (queueapi does not link against a library OS).  This is a CPython
 * extension rather than cffi because the cost to remove is the creation of Python objects
 * (tokens, results, scatter-gather arrays), which cffi cannot do from C.
 *
 * Rules kept from the Python core:
 *  - every change to a lane or to the LibOS tables happens with the LibOS lock held: the fast
 *    paths take it with a non-blocking acquire and fall back to Python when it is busy;
 *  - a fast path runs only when nothing else needs to see the completion: no deferred
 *    combinator callbacks, no thread sleeping in wait_next_n, no other thread polling;
 *  - anything unusual (end of stream, errors, multi-segment elements, partial pops, a full
 *    ring) returns None so the Python path, which handles everything, takes over.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/epoll.h>

/* ------------------------------------------------------------------ ring API */

typedef int (*push1_fn)(void *r, const char *buf, size_t len);
typedef int64_t (*peek_packed_fn)(void *r);
typedef int (*release_fn)(void *r);
typedef int (*readable_fn)(void *r);
typedef const uint8_t *(*data_fn)(void *r);
typedef int (*take_doorbell_fn)(void *r);

static struct {
    push1_fn push1;
    peek_packed_fn peek_packed;
    release_fn release;
    readable_fn readable;
    data_fn data;
    take_doorbell_fn take_doorbell;
} ring_api;

#define DESC_OFF_MASK ((((int64_t)1) << 31) - 1)
#define DESC_MULTI (((int64_t)1) << 62)

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

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

/* ------------------------------------------------------------------ Op */

typedef struct {
    PyObject_HEAD
    PyObject *qt;
    PyObject *qd;
    PyObject *result;
    PyObject *waiter;
    PyObject *callback;
    PyObject *lane;      /* the Lane whose pending pops hold this op, else None */
    PyObject *pop_size;  /* a pending pop's size (None: the queue's default) */
    int counted;         /* pops/bytes_in already counted by the lane */
    int gone;            /* its token left the token table without being taken */
    int memo;            /* how many positions of wait_any's memo hold it */
    Py_ssize_t wa_pos;   /* the last position of the memo it was put in */
} OpObject;

static PyTypeObject OpType;

/* Deallocated ops kept for reuse (every push and pop makes one): no allocator round trip,
 * and no count towards the next garbage collection. */
#define OP_FREELIST_MAX 512
static OpObject *op_freelist[OP_FREELIST_MAX];
static int op_nfree;

static OpObject *op_make(PyObject *qt, PyObject *qd, PyObject *callback)
{
    OpObject *op;
    if (op_nfree > 0) {
        op = op_freelist[--op_nfree];
        _Py_NewReference((PyObject *)op);
    } else if ((op = PyObject_GC_New(OpObject, &OpType)) == NULL) {
        return NULL;
    }
    Py_INCREF(qt);
    op->qt = qt;
    Py_INCREF(qd);
    op->qd = qd;
    Py_INCREF(Py_None);
    op->result = Py_None;
    Py_INCREF(Py_None);
    op->waiter = Py_None;
    Py_INCREF(callback);
    op->callback = callback;
    Py_INCREF(Py_None);
    op->lane = Py_None;
    op->pop_size = Py_NewRef(Py_None);
    op->counted = 0;
    op->gone = 0;
    op->memo = 0;
    PyObject_GC_Track(op);
    return op;
}

static PyObject *op_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if ((kwnames && PyTuple_GET_SIZE(kwnames)) || n < 2 || n > 3) {
        PyErr_SetString(PyExc_TypeError, "Op(qt, qd, callback=None) takes 2 or 3 positional arguments");
        return NULL;
    }
    return (PyObject *)op_make(args[0], args[1], n == 3 ? args[2] : Py_None);
}

static PyObject *op_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *qt, *qd, *cb = Py_None;
    static char *names[] = {"qt", "qd", "callback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:Op", names, &qt, &qd, &cb))
        return NULL;
    return (PyObject *)op_make(qt, qd, cb);
}

static int op_traverse(OpObject *op, visitproc visit, void *arg)
{
    Py_VISIT(op->qt);
    Py_VISIT(op->qd);
    Py_VISIT(op->result);
    Py_VISIT(op->waiter);
    Py_VISIT(op->callback);
    Py_VISIT(op->lane);
    Py_VISIT(op->pop_size);
    return 0;
}

static int op_clear(OpObject *op)
{
    Py_CLEAR(op->qt);
    Py_CLEAR(op->qd);
    Py_CLEAR(op->result);
    Py_CLEAR(op->waiter);
    Py_CLEAR(op->callback);
    Py_CLEAR(op->lane);
    Py_CLEAR(op->pop_size);
    return 0;
}

static void op_dealloc(OpObject *op)
{
    PyObject_GC_UnTrack(op);
    op_clear(op);
    if (op_nfree < OP_FREELIST_MAX && Py_IS_TYPE(op, &OpType))
        op_freelist[op_nfree++] = op;
    else
        PyObject_GC_Del(op);
}

static PyObject *op_repr(OpObject *op)
{
    return PyUnicode_FromFormat("<Op qt=%R qd=%R done=%s>", op->qt, op->qd,
                                (op->result && op->result != Py_None) ? "yes" : "no");
}

static PyMemberDef op_members[] = {
    {"qt", T_OBJECT, offsetof(OpObject, qt), 0, "the token"},
    {"qd", T_OBJECT, offsetof(OpObject, qd), 0, "the queue descriptor"},
    {"result", T_OBJECT, offsetof(OpObject, result), 0, "the QResult once completed, else None"},
    {"waiter", T_OBJECT, offsetof(OpObject, waiter), 0, "the Event of a thread sleeping on it"},
    {"callback", T_OBJECT, offsetof(OpObject, callback), 0, "internal completion callback"},
    {"lane", T_OBJECT, offsetof(OpObject, lane), 0, "the Lane holding it pending, or None"},
    {"pop_size", T_OBJECT, offsetof(OpObject, pop_size), 0,
     "the size a pending pop asks for (None: the queue's default), as its queue keeps it"},
    {"counted", T_INT, offsetof(OpObject, counted), 0, "pop counters already updated"},
    {"gone", T_INT, offsetof(OpObject, gone), 0,
     "set when the token is dropped from the token table without being taken"},
    {NULL}
};

static PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.Op",
    .tp_doc = "One pending operation; its qt is the token the application holds.",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = op_new,
    .tp_vectorcall = op_vectorcall,
    .tp_traverse = (traverseproc)op_traverse,
    .tp_clear = (inquiry)op_clear,
    .tp_dealloc = (destructor)op_dealloc,
    .tp_repr = (reprfunc)op_repr,
    .tp_members = op_members,
};

/* ------------------------------------------------------------------ SGArrayBase */

/* The storage and the hot methods of queueapi.types.SGArray (which subclasses this). */
typedef struct {
    PyObject_HEAD
    PyObject *bufs;      /* tuple of bytes-like segments */
    PyObject *views;     /* tuple of memoryviews, made on demand, or None */
    PyObject *addr;
    PyObject *freed;     /* True/False */
    PyObject *release;   /* called once by free(), or None */
} SGAObject;

static int sga_traverse(SGAObject *o, visitproc visit, void *arg)
{
    Py_VISIT(o->bufs);
    Py_VISIT(o->views);
    Py_VISIT(o->addr);
    Py_VISIT(o->freed);
    Py_VISIT(o->release);
    return 0;
}

static int sga_clear(SGAObject *o)
{
    Py_CLEAR(o->bufs);
    Py_CLEAR(o->views);
    Py_CLEAR(o->addr);
    Py_CLEAR(o->freed);
    Py_CLEAR(o->release);
    return 0;
}

static void sga_dealloc(SGAObject *o)
{
    PyObject_GC_UnTrack(o);
    if (Py_TYPE(o)->tp_weaklistoffset)
        PyObject_ClearWeakRefs((PyObject *)o);
    sga_clear(o);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static Py_ssize_t seg_len(PyObject *b)
{
    if (PyBytes_CheckExact(b))
        return PyBytes_GET_SIZE(b);
    if (PyMemoryView_Check(b))
        return PyMemoryView_GET_BUFFER(b)->len;
    Py_buffer v;
    if (PyObject_GetBuffer(b, &v, PyBUF_SIMPLE) < 0)
        return -1;
    Py_ssize_t n = v.len;
    PyBuffer_Release(&v);
    return n;
}

static Py_ssize_t sga_len(SGAObject *o)
{
    if (o->bufs == NULL || !PyTuple_Check(o->bufs))
        return 0;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o->bufs); i++) {
        Py_ssize_t n = seg_len(PyTuple_GET_ITEM(o->bufs, i));
        if (n < 0)
            return -1;
        total += n;
    }
    return total;
}

static PyObject *sga_tobytes(SGAObject *o, PyObject *unused)
{
    if (o->freed == Py_True) {
        PyErr_SetString(PyExc_ValueError, "this SGArray has been freed");
        return NULL;
    }
    PyObject *b = o->bufs;
    if (b == NULL || !PyTuple_Check(b))
        return PyBytes_FromStringAndSize(NULL, 0);
    if (PyTuple_GET_SIZE(b) == 1) {
        PyObject *b0 = PyTuple_GET_ITEM(b, 0);
        if (PyBytes_CheckExact(b0)) {
            Py_INCREF(b0);
            return b0;
        }
        return PyBytes_FromObject(b0);
    }
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL)
        return NULL;
    PyObject *r = _PyBytes_Join(empty, b);
    Py_DECREF(empty);
    return r;
}

static PyObject *sga_free(SGAObject *o, PyObject *unused)
{
    if (o->freed == Py_True) {
        PyObject *args = Py_BuildValue("(is)", EINVAL, "SGArray already freed");
        if (args != NULL) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
        return NULL;
    }
    Py_INCREF(Py_True);
    Py_XSETREF(o->freed, Py_True);
    PyObject *release = o->release;
    o->release = Py_None;
    Py_INCREF(Py_None);
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) {
        Py_XDECREF(release);
        return NULL;
    }
    Py_XSETREF(o->bufs, empty);
    Py_INCREF(Py_None);
    Py_XSETREF(o->views, Py_None);
    if (release != NULL && release != Py_None) {
        PyObject *r = PyObject_CallNoArgs(release);
        Py_DECREF(release);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    } else {
        Py_XDECREF(release);
    }
    Py_RETURN_NONE;
}

static PySequenceMethods sga_as_sequence = {
    .sq_length = (lenfunc)sga_len,
};

static PyMethodDef sga_methods[] = {
    {"tobytes", (PyCFunction)sga_tobytes, METH_NOARGS, "All segments joined into one bytes object."},
    {"free", (PyCFunction)sga_free, METH_NOARGS,
     "Release the segments. Freeing an already freed sga raises OSError(EINVAL)."},
    {NULL}
};

static PyMemberDef sga_members[] = {
    {"_bufs", T_OBJECT_EX, offsetof(SGAObject, bufs), 0, NULL},
    {"_views", T_OBJECT_EX, offsetof(SGAObject, views), 0, NULL},
    {"addr", T_OBJECT_EX, offsetof(SGAObject, addr), 0, "the peer address of a datagram"},
    {"_freed", T_OBJECT_EX, offsetof(SGAObject, freed), 0, NULL},
    {"_release", T_OBJECT_EX, offsetof(SGAObject, release), 0, NULL},
    {NULL}
};

static PyTypeObject SGAType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.SGArrayBase",
    .tp_doc = "Storage and hot methods of queueapi.SGArray.",
    .tp_basicsize = sizeof(SGAObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)sga_traverse,
    .tp_clear = (inquiry)sga_clear,
    .tp_dealloc = (destructor)sga_dealloc,
    .tp_as_sequence = &sga_as_sequence,
    .tp_methods = sga_methods,
    .tp_members = sga_members,
};

/* ------------------------------------------------------------------ OpTable */

/* The token table (LibOS._ops: token -> Op) and the lane table (LibOS._lanes: qd -> lane).
 * A mapping with dict's interface for the few operations the Python core uses (get, pop, [],
 * del, in, len), keyed by non-negative ints (tokens, qds) below 2**64 - 2, as an
 * open-addressing hash table keyed by the int's value: every push, pop and wait looks up,
 * inserts or removes keys, which costs a fraction of a dict's work. */
typedef struct {
    uint64_t key;         /* the int + 1; 0: empty; OT_DEAD: removed */
    PyObject *val;
} OTEntry;

typedef struct {
    PyObject_HEAD
    OTEntry *tab;
    Py_ssize_t cap;       /* a power of two, or 0 */
    int shift;            /* 64 - log2(cap) */
    Py_ssize_t used;      /* live entries */
    Py_ssize_t filled;    /* live + removed */
    /* called with each value that leaves the table (the Core's wait_any memo), or NULL */
    void (*on_remove)(void *owner, PyObject *val);
    void *owner;
} OpTableObject;

#define OT_DEAD UINT64_MAX
#define OT_GOLD 0x9E3779B97F4A7C15ull

static PyTypeObject OpTableType;

/* The table key of `k` (its value + 1): 1, or 0 when k is not such an int (no error set). */
static inline int ot_key(PyObject *k, uint64_t *out)
{
    if (!PyLong_CheckExact(k))
        return 0;
#if PY_VERSION_HEX < 0x030C0000
    Py_ssize_t n = Py_SIZE(k);
    const digit *d = ((PyLongObject *)k)->ob_digit;
    if (n == 1) {
        *out = (uint64_t)d[0] + 1;
        return 1;
    }
    if (n == 2) {
        *out = ((uint64_t)d[0] | ((uint64_t)d[1] << PyLong_SHIFT)) + 1;
        return 1;
    }
    if (n == 0) {
        *out = 1;
        return 1;
    }
    if (n < 0)
        return 0;
#endif
    unsigned long long v = PyLong_AsUnsignedLongLong(k);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (v >= OT_DEAD - 1)
        return 0;
    *out = v + 1;
    return 1;
}

static inline Py_ssize_t ot_find(OpTableObject *t, uint64_t key)
{
    if (t->cap == 0 || key == 0)
        return -1;
    size_t mask = (size_t)t->cap - 1, i = (size_t)((key * OT_GOLD) >> t->shift);
    for (;;) {
        uint64_t k = t->tab[i].key;
        if (k == key)
            return (Py_ssize_t)i;
        if (k == 0)
            return -1;
        i = (i + 1) & mask;
    }
}

static int ot_resize(OpTableObject *t)
{
    Py_ssize_t cap = 16;
    while (cap < 3 * (t->used + 1))
        cap *= 2;
    OTEntry *tab = PyMem_Calloc((size_t)cap, sizeof *tab);
    if (tab == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int shift = 64;
    for (Py_ssize_t c = cap; c > 1; c >>= 1)
        shift--;
    size_t mask = (size_t)cap - 1;
    for (Py_ssize_t j = 0; j < t->cap; j++) {
        uint64_t k = t->tab[j].key;
        if (k == 0 || k == OT_DEAD)
            continue;
        size_t i = (size_t)((k * OT_GOLD) >> shift);
        while (tab[i].key)
            i = (i + 1) & mask;
        tab[i] = t->tab[j];
    }
    PyMem_Free(t->tab);
    t->tab = tab;
    t->cap = cap;
    t->shift = shift;
    t->filled = t->used;
    return 0;
}

/* The value of token `k` (borrowed), or NULL (no error) when there is none. */
static inline PyObject *ot_get(OpTableObject *t, PyObject *k)
{
    uint64_t key;
    if (!ot_key(k, &key))
        return NULL;
    Py_ssize_t i = ot_find(t, key);
    return i < 0 ? NULL : t->tab[i].val;
}

/* t[k] = v: 0, or -1 with an exception (TypeError for a key that is not a token). */
static int ot_set(OpTableObject *t, PyObject *k, PyObject *v)
{
    uint64_t key;
    if (!ot_key(k, &key)) {
        PyErr_Format(PyExc_TypeError, "a key must be a non-negative int below 2**64 - 2, not %R", k);
        return -1;
    }
    Py_ssize_t i = ot_find(t, key);
    if (i >= 0) {
        if (t->on_remove != NULL && t->tab[i].val != v)
            t->on_remove(t->owner, t->tab[i].val);
        Py_INCREF(v);
        Py_SETREF(t->tab[i].val, v);
        return 0;
    }
    if (4 * (t->filled + 1) > 3 * t->cap && ot_resize(t) < 0)
        return -1;
    size_t mask = (size_t)t->cap - 1, j = (size_t)((key * OT_GOLD) >> t->shift);
    while (t->tab[j].key != 0 && t->tab[j].key != OT_DEAD)
        j = (j + 1) & mask;
    if (t->tab[j].key == 0)
        t->filled++;
    t->tab[j].key = key;
    Py_INCREF(v);
    t->tab[j].val = v;
    t->used++;
    return 0;
}

/* Remove token `k`; its value is returned (a new reference), or NULL (no error) if absent. */
static PyObject *ot_pop(OpTableObject *t, PyObject *k)
{
    uint64_t key;
    if (!ot_key(k, &key))
        return NULL;
    Py_ssize_t i = ot_find(t, key);
    if (i < 0)
        return NULL;
    PyObject *v = t->tab[i].val;
    t->tab[i].key = OT_DEAD;
    t->tab[i].val = NULL;
    t->used--;
    if (t->on_remove != NULL)
        t->on_remove(t->owner, v);
    if (t->used == 0) {  /* all gone: start afresh (no tombstones left to probe over) */
        if (t->cap <= 16) {
            memset(t->tab, 0, (size_t)t->cap * sizeof *t->tab);
        } else {  /* (and give back what a burst made grow: no 4 KiB memset per emptying) */
            PyMem_Free(t->tab);
            t->tab = NULL;
            t->cap = 0;
        }
        t->filled = 0;
    }
    return v;
}

static PyObject *ot_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "OpTable() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static int ot_traverse(OpTableObject *t, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < t->cap; i++)
        if (t->tab[i].val)
            Py_VISIT(t->tab[i].val);
    return 0;
}

static int ot_clear(OpTableObject *t)
{
    OTEntry *tab = t->tab;
    Py_ssize_t cap = t->cap;
    t->tab = NULL;
    t->cap = t->used = t->filled = 0;
    for (Py_ssize_t i = 0; i < cap; i++)
        if (tab[i].val != NULL && t->on_remove != NULL)
            t->on_remove(t->owner, tab[i].val);
    for (Py_ssize_t i = 0; i < cap; i++)
        Py_XDECREF(tab[i].val);
    PyMem_Free(tab);
    return 0;
}

static void ot_dealloc(OpTableObject *t)
{
    PyObject_GC_UnTrack(t);
    ot_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t ot_len(OpTableObject *t)
{
    return t->used;
}

static PyObject *ot_subscript(OpTableObject *t, PyObject *k)
{
    PyObject *v = ot_get(t, k);
    if (v == NULL) {
        PyErr_SetObject(PyExc_KeyError, k);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

static int ot_ass_subscript(OpTableObject *t, PyObject *k, PyObject *v)
{
    if (v != NULL)
        return ot_set(t, k, v);
    PyObject *old = ot_pop(t, k);
    if (old == NULL) {
        PyErr_SetObject(PyExc_KeyError, k);
        return -1;
    }
    Py_DECREF(old);
    return 0;
}

static int ot_contains(OpTableObject *t, PyObject *k)
{
    return ot_get(t, k) != NULL;
}

static PyObject *ot_get_method(OpTableObject *t, PyObject *const *args, Py_ssize_t n)
{
    if (n < 1 || n > 2) {
        PyErr_SetString(PyExc_TypeError, "get(token, default=None)");
        return NULL;
    }
    PyObject *v = ot_get(t, args[0]);
    if (v == NULL)
        v = n == 2 ? args[1] : Py_None;
    Py_INCREF(v);
    return v;
}

static PyObject *ot_pop_method(OpTableObject *t, PyObject *const *args, Py_ssize_t n)
{
    if (n < 1 || n > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(token[, default])");
        return NULL;
    }
    PyObject *v = ot_pop(t, args[0]);
    if (v != NULL)
        return v;
    if (n == 2) {
        Py_INCREF(args[1]);
        return args[1];
    }
    PyErr_SetObject(PyExc_KeyError, args[0]);
    return NULL;
}

static PyObject *ot_keys(OpTableObject *t, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < t->cap; i++) {
        uint64_t k = t->tab[i].key;
        if (k == 0 || k == OT_DEAD)
            continue;
        PyObject *o = PyLong_FromUnsignedLongLong(k - 1);
        if (o == NULL || PyList_Append(out, o) < 0)
            Py_CLEAR(out);
        Py_XDECREF(o);
    }
    return out;
}

static PyMappingMethods ot_as_mapping = {
    .mp_length = (lenfunc)ot_len,
    .mp_subscript = (binaryfunc)ot_subscript,
    .mp_ass_subscript = (objobjargproc)ot_ass_subscript,
};

static PySequenceMethods ot_as_sequence = {
    .sq_contains = (objobjproc)ot_contains,
};

static PyMethodDef ot_methods[] = {
    {"get", (PyCFunction)(void (*)(void))ot_get_method, METH_FASTCALL, "get(token, default=None)"},
    {"pop", (PyCFunction)(void (*)(void))ot_pop_method, METH_FASTCALL, "pop(token[, default])"},
    {"keys", (PyCFunction)ot_keys, METH_NOARGS, "the keys, as a list (in no order)"},
    {NULL}
};

static PyTypeObject OpTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.OpTable",
    .tp_doc = "OpTable(): int -> object for LibOS._ops and _lanes (get, pop, [], del, in, len).",
    .tp_basicsize = sizeof(OpTableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = ot_new,
    .tp_traverse = (traverseproc)ot_traverse,
    .tp_clear = (inquiry)ot_clear,
    .tp_dealloc = (destructor)ot_dealloc,
    .tp_as_mapping = &ot_as_mapping,
    .tp_as_sequence = &ot_as_sequence,
    .tp_methods = ot_methods,
};

/* ------------------------------------------------------------------ Core */

#define WAIT_ANY_MAX 256

typedef struct {
    PyObject_HEAD
    PyObject *libos;
    PyObject *ops;            /* OpTable qt -> Op (LibOS._ops) */
    PyObject *done;           /* libos._done (a deque) */
    PyObject *done_append;    /* its append */
    PyObject *done_popleft;   /* its popleft */
    PyObject *next_sleepers;  /* list */
    PyObject *deferred;       /* deque */
    PyObject *acquire;        /* libos.lock.acquire */
    PyObject *release;        /* libos.lock.release */
    PyObject *result_type;    /* QResult */
    PyObject *sga_type;       /* SGArray */
    PyObject *op_push, *op_pop;
    PyObject *lanes;          /* libos._lanes: qd -> Lane (an OpTable) */
    PyObject *queues;         /* libos._queues: qd -> Queue */
    PyObject *resume_pop;     /* libos._resume_pop */
    PyObject *py_push, *py_pop, *py_wait, *py_wait_any, *py_wait_all;  /* the general paths */
    long long spin_ns;        /* how long wait() spins on a lane */
    long long spin_yield_ns;  /* after this long, the spin yields the CPU at each clock check (< 0: never) */
    unsigned long long spin_yields;  /* yields of spins over several lanes (wait_any), epoll_spin */
    char queue_fast;          /* push/pop on a queue without a lane may skip LibOS.push/pop */
    unsigned long long rotor; /* where wait_any's scan starts (fairness) */
    unsigned long long next_qt; /* the next token (LibOS._next_qt) */
    PyObject *poller;         /* the polling thread's ident, or None (LibOS._poller) */
    PyObject *poller_only;    /* the tokens that poller waits for (a container), or None: any */
    PyObject *sleepers;       /* libos._sleepers (list) */
    /* the posix backend's epoll, when waits may poll it in C (set_epoll): its fd, its
     * fd -> handler table, and the handler of the other fds (wake-up eventfd, kernel fds) */
    int epfd;
    PyObject *watched, *on_other;
    PyObject *busy;           /* a dict: while it is not empty, the backend's own poll runs */
    unsigned long long epoll_waits;
    long long epoll_spin_ns;  /* a blocking epoll_wait first polls (timeout 0) for this long */
    int64_t full_poll_ns;     /* when wait(qt, 0) on a lane last ran the library OS's poll */
    /* wait_any's memo of token -> op by list position, so that a long wait list costs no
     * dict lookup per token per call: wa_items[i] (a token object, kept alive, so the same
     * pointer is the same token) had op wa_ops[i]; valid (wa_valid[i]) until that op leaves
     * the token table, taken or dropped (memo_forget, called by the table).  Replaced
     * references are released at the start of the next wait_any. */
    PyObject *wa_items[WAIT_ANY_MAX];
    OpObject *wa_ops[WAIT_ANY_MAX];
    unsigned char wa_valid[WAIT_ANY_MAX];
    Py_ssize_t wa_n;
    PyObject *wa_drop[2 * WAIT_ANY_MAX];
    Py_ssize_t wa_ndrop;
    Py_ssize_t off_bufs, off_views, off_addr, off_freed, off_release;
} CoreObject;

static PyTypeObject CoreType;
#define OPS(c) ((OpTableObject *)(c)->ops)
#define LANES(c) ((OpTableObject *)(c)->lanes)
static PyObject *taken;  /* an op's result once consumed */
static PyObject *s_set, *s_wake, *s_backend;
static PyObject *s_pushes, *s_bytes_out, *s_drain;
static PyObject *s_queues, *s_pops, *s_bytes_in, *s_lanes, *s_resume_pop, *s_push, *s_pop, *s_wait;
static PyObject *s_popleft, *s_serve_pops, *s_on_events;
static PyObject *s_clear, *s_extend, *s_ops, *s_done, *s_next_sleepers, *s_deferred,
                *s_lock, *s_acquire, *s_release, *s_append;

static int slot_offset(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString(type, name);
    if (d == NULL)
        return -1;
    if (Py_TYPE(d) != &PyMemberDescr_Type) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member",
                     ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot",
                     ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    *out = m->offset;
    Py_DECREF(d);
    return 0;
}

static void wa_forget(CoreObject *c);
static void memo_forget(void *owner, PyObject *val);

/* Stop the token table calling back into c (before c lets go of it). */
static void core_unhook_ops(CoreObject *c)
{
    if (c->ops != NULL && Py_IS_TYPE(c->ops, &OpTableType) && OPS(c)->owner == (void *)c) {
        OPS(c)->on_remove = NULL;
        OPS(c)->owner = NULL;
    }
}

static int core_bind(CoreObject *c)
{
    PyObject *libos = c->libos, *done = NULL, *lock = NULL;
    core_unhook_ops(c);
    Py_CLEAR(c->ops);
    Py_CLEAR(c->done);
    Py_CLEAR(c->done_append);
    Py_CLEAR(c->done_popleft);
    Py_CLEAR(c->next_sleepers);
    Py_CLEAR(c->deferred);
    Py_CLEAR(c->acquire);
    Py_CLEAR(c->release);
    if (!(c->ops = PyObject_GetAttr(libos, s_ops)) || !Py_IS_TYPE(c->ops, &OpTableType))
        goto bad;
    OPS(c)->on_remove = memo_forget;
    OPS(c)->owner = c;
    if (!(done = PyObject_GetAttr(libos, s_done)) || !(c->done_append = PyObject_GetAttr(done, s_append))
        || !(c->done_popleft = PyObject_GetAttr(done, s_popleft)))
        goto bad;
    if (!(c->next_sleepers = PyObject_GetAttr(libos, s_next_sleepers)) || !PyList_CheckExact(c->next_sleepers))
        goto bad;
    Py_CLEAR(c->sleepers);
    if (!(c->sleepers = PyObject_GetAttrString(libos, "_sleepers")) || !PyList_CheckExact(c->sleepers))
        goto bad;
    if (!(c->deferred = PyObject_GetAttr(libos, s_deferred)))
        goto bad;
    if (!(lock = PyObject_GetAttr(libos, s_lock)) || !(c->acquire = PyObject_GetAttr(lock, s_acquire))
        || !(c->release = PyObject_GetAttr(lock, s_release)))
        goto bad;
    Py_CLEAR(c->lanes);
    Py_CLEAR(c->queues);
    Py_CLEAR(c->resume_pop);
    if (!(c->queues = PyObject_GetAttr(libos, s_queues)) || !PyDict_CheckExact(c->queues))
        goto bad;
    if (!(c->lanes = PyObject_GetAttr(libos, s_lanes)) || !Py_IS_TYPE(c->lanes, &OpTableType))
        goto bad;
    if (!(c->resume_pop = PyObject_GetAttr(libos, s_resume_pop)) || !PyDict_CheckExact(c->resume_pop))
        goto bad;
    if (c->py_push == NULL) {
        PyObject *t = (PyObject *)Py_TYPE(libos);
        /* the Python implementations (LibOS.push etc. are method descriptors calling this
         * Core: see core_method) */
        if (!(c->py_push = PyObject_GetAttrString(t, "_push_py"))
            || !(c->py_pop = PyObject_GetAttrString(t, "_pop_py"))
            || !(c->py_wait = PyObject_GetAttrString(t, "_wait_py"))
            || !(c->py_wait_any = PyObject_GetAttrString(t, "_wait_any_py"))
            || !(c->py_wait_all = PyObject_GetAttrString(t, "_wait_all_py")))
            goto bad;
    }
    c->done = done;
    Py_DECREF(lock);
    return 0;
bad:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "Core: the LibOS tables have unexpected types");
    Py_XDECREF(done);
    Py_XDECREF(lock);
    return -1;
}

static void install_reuse(PyTypeObject *rt, PyTypeObject *st);

static int core_init(CoreObject *c, PyObject *args, PyObject *kw)
{
    PyObject *libos, *rt, *st, *opush, *opop;
    if (!PyArg_ParseTuple(args, "OOOOO:Core", &libos, &rt, &st, &opush, &opop))
        return -1;
    if (!PyType_Check(rt) || !PyType_IsSubtype((PyTypeObject *)rt, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Core: the result type must be a tuple subclass");
        return -1;
    }
    if (!PyType_Check(st)) {
        PyErr_SetString(PyExc_TypeError, "Core: the sga type must be a type");
        return -1;
    }
    Py_INCREF(libos); Py_XSETREF(c->libos, libos);
    Py_INCREF(rt); Py_XSETREF(c->result_type, rt);
    Py_INCREF(st); Py_XSETREF(c->sga_type, st);
    Py_INCREF(opush); Py_XSETREF(c->op_push, opush);
    Py_INCREF(opop); Py_XSETREF(c->op_pop, opop);
    c->next_qt = 1;
    c->epfd = -1;
    install_reuse((PyTypeObject *)rt, (PyTypeObject *)st);
    if (slot_offset(st, "_bufs", &c->off_bufs) || slot_offset(st, "_views", &c->off_views)
        || slot_offset(st, "addr", &c->off_addr) || slot_offset(st, "_freed", &c->off_freed)
        || slot_offset(st, "_release", &c->off_release))
        return -1;
    return core_bind(c);
}

static PyObject *core_rebind(CoreObject *c, PyObject *unused)
{
    wa_forget(c);
    if (core_bind(c))
        return NULL;
    Py_RETURN_NONE;
}

static void wa_forget(CoreObject *c)
{
    for (Py_ssize_t i = 0; i < c->wa_ndrop; i++)
        Py_CLEAR(c->wa_drop[i]);
    c->wa_ndrop = 0;
    Py_ssize_t n = c->wa_n;
    c->wa_n = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c->wa_ops[i] != NULL)
            c->wa_ops[i]->memo--;
        Py_CLEAR(c->wa_items[i]);
        Py_CLEAR(c->wa_ops[i]);
    }
}

/* The token table's callback: op `val` left it (taken, or dropped), so the memo positions
 * that hold it are no longer valid.  O(1) for an op in one position. */
static void memo_forget(void *owner, PyObject *val)
{
    CoreObject *c = (CoreObject *)owner;
    if (Py_TYPE(val) != &OpType || ((OpObject *)val)->memo == 0)
        return;
    OpObject *op = (OpObject *)val;
    Py_ssize_t p = op->wa_pos;
    if (op->memo == 1 && p >= 0 && p < c->wa_n && c->wa_ops[p] == op) {
        c->wa_valid[p] = 0;
        return;
    }
    for (Py_ssize_t i = 0; i < c->wa_n; i++)
        if (c->wa_ops[i] == op)
            c->wa_valid[i] = 0;
}

static int core_traverse(CoreObject *c, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < c->wa_n; i++)
        Py_VISIT(c->wa_ops[i]);
    for (Py_ssize_t i = 0; i < c->wa_ndrop; i++)
        Py_VISIT(c->wa_drop[i]);
    Py_VISIT(c->libos);
    Py_VISIT(c->poller);
    Py_VISIT(c->poller_only);
    Py_VISIT(c->ops);
    Py_VISIT(c->done);
    Py_VISIT(c->done_append);
    Py_VISIT(c->done_popleft);
    Py_VISIT(c->next_sleepers);
    Py_VISIT(c->sleepers);
    Py_VISIT(c->watched);
    Py_VISIT(c->on_other);
    Py_VISIT(c->busy);
    Py_VISIT(c->deferred);
    Py_VISIT(c->acquire);
    Py_VISIT(c->release);
    Py_VISIT(c->result_type);
    Py_VISIT(c->sga_type);
    Py_VISIT(c->op_push);
    Py_VISIT(c->op_pop);
    Py_VISIT(c->lanes);
    Py_VISIT(c->queues);
    Py_VISIT(c->resume_pop);
    Py_VISIT(c->py_push);
    Py_VISIT(c->py_pop);
    Py_VISIT(c->py_wait);
    Py_VISIT(c->py_wait_any);
    Py_VISIT(c->py_wait_all);
    return 0;
}

static int core_clear(CoreObject *c)
{
    wa_forget(c);
    core_unhook_ops(c);
    Py_CLEAR(c->libos);
    Py_CLEAR(c->poller);
    Py_CLEAR(c->poller_only);
    Py_CLEAR(c->ops);
    Py_CLEAR(c->done);
    Py_CLEAR(c->done_append);
    Py_CLEAR(c->done_popleft);
    Py_CLEAR(c->next_sleepers);
    Py_CLEAR(c->sleepers);
    Py_CLEAR(c->watched);
    Py_CLEAR(c->on_other);
    Py_CLEAR(c->busy);
    c->epfd = -1;
    Py_CLEAR(c->deferred);
    Py_CLEAR(c->acquire);
    Py_CLEAR(c->release);
    Py_CLEAR(c->result_type);
    Py_CLEAR(c->sga_type);
    Py_CLEAR(c->op_push);
    Py_CLEAR(c->op_pop);
    Py_CLEAR(c->lanes);
    Py_CLEAR(c->queues);
    Py_CLEAR(c->resume_pop);
    Py_CLEAR(c->py_push);
    Py_CLEAR(c->py_pop);
    Py_CLEAR(c->py_wait);
    Py_CLEAR(c->py_wait_any);
    Py_CLEAR(c->py_wait_all);
    return 0;
}

static void core_dealloc(CoreObject *c)
{
    PyObject_GC_UnTrack(c);
    core_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* The only thread of the interpreter: then nobody else can hold the LibOS lock or run while
 * we hold the GIL (the fast paths never release the GIL between core_enter and core_exit). */
static inline int only_thread(void)
{
    PyThreadState *ts = PyThreadState_Get();
    PyThreadState *head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(ts));
    return head == ts && PyThreadState_Next(head) == NULL;
}

/* May a completion be recorded without the Python core's wake-up logic?  And take the lock
 * (non-blocking; not needed when this is the only thread).  Returns 1 with the lock held,
 * 2 without it (the only thread), 0 (no error) to take the Python path, or -1 with an
 * exception.  Pass the value to core_exit. */
static int core_enter(CoreObject *c)
{
    if (c->libos == NULL || Py_SIZE(c->deferred) != 0 || PyList_GET_SIZE(c->next_sleepers) != 0
        || (c->poller != NULL && c->poller != Py_None))
        return 0;
    if (only_thread())
        return 2;
    PyObject *arg = Py_False;
    PyObject *got = PyObject_Vectorcall(c->acquire, &arg, 1, NULL);
    if (got == NULL)
        return -1;
    int ok = got == Py_True;
    Py_DECREF(got);
    return ok;
}

static void core_exit(CoreObject *c, int entered)
{
    if (entered != 1)
        return;
    PyObject *exc_type, *exc_val, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_val, &exc_tb);
    PyObject *r = PyObject_Vectorcall(c->release, NULL, 0, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(c->release);
    Py_XDECREF(r);
    PyErr_Restore(exc_type, exc_val, exc_tb);
}

/* A new token. */
static PyObject *core_new_qt(CoreObject *c)
{
    return PyLong_FromUnsignedLongLong(c->next_qt++);
}

/* ------------------------------------------------------------------ QResultBase */

/* The base of queueapi.types.QResult: a tuple of exactly the seven fields below, read
 * through member descriptors (T_OBJECT_EX), which CPython specialises (LOAD_ATTR_SLOT) where
 * a namedtuple's field getters are a generic attribute lookup each.  Every instance has the
 * seven items: its constructor makes them, and ``tuple.__new__(QResult, ...)`` is refused
 * ("not safe"), since this static type has its own __new__. */
#define QR_FIELDS 7
static char *qr_kwlist[] = {"opcode", "qd", "qt", "ret", "sga", "new_qd", "addr", NULL};

static PyObject *qr_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *v[QR_FIELDS] = {NULL, NULL, NULL, NULL, Py_None, Py_None, Py_None};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOOO:QResult", qr_kwlist,
                                     &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]))
        return NULL;
    PyObject *r = type->tp_alloc(type, QR_FIELDS);
    if (r == NULL)
        return NULL;
    if (v[3] == NULL)
        v[3] = PyLong_FromLong(0);  /* (a small int: never fails) */
    else
        Py_INCREF(v[3]);
    for (int i = 0; i < QR_FIELDS; i++) {
        if (i != 3)
            Py_INCREF(v[i]);
        PyTuple_SET_ITEM(r, i, v[i]);
    }
    return r;
}

/* (opcode, qd, qt, ret, sga, new_qd, addr): the arguments that make a copy (copy, pickle) */
static PyObject *qr_getnewargs(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyTuple_GetSlice(self, 0, QR_FIELDS);
}

#define QR_OFF(i) ((Py_ssize_t)(offsetof(PyTupleObject, ob_item) + (i) * sizeof(PyObject *)))
static PyMemberDef qr_members[] = {
    {"opcode", T_OBJECT_EX, QR_OFF(0), READONLY, "what the token did (Opcode)"},
    {"qd", T_OBJECT_EX, QR_OFF(1), READONLY, "the queue descriptor"},
    {"qt", T_OBJECT_EX, QR_OFF(2), READONLY, "the token"},
    {"ret", T_OBJECT_EX, QR_OFF(3), READONLY, "0, or the errno when opcode is FAILED"},
    {"sga", T_OBJECT_EX, QR_OFF(4), READONLY, "the popped SGArray (POP), else None"},
    {"new_qd", T_OBJECT_EX, QR_OFF(5), READONLY, "the accepted queue (ACCEPT), else None"},
    {"addr", T_OBJECT_EX, QR_OFF(6), READONLY, "the peer address (ACCEPT, datagram POP), else None"},
    {NULL}
};

static PyMethodDef qr_methods[] = {
    {"__getnewargs__", qr_getnewargs, METH_NOARGS, NULL},
    {NULL}
};

static PyTypeObject QResultBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.QResultBase",
    .tp_doc = "QResult's fields over a tuple of exactly seven items (see queueapi.types.QResult).",
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = qr_new,
    .tp_members = qr_members,
    .tp_methods = qr_methods,
};

/* ------------------------------------------------------------------ result and sga reuse */

/* Every completion makes a QResult (a heap subclass of QResultBase, a tuple) and every pop an
 * SGArray (a heap subclass of SGArrayBase); their deallocation through subtype_dealloc costs
 * about as much as the rest of a push.  Core() installs these deallocators on exactly those
 * two types (when their layouts are the expected ones: no instance dict, no finalizer, no
 * slots but SGArray's weak-reference one).  An instance of the type itself (an SGArray
 * without weak references) is cleared and kept, still holding its reference to its type,
 * for core_result/core_sga to reuse.  Anything else is deallocated as subtype_dealloc would:
 * the base type's deallocator, then the reference to the heap type dropped.  (subtype_dealloc
 * itself cannot be called for these types: it would find this deallocator again.  For an
 * instance of a subclass, subtype_dealloc has done the subclass's part and calls this as the
 * base's deallocator, without dropping the type: this drops it.) */
#define RESULT_REUSE_MAX 256
#define SGA_REUSE_MAX 256
static PyTypeObject *reuse_result_type, *reuse_sga_type;
static PyObject *reuse_results[RESULT_REUSE_MAX], *reuse_sgas[SGA_REUSE_MAX];
static int n_reuse_results, n_reuse_sgas;
static void sga_dealloc(SGAObject *o);

static void result_dealloc_reuse(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == reuse_result_type && Py_SIZE(o) == 7 && n_reuse_results < RESULT_REUSE_MAX) {
        PyObject_GC_UnTrack(o);
        for (Py_ssize_t i = 0; i < 7; i++) {
            PyObject *x = PyTuple_GET_ITEM(o, i);
            PyTuple_SET_ITEM(o, i, NULL);
            Py_XDECREF(x);
        }
        if (n_reuse_results < RESULT_REUSE_MAX) {  /* (the items' deallocation may have filled it) */
            reuse_results[n_reuse_results++] = o;
            return;
        }
    }
    PyTuple_Type.tp_dealloc(o);
    Py_DECREF(t);
}

static void sga_dealloc_reuse(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == reuse_sga_type && n_reuse_sgas < SGA_REUSE_MAX
        && (t->tp_weaklistoffset == 0 || *(PyObject **)((char *)o + t->tp_weaklistoffset) == NULL)) {
        PyObject_GC_UnTrack(o);
        sga_clear((SGAObject *)o);
        if (n_reuse_sgas < SGA_REUSE_MAX) {
            reuse_sgas[n_reuse_sgas++] = o;
            return;
        }
    }
    sga_dealloc((SGAObject *)o);  /* (clears the weak references too) */
    Py_DECREF(t);
}

static void install_reuse(PyTypeObject *rt, PyTypeObject *st)
{
    if (reuse_result_type == NULL && rt->tp_base == &QResultBaseType && rt->tp_dealloc != result_dealloc_reuse
        && (rt->tp_flags & Py_TPFLAGS_HEAPTYPE) && rt->tp_dictoffset == 0 && rt->tp_weaklistoffset == 0
        && rt->tp_finalize == NULL && rt->tp_del == NULL
        && rt->tp_basicsize == PyTuple_Type.tp_basicsize && rt->tp_itemsize == PyTuple_Type.tp_itemsize) {
        Py_INCREF(rt);
        reuse_result_type = rt;
        rt->tp_dealloc = result_dealloc_reuse;
    }
    if (reuse_sga_type == NULL && st->tp_base == &SGAType && st->tp_dealloc != sga_dealloc_reuse
        && (st->tp_flags & Py_TPFLAGS_HEAPTYPE) && st->tp_dictoffset == 0
        && st->tp_finalize == NULL && st->tp_del == NULL
        && st->tp_basicsize == (Py_ssize_t)sizeof(SGAObject) + (st->tp_weaklistoffset ? (Py_ssize_t)sizeof(PyObject *) : 0)) {
        Py_INCREF(st);
        reuse_sga_type = st;
        st->tp_dealloc = sga_dealloc_reuse;
    }
}

/* QResult(opcode, qd, qt, 0, sga, None, None) */
static PyObject *core_result(CoreObject *c, PyObject *opcode, PyObject *qd, PyObject *qt,
                             PyObject *sga)
{
    PyTypeObject *t = (PyTypeObject *)c->result_type;
    PyObject *r;
    int reused = t == reuse_result_type && n_reuse_results > 0;
    if (reused) {
        r = reuse_results[--n_reuse_results];
        _Py_NewReference(r);
    } else if ((r = t->tp_alloc(t, 7)) == NULL) {
        return NULL;
    }
    Py_INCREF(opcode); PyTuple_SET_ITEM(r, 0, opcode);
    Py_INCREF(qd); PyTuple_SET_ITEM(r, 1, qd);
    Py_INCREF(qt); PyTuple_SET_ITEM(r, 2, qt);
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 3, zero);
    Py_INCREF(sga); PyTuple_SET_ITEM(r, 4, sga);
    Py_INCREF(Py_None); PyTuple_SET_ITEM(r, 5, Py_None);
    Py_INCREF(Py_None); PyTuple_SET_ITEM(r, 6, Py_None);
    if (reused)
        PyObject_GC_Track(r);
    return r;
}

static inline void set_slot(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject **p = (PyObject **)((char *)o + off);
    Py_INCREF(v);
    Py_XSETREF(*p, v);
}

/* SGArray with one segment `data` (steals nothing). */
static PyObject *core_sga(CoreObject *c, PyObject *data)
{
    PyTypeObject *t = (PyTypeObject *)c->sga_type;
    PyObject *sga;
    int reused = t == reuse_sga_type && n_reuse_sgas > 0;
    if (reused) {
        sga = reuse_sgas[--n_reuse_sgas];
        _Py_NewReference(sga);
    } else if ((sga = t->tp_alloc(t, 0)) == NULL) {
        return NULL;
    }
    PyObject *bufs = PyTuple_Pack(1, data);
    if (bufs == NULL) {
        Py_DECREF(sga);
        return NULL;
    }
    set_slot(sga, c->off_bufs, bufs);
    Py_DECREF(bufs);
    set_slot(sga, c->off_views, Py_None);
    set_slot(sga, c->off_addr, Py_None);
    set_slot(sga, c->off_freed, Py_False);
    set_slot(sga, c->off_release, Py_None);
    if (reused)
        PyObject_GC_Track(sga);
    return sga;
}

/* Drop from the completion queue the ops whose tokens were consumed since (by a wait on
 * the token), keeping the order of the others.  No Python code runs from the snapshot to
 * the refill, and the snapshot keeps every op alive until the queue is whole again, so no
 * other thread can append in between (the GIL is never released) and nothing is lost. */
static int core_compact_done(CoreObject *c)
{
    PyObject *all = PySequence_List(c->done);
    if (all == NULL)
        return -1;
    PyObject *keep = PyList_New(0), *r = NULL;
    if (keep == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(all); i++) {
        PyObject *o = PyList_GET_ITEM(all, i);
        if (PyObject_TypeCheck(o, &OpType) && ot_get(OPS(c), ((OpObject *)o)->qt) == o
            && PyList_Append(keep, o) < 0)
            goto done;
    }
    r = PyObject_CallMethodNoArgs(c->done, s_clear);
    if (r == NULL)
        goto done;
    Py_DECREF(r);
    r = PyObject_CallMethodOneArg(c->done, s_extend, keep);
done:
    Py_XDECREF(keep);
    Py_DECREF(all);  /* (the dropped ops are deallocated here, the queue whole again) */
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Append a completed op to the completion queue (the lock held). */
static int core_record_done(CoreObject *c, OpObject *op)
{
    PyObject *arg = (PyObject *)op;
    PyObject *r = PyObject_Vectorcall(c->done_append, &arg, 1, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    /* entries consumed by wait() stay until compacted */
    if (Py_SIZE(c->done) > 2 * OPS(c)->used + 4096)
        return core_compact_done(c);
    return 0;
}

/* Record a new op in the token table, and a completed one in the completion queue. */
static int core_record(CoreObject *c, OpObject *op, int queue)
{
    if (ot_set(OPS(c), op->qt, (PyObject *)op) < 0)
        return -1;
    return queue ? core_record_done(c, op) : 0;
}

static PyObject *core_push(CoreObject *c, PyObject *const *args, Py_ssize_t n);
static PyObject *core_push_done(CoreObject *c, PyObject *const *args, Py_ssize_t n);
static PyObject *core_pop(CoreObject *c, PyObject *const *args, Py_ssize_t n);
static PyObject *core_wait(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw);
static PyObject *core_wait_any(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw);
static PyObject *core_wait_all(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw);

static PyObject *call_backend_wake(CoreObject *c)
{
    PyObject *b = PyObject_GetAttr(c->libos, s_backend);
    if (b == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodNoArgs(b, s_wake);
    Py_DECREF(b);
    return r;
}

/* LibOS.complete(op, result): record the result and wake whoever waits (the lock held). */
static int core_complete_op(CoreObject *c, OpObject *op, PyObject *result)
{
    Py_INCREF(result);
    Py_XSETREF(op->result, result);
    if (op->callback != NULL && op->callback != Py_None) {  /* an internal op: drained later */
        PyObject *r = PyObject_CallMethodOneArg(c->deferred, s_append, (PyObject *)op);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (core_record_done(c, op) < 0)
        return -1;
    PyObject *w = op->waiter;
    if (w != NULL && w != Py_None) {  /* a sleeping thread waits on this op: wake exactly it */
        Py_INCREF(w);
        PyObject *r = PyObject_CallMethodNoArgs(w, s_set);
        Py_DECREF(w);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    Py_ssize_t ns = PyList_GET_SIZE(c->next_sleepers);
    if (ns) {  /* wait_next_n sleepers take any completion (of their tokens: each looks) */
        PyObject *copy = PyList_GetSlice(c->next_sleepers, 0, ns);
        if (copy == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copy); i++) {
            PyObject *r = PyObject_CallMethodNoArgs(PyList_GET_ITEM(copy, i), s_set);
            if (r == NULL) {
                Py_DECREF(copy);
                return -1;
            }
            Py_DECREF(r);
        }
        Py_DECREF(copy);
    }
    if (c->poller != NULL && c->poller != Py_None) {
        unsigned long me = PyThread_get_thread_ident();
        unsigned long p = PyLong_AsUnsignedLong(c->poller);
        if (p == (unsigned long)-1 && PyErr_Occurred())
            return -1;
        /* completed from another thread while one polls: let it look, if it may wait for
         * this token (a thread that completes its own push or pop need not wake it) */
        int want = p != me;
        PyObject *only = c->poller_only;
        if (want && only != NULL && only != Py_None) {
            Py_INCREF(only);
            want = PySequence_Contains(only, op->qt);
            Py_DECREF(only);
            if (want < 0)
                return -1;
        }
        if (want) {
            PyObject *r = call_backend_wake(c);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
    }
    return 0;
}

static PyObject *core_complete(CoreObject *c, PyObject *const *args, Py_ssize_t n)
{
    if (n != 2 || Py_TYPE(args[0]) != &OpType) {
        PyErr_SetString(PyExc_TypeError, "complete(op, result) takes an Op and a result");
        return NULL;
    }
    if (core_complete_op(c, (OpObject *)args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_set_epoll(CoreObject *c, PyObject *args);

static PyMethodDef core_methods[] = {
    {"set_epoll", (PyCFunction)core_set_epoll, METH_VARARGS,
     "set_epoll(epfd, watched, on_other, busy=None): let single-threaded waits poll this epoll "
     "in C (watched: fd -> handler with on_events(ev); on_other(fd, ev) for the other fds), "
     "except while the dict busy is not empty; set_epoll(-1, None, None) stops it."},
    {"complete", (PyCFunction)(void (*)(void))core_complete, METH_FASTCALL,
     "LibOS.complete(op, result)."},
    {"rebind", (PyCFunction)core_rebind, METH_NOARGS,
     "Re-read the LibOS tables and lock (after a fork replaced them)."},
    {"push_done", (PyCFunction)(void (*)(void))core_push_done, METH_FASTCALL,
     "push_done(qd, data) -> None | qt: None if the push completed at once (no token is made),\n"
     "else the token push() gives.  Internal: the shim's send uses it."},
    {"push", (PyCFunction)(void (*)(void))core_push, METH_FASTCALL,
     "LibOS.push with the lane fast path."},
    {"pop", (PyCFunction)(void (*)(void))core_pop, METH_FASTCALL,
     "LibOS.pop with the lane fast path."},
    {"wait", (PyCFunction)(void (*)(void))core_wait, METH_FASTCALL | METH_KEYWORDS,
     "LibOS.wait with the completed-token and lane-spin fast paths."},
    {"wait_all", (PyCFunction)(void (*)(void))core_wait_all, METH_FASTCALL | METH_KEYWORDS,
     "LibOS.wait_all when every token is complete already."},
    {"wait_any", (PyCFunction)(void (*)(void))core_wait_any, METH_FASTCALL | METH_KEYWORDS,
     "LibOS.wait_any with the one-completion and lane-spin fast paths."},
    {NULL}
};

static PyMemberDef core_members[] = {
    {"spin_ns", T_LONGLONG, offsetof(CoreObject, spin_ns), 0,
     "how long wait() spins on a lane before taking the Python path (ns)"},
    {"spin_yield_ns", T_LONGLONG, offsetof(CoreObject, spin_yield_ns), 0,
     "after this long a spin yields the CPU at each clock check (ns; < 0: never)"},
    {"queue_fast", T_BOOL, offsetof(CoreObject, queue_fast), 0,
     "push/pop on a queue without a lane may be done in C (LibOS.push/pop not replaced)"},
    {"spin_yields", T_ULONGLONG, offsetof(CoreObject, spin_yields), READONLY,
     "sched_yield calls of spins over several lanes (wait_any) or on the posix epoll"},
    {"next_qt", T_ULONGLONG, offsetof(CoreObject, next_qt), 0, "the next token"},
    {"epoll_waits", T_ULONGLONG, offsetof(CoreObject, epoll_waits), 0,
     "epoll_wait calls made in C"},
    {"epoll_spin_ns", T_LONGLONG, offsetof(CoreObject, epoll_spin_ns), 0,
     "a blocking epoll_wait in C first polls the epoll (timeout 0) for this long (ns)"},
    {"poller_only", T_OBJECT, offsetof(CoreObject, poller_only), 0,
     "the tokens the poller waits for (a container; None: it may wait for any), so that a "
     "completion made in another thread wakes it only when it concerns it"},
    {"poller", T_OBJECT, offsetof(CoreObject, poller), 0,
     "ident of the thread running the library OS's poll, or None"},
    {NULL}
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.Core",
    .tp_doc = "Core(libos, QResult, SGArray, Opcode.PUSH, Opcode.POP): the LibOS handles "
              "the C fast paths use.",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* ------------------------------------------------------------------ Lane */

typedef struct {
    PyObject_HEAD
    CoreObject *core;
    PyObject *qd;
    PyObject *keep;          /* objects that own the rings (kept alive) */
    PyObject *on_pending;    /* called (lock held) when the first pop starts to pend */
    void *tx, *rx;
    const uint8_t *rx_data;
    Py_buffer view;          /* an export of the rx mapping: it stays mapped while we live */
    int have_view;
    int bell_fd;
    int push_ok, pop_ok, closed, need_python;
    int wanted;              /* on_pending was called and its effect stands (Python clears it) */
    Py_ssize_t zc_min;       /* elements this big are handed out zero-copy (Python path); 0: off */
    OpObject **pend;
    Py_ssize_t *psize;
    Py_ssize_t phead, pcount, pcap;
    unsigned long long pushes, pops, bytes_out, bytes_in, doorbells, spins, spin_hits, spin_yields;
} LaneObject;

static PyTypeObject LaneType;

static int lane_init(LaneObject *L, PyObject *args, PyObject *kw)
{
    PyObject *core, *qd, *keep, *export, *on_pending;
    unsigned long long tx, rx;
    int bell;
    if (!PyArg_ParseTuple(args, "O!OKKOOiO:Lane", &CoreType, &core, &qd, &tx, &rx, &keep, &export,
                          &bell, &on_pending))
        return -1;
    if (ring_api.push1 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: set_ring_api() was not called");
        return -1;
    }
    if (!tx || !rx) {
        PyErr_SetString(PyExc_ValueError, "Lane: null ring");
        return -1;
    }
    if (L->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: initialised twice");
        return -1;
    }
    if (PyObject_GetBuffer(export, &L->view, PyBUF_SIMPLE) < 0)
        return -1;
    L->have_view = 1;
    Py_INCREF(core); L->core = (CoreObject *)core;
    Py_INCREF(qd); L->qd = qd;
    Py_INCREF(keep); L->keep = keep;
    Py_INCREF(on_pending); L->on_pending = on_pending;
    L->tx = (void *)(uintptr_t)tx;
    L->rx = (void *)(uintptr_t)rx;
    L->rx_data = ring_api.data(L->rx);
    L->bell_fd = bell;
    L->push_ok = L->pop_ok = 1;
    return 0;
}

static void lane_release_view(LaneObject *L)
{
    if (L->have_view) {
        PyBuffer_Release(&L->view);
        L->have_view = 0;
    }
}

static int lane_traverse(LaneObject *L, visitproc visit, void *arg)
{
    Py_VISIT(L->core);
    Py_VISIT(L->qd);
    Py_VISIT(L->keep);
    Py_VISIT(L->on_pending);
    for (Py_ssize_t i = 0; i < L->pcount; i++)
        Py_VISIT(L->pend[(L->phead + i) % L->pcap]);
    return 0;
}

static void lane_drop_pending(LaneObject *L)
{
    while (L->pcount) {
        OpObject *op = L->pend[L->phead];
        L->pend[L->phead] = NULL;
        L->phead = (L->phead + 1) % L->pcap;
        L->pcount--;
        Py_XDECREF(op);
    }
}

static int lane_clear(LaneObject *L)
{
    lane_drop_pending(L);
    Py_CLEAR(L->core);
    Py_CLEAR(L->qd);
    Py_CLEAR(L->keep);
    Py_CLEAR(L->on_pending);
    return 0;
}

static void lane_dealloc(LaneObject *L)
{
    PyObject_GC_UnTrack(L);
    lane_release_view(L);
    lane_clear(L);
    PyMem_Free(L->pend);
    PyMem_Free(L->psize);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static inline void lane_ring_bell(LaneObject *L, void *r)
{
    if (ring_api.take_doorbell(r)) {
        uint64_t one = 1;
        ssize_t n = write(L->bell_fd, &one, sizeof one);
        (void)n;
        L->doorbells++;
    }
}

static int lane_enqueue(LaneObject *L, OpObject *op, Py_ssize_t size)
{
    if (L->pcount == L->pcap) {
        Py_ssize_t cap = L->pcap ? 2 * L->pcap : 8;
        OpObject **p = PyMem_Malloc(cap * sizeof *p);
        Py_ssize_t *s = PyMem_Malloc(cap * sizeof *s);
        if (!p || !s) {
            PyMem_Free(p);
            PyMem_Free(s);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < L->pcount; i++) {
            p[i] = L->pend[(L->phead + i) % L->pcap];
            s[i] = L->psize[(L->phead + i) % L->pcap];
        }
        PyMem_Free(L->pend);
        PyMem_Free(L->psize);
        L->pend = p;
        L->psize = s;
        L->phead = 0;
        L->pcap = cap;
    }
    Py_ssize_t i = (L->phead + L->pcount) % L->pcap;
    Py_INCREF(op);
    L->pend[i] = op;
    L->psize[i] = size;
    L->pcount++;
    Py_INCREF(L);
    Py_XSETREF(op->lane, (PyObject *)L);
    if (L->pcount == 1 && !L->wanted) {
        PyObject *r = PyObject_Vectorcall(L->on_pending, NULL, 0, NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        L->wanted = 1;
    }
    return 0;
}

/* Remove the head pending op; the caller owns the returned reference. */
static OpObject *lane_dequeue(LaneObject *L)
{
    OpObject *op = L->pend[L->phead];
    L->pend[L->phead] = NULL;
    L->phead = (L->phead + 1) % L->pcap;
    L->pcount--;
    Py_INCREF(Py_None);
    Py_XSETREF(op->lane, Py_None);
    return op;
}

/* The POP result for `op` if the next element can be handed out here: 1 and *out set, 0 when
 * the ring is empty, 2 when the Python path must handle it (end of stream, an error, several
 * segments, more than `size` bytes), -1 with an exception. */
static int lane_take(LaneObject *L, OpObject *op, Py_ssize_t size, PyObject **out)
{
    int64_t v = ring_api.peek_packed(L->rx);
    if (v < 0)
        return v == -EAGAIN ? 0 : 2;
    if (v & DESC_MULTI)
        return 2;
    Py_ssize_t off = (Py_ssize_t)(v & DESC_OFF_MASK);
    Py_ssize_t len = (Py_ssize_t)((v >> 31) & DESC_OFF_MASK);
    if ((size >= 0 && len > size) || len == 0 || (L->zc_min > 0 && len >= L->zc_min))
        return 2;
    PyObject *data = PyBytes_FromStringAndSize((const char *)L->rx_data + off, len);
    if (data == NULL)
        return -1;
    ring_api.release(L->rx);
    lane_ring_bell(L, L->rx);
    PyObject *sga = core_sga(L->core, data);
    Py_DECREF(data);
    if (sga == NULL)
        return -1;
    *out = core_result(L->core, L->core->op_pop, op->qd, op->qt, sga);
    Py_DECREF(sga);
    if (*out == NULL)
        return -1;
    op->counted = 1;
    L->pops++;
    L->bytes_in += (unsigned long long)len;
    return 1;
}

static int parse_size(PyObject *o, Py_ssize_t *size)
{
    if (o == Py_None) {
        *size = -1;
        return 1;
    }
    if (!PyLong_CheckExact(o))
        return 0;
    Py_ssize_t s = PyLong_AsSsize_t(o);
    if (s <= 0) {
        PyErr_Clear();
        return 0;
    }
    *size = s;
    return 1;
}

static inline PyObject *get_slot(PyObject *o, Py_ssize_t off)
{
    return *(PyObject **)((char *)o + off);
}

/* Push `data` on the lane's ring: the new token (complete), or None (the Python path must
 * do it); with `tokenless`, True instead of a token (complete, nothing recorded). */
static PyObject *lane_push(LaneObject *L, PyObject *data, int tokenless)
{
    CoreObject *c = L->core;
    if (!L->push_ok || L->closed)
        Py_RETURN_NONE;
    if (Py_TYPE(data) == (PyTypeObject *)c->sga_type) {  /* a popped element pushed on */
        PyObject *bufs = get_slot(data, c->off_bufs);
        if (get_slot(data, c->off_freed) != Py_False || bufs == NULL || !PyTuple_CheckExact(bufs)
            || PyTuple_GET_SIZE(bufs) != 1)
            Py_RETURN_NONE;
        data = PyTuple_GET_ITEM(bufs, 0);
    }
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) == 0)
        Py_RETURN_NONE;
    int e = core_enter(c);
    if (e <= 0) {
        if (e < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (ring_api.push1(L->tx, PyBytes_AS_STRING(data), (size_t)n) != 0) {
        core_exit(c, e);
        Py_RETURN_NONE;  /* full, closed or broken: the Python path sorts it out */
    }
    lane_ring_bell(L, L->tx);
    L->pushes++;
    L->bytes_out += (unsigned long long)n;
    if (tokenless) {
        core_exit(c, e);
        Py_RETURN_TRUE;
    }
    PyObject *qt = core_new_qt(c);
    OpObject *op = NULL;
    if (qt == NULL || (op = op_make(qt, L->qd, Py_None)) == NULL)
        goto fail;
    PyObject *r = core_result(c, c->op_push, L->qd, qt, Py_None);
    if (r == NULL)
        goto fail;
    Py_SETREF(op->result, r);
    if (core_record(c, op, 1) < 0)
        goto fail;
    Py_DECREF(op);
    core_exit(c, e);
    return qt;
fail:
    Py_XDECREF(op);
    Py_XDECREF(qt);
    core_exit(c, e);
    return NULL;
}

static PyObject *lane_pop(LaneObject *L, PyObject *size_obj)
{
    Py_ssize_t size;
    if (!L->pop_ok || L->closed || !parse_size(size_obj, &size))
        Py_RETURN_NONE;
    CoreObject *c = L->core;
    int e = core_enter(c);
    if (e <= 0) {
        if (e < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *qt = NULL, *res = NULL;
    OpObject *op = NULL;
    if (L->pcount == 0) {
        /* peek before making a token: an element the Python path must handle costs nothing */
        int64_t v = ring_api.peek_packed(L->rx);
        Py_ssize_t vlen = (Py_ssize_t)((v >> 31) & DESC_OFF_MASK);
        if (v < 0 ? v != -EAGAIN : ((v & DESC_MULTI) || (size >= 0 && vlen > size)
                                    || (L->zc_min > 0 && vlen >= L->zc_min))) {
            core_exit(c, e);
            Py_RETURN_NONE;
        }
    }
    qt = core_new_qt(c);
    if (qt == NULL || (op = op_make(qt, L->qd, Py_None)) == NULL)
        goto fail;
    if (L->pcount == 0) {
        int t = lane_take(L, op, size, &res);
        if (t < 0)
            goto fail;
        if (t == 1) {
            Py_SETREF(op->result, res);
            if (core_record(c, op, 1) < 0)
                goto fail;
            goto done;
        }
        if (t == 2) {  /* changed under us (cannot, single consumer): let Python do it */
            Py_DECREF(op);
            Py_DECREF(qt);
            core_exit(c, e);
            Py_RETURN_NONE;
        }
    }
    if (lane_enqueue(L, op, size) < 0 || core_record(c, op, 0) < 0)
        goto fail;
done:
    Py_DECREF(op);
    core_exit(c, e);
    return qt;
fail:
    Py_XDECREF(op);
    Py_XDECREF(qt);
    core_exit(c, e);
    return NULL;
}

/* pop_op(op, size) -> bool: the Python path's pop of `op` (the lock held). True if the lane
 * took it (completed now through libos.complete, or pending here in order). */
static PyObject *lane_pop_op(LaneObject *L, PyObject *args)
{
    OpObject *op;
    PyObject *size_obj;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "O!O:pop_op", &OpType, &op, &size_obj))
        return NULL;
    if (!L->pop_ok || L->closed || !parse_size(size_obj, &size))
        Py_RETURN_FALSE;
    if (L->pcount == 0) {
        PyObject *res = NULL;
        int t = lane_take(L, op, size, &res);
        if (t < 0)
            return NULL;
        if (t == 2)
            Py_RETURN_FALSE;
        if (t == 1) {
            int rc = core_complete_op(L->core, op, res);
            Py_DECREF(res);
            if (rc < 0)
                return NULL;
            Py_RETURN_TRUE;
        }
    }
    if (lane_enqueue(L, op, size) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* service() -> int: complete pending pops whose data is there (the lock held), through
 * libos.complete.  Sets need_python when the head needs the Python path. */
static PyObject *lane_service(LaneObject *L, PyObject *unused)
{
    long n = 0;
    while (L->pcount && !L->closed) {
        OpObject *op = L->pend[L->phead];
        PyObject *res = NULL;
        int t = lane_take(L, op, L->psize[L->phead], &res);
        if (t < 0)
            return NULL;
        if (t == 0)
            break;
        if (t == 2) {
            L->need_python = 1;
            break;
        }
        op = lane_dequeue(L);
        int rc = core_complete_op(L->core, op, res);
        Py_DECREF(res);
        Py_DECREF(op);
        if (rc < 0)
            return NULL;
        n++;
    }
    return PyLong_FromLong(n);
}

/* spin(op, spin_ns) -> bool: wait() on a pending pop at the head of this lane: spin on the
 * ring (without the GIL) up to spin_ns, then complete it here.  False: not done (block). */
/* Spin without the GIL until one of the n rings is readable or spin_ns pass: its index or -1.
 * After yield_ns (if >= 0), each check of the clock also gives the CPU to any other runnable
 * thread (sched_yield; no system call before that, so a peer that answers sooner costs none).
 * When the machine has more runnable threads than CPUs, the peer we spin for may be waiting
 * for this very CPU: without yielding, each hand-off waits for the end of a scheduler time
 * slice (a 64-byte echo between two spinning processes on 2 CPUs with one CPU-bound job
 * beside them: ~500 us instead of ~50 us). */
static inline int spin_loop(void *const *rx, int n, long long spin_ns, long long yield_ns,
                            unsigned long long *yields)
{
    int64_t start = now_ns(), end = start + spin_ns;
    int64_t yield_at = yield_ns >= 0 ? start + yield_ns : INT64_MAX;
    for (unsigned i = 1;; i++) {
        cpu_relax();
        for (int k = 0; k < n; k++)
            if (ring_api.readable(rx[k]))
                return k;
        if ((i & 63) == 0) {
            int64_t now = now_ns();
            if (now >= end)
                return -1;
            if (now >= yield_at) {
                sched_yield();
                ++*yields;
            }
        }
    }
}

/* Spin up to spin_ns on the rings rx[0..n): the index of one that became readable, or -1.
 * Another thread may run meanwhile (the GIL is released), unless this is the only thread:
 * then the GIL stays held, which saves taking it back on the way out (the reply's critical
 * path); a signal's handler runs when the spin ends. */
static int spin_rings(void *const *rx, int n, long long spin_ns, long long yield_ns,
                      unsigned long long *yields)
{
    if (only_thread())
        return spin_loop(rx, n, spin_ns, yield_ns, yields);
    int hit;
    Py_BEGIN_ALLOW_THREADS
    hit = spin_loop(rx, n, spin_ns, yield_ns, yields);
    Py_END_ALLOW_THREADS
    return hit;
}

/* Complete `op`, the head pending pop of L, from the ring now, for a caller that consumes it
 * at once: 1 done (op->result set), 0 not possible now, -1 error. */
static int lane_finish_head(LaneObject *L, OpObject *op)
{
    CoreObject *c = L->core;
    int e = core_enter(c);
    if (e <= 0)
        return e;
    PyObject *res = NULL;
    int t = 0;
    if (!L->closed && L->pcount && L->pend[L->phead] == op)
        t = lane_take(L, op, L->psize[L->phead], &res);
    if (t != 1) {
        if (t == 2)
            L->need_python = 1;
        core_exit(c, e);
        return t < 0 ? -1 : 0;
    }
    op = lane_dequeue(L);
    if (op->waiter != Py_None) {  /* another thread sleeps on it too: the full completion */
        int rc = core_complete_op(c, op, res);
        Py_DECREF(res);
        Py_DECREF(op);
        if (rc < 0) {
            core_exit(c, e);
            return -1;
        }
    } else {  /* the caller consumes it now: no need to queue it for wait_any/wait_next_n */
        Py_SETREF(op->result, res);
        Py_DECREF(op);
    }
    core_exit(c, e);
    return 1;
}

static PyObject *lane_spin_op(LaneObject *L, OpObject *op, long long spin_ns)
{
    if (L->closed || !L->pcount || L->pend[L->phead] != op || spin_ns <= 0)
        Py_RETURN_FALSE;
    if (!ring_api.readable(L->rx)) {
        L->spins++;
        if (spin_rings(&L->rx, 1, spin_ns, L->core->spin_yield_ns, &L->spin_yields) < 0)
            Py_RETURN_FALSE;
        L->spin_hits++;
    }
    int t = lane_finish_head(L, op);
    if (t < 0)
        return NULL;
    return PyBool_FromLong(t);
}

static PyObject *lane_take_pending(LaneObject *L, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (L->pcount) {
        Py_ssize_t size = L->psize[L->phead];
        OpObject *op = lane_dequeue(L);
        PyObject *item = size < 0 ? Py_BuildValue("(OO)", op, Py_None) : Py_BuildValue("(On)", op, size);
        Py_DECREF(op);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    L->need_python = 0;
    return out;
}

static PyObject *lane_cancel(LaneObject *L, PyObject *o)
{
    for (Py_ssize_t i = 0; i < L->pcount; i++) {
        Py_ssize_t k = (L->phead + i) % L->pcap;
        if ((PyObject *)L->pend[k] == o) {
            OpObject *op = L->pend[k];
            for (Py_ssize_t j = i; j + 1 < L->pcount; j++) {
                Py_ssize_t a = (L->phead + j) % L->pcap, b = (L->phead + j + 1) % L->pcap;
                L->pend[a] = L->pend[b];
                L->psize[a] = L->psize[b];
            }
            L->pend[(L->phead + L->pcount - 1) % L->pcap] = NULL;
            L->pcount--;
            Py_INCREF(Py_None);
            Py_XSETREF(op->lane, Py_None);
            Py_DECREF(op);
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static PyObject *lane_close(LaneObject *L, PyObject *unused)
{
    if (L->pcount) {
        PyErr_SetString(PyExc_RuntimeError, "Lane.close: take_pending() first");
        return NULL;
    }
    L->closed = 1;
    L->push_ok = L->pop_ok = 0;
    lane_release_view(L);
    Py_CLEAR(L->keep);
    Py_RETURN_NONE;
}

static PyObject *lane_get_pending(LaneObject *L, void *unused)
{
    return PyLong_FromSsize_t(L->pcount);
}

static PyMethodDef lane_methods[] = {
    {"push", (PyCFunction)lane_push, METH_O,
     "push(data) -> token or None: a non-empty bytes pushed and completed now, else None "
     "(nothing done: take the Python path)."},
    {"pop", (PyCFunction)lane_pop, METH_O,
     "pop(size) -> token or None: a pop completed now or pending here, else None."},
    {"pop_op", (PyCFunction)lane_pop_op, METH_VARARGS, "pop_op(op, size) -> bool (lock held)."},
    {"service", (PyCFunction)lane_service, METH_NOARGS,
     "Complete pending pops that can complete (lock held); returns how many."},
    {"take_pending", (PyCFunction)lane_take_pending, METH_NOARGS,
     "Hand every pending pop to the caller as [(op, size)], oldest first."},
    {"cancel", (PyCFunction)lane_cancel, METH_O, "Withdraw a pending op; True if it was here."},
    {"close", (PyCFunction)lane_close, METH_NOARGS, "Stop; release the rings."},
    {NULL}
};

static PyMemberDef lane_members[] = {
    {"qd", T_OBJECT, offsetof(LaneObject, qd), READONLY, NULL},
    {"push_ok", T_INT, offsetof(LaneObject, push_ok), 0, "pushes may complete here"},
    {"pop_ok", T_INT, offsetof(LaneObject, pop_ok), 0, "pops may complete or pend here"},
    {"zc_min", T_PYSSIZET, offsetof(LaneObject, zc_min), 0,
     "elements of at least this many bytes go to the Python path, which pops them zero-copy"},
    {"need_python", T_INT, offsetof(LaneObject, need_python), 0,
     "the head pending pop needs the Python path (take_pending)"},
    {"wanted", T_INT, offsetof(LaneObject, wanted), 0,
     "on_pending was called and still holds (cleared by whoever undoes it): a pop that starts "
     "to pend does not call it again"},
    {"closed", T_INT, offsetof(LaneObject, closed), READONLY, NULL},
    {"pushes", T_ULONGLONG, offsetof(LaneObject, pushes), READONLY, NULL},
    {"pops", T_ULONGLONG, offsetof(LaneObject, pops), READONLY, NULL},
    {"bytes_out", T_ULONGLONG, offsetof(LaneObject, bytes_out), READONLY, NULL},
    {"bytes_in", T_ULONGLONG, offsetof(LaneObject, bytes_in), READONLY, NULL},
    {"doorbells", T_ULONGLONG, offsetof(LaneObject, doorbells), READONLY, NULL},
    {"spins", T_ULONGLONG, offsetof(LaneObject, spins), READONLY, NULL},
    {"spin_hits", T_ULONGLONG, offsetof(LaneObject, spin_hits), READONLY, NULL},
    {"spin_yields", T_ULONGLONG, offsetof(LaneObject, spin_yields), READONLY, NULL},
    {NULL}
};

static PyGetSetDef lane_getset[] = {
    {"pending", (getter)lane_get_pending, NULL, "pending pops held here", NULL},
    {NULL}
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.Lane",
    .tp_doc = "Lane(core, qd, tx_ring, rx_ring, keep, rx_export, peer_doorbell_fd, on_pending)",
    .tp_basicsize = sizeof(LaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_methods = lane_methods,
    .tp_members = lane_members,
    .tp_getset = lane_getset,
};

/* ------------------------------------------------------------------ SockLane */

/* A connected kernel stream socket of the posix library OS (libos/posix/sockets.py): push
 * sends and pop receives in C when the Python queue has nothing pending in that direction;
 * the Python queue keeps its state (readable/writable edges, end of stream, errors) and does
 * everything else, including pops that must wait for data. */
/* The SocketQueue attributes a SockLane reads and writes (libos/posix/sockets.py declares
 * them in __slots__, so each is a pointer at a fixed offset in the object). */
enum { F_STATE, F_READABLE, F_WRITABLE, F_SHUT_WR, F_EOF, F_ERROR, F_HUP, F_N };
static PyObject *field_name[F_N];

typedef struct {
    PyObject_HEAD
    CoreObject *core;
    PyObject *qd;
    PyObject *q;          /* the SocketQueue */
    PyObject *pops;       /* q._pops */
    PyObject *pushes;     /* q._pushes */
    PyObject *pushback;   /* q._pushback */
    PyObject *connected;  /* the CONNECTED state object */
    Py_ssize_t off[F_N];  /* offset in q of each state attribute's slot; 0: use getattr */
    PyObject *pops_append, *pops_popleft;  /* bound methods of q._pops */
    int fd;
    Py_ssize_t default_pop;
    int closed;
    int rx_in_place;      /* reads have been large: recv straight into the result's bytes */
    unsigned long long pushes_n, pops_n, bytes_out, bytes_in, syscalls;
} SockLaneObject;

static PyTypeObject SockLaneType;
static PyObject *s_push_rest, *s_pop_end;

static int sl_init(SockLaneObject *L, PyObject *args, PyObject *kw)
{
    PyObject *core, *qd, *q, *pops, *pushes, *pushback, *connected;
    int fd;
    Py_ssize_t dpop;
    if (!PyArg_ParseTuple(args, "O!OiOOOOOn:SockLane", &CoreType, &core, &qd, &fd, &q, &pops,
                          &pushes, &pushback, &connected, &dpop))
        return -1;
    if (dpop <= 0 || fd < 0) {
        PyErr_SetString(PyExc_ValueError, "SockLane: bad fd or default pop size");
        return -1;
    }
#define SET(f, v) Py_INCREF(v); Py_XSETREF(L->f, v)
    Py_INCREF(core);
    Py_XSETREF(L->core, (CoreObject *)core);
    SET(qd, qd);
    SET(q, q);
    SET(pops, pops);
    SET(pushes, pushes);
    SET(pushback, pushback);
    SET(connected, connected);
#undef SET
    Py_XSETREF(L->pops_append, PyObject_GetAttr(pops, s_append));
    Py_XSETREF(L->pops_popleft, PyObject_GetAttr(pops, s_popleft));
    if (L->pops_append == NULL || L->pops_popleft == NULL)
        return -1;
    /* A state attribute that is a __slots__ member of q's class is read and written at its
     * offset; any other (a property a subclass defines, say) through getattr/setattr */
    for (int f = 0; f < F_N; f++) {
        PyObject *d = _PyType_Lookup(Py_TYPE(q), field_name[f]);  /* borrowed */
        L->off[f] = 0;
        if (d != NULL && Py_TYPE(d) == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if ((m->type == T_OBJECT_EX || m->type == T_OBJECT) && !(m->flags & READONLY)
                && PyObject_TypeCheck(q, PyDescr_TYPE(d)))
                L->off[f] = m->offset;
        }
    }
    L->fd = fd;
    L->default_pop = dpop;
    return 0;
}

static int sl_traverse(SockLaneObject *L, visitproc visit, void *arg)
{
    Py_VISIT(L->core);
    Py_VISIT(L->qd);
    Py_VISIT(L->q);
    Py_VISIT(L->pops);
    Py_VISIT(L->pushes);
    Py_VISIT(L->pushback);
    Py_VISIT(L->connected);
    Py_VISIT(L->pops_append);
    Py_VISIT(L->pops_popleft);
    return 0;
}

static int sl_clear(SockLaneObject *L)
{
    Py_CLEAR(L->core);
    Py_CLEAR(L->qd);
    Py_CLEAR(L->q);
    Py_CLEAR(L->pops);
    Py_CLEAR(L->pushes);
    Py_CLEAR(L->pushback);
    Py_CLEAR(L->connected);
    Py_CLEAR(L->pops_append);
    Py_CLEAR(L->pops_popleft);
    return 0;
}

static void sl_dealloc(SockLaneObject *L)
{
    PyObject_GC_UnTrack(L);
    sl_clear(L);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

/* State attribute f of the lane's queue (a new reference), or NULL with an exception. */
static PyObject *q_get(SockLaneObject *L, int f)
{
    if (L->off[f] != 0) {
        PyObject *v = *(PyObject **)((char *)L->q + L->off[f]);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(L->q, field_name[f]);  /* (an unset slot raises AttributeError) */
}

/* State attribute f of the lane's queue, true (1) or false (0), or -1 with an exception. */
static int q_true(SockLaneObject *L, int f)
{
    if (L->off[f] != 0) {
        PyObject *v = *(PyObject **)((char *)L->q + L->off[f]);
        if (v == Py_True)
            return 1;
        if (v == Py_False || v == Py_None)
            return 0;
        if (v != NULL && PyLong_CheckExact(v))  /* (an errno: 0 when there is none) */
            return Py_SIZE(v) != 0;
    }
    PyObject *v = q_get(L, f);
    if (v == NULL)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* queue.<f> = v */
static int q_set(SockLaneObject *L, int f, PyObject *v)
{
    if (L->off[f] == 0)
        return PyObject_SetAttr(L->q, field_name[f], v);
    PyObject **slot = (PyObject **)((char *)L->q + L->off[f]);
    PyObject *old = *slot;
    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
    return 0;
}

/* The queue is connected and nothing unusual is pending for pops (1), else 0, -1 error. */
static int sl_state_ok(SockLaneObject *L)
{
    if (L->closed || L->q == NULL)
        return 0;
    if (L->off[F_STATE] != 0) {
        PyObject *st = *(PyObject **)((char *)L->q + L->off[F_STATE]);
        if (st != NULL)
            return st == L->connected;
    }
    PyObject *st = q_get(L, F_STATE);
    if (st == NULL)
        return -1;
    int ok = st == L->connected;
    Py_DECREF(st);
    return ok;
}

/* A read of at most RX_SCRATCH bytes goes into rx_scratch and is copied out at its size:
 * one small allocation per message instead of a `want`-sized one shrunk afterwards (pops
 * ask for 64 KiB and requests are tens of bytes).  Only with the GIL held. */
#define RX_SCRATCH 65536
#define RX_LARGE 16384   /* a read this large: read in place from then on */
#define RX_SMALL 4096    /* a read this small: back to the scratch buffer */
static char rx_scratch[RX_SCRATCH];

/* recv() of up to `want` bytes from the lane's socket, non-blocking.  Returns n, with
 * *data a new bytes object of exactly n bytes when n > 0 (else NULL) and *err the errno
 * when n < 0; -2 with an exception on a memory error. */
static ssize_t lane_recv(SockLaneObject *L, Py_ssize_t want, PyObject **data, int *err)
{
    *data = NULL;
    *err = 0;
    if (!L->rx_in_place && want <= RX_SCRATCH) {
        ssize_t n = recv(L->fd, rx_scratch, (size_t)want, MSG_DONTWAIT);
        L->syscalls++;
        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            return n;
        }
        if (n >= RX_LARGE)
            L->rx_in_place = 1;
        if ((*data = PyBytes_FromStringAndSize(rx_scratch, n)) == NULL)
            return -2;
        return n;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, want);
    if (b == NULL)
        return -2;
    ssize_t n = recv(L->fd, PyBytes_AS_STRING(b), (size_t)want, MSG_DONTWAIT);
    L->syscalls++;
    if (n <= 0) {
        *err = n < 0 ? errno : 0;
        Py_DECREF(b);
        return n;
    }
    if (n < RX_SMALL)
        L->rx_in_place = 0;
    if (n < want && _PyBytes_Resize(&b, n) < 0)
        return -2;
    *data = b;
    return n;
}

/* As lane_push, for a posix stream socket: sent in full now, or left to the Python path. */
static PyObject *sl_push(SockLaneObject *L, PyObject *data, int tokenless)
{
    CoreObject *c = L->core;
    if (Py_TYPE(data) == (PyTypeObject *)c->sga_type) {
        PyObject *bufs = get_slot(data, c->off_bufs);
        if (get_slot(data, c->off_freed) != Py_False || bufs == NULL || !PyTuple_CheckExact(bufs)
            || PyTuple_GET_SIZE(bufs) != 1)
            Py_RETURN_NONE;
        data = PyTuple_GET_ITEM(bufs, 0);
    }
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) == 0 || Py_SIZE(L->pushes) != 0)
        Py_RETURN_NONE;
    int t = sl_state_ok(L);
    if (t > 0)
        t = q_true(L, F_WRITABLE);
    if (t > 0) {
        t = q_true(L, F_SHUT_WR);
        t = t < 0 ? -1 : !t;
    }
    if (t <= 0) {
        if (t < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    int e = core_enter(c);
    if (e <= 0) {
        if (e < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    /* non-blocking: the GIL stays held (core_enter may have skipped the lock) */
    ssize_t n = send(L->fd, PyBytes_AS_STRING(data), (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    int err = n < 0 ? errno : 0;
    L->syscalls++;
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) {
        core_exit(c, e);
        Py_RETURN_NONE;  /* nothing sent: the Python path queues it and arms EPOLLOUT */
    }
    if (tokenless && n == len) {
        L->pushes_n++;
        L->bytes_out += (unsigned long long)len;
        core_exit(c, e);
        Py_RETURN_TRUE;
    }
    PyObject *qt = core_new_qt(c), *r = NULL;
    OpObject *op = NULL;
    if (qt == NULL || (op = op_make(qt, L->qd, Py_None)) == NULL)
        goto fail;
    if (n == len) {
        L->pushes_n++;
        L->bytes_out += (unsigned long long)len;
        if ((r = core_result(c, c->op_push, L->qd, qt, Py_None)) == NULL)
            goto fail;
        Py_SETREF(op->result, r);
        if (core_record(c, op, 1) < 0)
            goto fail;
    } else {  /* partly sent, or failed: the Python queue finishes or fails it */
        if (n >= 0) {
            L->pushes_n++;
            L->bytes_out += (unsigned long long)len;
        }
        if (core_record(c, op, 0) < 0)
            goto fail;
        PyObject *sent = PyLong_FromSsize_t(n > 0 ? n : 0);
        PyObject *eobj = PyLong_FromLong(err);
        PyObject *res = sent && eobj ? PyObject_CallMethodObjArgs(L->q, s_push_rest, (PyObject *)op,
                                                                  data, sent, eobj, NULL) : NULL;
        Py_XDECREF(sent);
        Py_XDECREF(eobj);
        if (res == NULL)
            goto fail;
        Py_DECREF(res);
    }
    Py_DECREF(op);
    core_exit(c, e);
    return qt;
fail:
    Py_XDECREF(op);
    Py_XDECREF(qt);
    core_exit(c, e);
    return NULL;
}

static PyObject *sl_pop(SockLaneObject *L, PyObject *size_obj)
{
    CoreObject *c = L->core;
    Py_ssize_t size;
    if (!parse_size(size_obj, &size) || Py_SIZE(L->pops) != 0 || Py_SIZE(L->pushback) != 0)
        Py_RETURN_NONE;
    int t = sl_state_ok(L);
    if (t > 0) {
        t = q_true(L, F_EOF);
        t = t < 0 ? -1 : !t;
    }
    if (t > 0) {
        t = q_true(L, F_ERROR);
        t = t < 0 ? -1 : !t;
    }
    if (t <= 0) {
        if (t < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    int readable = q_true(L, F_READABLE);
    if (readable < 0)
        return NULL;
    int e = core_enter(c);
    if (e <= 0) {
        if (e < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *qt = core_new_qt(c), *data = NULL, *res = NULL, *sga = NULL;
    OpObject *op = NULL;
    if (qt == NULL || (op = op_make(qt, L->qd, Py_None)) == NULL)
        goto fail;
    if (readable) {
        Py_ssize_t want = size > 0 ? size : L->default_pop;
        int err;
        ssize_t n = lane_recv(L, want, &data, &err);
        if (n == -2)
            goto fail;
        if (n > 0) {
            if (n < want) {
                int hup = q_true(L, F_HUP);
                if (hup < 0 || (!hup && q_set(L, F_READABLE, Py_False) < 0))
                    goto fail;
            }
            if ((sga = core_sga(c, data)) == NULL)
                goto fail;
            if ((res = core_result(c, c->op_pop, L->qd, qt, sga)) == NULL)
                goto fail;
            Py_SETREF(op->result, res);
            res = NULL;
            op->counted = 1;
            L->pops_n++;
            L->bytes_in += (unsigned long long)n;
            if (core_record(c, op, 1) < 0)
                goto fail;
            goto done;
        }
        Py_CLEAR(data);
        if (n == 0 || !(err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) {
            /* end of stream or an error: the Python queue records it and completes the op */
            if (core_record(c, op, 0) < 0)
                goto fail;
            PyObject *eobj = PyLong_FromLong(err);
            PyObject *r = eobj ? PyObject_CallMethodObjArgs(L->q, s_pop_end, (PyObject *)op, eobj, NULL) : NULL;
            Py_XDECREF(eobj);
            if (r == NULL)
                goto fail;
            Py_DECREF(r);
            goto done;
        }
        if (err != EINTR && q_set(L, F_READABLE, Py_False) < 0)
            goto fail;
    }
    /* no data now: the op waits in the Python queue, which the next EPOLLIN edge serves */
    if (core_record(c, op, 0) < 0)
        goto fail;
    {
        Py_INCREF(size_obj);
        Py_XSETREF(op->pop_size, size_obj);
        PyObject *r = PyObject_CallOneArg(L->pops_append, (PyObject *)op);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
done:
    Py_XDECREF(sga);
    Py_DECREF(op);
    core_exit(c, e);
    return qt;
fail:
    Py_XDECREF(data);
    Py_XDECREF(sga);
    Py_XDECREF(op);
    Py_XDECREF(qt);
    core_exit(c, e);
    return NULL;
}

/* serve() -> bool: complete the queue's pending pops from the socket (the lock held; called on
 * an EPOLLIN edge).  True when done (no pops left, or no data now); False when the Python
 * queue must go on (pushed-back elements, end of stream or an error seen). */
static PyObject *sl_serve(SockLaneObject *L, PyObject *unused)
{
    CoreObject *c = L->core;
    if (L->closed || c == NULL)
        Py_RETURN_FALSE;
    while (Py_SIZE(L->pops) > 0) {
        if (Py_SIZE(L->pushback) != 0)
            Py_RETURN_FALSE;
        int t = q_true(L, F_EOF);
        if (t == 0)
            t = q_true(L, F_ERROR);
        if (t != 0) {
            if (t < 0)
                return NULL;
            Py_RETURN_FALSE;
        }
        int readable = q_true(L, F_READABLE);
        if (readable <= 0) {
            if (readable < 0)
                return NULL;
            Py_RETURN_TRUE;
        }
        PyObject *item = PySequence_GetItem(L->pops, 0);
        if (item == NULL)
            return NULL;
        Py_ssize_t size;
        if (Py_TYPE(item) != &OpType
            || !parse_size(((OpObject *)item)->pop_size ? ((OpObject *)item)->pop_size : Py_None,
                           &size)) {
            Py_DECREF(item);
            Py_RETURN_FALSE;
        }
        OpObject *op = (OpObject *)item;
        Py_ssize_t want = size > 0 ? size : L->default_pop;
        PyObject *data;
        int err;
        ssize_t n = lane_recv(L, want, &data, &err);
        if (n == -2) {
            Py_DECREF(op);
            return NULL;
        }
        if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
            Py_DECREF(op);
            if (q_set(L, F_READABLE, Py_False) < 0)
                return NULL;
            Py_RETURN_TRUE;
        }
        if (n < 0 && err == EINTR) {
            Py_DECREF(op);
            continue;
        }
        PyObject *r = PyObject_CallNoArgs(L->pops_popleft);
        if (r == NULL) {
            Py_XDECREF(data);
            Py_DECREF(op);
            return NULL;
        }
        Py_DECREF(r);
        if (n <= 0) {  /* end of stream or an error: the Python queue records it */
            PyObject *eobj = PyLong_FromLong(err);
            r = eobj ? PyObject_CallMethodObjArgs(L->q, s_pop_end, (PyObject *)op, eobj, NULL) : NULL;
            Py_XDECREF(eobj);
            Py_DECREF(op);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            Py_RETURN_FALSE;
        }
        if (n < want) {
            int hup = q_true(L, F_HUP);
            if (hup < 0 || (!hup && q_set(L, F_READABLE, Py_False) < 0)) {
                Py_DECREF(data);
                Py_DECREF(op);
                return NULL;
            }
        }
        PyObject *sga = core_sga(c, data);
        Py_DECREF(data);
        PyObject *res = sga ? core_result(c, c->op_pop, op->qd, op->qt, sga) : NULL;
        Py_XDECREF(sga);
        if (res == NULL) {
            Py_DECREF(op);
            return NULL;
        }
        op->counted = 1;
        L->pops_n++;
        L->bytes_in += (unsigned long long)n;
        int rc = core_complete_op(c, op, res);
        Py_DECREF(res);
        Py_DECREF(op);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *sl_close(SockLaneObject *L, PyObject *unused)
{
    L->closed = 1;
    sl_clear(L);
    Py_RETURN_NONE;
}

static PyMethodDef sl_methods[] = {
    {"push", (PyCFunction)sl_push, METH_O, "push(data) -> token or None (take the Python path)."},
    {"pop", (PyCFunction)sl_pop, METH_O, "pop(size) -> token or None (take the Python path)."},
    {"serve", (PyCFunction)sl_serve, METH_NOARGS,
     "Complete pending pops from the socket (lock held); False: the Python queue goes on."},
    {"close", (PyCFunction)sl_close, METH_NOARGS, "Stop; drop the references to the queue."},
    {NULL}
};

static PyMemberDef sl_members[] = {
    {"closed", T_INT, offsetof(SockLaneObject, closed), READONLY, NULL},
    {"pushes", T_ULONGLONG, offsetof(SockLaneObject, pushes_n), READONLY, NULL},
    {"pops", T_ULONGLONG, offsetof(SockLaneObject, pops_n), READONLY, NULL},
    {"bytes_out", T_ULONGLONG, offsetof(SockLaneObject, bytes_out), READONLY, NULL},
    {"bytes_in", T_ULONGLONG, offsetof(SockLaneObject, bytes_in), READONLY, NULL},
    {"syscalls", T_ULONGLONG, offsetof(SockLaneObject, syscalls), READONLY, NULL},
    {NULL}
};

static PyTypeObject SockLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.SockLane",
    .tp_doc = "SockLane(core, qd, fd, queue, pops, pushes, pushback, CONNECTED, default_pop)",
    .tp_basicsize = sizeof(SockLaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sl_init,
    .tp_traverse = (traverseproc)sl_traverse,
    .tp_clear = (inquiry)sl_clear,
    .tp_dealloc = (destructor)sl_dealloc,
    .tp_methods = sl_methods,
    .tp_members = sl_members,
};

/* ------------------------------------------------------------------ posix epoll in C */

/* The posix library OS's poll (libos/posix/backend.py, Backend.poll) for a single-threaded
 * waiter: epoll_wait without the GIL, then each ready connected stream socket with a
 * SockLane and nothing but input to report is served here; every other event goes to the
 * Python handler, exactly as Backend.poll would call it. */

#define POLL_MAX 256
#define POLL_SLICE_MS 50  /* as queueapi.core.SLICE: a thread that arrives waits this at most */

static PyObject *core_set_epoll(CoreObject *c, PyObject *args)
{
    int fd;
    PyObject *watched, *on_other, *busy = Py_None;
    if (!PyArg_ParseTuple(args, "iOO|O:set_epoll", &fd, &watched, &on_other, &busy))
        return NULL;
    if (fd >= 0 && (!PyDict_CheckExact(watched) || !PyCallable_Check(on_other)
                    || (busy != Py_None && !PyDict_CheckExact(busy)))) {
        PyErr_SetString(PyExc_TypeError,
                        "set_epoll(fd, dict, callable[, dict or None]), or (-1, None, None)");
        return NULL;
    }
    if (busy == Py_None)
        Py_CLEAR(c->busy);
    else {
        Py_INCREF(busy);
        Py_XSETREF(c->busy, busy);
    }
    c->epfd = fd < 0 ? -1 : fd;
    Py_INCREF(watched);
    Py_XSETREF(c->watched, watched);
    Py_INCREF(on_other);
    Py_XSETREF(c->on_other, on_other);
    Py_RETURN_NONE;
}

/* May this wait poll the epoll in C?  Only the only thread, with nothing for Python to do. */
static int core_may_poll(CoreObject *c)
{
    return c->epfd >= 0 && c->libos != NULL && Py_SIZE(c->deferred) == 0
        && (c->busy == NULL || PyDict_GET_SIZE(c->busy) == 0)
        && PyList_GET_SIZE(c->next_sleepers) == 0 && PyList_GET_SIZE(c->sleepers) == 0
        && (c->poller == NULL || c->poller == Py_None) && only_thread();
}

/* One ready fd: 0, or -1 with an exception. */
static int core_dispatch(CoreObject *c, int fd, uint32_t ev)
{
    PyObject *key = PyLong_FromLong(fd), *r = NULL;
    if (key == NULL)
        return -1;
    PyObject *h = PyDict_GetItemWithError(c->watched, key);
    if (h == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        PyObject *evo = PyLong_FromUnsignedLong(ev);
        if (evo != NULL)
            r = PyObject_CallFunctionObjArgs(c->on_other, key, evo, NULL);
        Py_XDECREF(evo);
        Py_DECREF(key);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    Py_INCREF(h);
    PyObject *lane = ot_get(LANES(c), key);
    if (lane == NULL && PyErr_Occurred())
        goto done;
    SockLaneObject *L = lane != NULL && Py_TYPE(lane) == &SockLaneType ? (SockLaneObject *)lane : NULL;
    if (L != NULL && L->q == h && L->fd == fd && !L->closed && (ev & ~(uint32_t)EPOLLIN) == 0
        && Py_SIZE(L->pushes) == 0) {
        /* input only, on a connected stream socket with no send pending: what on_events does */
        Py_INCREF(L);
        if (q_set(L, F_READABLE, Py_True) == 0) {
            if (Py_SIZE(L->pops) == 0) {
                r = Py_None;
                Py_INCREF(r);
            } else if ((r = sl_serve(L, NULL)) == Py_False) {
                Py_DECREF(r);
                r = PyObject_CallMethodNoArgs(h, s_serve_pops);
            }
        }
        Py_DECREF(L);
    } else {
        PyObject *evo = PyLong_FromUnsignedLong(ev);
        if (evo != NULL)
            r = PyObject_CallMethodOneArg(h, s_on_events, evo);
        Py_XDECREF(evo);
    }
done:
    Py_DECREF(h);
    Py_DECREF(key);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Poll the epoll (timeout 0) until it has events or spin_ns pass, without the GIL: the
 * epoll_wait result.  Without it, a wait for the next request of a busy peer sleeps and is
 * woken again, and on a VM that hand-off costs more than these polls (the Redis server on
 * posix under redis-benchmark -c 50: +3-8% throughput with 200 us).  After yield_ns
 * (>= 0) each poll also yields the CPU, as spin_loop does.  *timeout_ms (> 0: a limit;
 * < 0: none) is lowered by the time spent, rounded up, and the spin ends at the limit
 * (then *timeout_ms is 0). */
static int epoll_spin(int epfd, struct epoll_event *evs, long long spin_ns, long long yield_ns,
                      int *timeout_ms, unsigned long long *yields)
{
    int64_t start = now_ns(), end = start + spin_ns;
    int64_t yield_at = yield_ns >= 0 ? start + yield_ns : INT64_MAX;
    if (*timeout_ms > 0 && start + (int64_t)*timeout_ms * 1000000 < end)
        end = start + (int64_t)*timeout_ms * 1000000;
    int nev;
    int64_t now;
    for (;;) {
        nev = epoll_wait(epfd, evs, POLL_MAX, 0);
        now = now_ns();
        if (nev != 0 || now >= end)
            break;
        if (now >= yield_at) {
            sched_yield();
            ++*yields;
        }
    }
    if (*timeout_ms > 0) {
        int64_t left = start + (int64_t)*timeout_ms * 1000000 - now;
        *timeout_ms = left > 0 ? (int)((left + 999999) / 1000000) : 0;
    }
    return nev;
}

/* One epoll_wait of at most timeout_ms (the GIL released; after a spin of epoll_spin_ns, see
 * epoll_spin), its events dispatched: 0, or -1 with an exception (after every event was
 * dispatched: edges are not lost). */
static int core_epoll_once(CoreObject *c, int timeout_ms)
{
    struct epoll_event evs[POLL_MAX];
    if (PyErr_CheckSignals() < 0)  /* (the eval loop may not have looked since it arrived) */
        return -1;
    PyObject *ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (ident == NULL)
        return -1;
    Py_XSETREF(c->poller, ident);  /* a thread that arrives meanwhile sleeps until handed over */
    int epfd = c->epfd, nev, err;
    long long spin = timeout_ms != 0 ? c->epoll_spin_ns : 0, yield_ns = c->spin_yield_ns;
    Py_BEGIN_ALLOW_THREADS
    if (spin > 0) {
        nev = epoll_spin(epfd, evs, spin, yield_ns, &timeout_ms, &c->spin_yields);
        if (nev == 0 && timeout_ms != 0)
            nev = epoll_wait(epfd, evs, POLL_MAX, timeout_ms);
    } else
        nev = epoll_wait(epfd, evs, POLL_MAX, timeout_ms);
    err = errno;
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    Py_XSETREF(c->poller, Py_None);
    c->epoll_waits++;
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    if (nev < 0 && err != EINTR) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        PyErr_Fetch(&et, &ev, &tb);
    } else if (PyErr_CheckSignals() < 0) {
        /* a signal that arrived during the wait or before it (while the eval loop did not
         * look): its handler ran here, and its exception propagates */
        PyErr_Fetch(&et, &ev, &tb);
    }
    if (nev < 0)
        nev = 0;
    for (int i = 0; i < nev; i++)
        if (core_dispatch(c, evs[i].data.fd, evs[i].events) < 0) {
            if (et == NULL)
                PyErr_Fetch(&et, &ev, &tb);
            else
                PyErr_WriteUnraisable(c->libos);
        }
    if (Py_SIZE(c->deferred) != 0) {
        PyObject *r = PyObject_CallMethod(c->libos, "drain", NULL);
        if (r == NULL) {
            if (et == NULL)
                PyErr_Fetch(&et, &ev, &tb);
            else
                PyErr_WriteUnraisable(c->libos);
        }
        Py_XDECREF(r);
    }
    if (c->sleepers != NULL && PyList_GET_SIZE(c->sleepers) > 0) {  /* hand the polling over */
        PyObject *r = PyObject_CallMethodNoArgs(PyList_GET_ITEM(c->sleepers, 0), s_set);
        if (r == NULL)
            PyErr_WriteUnraisable(c->libos);
        Py_XDECREF(r);
    }
    if (et != NULL) {
        PyErr_Restore(et, ev, tb);
        return -1;
    }
    return 0;
}

/* TimeoutError(ETIMEDOUT, "wait timed out"), as the Python core raises it. */
static void raise_timeout(void)
{
    PyObject *a = Py_BuildValue("(is)", ETIMEDOUT, "wait timed out");
    if (a != NULL) {
        PyErr_SetObject(PyExc_TimeoutError, a);
        Py_DECREF(a);
    }
}

/* An exact float or int as a double without making a float object (PyFloat_AsDouble converts
 * an int through a new float): -1.0 with an exception if it does not fit. */
static inline double number_as_double(PyObject *v)
{
    return PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyLong_AsDouble(v);
}

/* The deadline (monotonic ns; -1 none) of the optional timeout args[at]: 0, or -1 for "let
 * Python check the argument". */
static int parse_deadline(PyObject *const *args, Py_ssize_t n, Py_ssize_t at, int64_t *deadline)
{
    if (n == at || (n == at + 1 && args[at] == Py_None)) {
        *deadline = -1;
        return 0;
    }
    if (n != at + 1 || (!PyFloat_CheckExact(args[at]) && !PyLong_CheckExact(args[at])))
        return -1;
    double v = number_as_double(args[at]);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (!(v >= 0) || v > 1e6)
        return -1;
    *deadline = now_ns() + (int64_t)(v * 1e9);
    return 0;
}

/* Poll once for a wait whose deadline is `deadline` (see parse_deadline): 0 polled, -1 with
 * an exception (TimeoutError once the deadline passed after at least one poll). */
static int core_poll_until(CoreObject *c, int64_t deadline, int *polled)
{
    int ms = POLL_SLICE_MS;
    if (deadline >= 0) {
        int64_t rem = deadline - now_ns();
        if (rem <= 0 && *polled) {
            raise_timeout();
            return -1;
        }
        if (rem <= 0)
            ms = 0;
        else if (rem < (int64_t)POLL_SLICE_MS * 1000000)
            ms = (int)((rem + 999999) / 1000000);
    }
    *polled = 1;
    return core_epoll_once(c, ms);
}

/* ------------------------------------------------------------------ Core fast paths */

/* The general path: the Python method of the LibOS class, called with the same arguments. */
static PyObject *call_py(CoreObject *c, PyObject *fn, PyObject *const *args, Py_ssize_t n,
                         PyObject *kw)
{
    PyObject *stack[4];
    Py_ssize_t nkw = kw ? PyTuple_GET_SIZE(kw) : 0;
    if (n + nkw > 3) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    stack[0] = c->libos;
    for (Py_ssize_t i = 0; i < n + nkw; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(fn, stack, (size_t)(n + 1), kw);
}

static int add_to_attr(PyObject *o, PyObject *name, Py_ssize_t n);

/* LibOS.push / LibOS.pop on a queue without a lane (inet sockets, framed sockets, pipes,
 * memory queues...) without their Python frame: a new token and op, queue.push(op, (data,))
 * or queue.pop(op, size), the op into the token table, the push counted, then the deferred
 * callbacks run, as the Python methods do.  Taken only where leaving out their lock changes
 * nothing (a single thread) and the LibOS class has not replaced them (queue_fast, set by
 * LibOS.__init__); `data` exact non-empty bytes, `size` None or an exact int > 0.  NULL
 * without an exception: the Python method. */
static PyObject *op_via_queue(CoreObject *c, PyObject *meth, PyObject *qd, PyObject *arg,
                              Py_ssize_t pushed)
{
    if (!c->queue_fast || !PyLong_CheckExact(qd) || Py_SIZE(c->deferred) != 0 || !only_thread())
        return NULL;
    PyObject *q = PyDict_GetItemWithError(c->queues, qd);
    if (q == NULL)
        return NULL;  /* (EBADF: the Python method raises it) */
    Py_INCREF(q);
    PyObject *qt = PyLong_FromUnsignedLongLong(c->next_qt++);
    OpObject *op = qt ? op_make(qt, qd, Py_None) : NULL;
    PyObject *r = NULL;
    if (op != NULL) {
        PyObject *a[3] = {q, (PyObject *)op, arg};
        r = PyObject_VectorcallMethod(meth, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (r == NULL || ot_set(OPS(c), qt, (PyObject *)op) < 0
        || (pushed > 0 && (add_to_attr(q, s_pushes, 1) < 0 || add_to_attr(q, s_bytes_out, pushed) < 0))) {
        Py_XDECREF(r);
        Py_XDECREF(op);
        Py_XDECREF(qt);
        Py_DECREF(q);
        return NULL;  /* with the exception (a queue's error: as the Python method raises it) */
    }
    Py_DECREF(r);
    Py_DECREF(op);
    Py_DECREF(q);
    if (Py_SIZE(c->deferred) != 0) {
        PyObject *x = PyObject_CallMethodNoArgs(c->libos, s_drain);
        if (x == NULL) {
            Py_DECREF(qt);
            return NULL;
        }
        Py_DECREF(x);
    }
    return qt;
}

static PyObject *push_via_queue(CoreObject *c, PyObject *const *args, Py_ssize_t n)
{
    if (n == 2 && c->libos != NULL && PyBytes_CheckExact(args[1]) && PyBytes_GET_SIZE(args[1]) > 0) {
        PyObject *segs = PyTuple_Pack(1, args[1]);
        if (segs == NULL)
            return NULL;
        PyObject *qt = op_via_queue(c, s_push, args[0], segs, PyBytes_GET_SIZE(args[1]));
        Py_DECREF(segs);
        if (qt != NULL || PyErr_Occurred())
            return qt;
    }
    return call_py(c, c->py_push, args, n, NULL);
}

static PyObject *push_via_lane(CoreObject *c, PyObject *const *args, Py_ssize_t n, int tokenless)
{
    if (n == 2 && c->libos != NULL && LANES(c)->used) {
        PyObject *lane = ot_get(LANES(c), args[0]);
        if (lane != NULL) {
            PyObject *qt = Py_TYPE(lane) == &SockLaneType
                ? sl_push((SockLaneObject *)lane, args[1], tokenless)
                : lane_push((LaneObject *)lane, args[1], tokenless);
            if (qt == NULL)
                return NULL;
            if (qt == Py_True) {  /* complete, without a token */
                Py_DECREF(qt);
                Py_RETURN_NONE;
            }
            if (qt != Py_None)
                return qt;
            Py_DECREF(qt);
        } else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return push_via_queue(c, args, n);
}

static PyObject *core_push(CoreObject *c, PyObject *const *args, Py_ssize_t n)
{
    return push_via_lane(c, args, n, 0);
}

/* push_done(qd, data) -> None | qt: None if the push completed at once, with no token made
 * (counted in stats as any push); else the token push() gives, complete or not.  For the
 * shim's send(), which would only take that token's completion again at once. */
static PyObject *core_push_done(CoreObject *c, PyObject *const *args, Py_ssize_t n)
{
    return push_via_lane(c, args, n, 1);
}

static PyObject *core_pop(CoreObject *c, PyObject *const *args, Py_ssize_t n)
{
    if ((n == 1 || n == 2) && c->libos != NULL && LANES(c)->used
        && PyDict_GET_SIZE(c->resume_pop) == 0) {
        PyObject *lane = ot_get(LANES(c), args[0]);
        if (lane != NULL) {
            PyObject *sz = n == 2 ? args[1] : Py_None;
            PyObject *qt = Py_TYPE(lane) == &SockLaneType ? sl_pop((SockLaneObject *)lane, sz)
                                                          : lane_pop((LaneObject *)lane, sz);
            if (qt == NULL)
                return NULL;
            if (qt != Py_None)
                return qt;
            Py_DECREF(qt);
        } else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    if ((n == 1 || n == 2) && c->libos != NULL && PyDict_GET_SIZE(c->resume_pop) == 0) {
        PyObject *sz = n == 2 ? args[1] : Py_None;
        if (sz == Py_None || (PyLong_CheckExact(sz) && Py_SIZE(sz) > 0)) {
            PyObject *qt = op_via_queue(c, s_pop, args[0], sz, 0);
            if (qt != NULL || PyErr_Occurred())
                return qt;
        }
    }
    return call_py(c, c->py_pop, args, n, NULL);
}

static int add_to_attr(PyObject *o, PyObject *name, Py_ssize_t n)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    PyObject *d = PyLong_FromSsize_t(n);
    PyObject *w = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (w == NULL)
        return -1;
    int rc = PyObject_SetAttr(o, name, w);
    Py_DECREF(w);
    return rc;
}

/* queues[qd].pops += 1, .bytes_in += len(sga): 1 done, 0 let Python do it, -1 error. */
static int count_pop(CoreObject *c, PyObject *qd, PyObject *sga)
{
    if (Py_TYPE(sga) != (PyTypeObject *)c->sga_type)
        return 0;
    PyObject *bufs = get_slot(sga, c->off_bufs);
    if (bufs == NULL || !PyTuple_CheckExact(bufs))
        return 0;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(bufs); i++) {
        PyObject *b = PyTuple_GET_ITEM(bufs, i);
        if (PyBytes_CheckExact(b))
            n += PyBytes_GET_SIZE(b);
        else if (PyMemoryView_Check(b))
            n += PyMemoryView_GET_BUFFER(b)->len;
        else
            return 0;
    }
    PyObject *q = PyDict_GetItemWithError(c->queues, qd);
    if (q == NULL)
        return PyErr_Occurred() ? -1 : 1;  /* closed since: nothing to count on */
    Py_INCREF(q);
    int rc = add_to_attr(q, s_pops, 1) < 0 || add_to_attr(q, s_bytes_in, n) < 0 ? -1 : 1;
    Py_DECREF(q);
    return rc;
}

/* Is `op` the head of the completion queue?  1 yes, 0 no (or an error, cleared). */
static int done_head_is(CoreObject *c, OpObject *op)
{
    if (Py_SIZE(c->done) == 0)
        return 0;
    PyObject *head = PySequence_GetItem(c->done, 0);
    if (head == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(head);  /* (only compared) */
    return head == (PyObject *)op;
}

/* Take a completed token whose counters are settled: the result, or NULL (no error) if the
 * Python path must do it. */
static PyObject *core_take_done(CoreObject *c, PyObject *qt)
{
    PyObject *o = ot_get(OPS(c), qt);
    if (o == NULL || Py_TYPE(o) != &OpType)
        return NULL;
    OpObject *op = (OpObject *)o;
    PyObject *r = op->result;
    if (r == NULL || r == Py_None || Py_SIZE(c->deferred) != 0)
        return NULL;
    /* a POP result not counted by a lane: count it on its queue, as LibOS._take does */
    PyObject *sga = PyTuple_GET_ITEM(r, 4);
    if (!op->counted && PyTuple_GET_ITEM(r, 0) == c->op_pop && sga != Py_None) {
        if (count_pop(c, PyTuple_GET_ITEM(r, 1), sga) <= 0)
            return NULL;
        op->counted = 1;
    }
    Py_INCREF(r);
    PyObject *removed = ot_pop(OPS(c), qt);  /* the table's reference, now ours */
    if (removed != o) {  /* (cannot happen: nothing ran since the lookup) */
        Py_XDECREF(removed);
        Py_DECREF(r);
        return NULL;
    }
    /* the completion queue may keep the op a while: not its data (zero-copy elements are
     * released when their sga dies) */
    Py_INCREF(taken);
    Py_SETREF(op->result, taken);
    if (done_head_is(c, op) > 0) {  /* taken in completion order: keep the queue short */
        PyObject *x = PyObject_CallNoArgs(c->done_popleft);
        if (x == NULL)
            PyErr_Clear();
        Py_XDECREF(x);
    }
    Py_DECREF(op);
    return r;
}

/* The optional timeout argument at args[at]: -1 let Python check it, 0 a valid timeout too
 * short to spin in, 1 a valid timeout the spin fits in (None, or >= spin_ns). */
static int timeout_kind(CoreObject *c, PyObject *const *args, Py_ssize_t n, Py_ssize_t at)
{
    if (n == at)
        return 1;
    if (n != at + 1)
        return -1;
    PyObject *t = args[at];
    if (t == Py_None)
        return 1;
    if (!PyFloat_CheckExact(t) && !PyLong_CheckExact(t))
        return -1;
    double v = number_as_double(t);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (!(v >= 0))
        return -1;
    return v * 1e9 >= (double)c->spin_ns;
}

#define PROBE_FULL_POLL_NS 5000000  /* 5 ms */

/* A zero-timeout probe of lanes' pending pops whose rings have nothing: 1 with TimeoutError
 * set if the library OS's whole poll ran less than PROBE_FULL_POLL_NS ago, else 0 (the
 * time noted: the caller's Python path polls once). */
static int probe_misses(CoreObject *c)
{
    int64_t now = now_ns();
    if (now - c->full_poll_ns < PROBE_FULL_POLL_NS) {
        raise_timeout();
        return 1;
    }
    c->full_poll_ns = now;
    return 0;
}

static inline int is_zero(PyObject *v)
{
    return (PyFloat_CheckExact(v) && PyFloat_AS_DOUBLE(v) == 0.0)
        || (PyLong_CheckExact(v) && PyObject_Not(v) == 1);
}

/* wait(qt, timeout=t) and wait_any(qts, timeout=t): the keyword taken as the second
 * positional argument (vectorcall puts keyword values after the positional ones). */
static inline void timeout_kw_as_positional(PyObject **kw, Py_ssize_t *n)
{
    PyObject *k = *kw;
    if (k != NULL && *n == 1 && PyTuple_GET_SIZE(k) == 1
        && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(k, 0), "timeout") == 0) {
        *kw = NULL;
        *n = 2;
    }
}

static PyObject *core_wait(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw)
{
    timeout_kw_as_positional(&kw, &n);
    int tk = kw == NULL ? timeout_kind(c, args, n, 1) : -1;
    if (tk >= 0 && c->libos != NULL && PyLong_CheckExact(args[0])) {
        PyObject *qt = args[0];
        PyObject *r = core_take_done(c, qt);
        if (r != NULL || PyErr_Occurred())
            return r;
        PyObject *o = ot_get(OPS(c), qt);
        if (tk == 1 && o != NULL && Py_TYPE(o) == &OpType && ((OpObject *)o)->lane != Py_None
            && c->spin_ns > 0 && Py_SIZE(c->deferred) == 0) {
            OpObject *op = (OpObject *)o;
            PyObject *lane = op->lane;
            Py_INCREF(op);
            Py_INCREF(lane);
            PyObject *spun = lane_spin_op((LaneObject *)lane, op, c->spin_ns);
            Py_DECREF(lane);
            Py_DECREF(op);
            if (spun == NULL)
                return NULL;
            Py_DECREF(spun);
            r = core_take_done(c, qt);
            if (r != NULL || PyErr_Occurred())
                return r;
        } else if (tk == 0 && o != NULL && Py_TYPE(o) == &OpType && ((OpObject *)o)->lane != Py_None
                   && n == 2 && is_zero(args[1]) && Py_SIZE(c->deferred) == 0) {
            /* wait(qt, 0) on a lane's pending pop (a program probing for input): its element
             * can only come from the ring, so look there.  The library OS's whole poll (other
             * channels, control sockets: a dead peer) still runs, at most every
             * PROBE_FULL_POLL_NS, so that a loop of probes notices everything in time. */
            OpObject *op = (OpObject *)o;
            LaneObject *L = (LaneObject *)op->lane;
            if (!L->closed && L->pcount && L->pend[L->phead] == op && ring_api.readable(L->rx)) {
                Py_INCREF(op);
                Py_INCREF(L);
                int t = lane_finish_head(L, op);
                Py_DECREF(L);
                Py_DECREF(op);
                if (t < 0)
                    return NULL;
                r = core_take_done(c, qt);
                if (r != NULL || PyErr_Occurred())
                    return r;
            } else if (probe_misses(c)) {
                return NULL;
            }
        } else if (o == NULL && PyErr_Occurred()) {
            return NULL;
        }
        int64_t deadline;
        int polled = 0;
        if (core_may_poll(c) && parse_deadline(args, n, 1, &deadline) == 0) {
            /* not complete: poll the posix epoll in C until it is */
            for (;;) {
                o = ot_get(OPS(c), qt);
                if (o == NULL || Py_TYPE(o) != &OpType || ((OpObject *)o)->result != Py_None
                    || !core_may_poll(c))
                    break;  /* (an error or an unusual state: the Python path says) */
                if (core_poll_until(c, deadline, &polled) < 0)
                    return NULL;
                r = core_take_done(c, qt);
                if (r != NULL || PyErr_Occurred())
                    return r;
            }
            if (PyErr_Occurred())
                return NULL;
        }
    }
    return call_py(c, c->py_wait, args, n, kw);
}

#define DONE_LOOKAHEAD 8

/* Index in ops[] of the oldest completion among the first DONE_LOOKAHEAD live entries of the
 * completion queue (entries already consumed are dropped on the way); else the first
 * completed op from a rotating start, as LibOS._first_done_in.  -1: none, -2: error. */
static Py_ssize_t oldest_done_in(CoreObject *c, OpObject **ops, Py_ssize_t m)
{
    PyObject *done = c->done;
    Py_ssize_t seen = 0;
    for (Py_ssize_t k = 0; k < Py_SIZE(done) && seen < DONE_LOOKAHEAD; k++) {
        PyObject *e = PySequence_GetItem(done, k);
        if (e == NULL)
            return -2;
        PyObject *live = Py_TYPE(e) == &OpType
            ? ot_get(OPS(c), ((OpObject *)e)->qt) : NULL;
        if (live == NULL && PyErr_Occurred()) {
            Py_DECREF(e);
            return -2;
        }
        if (live != e) {  /* consumed by a wait on its token */
            Py_DECREF(e);
            if (k == 0) {  /* drop it, as the Python path does */
                PyObject *r = PyObject_CallMethodNoArgs(done, s_popleft);
                if (r == NULL)
                    return -2;
                Py_DECREF(r);
                k--;
            }
            continue;
        }
        seen++;
        for (Py_ssize_t i = 0; i < m; i++)
            if ((PyObject *)ops[i] == e) {
                Py_DECREF(e);
                return i;
            }
        Py_DECREF(e);
    }
    Py_ssize_t start = (Py_ssize_t)(c->rotor++ % (unsigned long long)m);
    for (Py_ssize_t k = 0; k < m; k++) {
        Py_ssize_t i = (start + k) % m;
        if (ops[i]->result != Py_None)
            return i;
    }
    return -1;
}

/* Index in ops[] of the oldest completion (the head of the completion queue), dropping
 * heads consumed by a wait on their token first.  -1: not among ops[] (the scans in
 * core_wait_any decide), -2: error.  One pass of pointer compares, where the scans cost
 * several passes over ops[] with a table lookup or two each. */
static Py_ssize_t done_head_in(CoreObject *c, OpObject **ops, Py_ssize_t m)
{
    for (int drops = 0; Py_SIZE(c->done) != 0 && drops < DONE_LOOKAHEAD; drops++) {
        PyObject *head = PySequence_GetItem(c->done, 0);
        if (head == NULL)
            return -2;
        Py_DECREF(head);  /* the queue keeps it alive; only compared below */
        if (Py_TYPE(head) != &OpType)
            return -1;
        OpObject *h = (OpObject *)head;
        if (h->result != taken && !h->gone) {
            for (Py_ssize_t i = 0; i < m; i++)
                if (ops[i] == h)
                    return i;
            return -1;
        }
        PyObject *x = PyObject_CallNoArgs(c->done_popleft);  /* consumed: drop it */
        if (x == NULL)
            return -2;
        Py_DECREF(x);
    }
    return -1;
}

static PyObject *any_result(Py_ssize_t i, PyObject *r)
{
    PyObject *idx = PyLong_FromSsize_t(i);
    if (idx == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);  /* (i, r), the references moved in */
    if (out == NULL) {
        Py_DECREF(idx);
        Py_DECREF(r);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, idx);
    PyTuple_SET_ITEM(out, 1, r);
    return out;
}

/* wait_any(qts, timeout=None): when exactly one token is complete, or a lane has the next
 * element of one of them (after spinning on those lanes for spin_ns), in C; anything else
 * (several complete: the oldest completion first; errors; sleeping) in Python. */
static PyObject *core_wait_any(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw)
{
    timeout_kw_as_positional(&kw, &n);
    int tk = kw == NULL && n >= 1 ? timeout_kind(c, args, n, 1) : -1;
    int64_t deadline = -1;
    int polled = 0;
    if (tk < 0 || c->libos == NULL || Py_SIZE(c->deferred) != 0
        || parse_deadline(args, n, 1, &deadline) < 0)
        goto python;
again:;
    PyObject *seq = args[0];
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq))
        goto python;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (m < 1 || m > WAIT_ANY_MAX)
        goto python;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    OpObject *ops_after_release[WAIT_ANY_MAX];
    OpObject **ops = c->wa_ops;  /* positions 0..m-1 of the memo, once the loop below is done */
    for (Py_ssize_t k = 0; k < c->wa_ndrop; k++)  /* (no borrowed pointer is held here) */
        Py_CLEAR(c->wa_drop[k]);
    c->wa_ndrop = 0;
    if (Py_SIZE(c->done) != 0) {
        /* The usual case of a server loop: the oldest completion is the op memoized at its
         * position of this same list (a valid memo entry is the live op of that token
         * object), so neither the memo nor the list needs a pass. */
        PyObject *head = PySequence_GetItem(c->done, 0);
        if (head == NULL)
            return NULL;
        Py_DECREF(head);  /* the queue keeps it alive; only compared below */
        if (Py_TYPE(head) == &OpType) {
            OpObject *h = (OpObject *)head;
            Py_ssize_t p = h->wa_pos;
            if (h->memo && h->result != taken && !h->gone && p >= 0 && p < m && p < c->wa_n
                && c->wa_ops[p] == h && c->wa_valid[p] && c->wa_items[p] == items[p]) {
                PyObject *r = core_take_done(c, items[p]);
                if (r != NULL)
                    return any_result(p, r);
                if (PyErr_Occurred())
                    return NULL;
            }
        }
    }
    PyObject *const *memo_items = c->wa_items;
    const unsigned char *memo_valid = c->wa_valid;
    Py_ssize_t memo_n = c->wa_n < m ? c->wa_n : m;
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *it = items[i];
        if (i < memo_n && memo_items[i] == it && memo_valid[i])
            continue;  /* the memo keeps its op alive */
        if (!PyLong_CheckExact(it))
            goto python;
        PyObject *o = ot_get(OPS(c), it);
        if (o == NULL) {
            if (PyErr_Occurred())
                return NULL;
            goto python;
        }
        if (Py_TYPE(o) != &OpType)
            goto python;
        /* memo it; the references it replaces are released on the next call */
        if (i < c->wa_n) {
            c->wa_ops[i]->memo--;
            c->wa_drop[c->wa_ndrop++] = c->wa_items[i];
            c->wa_drop[c->wa_ndrop++] = (PyObject *)c->wa_ops[i];
        } else {
            c->wa_n = i + 1;  /* (positions are filled in order: i == the old wa_n) */
        }
        Py_INCREF(it);
        Py_INCREF(o);
        c->wa_items[i] = it;
        c->wa_ops[i] = (OpObject *)o;
        c->wa_valid[i] = 1;
        ((OpObject *)o)->memo++;
        ((OpObject *)o)->wa_pos = i;
    }
    /* every token is known: the oldest completion is usually one of them */
    Py_ssize_t head_at = done_head_in(c, ops, m);
    if (head_at == -2)
        return NULL;
    if (head_at >= 0) {
        PyObject *r = core_take_done(c, items[head_at]);
        if (r != NULL)
            return any_result(head_at, r);
        if (PyErr_Occurred())
            return NULL;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        Py_ssize_t found = -1;
        int several = 0;
        for (Py_ssize_t i = 0; i < m; i++)
            if (ops[i]->result != Py_None) {
                if (found >= 0) {
                    several = 1;
                    break;
                }
                found = i;
            }
        if (several) {  /* the oldest completion first */
            found = oldest_done_in(c, ops, m);
            if (found == -2)
                return NULL;
            if (found < 0)
                goto python;
        }
        if (found >= 0) {
            PyObject *r = core_take_done(c, items[found]);
            if (r == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                goto python;
            }
            return any_result(found, r);
        }
        void *rx[WAIT_ANY_MAX];
        Py_ssize_t which[WAIT_ANY_MAX];
        int nl = 0;
        for (Py_ssize_t i = 0; i < m; i++) {
            OpObject *op = ops[i];
            if (op->lane == Py_None)
                continue;
            LaneObject *L = (LaneObject *)op->lane;
            if (L->closed || !L->pcount || L->pend[L->phead] != op)
                continue;
            rx[nl] = L->rx;
            which[nl++] = i;
        }
        if (nl == 0)
            break;
        int hit = -1;
        for (int k = 0; k < nl; k++)
            if (ring_api.readable(rx[k])) {
                hit = k;
                break;
            }
        if (hit < 0 && attempt == 0 && c->spin_ns > 0 && tk == 1)
            hit = spin_rings(rx, nl, c->spin_ns, c->spin_yield_ns, &c->spin_yields);
        if (hit < 0 && nl == m && tk == 0 && n == 2 && is_zero(args[1])) {
            /* wait_any(qts, 0) over lanes' pending pops only (a program probing for input,
             * e.g. select.poll(0) through the shim): as wait(qt, 0) does, the rings are the
             * only place their elements come from, and the library OS's whole poll runs at
             * most every PROBE_FULL_POLL_NS. */
            if (probe_misses(c))
                return NULL;
            goto python;
        }
        if (hit < 0)
            break;
        Py_ssize_t i = which[hit];
        OpObject *op = ops[i];
        PyObject *lane = op->lane;
        if (lane == Py_None)
            continue;
        Py_INCREF(op);
        Py_INCREF(lane);
        int t = lane_finish_head((LaneObject *)lane, op);
        Py_DECREF(lane);
        Py_DECREF(op);
        if (t < 0)
            return NULL;
        if (t == 0)
            break;
        /* the GIL was released: the list and ops[] may have changed, look again (not in
         * the memo, which keeps references: these are borrowed from the token table) */
        ops = ops_after_release;
        if (PySequence_Fast_GET_SIZE(seq) != m)
            goto python;
        items = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t j = 0; j < m; j++) {
            if (!PyLong_CheckExact(items[j]))
                goto python;
            PyObject *o = ot_get(OPS(c), items[j]);
            if (o == NULL || Py_TYPE(o) != &OpType) {
                if (PyErr_Occurred())
                    return NULL;
                goto python;
            }
            ops[j] = (OpObject *)o;
        }
    }
    if (core_may_poll(c)) {  /* nothing complete: the posix epoll, in C */
        if (core_poll_until(c, deadline, &polled) < 0)
            return NULL;
        goto again;
    }
python:
    return call_py(c, c->py_wait_any, args, n, kw);
}

/* wait_all(qts, timeout=None): when every token is complete already, in C. */
static PyObject *core_wait_all(CoreObject *c, PyObject *const *args, Py_ssize_t n, PyObject *kw)
{
    PyObject *seq = n >= 1 ? args[0] : NULL;
    if (kw != NULL || n < 1 || n > 2 || c->libos == NULL || Py_SIZE(c->deferred) != 0
        || (n == 2 && args[1] != Py_None && !PyFloat_CheckExact(args[1]) && !PyLong_CheckExact(args[1]))
        || (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)))
        goto python;
    if (n == 2 && args[1] != Py_None) {
        double t = number_as_double(args[1]);
        if (t < 0)  /* (also -1.0 with an error set) */
            goto python_clear;
    }
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (m < 1)
        goto python;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < m; i++) {
        if (!PyLong_CheckExact(items[i]))
            goto python;
        PyObject *o = ot_get(OPS(c), items[i]);
        if (o == NULL) {
            if (PyErr_Occurred())
                return NULL;
            goto python;
        }
        if (Py_TYPE(o) != &OpType || ((OpObject *)o)->result == Py_None)
            goto python;
    }
    PyObject *out = PyList_New(m);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *r = core_take_done(c, items[i]);
        if (r == NULL) {
            if (!PyErr_Occurred())  /* not countable here, or a duplicate: LibOS._take */
                r = PyObject_CallMethod(c->libos, "_take", "O", items[i]);
            if (r == NULL) {
                Py_DECREF(out);
                return NULL;
            }
        }
        PyList_SET_ITEM(out, i, r);
    }
    return out;
python_clear:
    PyErr_Clear();
python:
    return call_py(c, c->py_wait_all, args, n, kw);
}

/* ------------------------------------------------------------------ module */

static PyObject *set_ring_api(PyObject *m, PyObject *args)
{
    unsigned long long f[6];
    if (!PyArg_ParseTuple(args, "KKKKKK:set_ring_api", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5]))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (!f[i]) {
            PyErr_SetString(PyExc_ValueError, "set_ring_api: null function");
            return NULL;
        }
    ring_api.push1 = (push1_fn)(uintptr_t)f[0];
    ring_api.peek_packed = (peek_packed_fn)(uintptr_t)f[1];
    ring_api.release = (release_fn)(uintptr_t)f[2];
    ring_api.readable = (readable_fn)(uintptr_t)f[3];
    ring_api.data = (data_fn)(uintptr_t)f[4];
    ring_api.take_doorbell = (take_doorbell_fn)(uintptr_t)f[5];
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ LibOS methods */

/* A method of LibOS (push, pop, wait, wait_any, wait_all, complete) that calls the same
 * method of the instance's Core (its `_fc` slot).  It is a method descriptor on the class,
 * not a bound method in each instance's dict, so CPython specialises `los.push(...)` like
 * any method call (an attribute that shadows a class method cannot be specialised: ~190
 * instructions per call).  `los.push` as an attribute gives the Core's bound method. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyMethodDef *ml;        /* the Core method */
    PyTypeObject *owner;    /* LibOS */
    Py_ssize_t off;         /* of its `_fc` slot */
    PyObject *name, *doc;
} CoreMethodObject;

static PyObject *cm_core(CoreMethodObject *m, PyObject *self)
{
    if (!PyObject_TypeCheck(self, m->owner)) {
        PyErr_Format(PyExc_TypeError, "%s.%U needs a %s, not %.100s", m->owner->tp_name, m->name,
                     m->owner->tp_name, Py_TYPE(self)->tp_name);
        return NULL;
    }
    PyObject *core = *(PyObject **)((char *)self + m->off);
    if (core == NULL || Py_TYPE(core) != &CoreType) {
        PyErr_Format(PyExc_TypeError, "%s.%U: the library OS is not initialised",
                     m->owner->tp_name, m->name);
        return NULL;
    }
    return core;
}

static PyObject *cm_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames)
{
    CoreMethodObject *m = (CoreMethodObject *)callable;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1) {
        PyErr_Format(PyExc_TypeError, "unbound method %s.%U needs an argument",
                     m->owner->tp_name, m->name);
        return NULL;
    }
    PyObject *core = cm_core(m, args[0]);
    if (core == NULL)
        return NULL;
    if (m->ml->ml_flags & METH_KEYWORDS)
        return ((_PyCFunctionFastWithKeywords)(void (*)(void))m->ml->ml_meth)(core, args + 1, n - 1,
                                                                               kwnames);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        PyErr_Format(PyExc_TypeError, "%U() takes no keyword arguments", m->name);
        return NULL;
    }
    return ((_PyCFunctionFast)(void (*)(void))m->ml->ml_meth)(core, args + 1, n - 1);
}

static PyObject *cm_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    CoreMethodObject *m = (CoreMethodObject *)self;
    PyObject *core = cm_core(m, obj);
    return core == NULL ? NULL : PyObject_GetAttr(core, m->name);
}

static PyObject *cm_repr(CoreMethodObject *m)
{
    return PyUnicode_FromFormat("<core method %s.%U>", m->owner->tp_name, m->name);
}

static void cm_dealloc(CoreMethodObject *m)
{
    Py_XDECREF(m->owner);
    Py_XDECREF(m->name);
    Py_XDECREF(m->doc);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyMemberDef cm_members[] = {
    {"__name__", T_OBJECT, offsetof(CoreMethodObject, name), READONLY, NULL},
    {"__doc__", T_OBJECT, offsetof(CoreMethodObject, doc), READONLY, NULL},
    {NULL}
};

static PyTypeObject CoreMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "queueapi._fast.CoreMethod",
    .tp_basicsize = sizeof(CoreMethodObject),
    .tp_dealloc = (destructor)cm_dealloc,
    .tp_vectorcall_offset = offsetof(CoreMethodObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)cm_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_members = cm_members,
    .tp_descr_get = cm_get,
};

static PyObject *core_method(PyObject *mod, PyObject *args)
{
    PyObject *owner, *name, *doc;
    if (!PyArg_ParseTuple(args, "O!UO:core_method", &PyType_Type, &owner, &name, &doc))
        return NULL;
    PyMethodDef *ml = NULL;
    for (PyMethodDef *d = core_methods; d->ml_name != NULL; d++)
        if (PyUnicode_CompareWithASCIIString(name, d->ml_name) == 0)
            ml = d;
    if (ml == NULL || !(ml->ml_flags & METH_FASTCALL)) {
        PyErr_Format(PyExc_ValueError, "Core has no fast-call method %R", name);
        return NULL;
    }
    Py_ssize_t off;
    if (slot_offset(owner, "_fc", &off) < 0)
        return NULL;
    CoreMethodObject *m = PyObject_New(CoreMethodObject, &CoreMethodType);
    if (m == NULL)
        return NULL;
    m->vectorcall = cm_vectorcall;
    m->ml = ml;
    m->owner = (PyTypeObject *)Py_NewRef(owner);
    m->off = off;
    m->name = Py_NewRef(name);
    m->doc = Py_NewRef(doc);
    return (PyObject *)m;
}

static PyMethodDef module_methods[] = {
    {"core_method", core_method, METH_VARARGS,
     "core_method(LibOS, name, doc): LibOS.<name> as a method descriptor calling the Core's "
     "method of the instance's _fc slot."},
    {"set_ring_api", set_ring_api, METH_VARARGS,
     "set_ring_api(push1, peek_packed, release, readable, data, take_doorbell): the addresses "
     "of the ring functions (libos/shm/ring.c) lanes call."},
    {NULL}
};

static struct PyModuleDef fastmodule = {
    PyModuleDef_HEAD_INIT, "queueapi._fast", "The queueapi data path in C (see _fast.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_clear, "clear");
    INTERN(s_extend, "extend");
    INTERN(s_popleft, "popleft");
    INTERN(s_serve_pops, "_serve_pops");
    INTERN(s_on_events, "on_events");
    INTERN(s_lanes, "_lanes");
    INTERN(s_queues, "_queues");
    INTERN(s_set, "set");
    INTERN(s_wake, "wake");
    INTERN(s_backend, "backend");
    INTERN(s_pops, "pops");
    INTERN(s_pushes, "pushes");
    INTERN(s_bytes_out, "bytes_out");
    INTERN(s_drain, "drain");
    INTERN(s_bytes_in, "bytes_in");
    INTERN(field_name[F_STATE], "state");
    INTERN(field_name[F_READABLE], "readable");
    INTERN(field_name[F_WRITABLE], "writable");
    INTERN(field_name[F_SHUT_WR], "shut_wr");
    INTERN(field_name[F_EOF], "_eof");
    INTERN(field_name[F_ERROR], "_error");
    INTERN(field_name[F_HUP], "_hup");
    INTERN(s_push_rest, "_lane_push_rest");
    INTERN(s_pop_end, "_lane_pop_end");
    INTERN(s_resume_pop, "_resume_pop");
    INTERN(s_push, "push");
    INTERN(s_pop, "pop");
    INTERN(s_wait, "wait");
    INTERN(s_ops, "_ops");
    INTERN(s_done, "_done");
    INTERN(s_next_sleepers, "_next_sleepers");
    INTERN(s_deferred, "_deferred");
    INTERN(s_lock, "lock");
    INTERN(s_acquire, "acquire");
    INTERN(s_release, "release");
    INTERN(s_append, "append");
#undef INTERN
    if (!(taken = Py_BuildValue("(s)", "taken")))
        return NULL;
    if (PyType_Ready(&OpType) < 0 || PyType_Ready(&OpTableType) < 0 || PyType_Ready(&CoreType) < 0
        || PyType_Ready(&CoreMethodType) < 0 || PyType_Ready(&LaneType) < 0
        || PyType_Ready(&SockLaneType) < 0 || PyType_Ready(&SGAType) < 0)
        return NULL;
    QResultBaseType.tp_base = &PyTuple_Type;
    if (PyType_Ready(&QResultBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastmodule);
    if (m == NULL)
        return NULL;
    Py_INCREF(&OpType);
    Py_INCREF(&OpTableType);
    Py_INCREF(&CoreType);
    Py_INCREF(&LaneType);
    Py_INCREF(&SockLaneType);
    Py_INCREF(taken);
    Py_INCREF(&SGAType);
    Py_INCREF(&QResultBaseType);
    if (PyModule_AddObject(m, "SGArrayBase", (PyObject *)&SGAType) < 0
        || PyModule_AddObject(m, "QResultBase", (PyObject *)&QResultBaseType) < 0
        || PyModule_AddObject(m, "TAKEN", taken) < 0
        || PyModule_AddObject(m, "SockLane", (PyObject *)&SockLaneType) < 0
        || PyModule_AddObject(m, "Op", (PyObject *)&OpType) < 0
        || PyModule_AddObject(m, "OpTable", (PyObject *)&OpTableType) < 0
        || PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0
        || PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
