/* libos.inet._tcpfast: the two per-segment hot paths of TcpConnection in C.
 *
 *   fast_input   TcpConnection.fast_input (header prediction) with what it calls on its
 *                fast path: _advance_una, RttEstimator.sample, NewReno.on_ack,
 *                _set_send_window and the in-order part of _on_data
 *   poll_data    TcpConnection.poll_data (poll's one-new-segment case) with _advertise
 *
 * and, on top of fast_input, rx_established: Stack.receive after its C checks (tcp_rx) for
 * a segment header prediction takes (the header unpack, the connection lookup, fast_input
 * called in C, then Stack._events / _active / _schedule), or False with nothing changed so
 * that receive goes on in Python (see its section below; setup_stack enables it).
 *
 * The connection's state stays where it is, in the __slots__ of TcpConnection
 * (libos/inet/tcp/connection.py), RttEstimator (rtt.py), NewReno (congestion.py),
 * TcpCounters, OutOfOrderQueue (reassembly.py) and TcpConfig (config.py).  setup() takes
 * each slot's offset from the class's member descriptor once; the functions here read and
 * write the slots at those offsets, so the Python methods (every slow path) pay nothing.
 *
 * Contract, for both functions:
 *  - the same return value and the same effects on the objects as the Python method
 *    (kept as TcpConnection._fast_input_py / _poll_data_py), value for value and type for
 *    type (an int stays an int, a bool a bool);
 *  - an object that is not exactly one of those classes (a subclass, a test double), a
 *    value of an unexpected type, an unset slot, a sequence number of 2**60 or more, keyword
 *    arguments...: the Python method is called instead, before anything was changed.  Data
 *    never makes these functions raise where the Python method would not;
 *  - a call first checks and computes everything, stages every slot write, and only then
 *    applies them (after the two bytearray operations, which are the only steps that can
 *    fail, on memory): an object is never left half updated.
 * The helper methods they mirror are not looked up at run time: replacing, say,
 * TcpConnection._advance_una on the class does not change these paths (a subclass does,
 * as it takes the Python path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifndef Py_ALWAYS_INLINE   /* (CPython < 3.11) */
#define Py_ALWAYS_INLINE
#endif

#define SEQ_MASK 0xFFFFFFFFULL
#define FL_ACK 0x10
#define FL_PSH 0x08
/* Sequence numbers, sizes and counters handled in C are below 2**60 in magnitude, so a sum
 * or difference of a few of them cannot overflow a long long. */
#define INT_LIMIT (1LL << 60)
/* An int used as a float operand is exactly representable (Python's int/float mixed
 * arithmetic and comparisons are then the same as on the converted double). */
#define EXACT_DOUBLE_LIMIT (1LL << 53)

/* ------------------------------------------------------------------ the slots */

enum {  /* TcpConnection */
    C_CONFIG, C_COUNTERS, C_STATE, C_NOW, C_DIRTY, C_CTL,
    C_SND_UNA, C_SND_NXT, C_SND_MAX, C_SND_WND, C_MAX_SND_WND, C_SND_WL1, C_SND_WL2,
    C_SNDBUF, C_SND_BUF_SEQ, C_FIN_QUEUED, C_SND_MSS, C_SND_WSCALE, C_RCV_WSCALE,
    C_RCV_NXT, C_RCV_WUP, C_RCV_ADV, C_RCVBUF, C_OOO, C_OOO_FIN, C_RCV_MSS, C_UNACKED_RCV,
    C_ACK_NOW, C_SWS_THRESHOLD,
    C_RTO_DEADLINE, C_DELACK_DEADLINE, C_PERSIST_DEADLINE, C_KEEPALIVE_DEADLINE,
    C_RTT, C_BACKOFF, C_RETRIES, C_RTT_SEQ, C_RTT_TIME, C_RETRANSMIT_NOW, C_DUPACKS, C_CC,
    C_PERSIST_BACKOFF, C_PROBES_OUT, C_KEEPALIVE_SENT, C_KA_IDLE, C_CLOSE_DEADLINE,
    C_LOCAL_PORT, C_REMOTE_PORT, C_REMOTE_ADDR, C_ACTIVE, C_N
};
static const char *const conn_names[C_N] = {
    "config", "counters", "_state", "_now", "_dirty", "_ctl",
    "_snd_una", "_snd_nxt", "_snd_max", "_snd_wnd", "_max_snd_wnd", "_snd_wl1", "_snd_wl2",
    "_sndbuf", "_snd_buf_seq", "_fin_queued", "_snd_mss", "_snd_wscale", "_rcv_wscale",
    "_rcv_nxt", "_rcv_wup", "_rcv_adv", "_rcvbuf", "_ooo", "_ooo_fin", "_rcv_mss", "_unacked_rcv",
    "_ack_now", "_sws_threshold",
    "_rto_deadline", "_delack_deadline", "_persist_deadline", "_keepalive_deadline",
    "_rtt", "_backoff", "_retries", "_rtt_seq", "_rtt_time", "_retransmit_now", "_dupacks", "_cc",
    "_persist_backoff", "_probes_out", "_keepalive_sent", "_ka_idle", "_close_deadline",
    "local_port", "remote_port", "remote_addr", "_active",
};

enum { R_SRTT, R_RTTVAR, R_RTO, R_MIN_RTO, R_MAX_RTO, R_GRANULARITY, R_SAMPLES, R_N };  /* RttEstimator */
static const char *const rtt_names[R_N] = {
    "srtt", "rttvar", "rto", "min_rto", "max_rto", "granularity", "samples",
};

enum { K_MSS, K_CWND, K_SSTHRESH, K_IN_RECOVERY, K_CA_BYTES, K_N };  /* NewReno */
static const char *const cc_names[K_N] = { "mss", "cwnd", "ssthresh", "in_recovery", "_ca_bytes" };

enum { N_SEGMENTS_IN, N_SEGMENTS_OUT, N_BYTES_IN, N_BYTES_OUT, N_DELAYED_ACKS, N_N };  /* TcpCounters */
static const char *const counters_names[N_N] = {
    "segments_in", "segments_out", "bytes_in", "bytes_out", "delayed_acks",
};

enum { O_STARTS, O_N };  /* OutOfOrderQueue */
static const char *const ooo_names[O_N] = { "_starts" };

enum {  /* TcpConfig (read only) */
    G_MSS, G_RECV_BUFFER_SIZE, G_NAGLE, G_MAX_RTO, G_DELAYED_ACK, G_ACK_ON_PUSH, G_PUSH_ACK_DELAY,
    G_SEND_BUFFER_SIZE, G_N
};
static const char *const config_names[G_N] = {
    "mss", "recv_buffer_size", "nagle", "max_rto", "delayed_ack", "ack_on_push", "push_ack_delay",
    "send_buffer_size",
};

/* One class whose slots are used here: the class and the offset of each named slot. */
typedef struct {
    PyTypeObject *type;
    const char *const *names;
    int n;
    Py_ssize_t *off;
} SlotClass;

static Py_ssize_t conn_off[C_N], rtt_off[R_N], cc_off[K_N], counters_off[N_N], ooo_off[O_N],
                  config_off[G_N];
static SlotClass conn_cls = { NULL, conn_names, C_N, conn_off };
static SlotClass rtt_cls = { NULL, rtt_names, R_N, rtt_off };
static SlotClass cc_cls = { NULL, cc_names, K_N, cc_off };
static SlotClass counters_cls = { NULL, counters_names, N_N, counters_off };
static SlotClass ooo_cls = { NULL, ooo_names, O_N, ooo_off };
static SlotClass config_cls = { NULL, config_names, G_N, config_off };

static PyObject *established;    /* TcpState.ESTABLISHED */
static PyObject *py_fast_input;  /* the Python methods (functions), for every other case */
static PyObject *py_poll_data;
static unsigned long long fallbacks[2];  /* calls handed to them: fast_input, poll_data */

/* The value in slot f of o (borrowed; NULL if unset). */
#define GET(o, offs, f) (*(PyObject **)((char *)(o) + (offs)[f]))

/* Take the offset of every slot of c->names from the member descriptors of type. */
static int slot_class_init(SlotClass *c, PyObject *type)
{
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup: expected a class");
        return -1;
    }
    for (int i = 0; i < c->n; i++) {
        PyObject *name = PyUnicode_InternFromString(c->names[i]);
        if (name == NULL)
            return -1;
        PyObject *d = _PyType_Lookup((PyTypeObject *)type, name);  /* borrowed */
        Py_DECREF(name);
        if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member",
                         ((PyTypeObject *)type)->tp_name, c->names[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)
            || !PyType_IsSubtype((PyTypeObject *)type, PyDescr_TYPE(d))) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot",
                         ((PyTypeObject *)type)->tp_name, c->names[i]);
            return -1;
        }
        c->off[i] = m->offset;
    }
    Py_INCREF(type);
    Py_XSETREF(c->type, (PyTypeObject *)type);
    return 0;
}

/* ------------------------------------------------------------------ reading values
 * Each returns 1 and the value if v has the type the Python code expects there (an unset
 * slot, v == NULL, never has), else 0: the caller then hands the call to Python. */

/* An exact int of magnitude below INT_LIMIT. */
static inline Py_ALWAYS_INLINE int get_int(PyObject *v, long long *out)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
    /* CPython 3.11: the sign and number of 30-bit digits in ob_size; below 2**60 means at
     * most two digits (read directly: this runs some twenty times per call) */
    const digit *dg = ((PyLongObject *)v)->ob_digit;
    switch (Py_SIZE(v)) {
    case 0:
        *out = 0;
        return 1;
    case 1:
        *out = (long long)dg[0];
        return 1;
    case -1:
        *out = -(long long)dg[0];
        return 1;
    case 2:
        *out = (long long)dg[0] | ((long long)dg[1] << PyLong_SHIFT);
        return 1;
    case -2:
        *out = -((long long)dg[0] | ((long long)dg[1] << PyLong_SHIFT));
        return 1;
    default:
        return 0;
    }
#else
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || x >= INT_LIMIT || x <= -INT_LIMIT)
        return 0;
    *out = x;
    return 1;
#endif
}

/* An exact int that is only compared with values below INT_LIMIT in magnitude (NewReno's
 * ssthresh, 2**62 until the first loss): one beyond is clamped to +-INT_LIMIT. */
static inline int get_int_for_compare(PyObject *v, long long *out)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow > 0 || x > INT_LIMIT)
        x = INT_LIMIT;
    else if (overflow < 0 || x < -INT_LIMIT)
        x = -INT_LIMIT;
    *out = x;
    return 1;
}

/* None (*has = 0) or an int as get_int. */
static inline Py_ALWAYS_INLINE int get_opt_int(PyObject *v, int *has, long long *out)
{
    if (v == Py_None) {
        *has = 0;
        *out = 0;
        return 1;
    }
    *has = 1;
    return get_int(v, out);
}

/* A number: an exact float, or an exact int that a double holds exactly. */
static inline Py_ALWAYS_INLINE int get_num(PyObject *v, double *out)
{
    if (v != NULL && PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    long long x;
    if (!get_int(v, &x) || x > EXACT_DOUBLE_LIMIT || x < -EXACT_DOUBLE_LIMIT)
        return 0;
    *out = (double)x;
    return 1;
}

/* None (*has = 0) or a number as get_num. */
static inline Py_ALWAYS_INLINE int get_opt_num(PyObject *v, int *has, double *out)
{
    if (v == Py_None) {
        *has = 0;
        *out = 0;
        return 1;
    }
    *has = 1;
    return get_num(v, out);
}

/* The truth value of a flag slot (a bool, or an int). */
static inline Py_ALWAYS_INLINE int get_truth(PyObject *v, int *out)
{
    if (v == Py_True || v == Py_False) {
        *out = v == Py_True;
        return 1;
    }
    long long x;
    if (!get_int(v, &x))
        return 0;
    *out = x != 0;
    return 1;
}

/* ------------------------------------------------------------------ staged writes
 * Every slot write of a call is staged (the new value created) first and applied at the end,
 * when nothing can fail any more; the old values are released after all writes are done. */

#define MAX_WRITES 48

typedef struct {
    PyObject *target;
    Py_ssize_t off;
    PyObject *value;  /* a new reference; after apply: the old value */
} Write;

typedef struct {
    Write w[MAX_WRITES];
    int n;
    int failed;  /* a value could not be created (MemoryError set) */
} Writes;

/* target.<slot at off> = value, where value is a new reference (NULL: creation failed). */
static inline Py_ALWAYS_INLINE void stage(Writes *ws, PyObject *target, Py_ssize_t off, PyObject *value)
{
    if (value == NULL || ws->n == MAX_WRITES) {
        if (value == NULL)
            ws->failed = 1;
        else {  /* cannot happen: MAX_WRITES covers the longest call */
            Py_DECREF(value);
            ws->failed = 1;
            PyErr_SetString(PyExc_SystemError, "_tcpfast: too many slot writes");
        }
        return;
    }
    Write *w = &ws->w[ws->n++];
    w->target = target;
    w->off = off;
    w->value = value;
}

static inline Py_ALWAYS_INLINE void stage_obj(Writes *ws, PyObject *target, Py_ssize_t off, PyObject *v)
{
    Py_INCREF(v);
    stage(ws, target, off, v);
}

/* An int slot: left as it is when it already holds that value (the same state as a new
 * int object of the same value, without the allocation). */
static inline Py_ALWAYS_INLINE void stage_int(Writes *ws, PyObject *target, Py_ssize_t off, long long v)
{
    long long old;
    if (get_int(*(PyObject **)((char *)target + off), &old) && old == v)
        return;
    stage(ws, target, off, PyLong_FromLongLong(v));
}

static inline Py_ALWAYS_INLINE void stage_float(Writes *ws, PyObject *target, Py_ssize_t off, double v)
{
    stage(ws, target, off, PyFloat_FromDouble(v));
}

/* Forget the staged writes (nothing was applied). */
static void writes_drop(Writes *ws)
{
    for (int i = 0; i < ws->n; i++)
        Py_DECREF(ws->w[i].value);
    ws->n = 0;
}

/* Apply the staged writes in order (a later write to the same slot wins). */
static void writes_apply(Writes *ws)
{
    for (int i = 0; i < ws->n; i++) {
        PyObject **slot = (PyObject **)((char *)ws->w[i].target + ws->w[i].off);
        PyObject *old = *slot;
        *slot = ws->w[i].value;
        ws->w[i].value = old;
    }
    for (int i = 0; i < ws->n; i++)
        Py_XDECREF(ws->w[i].value);
    ws->n = 0;
}

/* ------------------------------------------------------------------ shared pieces */

/* The call handed to the Python method fn (which handles every case), counted. */
static PyObject *call_python(PyObject *fn, int which, PyObject *self, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    fallbacks[which]++;
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **argv = small;
    if (total + 1 > 8 && (argv = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    argv[0] = self;
    for (Py_ssize_t i = 0; i < total; i++)
        argv[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(fn, argv, (size_t)(nargs + 1), kwnames);
    if (argv != small)
        PyMem_Free(argv);
    return r;
}

/* The payload of a segment: exactly bytes, bytearray or a one-dimensional contiguous
 * memoryview of bytes (what len() counts is then its size in bytes).  On success the
 * buffer is held in *view (release it). */
static int get_payload(PyObject *p, Py_buffer *view)
{
    if (Py_IS_TYPE(p, &PyMemoryView_Type)) {
        Py_buffer *b = PyMemoryView_GET_BUFFER(p);
        if (b->ndim != 1 || b->itemsize != 1)
            return 0;
    }
    else if (!PyBytes_CheckExact(p) && !PyByteArray_CheckExact(p))
        return 0;
    if (PyObject_GetBuffer(p, view, PyBUF_SIMPLE) < 0) {  /* a released or strided view */
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The bytearray has no exports (so it can be resized, as the Python code would). */
static inline int resizable(PyObject *b)
{
    return ((PyByteArrayObject *)b)->ob_exports == 0;
}

/* RttEstimator.sample(rtt), computed: the new srtt, rttvar, rto.  rto_obj is NULL when the
 * rto is the computed float, else the min_rto or max_rto object itself (the Python code
 * stores that object).  0: a field of unexpected type. */
typedef struct {
    double srtt, rttvar, rto;
    PyObject *rto_obj;
    long long samples;
} RttSample;

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))  /* no fused multiply-add: the same rounding as Python */
#endif
static int rtt_sample(PyObject *rtt_o, double rtt, RttSample *s)
{
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    const Py_ssize_t *o = rtt_off;
    int has_srtt;
    double srtt, rttvar, g, lo, hi;
    if (!get_opt_num(GET(rtt_o, o, R_SRTT), &has_srtt, &srtt) || !get_num(GET(rtt_o, o, R_RTTVAR), &rttvar)
        || !get_num(GET(rtt_o, o, R_GRANULARITY), &g) || !get_num(GET(rtt_o, o, R_MIN_RTO), &lo)
        || !get_num(GET(rtt_o, o, R_MAX_RTO), &hi) || !get_int(GET(rtt_o, o, R_SAMPLES), &s->samples))
        return 0;
    if (rtt < 0)
        rtt = 0.0;
    double var;
    if (!has_srtt) {
        srtt = rtt;
        var = rttvar = rtt / 2;
    }
    else {
        double diff = srtt - rtt;
        var = rttvar = 0.75 * rttvar + 0.25 * (diff >= 0 ? diff : -diff);
        srtt = 0.875 * srtt + 0.125 * rtt;
    }
    var *= 4;
    double rto = srtt + (var > g ? var : g);
    PyObject *rto_obj = NULL;
    if (rto < lo) {
        rto = lo;
        rto_obj = GET(rtt_o, o, R_MIN_RTO);
    }
    if (!(rto < hi)) {
        rto = hi;
        rto_obj = GET(rtt_o, o, R_MAX_RTO);
    }
    s->srtt = srtt;
    s->rttvar = rttvar;
    s->rto = rto;
    s->rto_obj = rto_obj;
    s->samples += 1;
    return 1;
}

/* ------------------------------------------------------------------ fast_input */

enum { NOT_TAKEN = 0, TAKEN = 1, TO_PYTHON = -1 };

/* What fast_input decided, before any write. */
typedef struct {
    PyObject *cc, *cfg, *counters, *rtt, *sndbuf, *rcvbuf;
    PyObject *now_obj, *una_obj;
    double now;
    long long rcv_nxt, una, d, n, snd_max, snd_nxt, snd_buf_seq, segments_in;
    int ka_set;
    double ka_deadline;
    /* the ACK of new data (d > 0) */
    long long cut;                   /* bytes acknowledged off the send buffer's front */
    int rtt_taken;
    RttSample rs;
    long long cwnd, ca_bytes;
    int ca_changed, rto_set;
    double rto_deadline;
    /* the window */
    long long wnd;
    PyObject *wnd_obj;               /* SND.WND's object when the window is unchanged */
    int persist_reset, max_changed;
    /* the data (n > 0) */
    long long rcv_mss, unacked, bytes_in;
    int rcv_mss_changed, ack_now, ack_now_set, delack_set;
    double delack_deadline;
    /* the result */
    int result;                      /* 1 or 2 */
} FastIn;

/* The ACK part for d > 0 bytes newly acknowledged (_on_new_ack outside fast recovery):
 * _advance_una with its RTT sample, NewReno.on_ack, the retransmission timer. */
static int fi_plan_ack(PyObject *self, FastIn *f)
{
    const Py_ssize_t *o = conn_off;
    long long ack = f->una + f->d, rtt_seq = 0;
    int has_rtt_seq;
    if (!get_opt_int(GET(self, o, C_RTT_SEQ), &has_rtt_seq, &rtt_seq))
        return TO_PYTHON;
    /* _advance_una: drop the acknowledged bytes */
    long long data_end = f->snd_buf_seq + PyByteArray_GET_SIZE(f->sndbuf);
    long long top = ack < data_end ? ack : data_end;
    f->cut = top > f->snd_buf_seq ? top - f->snd_buf_seq : 0;
    if (f->cut && !resizable(f->sndbuf))
        return TO_PYTHON;   /* `del buf[:k]` raises there */
    /* the RTT sample (Karn: only the timed segment) */
    PyObject *rtt = f->rtt = GET(self, o, C_RTT);
    if (rtt == NULL || Py_TYPE(rtt) != rtt_cls.type)
        return TO_PYTHON;
    f->rtt_taken = has_rtt_seq && ack >= rtt_seq;
    if (f->rtt_taken) {
        double t0;
        if (!get_num(GET(self, o, C_RTT_TIME), &t0) || !rtt_sample(rtt, f->now - t0, &f->rs))
            return TO_PYTHON;
    }
    /* NewReno.on_ack(d): slow start, or congestion avoidance */
    PyObject *cc = f->cc;
    long long ssthresh, mss;
    if (!get_int(GET(cc, cc_off, K_CWND), &f->cwnd) || !get_int_for_compare(GET(cc, cc_off, K_SSTHRESH), &ssthresh)
        || !get_int(GET(cc, cc_off, K_MSS), &mss))
        return TO_PYTHON;
    f->ca_changed = f->cwnd >= ssthresh;
    if (!f->ca_changed)
        f->cwnd += f->d < 2 * mss ? f->d : 2 * mss;
    else {
        if (!get_int(GET(cc, cc_off, K_CA_BYTES), &f->ca_bytes))
            return TO_PYTHON;
        f->ca_bytes += f->d;
        if (f->ca_bytes >= f->cwnd) {
            f->ca_bytes -= f->cwnd;
            f->cwnd += mss;
        }
    }
    /* the retransmission timer: now + rto (the backoff was just cleared), or off */
    f->rto_set = f->snd_max > ack;
    if (f->rto_set) {
        double rto, max_rto;
        if (f->rtt_taken)
            rto = f->rs.rto;
        else if (!get_num(GET(rtt, rtt_off, R_RTO), &rto))
            return TO_PYTHON;
        if (!get_num(GET(f->cfg, config_off, G_MAX_RTO), &max_rto))
            return TO_PYTHON;
        if (rto > max_rto)
            rto = max_rto;
        f->rto_deadline = f->now + rto;
    }
    /* SND.UNA and SND.NXT move, the send buffer's front with SND.UNA */
    f->snd_buf_seq += f->cut;
    if (f->snd_nxt < ack)
        f->snd_nxt = ack;
    return TAKEN;
}

/* The data part: in-order data that fits, nothing held out of order (_on_data's common
 * case) and the delayed-ACK rules. */
static int fi_plan_data(PyObject *self, FastIn *f, int flags)
{
    const Py_ssize_t *o = conn_off;
    PyObject *cfg = f->cfg;
    long long cfg_mss;
    int has_delack, has_dd, ack_on_push;
    double delack, dd;
    if (!get_int(GET(self, o, C_RCV_MSS), &f->rcv_mss) || !get_int(GET(self, o, C_UNACKED_RCV), &f->unacked)
        || !get_opt_num(GET(self, o, C_DELACK_DEADLINE), &has_dd, &dd)
        || !get_int(GET(f->counters, counters_off, N_BYTES_IN), &f->bytes_in)
        || !get_int(GET(cfg, config_off, G_MSS), &cfg_mss)
        || !get_opt_num(GET(cfg, config_off, G_DELAYED_ACK), &has_delack, &delack)
        || !get_truth(GET(cfg, config_off, G_ACK_ON_PUSH), &ack_on_push))
        return TO_PYTHON;
    long long n = f->n;
    f->bytes_in += n;
    f->rcv_mss_changed = n > f->rcv_mss;
    if (f->rcv_mss_changed)
        f->rcv_mss = n < cfg_mss ? n : cfg_mss;
    f->unacked += n;
    f->delack_set = 0;
    if (f->ack_now)
        return TAKEN;
    if (f->unacked >= 2 * f->rcv_mss || !has_delack || delack == 0)
        f->ack_now = f->ack_now_set = 1;
    else if ((flags & FL_PSH) && ack_on_push) {   /* the ACK of a push: at once, or soon */
        int has_soon;
        double soon;
        if (!get_opt_num(GET(cfg, config_off, G_PUSH_ACK_DELAY), &has_soon, &soon))
            return TO_PYTHON;
        if (!has_soon || soon == 0)
            f->ack_now = f->ack_now_set = 1;
        else if (!has_dd || dd > f->now + soon) {
            f->delack_set = 1;
            f->delack_deadline = f->now + soon;
        }
    }
    else if (!has_dd) {
        f->delack_set = 1;
        f->delack_deadline = f->now + delack;
    }
    return TAKEN;
}

/* fast_input's arguments: the Python call's (args), or, from rx_established (args ==
 * NULL), the header fields as C values, the payload already in *payload and now_obj. */
typedef struct {
    PyObject *const *args;
    long long seq32, ack32, flags, window;
    PyObject *now_obj;
} FiArgs;

/* Argument i (0 seq32, 1 ack32, 2 flags, 3 window) as get_int. */
static inline Py_ALWAYS_INLINE int fi_arg(const FiArgs *a, int i, long long *out)
{
    if (a->args != NULL)
        return get_int(a->args[i], out);
    *out = i == 0 ? a->seq32 : i == 1 ? a->ack32 : i == 2 ? a->flags : a->window;
    return 1;
}

/* fast_input's checks and computations, in the Python method's order: NOT_TAKEN (it
 * returns 0), TAKEN (f holds every effect) or TO_PYTHON.  Writes nothing. */
static int fi_plan(PyObject *self, const FiArgs *a, FastIn *f, Py_buffer *payload, int *have_payload)
{
    const Py_ssize_t *o = conn_off;
    long long seq32, ack32, flags, window, wscale, snd_wnd, max_snd_wnd;
    /* header prediction */
    PyObject *cc = f->cc = GET(self, o, C_CC), *state = GET(self, o, C_STATE);
    if (cc == NULL || Py_TYPE(cc) != cc_cls.type || state == NULL || !get_int(GET(self, o, C_RCV_NXT), &f->rcv_nxt)
        || !fi_arg(a, 0, &seq32) || !fi_arg(a, 2, &flags))
        return TO_PYTHON;
    if (state != established || (flags != FL_ACK && flags != (FL_ACK | FL_PSH))
        || (unsigned long long)seq32 != ((unsigned long long)f->rcv_nxt & SEQ_MASK))
        return NOT_TAKEN;
    PyObject *ooo = GET(self, o, C_OOO), *starts, *ooo_fin = GET(self, o, C_OOO_FIN);
    int fin_queued, in_recovery;
    if (ooo == NULL || Py_TYPE(ooo) != ooo_cls.type || (starts = GET(ooo, ooo_off, O_STARTS)) == NULL
        || !PyList_CheckExact(starts) || ooo_fin == NULL
        || !get_truth(GET(self, o, C_FIN_QUEUED), &fin_queued)
        || !get_truth(GET(cc, cc_off, K_IN_RECOVERY), &in_recovery))
        return TO_PYTHON;
    if (PyList_GET_SIZE(starts) || ooo_fin != Py_None || fin_queued || in_recovery)
        return NOT_TAKEN;
    f->una_obj = GET(self, o, C_SND_UNA);
    if (!get_int(f->una_obj, &f->una) || !fi_arg(a, 1, &ack32) || !get_int(GET(self, o, C_SND_MAX), &f->snd_max))
        return TO_PYTHON;
    f->d = (long long)((unsigned long long)(ack32 - f->una) & SEQ_MASK);
    if (f->d >= 0x80000000LL || f->una + f->d > f->snd_max)
        return NOT_TAKEN;   /* an old or a bad ACK */
    if (a->args != NULL) {
        if (!get_payload(a->args[4], payload))
            return TO_PYTHON;
        *have_payload = 1;
    }
    f->n = payload->len;
    PyObject *cfg = f->cfg = GET(self, o, C_CONFIG);
    if (cfg == NULL || Py_TYPE(cfg) != config_cls.type)
        return TO_PYTHON;
    if (f->n) {
        long long bufsize, rcv_adv;
        PyObject *rcvbuf = f->rcvbuf = GET(self, o, C_RCVBUF);
        if (rcvbuf == NULL || !PyByteArray_CheckExact(rcvbuf)
            || !get_int(GET(cfg, config_off, G_RECV_BUFFER_SIZE), &bufsize)
            || !get_int(GET(self, o, C_RCV_ADV), &rcv_adv))
            return TO_PYTHON;
        long long space = bufsize - PyByteArray_GET_SIZE(rcvbuf), adv = rcv_adv - f->rcv_nxt;
        if (f->n > (space > adv ? space : adv))
            return NOT_TAKEN;   /* beyond the window (or a zero window): trimming rules */
        if (!resizable(rcvbuf))
            return TO_PYTHON;   /* `rcvbuf += payload` raises there */
    }
    else if (!f->d)
        return NOT_TAKEN;   /* no data, nothing new acknowledged: the duplicate-ACK rules */

    /* accepted: the rest is read and computed here, a surprise goes to Python */
    PyObject *counters = f->counters = GET(self, o, C_COUNTERS), *ctl = GET(self, o, C_CTL);
    PyObject *sndbuf = f->sndbuf = GET(self, o, C_SNDBUF);
    int has_ka, rexmit;
    double ka_idle;
    f->now_obj = a->args != NULL ? a->args[5] : a->now_obj;
    if (!PyFloat_CheckExact(f->now_obj) || counters == NULL || Py_TYPE(counters) != counters_cls.type
        || !get_int(GET(counters, counters_off, N_SEGMENTS_IN), &f->segments_in)
        || !get_opt_num(GET(self, o, C_KA_IDLE), &has_ka, &ka_idle)
        || !fi_arg(a, 3, &window) || window < 0 || window > 0xFFFFFFFFLL
        || !get_int(GET(self, o, C_SND_WSCALE), &wscale) || wscale < 0 || wscale > 16
        || !get_int(GET(self, o, C_SND_WND), &snd_wnd) || !get_int(GET(self, o, C_MAX_SND_WND), &max_snd_wnd)
        || sndbuf == NULL || !PyByteArray_CheckExact(sndbuf)
        || !get_int(GET(self, o, C_SND_BUF_SEQ), &f->snd_buf_seq) || !get_int(GET(self, o, C_SND_NXT), &f->snd_nxt)
        || !get_truth(GET(self, o, C_ACK_NOW), &f->ack_now)
        || !get_truth(GET(self, o, C_RETRANSMIT_NOW), &rexmit) || ctl == NULL || !PyList_CheckExact(ctl))
        return TO_PYTHON;
    f->now = PyFloat_AS_DOUBLE(f->now_obj);
    f->segments_in += 1;
    f->ka_set = has_ka;
    if (has_ka)
        f->ka_deadline = f->now + ka_idle;
    if (f->d && fi_plan_ack(self, f) != TAKEN)
        return TO_PYTHON;
    /* _set_send_window(window << wscale, RCV.NXT, ack) */
    f->wnd = window << wscale;
    f->wnd_obj = f->wnd == snd_wnd ? GET(self, o, C_SND_WND) : NULL;
    f->persist_reset = f->wnd && !snd_wnd;
    f->max_changed = f->wnd > max_snd_wnd;
    if (f->n && fi_plan_data(self, f, (int)flags) != TAKEN)
        return TO_PYTHON;
    /* 2: poll() has work now (an ACK due, a control segment, a retransmission, or queued
     * data beyond SND.NXT that the ACK may have let out), else 1 */
    long long sndbuf_len = PyByteArray_GET_SIZE(sndbuf) - f->cut;
    f->result = (f->ack_now || PyList_GET_SIZE(ctl) || rexmit || f->snd_buf_seq + sndbuf_len > f->snd_nxt) ? 2 : 1;
    return TAKEN;
}

/* Apply what fi_plan decided; returns the result (1 or 2), or NULL on a memory error
 * (nothing changed then). */
static PyObject *fi_commit(PyObject *self, FastIn *f, Py_buffer *payload)
{
    const Py_ssize_t *o = conn_off;
    PyObject *zero = PyLong_FromLong(0);  /* a cached small int: cannot fail */
    Writes ws;
    ws.n = ws.failed = 0;
    /* on_segment's bookkeeping */
    stage_obj(&ws, self, o[C_NOW], f->now_obj);
    stage_int(&ws, f->counters, counters_off[N_SEGMENTS_IN], f->segments_in);
    if (f->ka_set) {
        stage_float(&ws, self, o[C_KEEPALIVE_DEADLINE], f->ka_deadline);
        stage_obj(&ws, self, o[C_KEEPALIVE_SENT], zero);
    }
    stage_obj(&ws, self, o[C_PROBES_OUT], zero);
    /* the ACK */
    PyObject *ack = f->d ? PyLong_FromLongLong(f->una + f->d) : (Py_INCREF(f->una_obj), f->una_obj);
    if (ack == NULL)
        ws.failed = 1;
    else if (f->d) {
        if (f->cut)
            stage_int(&ws, self, o[C_SND_BUF_SEQ], f->snd_buf_seq);
        stage_obj(&ws, self, o[C_SND_UNA], ack);
        if (f->snd_nxt == f->una + f->d)
            stage_obj(&ws, self, o[C_SND_NXT], ack);
        if (f->rtt_taken) {
            stage_float(&ws, f->rtt, rtt_off[R_SRTT], f->rs.srtt);
            stage_float(&ws, f->rtt, rtt_off[R_RTTVAR], f->rs.rttvar);
            if (f->rs.rto_obj != NULL)
                stage_obj(&ws, f->rtt, rtt_off[R_RTO], f->rs.rto_obj);
            else
                stage_float(&ws, f->rtt, rtt_off[R_RTO], f->rs.rto);
            stage_int(&ws, f->rtt, rtt_off[R_SAMPLES], f->rs.samples);
            stage_obj(&ws, self, o[C_RTT_SEQ], Py_None);
        }
        stage_obj(&ws, self, o[C_RETRIES], zero);
        stage_obj(&ws, self, o[C_BACKOFF], zero);
        stage_obj(&ws, self, o[C_DUPACKS], zero);
        stage_int(&ws, f->cc, cc_off[K_CWND], f->cwnd);
        if (f->ca_changed)
            stage_int(&ws, f->cc, cc_off[K_CA_BYTES], f->ca_bytes);
        if (f->rto_set)
            stage_float(&ws, self, o[C_RTO_DEADLINE], f->rto_deadline);
        else
            stage_obj(&ws, self, o[C_RTO_DEADLINE], Py_None);
    }
    /* the window */
    if (f->persist_reset) {
        stage_obj(&ws, self, o[C_PERSIST_BACKOFF], zero);
        stage_obj(&ws, self, o[C_PERSIST_DEADLINE], Py_None);
    }
    PyObject *wnd = f->wnd_obj != NULL ? (Py_INCREF(f->wnd_obj), f->wnd_obj) : PyLong_FromLongLong(f->wnd);
    if (wnd != NULL && f->max_changed)
        stage_obj(&ws, self, o[C_MAX_SND_WND], wnd);
    stage(&ws, self, o[C_SND_WND], wnd);
    stage_obj(&ws, self, o[C_SND_WL1], GET(self, o, C_RCV_NXT));
    if (ack != NULL)
        stage(&ws, self, o[C_SND_WL2], ack);
    /* the data */
    if (f->n) {
        stage_int(&ws, self, o[C_RCV_NXT], f->rcv_nxt + f->n);
        stage_int(&ws, f->counters, counters_off[N_BYTES_IN], f->bytes_in);
        if (f->rcv_mss_changed)
            stage_int(&ws, self, o[C_RCV_MSS], f->rcv_mss);
        stage_int(&ws, self, o[C_UNACKED_RCV], f->unacked);
        if (f->ack_now_set)
            stage_obj(&ws, self, o[C_ACK_NOW], Py_True);
        if (f->delack_set)
            stage_float(&ws, self, o[C_DELACK_DEADLINE], f->delack_deadline);
    }
    if (f->result == 2)
        stage_obj(&ws, self, o[C_DIRTY], Py_True);
    Py_DECREF(zero);
    PyObject *result = PyLong_FromLong(f->result);  /* cached small int */
    if (ws.failed) {
        writes_drop(&ws);
        return NULL;
    }
    /* the two bytearrays (the only steps that can fail, on memory), then the slots */
    Py_ssize_t rcv_len = 0;
    if (f->n) {
        rcv_len = PyByteArray_GET_SIZE(f->rcvbuf);
        if (PyByteArray_Resize(f->rcvbuf, rcv_len + (Py_ssize_t)f->n) < 0) {
            writes_drop(&ws);
            return NULL;
        }
        memcpy(PyByteArray_AS_STRING(f->rcvbuf) + rcv_len, payload->buf, (size_t)f->n);
    }
    if (f->cut && (f->cut == PyByteArray_GET_SIZE(f->sndbuf)   /* all: `del buf[:]` */
                   ? PyByteArray_Resize(f->sndbuf, 0) : PySequence_DelSlice(f->sndbuf, 0, (Py_ssize_t)f->cut)) < 0) {
        if (f->n)
            (void)PyByteArray_Resize(f->rcvbuf, rcv_len);   /* back (shrinking) */
        writes_drop(&ws);
        return NULL;
    }
    writes_apply(&ws);
    return result;
}

PyDoc_STRVAR(fast_input_doc,
"fast_input(seq32, ack32, flags, window, payload, now) -> 0, 1 or 2\n\n"
"TcpConnection._fast_input_py (header prediction) in C: libos/inet/_tcpfast.c.");

static PyObject *fast_input(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (Py_TYPE(self) != conn_cls.type || nargs != 6 || kwnames != NULL)
        return call_python(py_fast_input, 0, self, args, nargs, kwnames);
    FastIn f = {0};
    Py_buffer payload;
    int have_payload = 0;
    PyObject *res = NULL;
    FiArgs a = { args, 0, 0, 0, 0, NULL };
    int r = fi_plan(self, &a, &f, &payload, &have_payload);
    if (r == NOT_TAKEN)
        res = PyLong_FromLong(0);
    else if (r == TAKEN)
        res = fi_commit(self, &f, &payload);
    if (have_payload)
        PyBuffer_Release(&payload);
    if (r == TO_PYTHON)
        return call_python(py_fast_input, 0, self, args, nargs, kwnames);
    return res;
}

/* ------------------------------------------------------------------ poll_data */

/* TcpConnection._advertise: the window field of a non-SYN segment, and the new advertised
 * right edge (*rcv_adv).  0: a field of unexpected type. */
static int advertise(PyObject *self, PyObject *cfg, long long rcv_nxt, long long *field_out, long long *rcv_adv)
{
    const Py_ssize_t *o = conn_off;
    long long bufsize, adv, sws, ws;
    PyObject *rcvbuf = GET(self, o, C_RCVBUF);
    if (rcvbuf == NULL || !PyByteArray_CheckExact(rcvbuf)
        || !get_int(GET(cfg, config_off, G_RECV_BUFFER_SIZE), &bufsize) || !get_int(GET(self, o, C_RCV_ADV), &adv)
        || !get_int(GET(self, o, C_SWS_THRESHOLD), &sws)
        || !get_int(GET(self, o, C_RCV_WSCALE), &ws) || ws < 0 || ws > 30)
        return 0;
    long long free = bufsize - PyByteArray_GET_SIZE(rcvbuf), cur = adv - rcv_nxt;
    if (cur < 0)
        cur = 0;
    if (free > cur) {
        if (free - cur < sws)   /* receiver SWS avoidance */
            free = cur;
    }
    else
        free = cur;             /* never shrink the window */
    long long field = free >> ws;
    if (field > 0xFFFF)
        field = 0xFFFF;
    else if ((field << ws) < cur)
        field += 1;
    *field_out = field;
    *rcv_adv = rcv_nxt + (field << ws);
    return 1;
}

/* What poll_data decided, before any write. */
typedef struct {
    PyObject *counters, *now_obj, *rcv_nxt_obj;
    double now;
    long long nxt, off, n, rcv_nxt, window, rcv_adv;
    long long bytes_out, segments_out, delayed_acks;
    int delack_clear, delack_counted, rtt_start, rto_set;
    double rto_deadline;
} PollData;

/* poll_data's checks and computations: NOT_TAKEN (it returns None), TAKEN or TO_PYTHON.
 * Writes nothing. */
static int pd_plan(PyObject *self, PyObject *now_obj, PollData *p)
{
    const Py_ssize_t *o = conn_off;
    int rexmit, fin_queued, has_rto, has_ka;
    double now, rto_d, ka_d;
    PyObject *ooo = GET(self, o, C_OOO), *starts, *persist = GET(self, o, C_PERSIST_DEADLINE);
    if (!PyFloat_CheckExact(now_obj) || !get_truth(GET(self, o, C_RETRANSMIT_NOW), &rexmit)
        || !get_truth(GET(self, o, C_FIN_QUEUED), &fin_queued)
        || ooo == NULL || Py_TYPE(ooo) != ooo_cls.type || (starts = GET(ooo, ooo_off, O_STARTS)) == NULL
        || !PyList_CheckExact(starts) || persist == NULL)
        return TO_PYTHON;
    if (rexmit || fin_queued || PyList_GET_SIZE(starts) || persist != Py_None)
        return NOT_TAKEN;
    p->now_obj = now_obj;
    now = p->now = PyFloat_AS_DOUBLE(now_obj);
    if (!get_opt_num(GET(self, o, C_RTO_DEADLINE), &has_rto, &rto_d))
        return TO_PYTHON;
    if (has_rto && now >= rto_d)
        return NOT_TAKEN;   /* the RTO is due */
    if (!get_opt_num(GET(self, o, C_KEEPALIVE_DEADLINE), &has_ka, &ka_d))
        return TO_PYTHON;
    if (has_ka && now >= ka_d)
        return NOT_TAKEN;   /* a keepalive is due */
    /* one segment of new data, all that is queued, that the windows and Nagle let out */
    long long buf_seq, mss, snd_max, una, room, cwnd;
    PyObject *sndbuf = GET(self, o, C_SNDBUF), *cc = GET(self, o, C_CC), *cfg = GET(self, o, C_CONFIG);
    if (!get_int(GET(self, o, C_SND_NXT), &p->nxt) || !get_int(GET(self, o, C_SND_BUF_SEQ), &buf_seq)
        || sndbuf == NULL || !PyByteArray_CheckExact(sndbuf) || !get_int(GET(self, o, C_SND_MSS), &mss)
        || !get_int(GET(self, o, C_SND_MAX), &snd_max))
        return TO_PYTHON;
    p->off = p->nxt - buf_seq;
    p->n = PyByteArray_GET_SIZE(sndbuf) - p->off;
    if (p->n <= 0 || p->n > mss || p->nxt != snd_max)
        return NOT_TAKEN;
    if (!get_int(GET(self, o, C_SND_UNA), &una) || !get_int(GET(self, o, C_SND_WND), &room)
        || cc == NULL || Py_TYPE(cc) != cc_cls.type || !get_int(GET(cc, cc_off, K_CWND), &cwnd)
        || cfg == NULL || Py_TYPE(cfg) != config_cls.type)
        return TO_PYTHON;
    if (cwnd < room)
        room = cwnd;
    if (una + room - p->nxt < p->n)
        return NOT_TAKEN;
    if (p->n < mss && p->nxt > una) {
        int nagle;
        if (!get_truth(GET(cfg, config_off, G_NAGLE), &nagle))
            return TO_PYTHON;
        if (nagle)
            return NOT_TAKEN;
    }
    /* taken: the segment goes out */
    PyObject *counters = p->counters = GET(self, o, C_COUNTERS);
    int has_dd, has_rtt_seq, ack_now;
    double dd;
    long long rtt_seq;
    p->rcv_nxt_obj = GET(self, o, C_RCV_NXT);
    if (counters == NULL || Py_TYPE(counters) != counters_cls.type
        || !get_int(GET(counters, counters_off, N_BYTES_OUT), &p->bytes_out)
        || !get_int(GET(counters, counters_off, N_SEGMENTS_OUT), &p->segments_out)
        || !get_opt_num(GET(self, o, C_DELACK_DEADLINE), &has_dd, &dd)
        || !get_opt_int(GET(self, o, C_RTT_SEQ), &has_rtt_seq, &rtt_seq)
        || !get_int(p->rcv_nxt_obj, &p->rcv_nxt) || !advertise(self, cfg, p->rcv_nxt, &p->window, &p->rcv_adv))
        return TO_PYTHON;
    /* the segment carries the ACK: a delayed ACK that was due is counted as sent */
    p->delack_clear = has_dd;
    p->delack_counted = 0;
    if (has_dd && now >= dd) {
        if (!get_truth(GET(self, o, C_ACK_NOW), &ack_now))
            return TO_PYTHON;
        if (!ack_now) {
            if (!get_int(GET(counters, counters_off, N_DELAYED_ACKS), &p->delayed_acks))
                return TO_PYTHON;
            p->delayed_acks += 1;
            p->delack_counted = 1;
        }
    }
    p->bytes_out += p->n;
    p->segments_out += 1;
    p->rtt_start = !has_rtt_seq;
    /* the retransmission timer, unless running: now + self.rto */
    p->rto_set = !has_rto;
    if (p->rto_set) {
        long long backoff;
        double rto, max_rto;
        PyObject *rtt = GET(self, o, C_RTT);
        if (rtt == NULL || Py_TYPE(rtt) != rtt_cls.type || !get_num(GET(rtt, rtt_off, R_RTO), &rto)
            || !get_num(GET(cfg, config_off, G_MAX_RTO), &max_rto)
            || !get_int(GET(self, o, C_BACKOFF), &backoff) || backoff < 0)
            return TO_PYTHON;
        if (backoff)   /* the rto property: doubled per timeout, up to max_rto */
            rto = backoff < 30 ? rto * (double)(1LL << backoff) : max_rto;
        p->rto_deadline = now + (rto < max_rto ? rto : max_rto);
    }
    return TAKEN;
}

/* Apply what pd_plan decided; returns (seq32, ack32, window, off, n) (None when !want_tuple),
 * or NULL on a memory error (nothing changed then). */
static PyObject *pd_commit(PyObject *self, PollData *p, int want_tuple)
{
    const Py_ssize_t *o = conn_off;
    PyObject *zero = PyLong_FromLong(0);  /* a cached small int: cannot fail */
    long long end = p->nxt + p->n;
    Writes ws;
    ws.n = ws.failed = 0;
    stage_obj(&ws, self, o[C_NOW], p->now_obj);
    if (p->delack_clear)
        stage_obj(&ws, self, o[C_DELACK_DEADLINE], Py_None);
    if (p->delack_counted)
        stage_int(&ws, p->counters, counters_off[N_DELAYED_ACKS], p->delayed_acks);
    stage_int(&ws, p->counters, counters_off[N_BYTES_OUT], p->bytes_out);
    stage_int(&ws, p->counters, counters_off[N_SEGMENTS_OUT], p->segments_out);
    PyObject *end_obj = PyLong_FromLongLong(end);
    if (end_obj != NULL && p->rtt_start) {
        stage_obj(&ws, self, o[C_RTT_SEQ], end_obj);
        stage_obj(&ws, self, o[C_RTT_TIME], p->now_obj);
    }
    if (end_obj != NULL)
        stage_obj(&ws, self, o[C_SND_NXT], end_obj);
    stage(&ws, self, o[C_SND_MAX], end_obj);
    stage_obj(&ws, self, o[C_RCV_WUP], p->rcv_nxt_obj);
    stage_int(&ws, self, o[C_RCV_ADV], p->rcv_adv);
    stage_obj(&ws, self, o[C_ACK_NOW], Py_False);
    stage_obj(&ws, self, o[C_UNACKED_RCV], zero);
    if (p->rto_set)
        stage_float(&ws, self, o[C_RTO_DEADLINE], p->rto_deadline);
    stage_obj(&ws, self, o[C_DIRTY], Py_False);
    Py_DECREF(zero);
    long long fields[5] = {
        (long long)((unsigned long long)p->nxt & SEQ_MASK), (long long)((unsigned long long)p->rcv_nxt & SEQ_MASK),
        p->window, p->off, p->n,
    };
    PyObject *res = ws.failed ? NULL : want_tuple ? PyTuple_New(5) : Py_NewRef(Py_None);
    for (int i = 0; want_tuple && res != NULL && i < 5; i++) {
        PyObject *x = PyLong_FromLongLong(fields[i]);
        if (x == NULL)
            Py_CLEAR(res);
        else
            PyTuple_SET_ITEM(res, i, x);
    }
    if (res == NULL) {
        writes_drop(&ws);
        return NULL;
    }
    writes_apply(&ws);
    return res;
}

PyDoc_STRVAR(poll_data_doc,
"poll_data(now) -> (seq32, ack32, window, off, n) or None\n\n"
"TcpConnection._poll_data_py (poll's one-new-segment case) in C: libos/inet/_tcpfast.c.");

static PyObject *poll_data(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (Py_TYPE(self) != conn_cls.type || nargs != 1 || kwnames != NULL)
        return call_python(py_poll_data, 1, self, args, nargs, kwnames);
    PollData p = {0};
    int r = pd_plan(self, args[0], &p);
    if (r == NOT_TAKEN)
        Py_RETURN_NONE;
    if (r == TAKEN)
        return pd_commit(self, &p, 1);
    return call_python(py_poll_data, 1, self, args, nargs, kwnames);
}

/* ------------------------------------------------------------------ rx_established
 * Stack.receive for a frame that tcp_rx (libos/inet/_csum_build.py) passed, when it is an
 * option-less segment of a known connection that header prediction takes: the part of
 * receive after tcp_rx (the _RX_C unpack, Stack._tcp_checked up to fast_input, the
 * bookkeeping after it: _events, _active, Stack._schedule with
 * TcpConnection.next_deadline(False)) without a Python frame.  Anything else (a Stack
 * subclass, options, an unknown connection, a TcpConnection subclass, fast_input replaced
 * on the class, a segment header prediction does not take or hands to Python, an attribute
 * of the stack of unexpected type...) returns False before anything was changed, and
 * receive continues with its Python path, which does it all again. */

enum { S_CONNS, S_EVENTS, S_ACTIVE, S_ACK_SCHED, S_ACK_TIMERS, S_SCHED, S_TIMERS, S_TIMER_N, S_N };
static const char *const stack_names[S_N] = {
    "_conns", "_events", "_active", "_ack_sched", "_ack_timers", "_sched", "_timers", "_timer_n",
};
static PyObject *stack_keys[S_N];   /* interned */
static PyTypeObject *stack_type;    /* Stack (exactly) */
static PyObject *fi_name;           /* "fast_input" */
static PyObject *fi_descr;          /* the C fast_input installed on TcpConnection */
static PyObject *heappush;          /* heapq.heappush */
static unsigned long long rx_counts[2];  /* handled here, returned False */

static inline unsigned rd16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline unsigned long rd32(const unsigned char *p)
{
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | p[3];
}

/* self._timer_n += 1; heapq.heappush(heap, (d, self._timer_n, conn)) */
static int push_timer(PyObject *sdict, PyObject *heap, PyObject *d, PyObject *conn)
{
    PyObject *n = PyDict_GetItemWithError(sdict, stack_keys[S_TIMER_N]);
    if (n == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "'Stack' object has no attribute '_timer_n'");
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    n = PyNumber_Add(n, one);
    Py_DECREF(one);
    if (n == NULL)
        return -1;
    if (PyDict_SetItem(sdict, stack_keys[S_TIMER_N], n) < 0) {
        Py_DECREF(n);
        return -1;
    }
    PyObject *entry = PyTuple_New(3);
    if (entry == NULL) {
        Py_DECREF(n);
        return -1;
    }
    Py_INCREF(d);
    Py_INCREF(conn);
    PyTuple_SET_ITEM(entry, 0, d);
    PyTuple_SET_ITEM(entry, 1, n);
    PyTuple_SET_ITEM(entry, 2, conn);
    PyObject *argv[2] = { heap, entry };
    PyObject *r = PyObject_Vectorcall(heappush, argv, 2, NULL);
    Py_DECREF(entry);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* TcpConnection.next_deadline(conn, False): a borrowed reference (NULL with an error set
 * only on a failed comparison). */
static PyObject *next_deadline(PyObject *conn)
{
    const Py_ssize_t *o = conn_off;
    static const int flags[4] = { C_DIRTY, C_ACK_NOW, C_CTL, C_RETRANSMIT_NOW };
    for (int i = 0; i < 4; i++) {
        int t = PyObject_IsTrue(GET(conn, o, flags[i]));
        if (t < 0)
            return NULL;
        if (t)
            return GET(conn, o, C_NOW);
    }
    PyObject *best = GET(conn, o, C_RTO_DEADLINE);
    static const int others[3] = { C_PERSIST_DEADLINE, C_KEEPALIVE_DEADLINE, C_CLOSE_DEADLINE };
    for (int i = 0; i < 3; i++) {
        PyObject *d = GET(conn, o, others[i]);
        if (d == Py_None)
            continue;
        int lt = 1;
        if (best != Py_None && (lt = PyObject_RichCompareBool(d, best, Py_LT)) < 0)
            return NULL;
        if (lt)
            best = d;
    }
    return best;
}

/* Stack._schedule(conn); s holds the stack's attributes. */
static int schedule(PyObject *sdict, PyObject *const *s, PyObject *conn)
{
    PyObject *d = GET(conn, conn_off, C_DELACK_DEADLINE);
    if (d != Py_None) {
        PyObject *old = PyDict_GetItemWithError(s[S_ACK_SCHED], conn);
        int later = 1;
        if (old == NULL && PyErr_Occurred())
            return -1;
        if (old != NULL && old != Py_None && (later = PyObject_RichCompareBool(old, d, Py_GT)) < 0)
            return -1;
        if (later) {
            Py_INCREF(d);   /* (the dict's old value may have been the only other reference) */
            int err = PyDict_SetItem(s[S_ACK_SCHED], conn, d) < 0 || push_timer(sdict, s[S_ACK_TIMERS], d, conn) < 0;
            Py_DECREF(d);
            if (err)
                return -1;
        }
    }
    d = next_deadline(conn);
    if (d == NULL)
        return -1;
    if (d == Py_None)
        return 0;
    Py_INCREF(d);
    int err = 0;
    PyObject *old = PyDict_GetItemWithError(s[S_SCHED], conn);
    if (old == NULL && PyErr_Occurred())
        err = 1;
    else {
        int le = 0;
        if (old != NULL && old != Py_None && (le = PyObject_RichCompareBool(old, d, Py_LE)) < 0)
            err = 1;
        else if (!le)
            err = PyDict_SetItem(s[S_SCHED], conn, d) < 0 || push_timer(sdict, s[S_TIMERS], d, conn) < 0;
    }
    Py_DECREF(d);
    return err ? -1 : 0;
}

PyDoc_STRVAR(rx_established_doc,
"rx_established(stack, frame, total, now) -> bool\n\n"
"Stack.receive after tcp_rx returned total > 0, for a segment header prediction takes:\n"
"True when done; False (nothing changed) when receive must go on in Python.");

static PyObject *rx_established(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || stack_type == NULL || conn_cls.type == NULL || Py_TYPE(args[0]) != stack_type)
        goto declined_early;
    PyObject *stack = args[0], *frame = args[1], *now_obj = args[3];
    long long total;
    if (!get_int(args[2], &total) || total < 40 || !PyFloat_CheckExact(now_obj))
        goto declined_early;
    PyObject **dictptr = _PyObject_GetDictPtr(stack), *sdict;
    if (dictptr == NULL || (sdict = *dictptr) == NULL || !PyDict_CheckExact(sdict))
        goto declined_early;
    Py_buffer buf;
    if (PyObject_GetBuffer(frame, &buf, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        goto declined_early;
    }
    PyObject *conn = NULL, *res = NULL;
    int have_payload = 0;
    const unsigned char *p = buf.buf;
    if (buf.len < 14 + total || (rd16(p + 46) >> 12) != 5)
        goto declined;   /* short (tcp_rx checked it), or options */
    /* the stack's attributes, checked before anything changes */
    PyObject *s[S_N];
    for (int i = 0; i < S_N; i++)
        if ((s[i] = PyDict_GetItemWithError(sdict, stack_keys[i])) == NULL) {
            PyErr_Clear();
            goto declined;
        }
    if (!PyDict_CheckExact(s[S_CONNS]) || !PyAnySet_CheckExact(s[S_EVENTS]) || !PyDict_CheckExact(s[S_ACTIVE])
        || !PyDict_CheckExact(s[S_ACK_SCHED]) || !PyDict_CheckExact(s[S_SCHED])
        || !PyList_CheckExact(s[S_ACK_TIMERS]) || !PyList_CheckExact(s[S_TIMERS])
        || !PyLong_CheckExact(s[S_TIMER_N]) || PyFrozenSet_CheckExact(s[S_EVENTS]))
        goto declined;
    /* self._conns.get((src, sport, dport)) */
    PyObject *key = PyTuple_New(3);
    if (key == NULL)
        goto error;
    PyTuple_SET_ITEM(key, 0, PyLong_FromUnsignedLong(rd32(p + 26)));
    PyTuple_SET_ITEM(key, 1, PyLong_FromLong((long)rd16(p + 34)));
    PyTuple_SET_ITEM(key, 2, PyLong_FromLong((long)rd16(p + 36)));
    if (PyTuple_GET_ITEM(key, 0) == NULL || PyTuple_GET_ITEM(key, 1) == NULL || PyTuple_GET_ITEM(key, 2) == NULL) {
        Py_DECREF(key);
        goto error;
    }
    conn = PyDict_GetItemWithError(s[S_CONNS], key);
    Py_DECREF(key);
    if (conn == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto declined;
    }
    Py_INCREF(conn);   /* (released at the end, whatever happens) */
    if (Py_TYPE(conn) != conn_cls.type || _PyType_Lookup(conn_cls.type, fi_name) != fi_descr)
        goto declined;
    /* next_deadline's slots must be set (the others are checked by fi_plan) */
    static const int nd_slots[] = { C_DIRTY, C_CTL, C_NOW, C_RTO_DEADLINE, C_DELACK_DEADLINE,
                                    C_PERSIST_DEADLINE, C_KEEPALIVE_DEADLINE, C_CLOSE_DEADLINE };
    for (size_t i = 0; i < sizeof nd_slots / sizeof nd_slots[0]; i++)
        if (GET(conn, conn_off, nd_slots[i]) == NULL)
            goto declined;
    /* conn.fast_input(seq, ack, off_flags & 0x1FF, window, view[54:14 + total], now) */
    FiArgs a = { NULL, (long long)rd32(p + 38), (long long)rd32(p + 42), (long long)(rd16(p + 46) & 0x1FF),
                 (long long)rd16(p + 48), now_obj };
    Py_buffer payload;
    memset(&payload, 0, sizeof payload);
    payload.buf = (char *)buf.buf + 54;
    payload.len = (Py_ssize_t)total - 40;
    FastIn f;
    memset(&f, 0, sizeof f);
    if (fi_plan(conn, &a, &f, &payload, &have_payload) != TAKEN)
        goto declined;
    PyObject *r = fi_commit(conn, &f, &payload);
    if (r == NULL)
        goto error;
    Py_DECREF(r);
    /* self._events.add(conn); then _active or _schedule */
    if (PySet_Add(s[S_EVENTS], conn) < 0)
        goto error;
    if (f.result == 2) {
        if (PyDict_SetItem(s[S_ACTIVE], conn, Py_None) < 0)
            goto error;
    }
    else if (schedule(sdict, s, conn) < 0)
        goto error;
    rx_counts[0]++;
    res = Py_True;
    Py_INCREF(res);
    goto done;
declined:
    rx_counts[1]++;
    res = Py_False;
    Py_INCREF(res);
error:
done:
    Py_XDECREF(conn);
    PyBuffer_Release(&buf);
    return res;
declined_early:
    rx_counts[1]++;
    Py_RETURN_FALSE;
}

/* ------------------------------------------------------------------ tx_established
 * Stack.poll_connection's common case (a push's reply): an ESTABLISHED connection without
 * a control segment due, whose poll_data sends one data segment, to a next hop with a live
 * ARP entry: poll_data called in C, the frame built here (what _send_data builds with the
 * cffi tcp_data_frame: the same bytes, the stack's _ident advanced the same way), the
 * RTO/keepalive entry of _timers / _sched, and the out list swapped, as poll_connection does.
 * Anything else (a Stack or TcpConnection subclass, poll_data or Stack._send_data replaced on
 * the class, poll_data declining, a stale or missing ARP entry, a broadcast destination, a
 * frame that does not fit, an attribute of unexpected type...) returns None before anything
 * was changed, and poll_connection goes on in Python. */

enum { T_NOW, T_OUT, T_ARP, T_NETMASK, T_NET, T_GATEWAY, T_BROADCAST, T_TTL, T_IDENT, T_MAC_RAW,
       T_IP_INT, T_TX_C, T_TXCAP, T_N };
static const char *const tx_names[T_N] = {
    "_now", "_out", "_arp", "netmask", "_net", "gateway", "broadcast", "ttl", "_ident", "_mac_raw",
    "_ip_int", "_tx_c", "_txcap",
};
static PyObject *tx_keys[T_N];      /* interned */
static PyObject *pd_name;           /* "poll_data" */
static PyObject *pd_descr;          /* the C poll_data installed on TcpConnection */
static PyObject *sd_name;           /* "_send_data" */
static PyObject *sd_func;           /* Stack._send_data when setup_stack ran */
static unsigned long long tx_counts[2];  /* handled here, returned None */

static inline void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void put32(unsigned char *p, unsigned long v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static inline unsigned long long fold16(unsigned long long s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return s;
}

/* The Internet sum (not complemented, folded) of n bytes (libos/inet/_csum_build.py: inet_sum). */
static unsigned long long inet_sum(const unsigned char *p, size_t n)
{
    unsigned long long s = 0;
    while (n >= 8) {
        s += rd32(p);
        s += rd32(p + 4);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        s += rd16(p);
        p += 2;
        n -= 2;
    }
    if (n)
        s += (unsigned long long)p[0] << 8;
    return fold16(s);
}

/* tcp_frame of _csum_build.py for an option-less ACK|PSH segment whose payload is already at
 * f + 54: the Ethernet, IPv4 (DF) and TCP headers with both checksums. */
static void data_frame(unsigned char *f, const char *dmac, const char *smac, unsigned long src, unsigned long dst,
                       unsigned ident, unsigned ttl, unsigned sport, unsigned dport, unsigned long seq,
                       unsigned long ack, unsigned window, size_t plen)
{
    size_t tlen = 20 + plen, total = 20 + tlen;
    memcpy(f, dmac, 6);
    memcpy(f + 6, smac, 6);
    f[12] = 0x08; f[13] = 0x00;
    unsigned char *ip = f + 14;
    ip[0] = 0x45; ip[1] = 0;
    put16(ip + 2, (unsigned)total);
    put16(ip + 4, ident);
    put16(ip + 6, 0x4000);
    ip[8] = (unsigned char)ttl; ip[9] = 6;
    put32(ip + 12, src);
    put32(ip + 16, dst);
    unsigned long long s = 0x4500 + (unsigned long long)total + ident + 0x4000 + ((ttl << 8) | 6)
                           + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF);
    put16(ip + 10, (unsigned)(~fold16(s) & 0xFFFF));
    unsigned char *t = f + 34;
    put16(t, sport);
    put16(t + 2, dport);
    put32(t + 4, seq);
    put32(t + 8, ack);
    put16(t + 12, (20 << 10) | 0x18);
    put16(t + 14, window);
    put16(t + 16, 0);
    put16(t + 18, 0);
    s = inet_sum(t, tlen) + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + tlen;
    put16(t + 16, (unsigned)(~fold16(s) & 0xFFFF));
}

/* An int (or int subclass: Ipv4Address) in lo..hi. */
static inline int get_ranged(PyObject *v, long long lo, long long hi, long long *out)
{
    if (v == NULL || !PyLong_Check(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow || x < lo || x > hi)
        return 0;
    *out = x;
    return 1;
}

PyDoc_STRVAR(tx_established_doc,
"tx_established(stack, conn, now) -> list or None\n\n"
"Stack.poll_connection(conn, now) when it sends one data segment through poll_data and\n"
"_send_data: the frames (the stack's out list); None (nothing changed) when\n"
"poll_connection must go on in Python.");

static PyObject *tx_established(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || stack_type == NULL || conn_cls.type == NULL || pd_descr == NULL
        || Py_TYPE(args[0]) != stack_type || Py_TYPE(args[1]) != conn_cls.type || !PyFloat_CheckExact(args[2]))
        goto declined;
    PyObject *stack = args[0], *conn = args[1], *now_obj = args[2];
    double now = PyFloat_AS_DOUBLE(now_obj);
    if (_PyType_Lookup(conn_cls.type, pd_name) != pd_descr || _PyType_Lookup(stack_type, sd_name) != sd_func)
        goto declined;
    PyObject **dictptr = _PyObject_GetDictPtr(stack), *sdict;
    if (dictptr == NULL || (sdict = *dictptr) == NULL || !PyDict_CheckExact(sdict))
        goto declined;
    /* the stack's attributes, checked before anything changes */
    PyObject *s[S_N], *t[T_N];
    for (int i = 0; i < S_N; i++)
        if ((s[i] = PyDict_GetItemWithError(sdict, stack_keys[i])) == NULL) {
            PyErr_Clear();
            goto declined;
        }
    for (int i = 0; i < T_N; i++)
        if ((t[i] = PyDict_GetItemWithError(sdict, tx_keys[i])) == NULL) {
            PyErr_Clear();
            goto declined;
        }
    long long netmask, net, ttl, ident, src, txcap, dst, lport, rport, bcast = -1;
    int tx_c;
    if (!PyDict_CheckExact(s[S_CONNS]) || !PyDict_CheckExact(s[S_ACTIVE]) || !PyDict_CheckExact(s[S_SCHED])
        || !PyList_CheckExact(s[S_TIMERS]) || !PyLong_CheckExact(s[S_TIMER_N])
        || !PyList_CheckExact(t[T_OUT]) || !PyDict_CheckExact(t[T_ARP])
        || !get_int(t[T_NETMASK], &netmask) || !get_int(t[T_NET], &net) || !get_int(t[T_TTL], &ttl)
        || ttl < 0 || ttl > 255 || !get_int(t[T_IDENT], &ident) || !PyBytes_CheckExact(t[T_MAC_RAW])
        || PyBytes_GET_SIZE(t[T_MAC_RAW]) != 6 || !get_ranged(t[T_IP_INT], 0, 0xFFFFFFFFLL, &src)
        || !get_truth(t[T_TX_C], &tx_c) || !tx_c || !get_int(t[T_TXCAP], &txcap)
        || (t[T_BROADCAST] != Py_None && !get_ranged(t[T_BROADCAST], -INT_LIMIT, INT_LIMIT, &bcast)))
        goto declined;
    /* the connection: in the table under its key, ESTABLISHED, no control segment due */
    const Py_ssize_t *o = conn_off;
    PyObject *raddr = GET(conn, o, C_REMOTE_ADDR), *rport_o = GET(conn, o, C_REMOTE_PORT),
             *lport_o = GET(conn, o, C_LOCAL_PORT);
    PyObject *ctl = GET(conn, o, C_CTL);   /* a list of control segments to send */
    if (!get_ranged(raddr, 0, 0xFFFFFFFFLL, &dst) || !get_ranged(rport_o, 0, 0xFFFF, &rport)
        || !get_ranged(lport_o, 0, 0xFFFF, &lport) || GET(conn, o, C_STATE) != established
        || ctl == NULL || !PyList_CheckExact(ctl) || PyList_GET_SIZE(ctl)
        || GET(conn, o, C_RTO_DEADLINE) == NULL || GET(conn, o, C_KEEPALIVE_DEADLINE) == NULL)
        goto declined;
    PyObject *key = PyTuple_Pack(3, raddr, rport_o, lport_o);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(s[S_CONNS], key);
    Py_DECREF(key);
    if (found != conn) {
        PyErr_Clear();
        goto declined;
    }
    /* poll_data: one segment to send */
    PollData p = {0};
    if (pd_plan(conn, now_obj, &p) != TAKEN || p.off < 0)
        goto declined;
    /* _send_data's fast case: a live ARP entry for the next hop, not a broadcast */
    PyObject *hop = (dst & netmask) == net ? raddr : t[T_GATEWAY];
    PyObject *entry = PyDict_GetItemWithError(t[T_ARP], hop);
    double exp;
    if (entry == NULL) {
        PyErr_Clear();
        goto declined;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(entry, 0))
        || PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) != 6 || !get_num(PyTuple_GET_ITEM(entry, 1), &exp)
        || !(exp > now) || dst == 0xFFFFFFFFLL || dst == bcast)
        goto declined;
    if (p.n > txcap - 54 || p.n > 65535 - 40)
        goto declined;   /* _send_data raises: Python does that */
    /* everything that can fail on memory, before any change */
    PyObject *sndbuf = GET(conn, o, C_SNDBUF);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(54 + p.n));
    if (frame == NULL)
        return NULL;
    unsigned char *f = (unsigned char *)PyBytes_AS_STRING(frame);
    memcpy(f + 54, PyByteArray_AS_STRING(sndbuf) + p.off, (size_t)p.n);
    unsigned new_ident = (unsigned)((ident + 1) & 0xFFFF);
    long long fields_window = p.window;   /* (advertise: <= 0xFFFF) */
    data_frame(f, PyBytes_AS_STRING(PyTuple_GET_ITEM(entry, 0)), PyBytes_AS_STRING(t[T_MAC_RAW]),
               (unsigned long)src, (unsigned long)dst, new_ident, (unsigned)ttl, (unsigned)lport, (unsigned)rport,
               (unsigned long)((unsigned long long)p.nxt & SEQ_MASK),
               (unsigned long)((unsigned long long)p.rcv_nxt & SEQ_MASK), (unsigned)(fields_window & 0xFFFF),
               (size_t)p.n);
    PyObject *ident_obj = PyLong_FromUnsignedLong(new_ident);
    PyObject *fresh = ident_obj != NULL ? PyList_New(0) : NULL;
    PyObject *out = t[T_OUT];
    if (fresh == NULL || PyList_Append(out, frame) < 0)   /* (removed again below on failure) */
        goto nomem;
    Py_INCREF(out);
    Py_INCREF(conn);
    PyObject *r = pd_commit(conn, &p, 0);
    if (r == NULL) {
        Py_DECREF(conn);
        PyList_SetSlice(out, PyList_GET_SIZE(out) - 1, PyList_GET_SIZE(out), NULL);
        Py_DECREF(out);
        goto nomem;
    }
    Py_DECREF(r);
    Py_DECREF(frame);
    /* the stack: _now, _active.pop(conn), _ident (existing keys: no allocation) */
    int err = PyDict_SetItem(sdict, tx_keys[T_NOW], now_obj) < 0;
    if (!err) {
        PyObject *was = PyDict_GetItemWithError(s[S_ACTIVE], conn);
        if (was != NULL)
            err = PyDict_DelItem(s[S_ACTIVE], conn) < 0;
        else if (PyErr_Occurred())
            err = 1;
    }
    err = err || PyDict_SetItem(sdict, tx_keys[T_IDENT], ident_obj) < 0;
    Py_DECREF(ident_obj);
    /* the RTO or the keepalive timer, as poll_connection schedules it */
    if (!err) {
        PyObject *d = GET(conn, o, C_RTO_DEADLINE), *ka = GET(conn, o, C_KEEPALIVE_DEADLINE);
        int lt = 1;
        if (ka != Py_None && d != Py_None && (lt = PyObject_RichCompareBool(ka, d, Py_LT)) < 0)
            err = 1;
        else if (ka != Py_None && lt)
            d = ka;
        if (!err && d != Py_None) {
            Py_INCREF(d);
            PyObject *old = PyDict_GetItemWithError(s[S_SCHED], conn);
            int gt = 1;
            if (old == NULL && PyErr_Occurred())
                err = 1;
            else if (old != NULL && old != Py_None && (gt = PyObject_RichCompareBool(old, d, Py_GT)) < 0)
                err = 1;
            else if (gt)
                err = PyDict_SetItem(s[S_SCHED], conn, d) < 0 || push_timer(sdict, s[S_TIMERS], d, conn) < 0;
            Py_DECREF(d);
        }
    }
    /* out = self._out; self._out = [] */
    err = err || PyDict_SetItem(sdict, tx_keys[T_OUT], fresh) < 0;
    Py_DECREF(fresh);
    Py_DECREF(conn);
    if (err) {
        Py_DECREF(out);
        return NULL;
    }
    tx_counts[0]++;
    return out;
nomem:
    Py_XDECREF(fresh);
    Py_XDECREF(ident_obj);
    Py_DECREF(frame);
    return NULL;
declined:
    tx_counts[1]++;
    Py_RETURN_NONE;
}

static PyObject *get_tx_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", tx_counts[0], tx_counts[1]);
}

/* ------------------------------------------------------------------ send
 * TcpConnection.send(data) for the push of a reply: an ESTABLISHED connection without a FIN
 * queued, data exactly bytes or a one-dimensional byte memoryview: the bytes that fit are
 * appended to the send buffer, _dirty set and the connection put in its stack's _active.
 * Anything else (a subclass, send replaced on the class, another state, which raises...) is
 * conn.send(data), called as Python would. */

static PyObject *send_name;        /* "send" */
static PyObject *send_func;        /* TcpConnection.send when setup_stack ran */
static unsigned long long send_counts[2];  /* handled here, handed to conn.send */

PyDoc_STRVAR(conn_send_doc,
"send(conn, data) -> int\n\n"
"conn.send(data) (TcpConnection.send), its common case in C.");

static PyObject *conn_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(conn, data)");
        return NULL;
    }
    PyObject *conn = args[0], *data = args[1];
    if (send_func == NULL || Py_TYPE(conn) != conn_cls.type || _PyType_Lookup(conn_cls.type, send_name) != send_func)
        goto python;
    const Py_ssize_t *o = conn_off;
    PyObject *buf = GET(conn, o, C_SNDBUF), *cfg = GET(conn, o, C_CONFIG), *active = GET(conn, o, C_ACTIVE);
    int fin_queued;
    long long sbs;
    if (GET(conn, o, C_STATE) != established || !get_truth(GET(conn, o, C_FIN_QUEUED), &fin_queued) || fin_queued
        || buf == NULL || !PyByteArray_CheckExact(buf) || cfg == NULL || Py_TYPE(cfg) != config_cls.type
        || !get_int(GET(cfg, config_off, G_SEND_BUFFER_SIZE), &sbs) || GET(conn, o, C_DIRTY) == NULL
        || active == NULL || (active != Py_None && !PyDict_CheckExact(active)))
        goto python;
    if (!PyBytes_CheckExact(data) && !Py_IS_TYPE(data, &PyMemoryView_Type))
        goto python;
    Py_buffer view;
    if (!get_payload(data, &view))
        goto python;
    long long have = PyByteArray_GET_SIZE(buf), space = sbs - have, n = view.len;
    if (space < 0 || !resizable(buf)) {
        PyBuffer_Release(&view);
        goto python;
    }
    if (n > space)
        n = space;
    if (n) {
        if (PyByteArray_Resize(buf, (Py_ssize_t)(have + n)) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        memcpy(PyByteArray_AS_STRING(buf) + have, view.buf, (size_t)n);
        PyBuffer_Release(&view);
        PyObject **slot = (PyObject **)((char *)conn + o[C_DIRTY]);
        PyObject *old = *slot;
        *slot = Py_NewRef(Py_True);
        Py_DECREF(old);
        if (active != Py_None && PyDict_SetItem(active, conn, Py_None) < 0)
            return NULL;
    }
    else
        PyBuffer_Release(&view);
    send_counts[0]++;
    return PyLong_FromLongLong(n);
python:
    send_counts[1]++;
    return PyObject_CallMethodOneArg(conn, send_name, data);
}

static PyObject *get_send_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", send_counts[0], send_counts[1]);
}

PyDoc_STRVAR(setup_stack_doc,
"setup_stack(Stack) -> None\n\n"
"Enable rx_established for instances of exactly this class (after setup()).");

static PyObject *setup_stack(PyObject *mod, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_stack: expected a class");
        return NULL;
    }
    if (conn_cls.type == NULL || fi_descr == NULL) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_stack: setup() was not done");
        return NULL;
    }
    if (heappush == NULL) {
        PyObject *heapq = PyImport_ImportModule("heapq");
        if (heapq == NULL)
            return NULL;
        heappush = PyObject_GetAttrString(heapq, "heappush");
        Py_DECREF(heapq);
        if (heappush == NULL)
            return NULL;
    }
    for (int i = 0; i < S_N; i++)
        if (stack_keys[i] == NULL && (stack_keys[i] = PyUnicode_InternFromString(stack_names[i])) == NULL)
            return NULL;
    for (int i = 0; i < T_N; i++)
        if (tx_keys[i] == NULL && (tx_keys[i] = PyUnicode_InternFromString(tx_names[i])) == NULL)
            return NULL;
    if (sd_name == NULL && (sd_name = PyUnicode_InternFromString("_send_data")) == NULL)
        return NULL;
    PyObject *sd = _PyType_Lookup((PyTypeObject *)cls, sd_name);   /* borrowed; NULL: none */
    Py_XINCREF(sd);
    Py_XSETREF(sd_func, sd);
    if (send_name == NULL && (send_name = PyUnicode_InternFromString("send")) == NULL)
        return NULL;
    PyObject *sf = _PyType_Lookup(conn_cls.type, send_name);   /* TcpConnection.send */
    Py_XINCREF(sf);
    Py_XSETREF(send_func, sf);
    Py_INCREF(cls);
    Py_XSETREF(stack_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static PyObject *get_rx_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", rx_counts[0], rx_counts[1]);
}

/* ------------------------------------------------------------------ setup */

static PyMethodDef fast_input_def = {
    "fast_input", (PyCFunction)(void (*)(void))fast_input, METH_FASTCALL | METH_KEYWORDS, fast_input_doc,
};
static PyMethodDef poll_data_def = {
    "poll_data", (PyCFunction)(void (*)(void))poll_data, METH_FASTCALL | METH_KEYWORDS, poll_data_doc,
};

PyDoc_STRVAR(setup_doc,
"setup(TcpConnection, RttEstimator, NewReno, TcpCounters, OutOfOrderQueue, TcpConfig,\n"
"      ESTABLISHED, fast_input_py, poll_data_py) -> (fast_input, poll_data)\n\n"
"Take the offsets of the slots used here from the classes' member descriptors (TypeError\n"
"if one is missing or not a writable object slot) and return the two methods, as method\n"
"descriptors of TcpConnection to install in its place; fast_input_py and poll_data_py,\n"
"the Python methods, take every call they do not handle.");

static PyObject *setup(PyObject *mod, PyObject *args)
{
    PyObject *conn, *rtt, *cc, *counters, *ooo, *config, *est, *fi_py, *pd_py;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO:setup", &conn, &rtt, &cc, &counters, &ooo, &config, &est,
                          &fi_py, &pd_py))
        return NULL;
    if (!PyCallable_Check(fi_py) || !PyCallable_Check(pd_py)) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup: the Python methods must be callable");
        return NULL;
    }
    Py_CLEAR(conn_cls.type);   /* not usable until every class checked out */
    if (slot_class_init(&rtt_cls, rtt) || slot_class_init(&cc_cls, cc) || slot_class_init(&counters_cls, counters)
        || slot_class_init(&ooo_cls, ooo) || slot_class_init(&config_cls, config))
        return NULL;
    Py_INCREF(est);
    Py_XSETREF(established, est);
    Py_INCREF(fi_py);
    Py_XSETREF(py_fast_input, fi_py);
    Py_INCREF(pd_py);
    Py_XSETREF(py_poll_data, pd_py);
    if (slot_class_init(&conn_cls, conn))
        return NULL;
    PyObject *fi = PyDescr_NewMethod(conn_cls.type, &fast_input_def);
    PyObject *pd = fi != NULL ? PyDescr_NewMethod(conn_cls.type, &poll_data_def) : NULL;
    if (pd == NULL) {
        Py_XDECREF(fi);
        return NULL;
    }
    if (fi_name == NULL && (fi_name = PyUnicode_InternFromString("fast_input")) == NULL) {
        Py_DECREF(fi);
        Py_DECREF(pd);
        return NULL;
    }
    if (pd_name == NULL && (pd_name = PyUnicode_InternFromString("poll_data")) == NULL) {
        Py_DECREF(fi);
        Py_DECREF(pd);
        return NULL;
    }
    Py_INCREF(fi);
    Py_XSETREF(fi_descr, fi);   /* rx_established runs while it is TcpConnection.fast_input */
    Py_INCREF(pd);
    Py_XSETREF(pd_descr, pd);   /* tx_established runs while it is TcpConnection.poll_data */
    return Py_BuildValue("(NN)", fi, pd);
}

static PyObject *get_fallbacks(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", fallbacks[0], fallbacks[1]);
}

static PyMethodDef module_methods[] = {
    {"setup", setup, METH_VARARGS, setup_doc},
    {"fallbacks", get_fallbacks, METH_NOARGS,
     "fallbacks() -> (fast_input, poll_data): calls handed to the Python methods so far"},
    {"rx_established", (PyCFunction)(void (*)(void))rx_established, METH_FASTCALL, rx_established_doc},
    {"setup_stack", setup_stack, METH_O, setup_stack_doc},
    {"rx_counts", get_rx_counts, METH_NOARGS,
     "rx_counts() -> (handled, declined): rx_established calls so far"},
    {"tx_established", (PyCFunction)(void (*)(void))tx_established, METH_FASTCALL, tx_established_doc},
    {"send", (PyCFunction)(void (*)(void))conn_send, METH_FASTCALL, conn_send_doc},
    {"send_counts", get_send_counts, METH_NOARGS,
     "send_counts() -> (handled, handed to conn.send): send calls so far"},
    {"tx_counts", get_tx_counts, METH_NOARGS,
     "tx_counts() -> (handled, declined): tx_established calls so far"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef tcpfast_module = {
    PyModuleDef_HEAD_INIT, "libos.inet._tcpfast",
    "TcpConnection.fast_input and poll_data in C (see libos/inet/_tcpfast.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__tcpfast(void)
{
    return PyModule_Create(&tcpfast_module);
}
