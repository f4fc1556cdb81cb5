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
 * Above the connection, for the library OS (libos/inet/sockets.py, backend.py, stack.py; off
 * under DEMI_INET_NO_C_SOCK=1, compared with Python in tests/test_inet_sockfast.py):
 * TcpSocket.push / pop / on_event and Backend.kick_connection (their common case: a push the
 * send buffer takes, a pop with data or nothing yet), Backend._run's receive loop with
 * Stack.receive's common case (rx_frames), and Stack._fire_due (the timer heaps).
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
    C_LOCAL_PORT, C_REMOTE_PORT, C_REMOTE_ADDR, C_ACTIVE, C_ERROR, C_FIN_RECEIVED, C_N
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
    "local_port", "remote_port", "remote_addr", "_active", "error", "_fin_received",
};

enum { R_SRTT, R_RTTVAR, R_RTO, R_MIN_RTO, R_MAX_RTO, R_GRANULARITY, R_SAMPLES, R_N };  /* RttEstimator */
static const char *const rtt_names[R_N] = {
    "srtt", "rttvar", "rto", "min_rto", "max_rto", "granularity", "samples",
};

enum { K_MSS, K_CWND, K_SSTHRESH, K_IN_RECOVERY, K_CA_BYTES, K_N };  /* NewReno */
static const char *const cc_names[K_N] = { "mss", "cwnd", "ssthresh", "in_recovery", "_ca_bytes" };

enum { N_SEGMENTS_IN, N_SEGMENTS_OUT, N_BYTES_IN, N_BYTES_OUT, N_DELAYED_ACKS, N_WINDOW_UPDATES, N_N };  /* TcpCounters */
static const char *const counters_names[N_N] = {
    "segments_in", "segments_out", "bytes_in", "bytes_out", "delayed_acks", "window_updates",
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

/* rx_established's work, not counted: a new reference to Py_True or Py_False, NULL with an
 * exception. */
static PyObject *rx_impl(PyObject *const *args, Py_ssize_t nargs)
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
    res = Py_True;
    Py_INCREF(res);
    goto done;
declined:
    res = Py_False;
    Py_INCREF(res);
error:
done:
    Py_XDECREF(conn);
    PyBuffer_Release(&buf);
    return res;
declined_early:
    Py_RETURN_FALSE;
}

static PyObject *rx_established(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *r = rx_impl(args, nargs);
    if (r != NULL)
        rx_counts[r == Py_False]++;
    return r;
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

/* The frame builder and the receive check of the cffi module libos.inet._csum
 * (libos/inet/_csum_build.py: tcp_data_frame, tcp_rx), given by set_csum_api: one copy of
 * that C.  NULL until then (tx_established and rx_frames decline). */
typedef int (*tcp_data_frame_fn)(char *buf, size_t cap, const char *dmac, const char *smac,
                                 uint32_t src, uint32_t dst, unsigned int ident, unsigned int ttl,
                                 unsigned int sport, unsigned int dport, uint32_t seq, uint32_t ack,
                                 unsigned int off_flags, unsigned int window, const char *data,
                                 size_t dlen, size_t off, size_t plen);
typedef int (*tcp_rx_fn)(const char *frame, size_t len, const char *mac, uint32_t ip, int csum_ok);
static tcp_data_frame_fn csum_tcp_data_frame;
static tcp_rx_fn csum_tcp_rx;

PyDoc_STRVAR(set_csum_api_doc,
"set_csum_api(tcp_data_frame, tcp_rx) -> None\n\n"
"The addresses of libos.inet._csum's tcp_data_frame and tcp_rx, which the C send and\n"
"receive paths call.");

static PyObject *set_csum_api(PyObject *mod, PyObject *args)
{
    unsigned long long f[2];
    if (!PyArg_ParseTuple(args, "KK:set_csum_api", &f[0], &f[1]))
        return NULL;
    if (!f[0] || !f[1]) {
        PyErr_SetString(PyExc_ValueError, "set_csum_api: null function");
        return NULL;
    }
    csum_tcp_data_frame = (tcp_data_frame_fn)(uintptr_t)f[0];
    csum_tcp_rx = (tcp_rx_fn)(uintptr_t)f[1];
    Py_RETURN_NONE;
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

/* tx_established's work: a new reference to the out list, Py_None (a new reference: declined,
 * nothing changed, not counted) or NULL with an exception. */
static PyObject *tx_impl(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || stack_type == NULL || conn_cls.type == NULL || pd_descr == NULL
        || csum_tcp_data_frame == NULL || Py_TYPE(args[0]) != stack_type || Py_TYPE(args[1]) != conn_cls.type || !PyFloat_CheckExact(args[2]))
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
    unsigned new_ident = (unsigned)((ident + 1) & 0xFFFF);
    long long fields_window = p.window;   /* (advertise: <= 0xFFFF) */
    if (csum_tcp_data_frame(PyBytes_AS_STRING(frame), (size_t)(54 + p.n),
                            PyBytes_AS_STRING(PyTuple_GET_ITEM(entry, 0)), PyBytes_AS_STRING(t[T_MAC_RAW]),
                            (uint32_t)src, (uint32_t)dst, new_ident, (unsigned)ttl, (unsigned)lport,
                            (unsigned)rport, (uint32_t)((unsigned long long)p.nxt & SEQ_MASK),
                            (uint32_t)((unsigned long long)p.rcv_nxt & SEQ_MASK), FL_ACK | FL_PSH,
                            (unsigned)(fields_window & 0xFFFF), PyByteArray_AS_STRING(sndbuf),
                            (size_t)PyByteArray_GET_SIZE(sndbuf), (size_t)p.off, (size_t)p.n) < 0) {
        Py_DECREF(frame);   /* (cannot happen: poll_data's range is within the send buffer) */
        goto declined;
    }
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
    return out;
nomem:
    Py_XDECREF(fresh);
    Py_XDECREF(ident_obj);
    Py_DECREF(frame);
    return NULL;
declined:
    Py_RETURN_NONE;
}

static PyObject *tx_established(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *r = tx_impl(args, nargs);
    if (r != NULL)
        tx_counts[r == Py_None]++;
    return r;
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

/* The C case of send: 1 with the plan (the buffer of data held in sp->view: send_apply
 * releases it), 0 when conn.send must do it (nothing held, nothing changed). */
typedef struct {
    PyObject *buf, *active;
    Py_buffer view;
    long long have, n;
} SendPlan;

static int send_plan(PyObject *conn, PyObject *data, SendPlan *sp)
{
    if (send_func == NULL || Py_TYPE(conn) != conn_cls.type || _PyType_Lookup(conn_cls.type, send_name) != send_func)
        return 0;
    const Py_ssize_t *o = conn_off;
    PyObject *buf = GET(conn, o, C_SNDBUF), *cfg = GET(conn, o, C_CONFIG), *active = GET(conn, o, C_ACTIVE);
    int fin_queued;
    long long sbs;
    if (GET(conn, o, C_STATE) != established || !get_truth(GET(conn, o, C_FIN_QUEUED), &fin_queued) || fin_queued
        || buf == NULL || !PyByteArray_CheckExact(buf) || cfg == NULL || Py_TYPE(cfg) != config_cls.type
        || !get_int(GET(cfg, config_off, G_SEND_BUFFER_SIZE), &sbs) || GET(conn, o, C_DIRTY) == NULL
        || active == NULL || (active != Py_None && !PyDict_CheckExact(active)))
        return 0;
    if (!PyBytes_CheckExact(data) && !Py_IS_TYPE(data, &PyMemoryView_Type))
        return 0;
    if (!get_payload(data, &sp->view))
        return 0;
    long long have = PyByteArray_GET_SIZE(buf), space = sbs - have, n = sp->view.len;
    if (space < 0 || !resizable(buf)) {
        PyBuffer_Release(&sp->view);
        return 0;
    }
    sp->buf = buf;
    sp->active = active;
    sp->have = have;
    sp->n = n > space ? space : n;
    return 1;
}

/* Carry out a send plan: the bytes sent, or -1 with an exception (no memory). */
static long long send_apply(PyObject *conn, SendPlan *sp)
{
    long long n = sp->n;
    if (n) {
        if (PyByteArray_Resize(sp->buf, (Py_ssize_t)(sp->have + n)) < 0) {
            PyBuffer_Release(&sp->view);
            return -1;
        }
        memcpy(PyByteArray_AS_STRING(sp->buf) + sp->have, sp->view.buf, (size_t)n);
        PyBuffer_Release(&sp->view);
        PyObject **slot = (PyObject **)((char *)conn + conn_off[C_DIRTY]);
        PyObject *old = *slot;
        *slot = Py_NewRef(Py_True);
        Py_DECREF(old);
        if (sp->active != Py_None && PyDict_SetItem(sp->active, conn, Py_None) < 0)
            return -1;
    }
    else
        PyBuffer_Release(&sp->view);
    return n;
}

static PyObject *conn_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(conn, data)");
        return NULL;
    }
    PyObject *conn = args[0], *data = args[1];
    SendPlan sp;
    if (!send_plan(conn, data, &sp)) {
        send_counts[1]++;
        return PyObject_CallMethodOneArg(conn, send_name, data);
    }
    long long n = send_apply(conn, &sp);
    if (n < 0)
        return NULL;
    send_counts[0]++;
    return PyLong_FromLongLong(n);
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

/* ------------------------------------------------------------------ the socket queue
 * TcpSocket.push, TcpSocket.pop and TcpSocket.on_event (libos/inet/sockets.py) and
 * Backend.kick_connection (backend.py), their common cases without a Python frame:
 *
 *   push             a CONNECTED socket, no push pending, no framing, one exact bytes segment
 *                    that TcpConnection.send takes in C (send_plan): the bytes appended, the op
 *                    completed (the QResult queueapi.types.pushed makes), kick_connection; a
 *                    partial send goes on in TcpSocket._push_partial
 *   pop, on_event    a CONNECTED socket without framing, pushback, SHUT_RD, connect, accepts
 *                    or pushes pending: _try_pop for the cases "data queued" (the bytes taken
 *                    as TcpConnection.recv does, window update included, the QResult and
 *                    SGArray queueapi.types.popped makes, completed) and "nothing yet" (the
 *                    op appended to _pops); _serve_pops's loop over the pending pops
 *   kick_connection  Stack.poll_connection through tx_impl (when the stack's C send path is
 *                    on), the frames onto _txq, _flush when due; with stack events pending,
 *                    Backend._kick_tail does the rest in Python
 *
 * Every other case (a subclass, a closed or unconnected socket, an attribute of unexpected
 * type or missing, an error or end of stream to report, a connection not ESTABLISHED...)
 * calls the Python method (kept as _push_py, _pop_py, _on_event_py, _kick_connection_py) before
 * anything changed, or, in the middle of a loop, the Python method that does the rest
 * (_serve_pops, conn.recv, poll_connection).  The Python code is the reference:
 * tests/test_inet_sockfast.py runs both on the same traffic. */

enum { Q_STATE, Q_SHUT_WR, Q_PUSHES, Q_FRAMING, Q_CONN, Q_CORE, Q_BACKEND, Q_POPS, Q_PUSHBACK,
       Q_RD_SHUT, Q_CONNECT_OP, Q_ACCEPTS, Q_N };
static const char *const q_names[Q_N] = {
    "state", "shut_wr", "_pushes", "framing", "conn", "core", "backend", "_pops", "_pushback",
    "_rd_shut", "_connect_op", "_accepts",
};
enum { B_STACK, B_CLOCK, B_TXQ, B_DEFER_TX, B_TX_BATCH, B_CORE, B_N };
static const char *const b_names[B_N] = { "stack", "_clock", "_txq", "_defer_tx", "_tx_batch", "core" };
enum { M_COMPLETE, M_QD, M_QT, M_KICK_CONNECTION, M_KICK, M_APPEND, M_POPLEFT, M_SERVE_POPS,
       M_PUSH_PARTIAL, M_KICK_TAIL, M_FLUSH, M_POLLER, M_FC, M_POLLER_ATTR, M_EVENTS,
       M_POLL_CONNECTION, M_RECV, M_N };
static const char *const m_names[M_N] = {
    "complete", "qd", "qt", "kick_connection", "kick", "append", "popleft", "_serve_pops",
    "_push_partial", "_kick_tail", "_flush", "_poller", "_fc", "poller", "_events",
    "poll_connection", "recv",
};
static PyObject *q_keys[Q_N], *b_keys[B_N], *m_keys[M_N];   /* interned */
static PyTypeObject *sock_type, *backend_type, *deque_type, *result_type, *sga_type;
enum { A_BUFS, A_VIEWS, A_ADDR, A_FREED, A_RELEASE, A_N };
static const char *const sga_names[A_N] = { "_bufs", "_views", "addr", "_freed", "_release" };
static Py_ssize_t sga_off[A_N];
static SlotClass sga_cls = { NULL, sga_names, A_N, sga_off };
static PyObject *op_push, *op_pop;               /* Opcode.PUSH, Opcode.POP */
static PyObject *q_connected, *q_closed;         /* the socket states CONNECTED, CLOSED */
static PyObject *tcp_closed;                     /* TcpState.CLOSED */
static PyObject *py_push, *py_pop, *py_on_event, *py_kick_connection;
static PyObject *recv_func;                      /* TcpConnection.recv at setup */
static PyObject *poll_connection_func;           /* Stack.poll_connection at setup_backend */
static PyObject *poller_prop;                    /* LibOS._poller (a property) */
static int kick_tx;                              /* kick_connection may use tx_impl */
/* calls handled here / handed to the Python methods: push, pop, on_event, kick_connection */
static unsigned long long sock_counts[4][2];

#define DEFAULT_POP 8192

static inline PyObject *dict_of(PyObject *o)
{
    PyObject **p = _PyObject_GetDictPtr(o);
    if (p == NULL || *p == NULL || !PyDict_CheckExact(*p)) {
        PyErr_Clear();
        return NULL;
    }
    return *p;
}

/* out[i] = d[keys[which[i]]] (borrowed) for the n indices in which: 0 if one is missing */
static int dict_pick(PyObject *d, PyObject *const *keys, const int *which, int n, PyObject **out)
{
    for (int i = 0; i < n; i++)
        if ((out[which[i]] = PyDict_GetItemWithError(d, keys[which[i]])) == NULL) {
            PyErr_Clear();
            return 0;
        }
    return 1;
}

static inline int is_deque(PyObject *v) { return Py_TYPE(v) == deque_type; }

static PyTypeObject *op_type;        /* queueapi._fast.Op */
static Py_ssize_t op_qd_off, op_qt_off;   /* its members qd and qt (object members) */

/* op.<name>: a new reference; the member read in place for an exact Op whose member is set */
static inline PyObject *op_member(PyObject *op, Py_ssize_t off, PyObject *name)
{
    if (Py_TYPE(op) == op_type) {
        PyObject *v = *(PyObject **)((char *)op + off);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(op, name);
}

/* QResult(opcode, op.qd, op.qt, 0, sga, None, None), as pushed/popped make it */
static PyObject *make_result(PyObject *opcode, PyObject *op, PyObject *sga)
{
    PyObject *qd = op_member(op, op_qd_off, m_keys[M_QD]);
    if (qd == NULL)
        return NULL;
    PyObject *qt = op_member(op, op_qt_off, m_keys[M_QT]);
    if (qt == NULL) {
        Py_DECREF(qd);
        return NULL;
    }
    PyObject *r = result_type->tp_alloc(result_type, 7);
    if (r == NULL) {
        Py_DECREF(qd);
        Py_DECREF(qt);
        return NULL;
    }
    Py_INCREF(opcode);
    PyTuple_SET_ITEM(r, 0, opcode);
    PyTuple_SET_ITEM(r, 1, qd);
    PyTuple_SET_ITEM(r, 2, qt);
    PyTuple_SET_ITEM(r, 3, PyLong_FromLong(0));   /* (a small int: cached, never fails) */
    Py_INCREF(sga);
    PyTuple_SET_ITEM(r, 4, sga);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 5, Py_None);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 6, Py_None);
    return r;
}

/* SGArray with _bufs (data,), as popped makes it (steals nothing) */
static PyObject *make_sga(PyObject *data)
{
    PyObject *sga = sga_type->tp_alloc(sga_type, 0);
    if (sga == NULL)
        return NULL;
    PyObject *bufs = PyTuple_Pack(1, data);
    if (bufs == NULL) {
        Py_DECREF(sga);
        return NULL;
    }
    PyObject *vals[A_N] = { bufs, Py_None, Py_None, Py_False, Py_None };
    for (int i = 0; i < A_N; i++) {
        PyObject **p = (PyObject **)((char *)sga + sga_off[i]);
        Py_INCREF(vals[i]);
        Py_XSETREF(*p, vals[i]);
    }
    Py_DECREF(bufs);
    return sga;
}

/* core.complete(op, result); steals result.  0 or -1 */
static int complete(PyObject *core, PyObject *op, PyObject *result)
{
    if (result == NULL)
        return -1;
    PyObject *a[3] = { core, op, result };
    PyObject *r = PyObject_VectorcallMethod(m_keys[M_COMPLETE], a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(result);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int call_method_void(PyObject *name, PyObject *const *a, size_t n)
{
    PyObject *r = PyObject_VectorcallMethod(name, (PyObject **)a, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* TcpConnection.recv(conn, max_bytes) for an ESTABLISHED connection with data queued:
 * a new bytes object, NULL with an exception, or Py_None (a new reference) when the Python
 * method must do it (nothing changed). */
static PyObject *recv_c(PyObject *conn, long long max_bytes)
{
    const Py_ssize_t *o = conn_off;
    if (recv_func == NULL || _PyType_Lookup(conn_cls.type, m_keys[M_RECV]) != recv_func)
        Py_RETURN_NONE;
    PyObject *buf = GET(conn, o, C_RCVBUF), *cfg = GET(conn, o, C_CONFIG), *counters = GET(conn, o, C_COUNTERS),
             *active = GET(conn, o, C_ACTIVE), *wu;
    long long rbs, adv, nxt, sws, wups;
    if (buf == NULL || !PyByteArray_CheckExact(buf) || !resizable(buf) || GET(conn, o, C_STATE) != established
        || cfg == NULL || Py_TYPE(cfg) != config_cls.type || !get_int(GET(cfg, config_off, G_RECV_BUFFER_SIZE), &rbs)
        || !get_int(GET(conn, o, C_RCV_ADV), &adv) || !get_int(GET(conn, o, C_RCV_NXT), &nxt)
        || !get_int(GET(conn, o, C_SWS_THRESHOLD), &sws) || counters == NULL || Py_TYPE(counters) != counters_cls.type
        || (wu = GET(counters, counters_off, N_WINDOW_UPDATES)) == NULL || !get_int(wu, &wups)
        || GET(conn, o, C_ACK_NOW) == NULL || GET(conn, o, C_DIRTY) == NULL
        || active == NULL || (active != Py_None && !PyDict_CheckExact(active)))
        Py_RETURN_NONE;
    Py_ssize_t have = PyByteArray_GET_SIZE(buf);
    if (have == 0)
        Py_RETURN_NONE;
    Py_ssize_t take = max_bytes >= have ? have : (Py_ssize_t)max_bytes;
    PyObject *data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf), take);
    if (data == NULL)
        return NULL;
    int rc = take == have ? PyByteArray_Resize(buf, 0) : PySequence_DelSlice(buf, 0, take);
    if (rc < 0) {
        Py_DECREF(data);
        return NULL;
    }
    long long free_ = rbs - (long long)PyByteArray_GET_SIZE(buf), cur = adv - nxt;
    if (free_ - cur >= sws && free_ >= 2 * cur) {
        PyObject *n = PyLong_FromLongLong(wups + 1);
        if (n == NULL) {
            Py_DECREF(data);
            return NULL;
        }
        PyObject **slot = (PyObject **)((char *)conn + o[C_ACK_NOW]);
        Py_SETREF(*slot, Py_NewRef(Py_True));
        slot = (PyObject **)((char *)conn + o[C_DIRTY]);
        Py_SETREF(*slot, Py_NewRef(Py_True));
        slot = (PyObject **)((char *)counters + counters_off[N_WINDOW_UPDATES]);
        Py_SETREF(*slot, n);
        if (active != Py_None && PyDict_SetItem(active, conn, Py_None) < 0) {
            Py_DECREF(data);
            return NULL;
        }
    }
    return data;
}

enum { TP_ERROR = -1, TP_WAIT = 0, TP_DONE = 1, TP_PYTHON = 2 };

/* TcpSocket._try_pop(op, size) of a socket whose dict is d: TP_DONE (completed), TP_WAIT
 * (nothing yet: False), TP_PYTHON (the Python method must do it: nothing changed) or
 * TP_ERROR. */
static int try_pop(PyObject *d, PyObject *op, PyObject *size)
{
    static const int want[] = { Q_PUSHBACK, Q_FRAMING, Q_RD_SHUT, Q_CONN, Q_CORE };
    PyObject *v[Q_N];
    if (!dict_pick(d, q_keys, want, 5, v) || !is_deque(v[Q_PUSHBACK]) || Py_SIZE(v[Q_PUSHBACK]) != 0
        || v[Q_FRAMING] != Py_False || v[Q_RD_SHUT] != Py_False)
        return TP_PYTHON;
    PyObject *conn = v[Q_CONN], *buf;
    if (Py_TYPE(conn) != conn_cls.type || (buf = GET(conn, conn_off, C_RCVBUF)) == NULL || !PyByteArray_CheckExact(buf))
        return TP_PYTHON;
    if (PyByteArray_GET_SIZE(buf) == 0) {
        PyObject *err = GET(conn, conn_off, C_ERROR), *st = GET(conn, conn_off, C_STATE);
        if (err != Py_None || GET(conn, conn_off, C_FIN_RECEIVED) != Py_False || st == NULL || st == tcp_closed)
            return TP_PYTHON;   /* an error or the end of the stream to report (or unusual values) */
        return TP_WAIT;
    }
    long long max_bytes = DEFAULT_POP;
    if (size != Py_None) {
        long long x;
        if (!get_int(size, &x) || x < 0)
            return TP_PYTHON;
        if (x)
            max_bytes = x;
    }
    PyObject *core = v[Q_CORE];
    Py_INCREF(core);
    Py_INCREF(conn);
    PyObject *data = recv_c(conn, max_bytes);
    if (data == Py_None) {   /* conn.recv(size or DEFAULT_POP), in Python */
        Py_DECREF(data);
        PyObject *n = PyLong_FromLongLong(max_bytes);
        data = n != NULL ? PyObject_CallMethodOneArg(conn, m_keys[M_RECV], n) : NULL;
        Py_XDECREF(n);
    }
    Py_DECREF(conn);
    int rc = TP_ERROR;
    if (data != NULL) {
        PyObject *sga = make_sga(data);
        Py_DECREF(data);
        if (sga != NULL) {
            rc = complete(core, op, make_result(op_pop, op, sga)) < 0 ? TP_ERROR : TP_DONE;
            Py_DECREF(sga);
        }
    }
    Py_DECREF(core);
    return rc;
}

static PyObject *to_python(PyObject *fn, int which, PyObject *self, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames)
{
    sock_counts[which][1]++;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[6], **argv = small;
    if (total + 1 > 6 && (argv = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    argv[0] = self;
    for (Py_ssize_t i = 0; i < total; i++)
        argv[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(fn, argv, (size_t)(nargs + 1), kwnames);
    if (argv != small)
        PyMem_Free(argv);
    return r;
}

PyDoc_STRVAR(sock_push_doc, "TcpSocket.push(op, segs), its common case in C (libos/inet/_tcpfast.c).");

static PyObject *sock_push(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    static const int want[] = { Q_STATE, Q_SHUT_WR, Q_PUSHES, Q_FRAMING, Q_CONN, Q_CORE, Q_BACKEND };
    PyObject *d, *v[Q_N];
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 2 || Py_TYPE(self) != sock_type
        || (d = dict_of(self)) == NULL || !dict_pick(d, q_keys, want, 7, v))
        goto python;
    PyObject *op = args[0], *segs = args[1], *b;
    if (v[Q_STATE] != q_connected || v[Q_SHUT_WR] != Py_False || !is_deque(v[Q_PUSHES]) || Py_SIZE(v[Q_PUSHES])
        || v[Q_FRAMING] != Py_False || !PyTuple_CheckExact(segs) || PyTuple_GET_SIZE(segs) != 1
        || !PyBytes_CheckExact(b = PyTuple_GET_ITEM(segs, 0)))
        goto python;
    PyObject *conn = v[Q_CONN], *core = v[Q_CORE], *backend = v[Q_BACKEND];
    SendPlan sp;
    if (!send_plan(conn, b, &sp))
        goto python;
    sock_counts[0][0]++;
    Py_INCREF(conn);
    Py_INCREF(core);
    Py_INCREF(backend);
    PyObject *res = NULL;
    long long n = send_apply(conn, &sp);
    if (n < 0)
        goto done;
    if (n == PyBytes_GET_SIZE(b)) {
        if (complete(core, op, make_result(op_push, op, Py_None)) < 0)
            goto done;
        PyObject *a[2] = { backend, conn };
        if (call_method_void(m_keys[M_KICK_CONNECTION], a, 2) < 0)
            goto done;
    } else {   /* the send buffer is full: the rest waits in _pushes */
        PyObject *no = PyLong_FromLongLong(n);
        if (no == NULL)
            goto done;
        PyObject *a[4] = { self, op, b, no };
        int rc = call_method_void(m_keys[M_PUSH_PARTIAL], a, 4);
        Py_DECREF(no);
        if (rc < 0)
            goto done;
    }
    res = Py_NewRef(Py_None);
done:
    Py_DECREF(conn);
    Py_DECREF(core);
    Py_DECREF(backend);
    return res;
python:
    return to_python(py_push, 0, self, args, nargsf, kwnames);
}

/* pops.append((op, size)) */
static int append_pop(PyObject *pops, PyObject *op, PyObject *size)
{
    PyObject *item = PyTuple_Pack(2, op, size);
    if (item == NULL)
        return -1;
    PyObject *a[2] = { pops, item };
    int rc = call_method_void(m_keys[M_APPEND], a, 2);
    Py_DECREF(item);
    return rc;
}

PyDoc_STRVAR(sock_pop_doc, "TcpSocket.pop(op, size), its common case in C (libos/inet/_tcpfast.c).");

static PyObject *sock_pop(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *d, *state, *pops;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 2 || Py_TYPE(self) != sock_type
        || (d = dict_of(self)) == NULL || (state = PyDict_GetItemWithError(d, q_keys[Q_STATE])) != q_connected
        || (pops = PyDict_GetItemWithError(d, q_keys[Q_POPS])) == NULL || !is_deque(pops)) {
        PyErr_Clear();
        goto python;
    }
    PyObject *op = args[0], *size = args[1];
    Py_INCREF(self);
    Py_INCREF(pops);
    PyObject *res = NULL;
    int rc = TP_WAIT;
    if (Py_SIZE(pops) == 0) {
        Py_INCREF(d);
        rc = try_pop(d, op, size);
        Py_DECREF(d);
    }
    if (rc == TP_PYTHON) {
        Py_DECREF(self);
        Py_DECREF(pops);
        goto python;
    }
    sock_counts[1][0]++;
    if (rc == TP_ERROR)
        goto done;
    if (rc == TP_WAIT) {
        if (append_pop(pops, op, size) < 0)
            goto done;
    } else {   /* reading may open the window: a window update goes out now */
        PyObject *backend = PyObject_GetAttr(self, q_keys[Q_BACKEND]);
        if (backend == NULL)
            goto done;
        PyObject *a[1] = { backend };
        rc = call_method_void(m_keys[M_KICK], a, 1);
        Py_DECREF(backend);
        if (rc < 0)
            goto done;
    }
    res = Py_NewRef(Py_None);
done:
    Py_DECREF(self);
    Py_DECREF(pops);
    return res;
python:
    return to_python(py_pop, 1, self, args, nargsf, kwnames);
}

PyDoc_STRVAR(sock_on_event_doc, "TcpSocket.on_event(), its common case in C (libos/inet/_tcpfast.c).");

static PyObject *sock_on_event(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    static const int want[] = { Q_STATE, Q_CONNECT_OP, Q_ACCEPTS, Q_PUSHES, Q_POPS };
    PyObject *d, *v[Q_N];
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 0 || Py_TYPE(self) != sock_type
        || (d = dict_of(self)) == NULL || !dict_pick(d, q_keys, want, 1, v))
        goto python;
    if (v[Q_STATE] == q_closed) {
        sock_counts[2][0]++;
        Py_RETURN_NONE;
    }
    if (v[Q_STATE] != q_connected || !dict_pick(d, q_keys, want + 1, 4, v))
        goto python;
    PyObject *pops = v[Q_POPS];
    if (v[Q_CONNECT_OP] != Py_None || !is_deque(v[Q_ACCEPTS]) || Py_SIZE(v[Q_ACCEPTS])
        || !is_deque(v[Q_PUSHES]) || Py_SIZE(v[Q_PUSHES]) || !is_deque(pops))
        goto python;
    sock_counts[2][0]++;
    /* _serve_pops */
    Py_INCREF(self);
    Py_INCREF(d);
    Py_INCREF(pops);
    PyObject *res = NULL;
    while (Py_SIZE(pops) > 0) {
        PyObject *item = PySequence_GetItem(pops, 0);
        if (item == NULL)
            goto done;
        int rc = TP_PYTHON;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2)
            rc = try_pop(d, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1));
        Py_DECREF(item);
        if (rc == TP_ERROR)
            goto done;
        if (rc == TP_WAIT)
            break;
        if (rc == TP_PYTHON) {   /* the rest in Python, from this pop on */
            PyObject *a[1] = { self };
            if (call_method_void(m_keys[M_SERVE_POPS], a, 1) < 0)
                goto done;
            break;
        }
        PyObject *a[1] = { pops };
        if (call_method_void(m_keys[M_POPLEFT], a, 1) < 0)
            goto done;
    }
    res = Py_NewRef(Py_None);
done:
    Py_DECREF(self);
    Py_DECREF(d);
    Py_DECREF(pops);
    return res;
python:
    return to_python(py_on_event, 2, self, args, nargsf, kwnames);
}

PyDoc_STRVAR(kick_connection_doc, "Backend.kick_connection(conn), its common case in C (libos/inet/_tcpfast.c).");

static PyObject *be_kick_connection(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    static const int want[] = { B_STACK, B_CLOCK, B_TXQ, B_DEFER_TX, B_TX_BATCH, B_CORE };
    PyObject *d, *v[B_N];
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 1 || Py_TYPE(self) != backend_type
        || (d = dict_of(self)) == NULL || !dict_pick(d, b_keys, want, 2, v))
        goto python;
    sock_counts[3][0]++;
    PyObject *conn = args[0], *stack = v[B_STACK], *out = NULL, *res = NULL, *core = NULL, *now;
    Py_INCREF(self);
    Py_INCREF(d);
    Py_INCREF(stack);
    /* out = self.stack.poll_connection(conn, self._clock()) */
    if ((now = PyObject_CallNoArgs(v[B_CLOCK])) == NULL)
        goto done;
    if (kick_tx && Py_TYPE(stack) == stack_type
        && _PyType_Lookup(stack_type, m_keys[M_POLL_CONNECTION]) == poll_connection_func) {
        PyObject *a[3] = { stack, conn, now };
        out = tx_impl(a, 3);
        if (out != NULL && out != Py_None)
            tx_counts[0]++;
    }
    if (out == Py_None || (out == NULL && !PyErr_Occurred())) {
        Py_XDECREF(out);
        PyObject *a[3] = { stack, conn, now };
        out = PyObject_VectorcallMethod(m_keys[M_POLL_CONNECTION], a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(now);
    if (out == NULL)
        goto done;
    /* the rest: in C when no stack events are pending and the attributes are as expected */
    PyObject *events, *std;
    if (Py_TYPE(stack) == stack_type && _PyType_Lookup(stack_type, m_keys[M_EVENTS]) == NULL
        && (std = dict_of(stack)) != NULL && (events = PyDict_GetItemWithError(std, m_keys[M_EVENTS])) != NULL)
        Py_INCREF(events);   /* (the instance attribute: no class attribute of that name) */
    else if ((events = PyObject_GetAttr(stack, m_keys[M_EVENTS])) == NULL)
        goto done;
    int busy = PyObject_IsTrue(events);
    Py_DECREF(events);
    long long batch;
    if (busy < 0)
        goto done;
    if (busy || !dict_pick(d, b_keys, want + 2, 4, v) || !PyList_CheckExact(v[B_TXQ]) || !PyList_CheckExact(out)
        || (v[B_DEFER_TX] != Py_True && v[B_DEFER_TX] != Py_False) || !get_int(v[B_TX_BATCH], &batch)) {
        PyObject *a[2] = { self, out };
        if (call_method_void(m_keys[M_KICK_TAIL], a, 2) < 0)
            goto done;
        res = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *txq = v[B_TXQ];
    core = Py_NewRef(v[B_CORE]);
    if (PyList_GET_SIZE(out) && PyList_SetSlice(txq, PyList_GET_SIZE(txq), PyList_GET_SIZE(txq), out) < 0)
        goto done;
    Py_ssize_t nq = PyList_GET_SIZE(txq);
    int flush = nq > 0 && (v[B_DEFER_TX] == Py_False || nq >= batch);
    if (nq > 0 && !flush) {   /* or self.core._poller is not None */
        PyObject *poller;
        if (poller_prop != NULL && _PyType_Lookup(Py_TYPE(core), m_keys[M_POLLER]) == poller_prop) {
            PyObject *fc = PyObject_GetAttr(core, m_keys[M_FC]);   /* (the property's body) */
            poller = fc != NULL ? PyObject_GetAttr(fc, m_keys[M_POLLER_ATTR]) : NULL;
            Py_XDECREF(fc);
        } else
            poller = PyObject_GetAttr(core, m_keys[M_POLLER]);
        if (poller == NULL)
            goto done;
        flush = poller != Py_None;
        Py_DECREF(poller);
    }
    if (flush) {
        PyObject *a[1] = { self };
        if (call_method_void(m_keys[M_FLUSH], a, 1) < 0)
            goto done;
    }
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(out);
    Py_XDECREF(core);
    Py_DECREF(stack);
    Py_DECREF(d);
    Py_DECREF(self);
    return res;
python:
    return to_python(py_kick_connection, 3, self, args, nargsf, kwnames);
}

static PyMethodDef sock_push_def = {
    "push", (PyCFunction)(void (*)(void))sock_push, METH_FASTCALL | METH_KEYWORDS, sock_push_doc,
};
static PyMethodDef sock_pop_def = {
    "pop", (PyCFunction)(void (*)(void))sock_pop, METH_FASTCALL | METH_KEYWORDS, sock_pop_doc,
};
static PyMethodDef sock_on_event_def = {
    "on_event", (PyCFunction)(void (*)(void))sock_on_event, METH_FASTCALL | METH_KEYWORDS, sock_on_event_doc,
};
static PyMethodDef kick_connection_def = {
    "kick_connection", (PyCFunction)(void (*)(void))be_kick_connection, METH_FASTCALL | METH_KEYWORDS,
    kick_connection_doc,
};

static int intern_all(PyObject **keys, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (keys[i] == NULL && (keys[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    return 0;
}

PyDoc_STRVAR(setup_sockets_doc,
"setup_sockets(TcpSocket, QResult, SGArray, deque, PUSH, POP, CONNECTED, CLOSED, TcpState.CLOSED,\n"
"              push_py, pop_py, on_event_py, Op) -> (push, pop, on_event)\n\n"
"The C TcpSocket methods (method descriptors to install on the class; after setup() and\n"
"setup_stack()); the Python methods take every call they do not handle.");

static PyObject *setup_sockets(PyObject *mod, PyObject *args)
{
    PyObject *cls, *rt, *st, *dq, *push, *pop, *conn_o, *clos, *tclos, *fpush, *fpop, *fev, *opt;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OOUUOOOOO!:setup_sockets", &PyType_Type, &cls, &PyType_Type, &rt,
                          &PyType_Type, &st, &PyType_Type, &dq, &push, &pop, &conn_o, &clos, &tclos,
                          &fpush, &fpop, &fev, &PyType_Type, &opt))
        return NULL;
    /* the object members qd and qt of Op (else: read by getattr) */
    Py_ssize_t offs[2] = { -1, -1 };
    static const char *const op_names[2] = { "qd", "qt" };
    for (int i = 0; i < 2; i++) {
        PyObject *name = PyUnicode_InternFromString(op_names[i]);
        if (name == NULL)
            return NULL;
        PyObject *dsc = _PyType_Lookup((PyTypeObject *)opt, name);
        Py_DECREF(name);
        if (dsc != NULL && Py_TYPE(dsc) == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)dsc)->d_member;
            if ((m->type == T_OBJECT || m->type == T_OBJECT_EX) && PyDescr_TYPE(dsc) == (PyTypeObject *)opt)
                offs[i] = m->offset;
        }
    }
    if (offs[0] >= 0 && offs[1] >= 0) {
        op_qd_off = offs[0];
        op_qt_off = offs[1];
        Py_INCREF(opt);
        Py_XSETREF(op_type, (PyTypeObject *)opt);
    } else
        Py_CLEAR(op_type);
    if (conn_cls.type == NULL || send_func == NULL) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_sockets: setup() and setup_stack() were not done");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)rt, &PyTuple_Type)
        || ((PyTypeObject *)rt)->tp_basicsize != PyTuple_Type.tp_basicsize
        || ((PyTypeObject *)rt)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_sockets: QResult is not a tuple class");
        return NULL;
    }
    if (intern_all(q_keys, q_names, Q_N) || intern_all(b_keys, b_names, B_N) || intern_all(m_keys, m_names, M_N)
        || slot_class_init(&sga_cls, st))
        return NULL;
    PyObject *rf = _PyType_Lookup(conn_cls.type, m_keys[M_RECV]);
    Py_XINCREF(rf);
    Py_XSETREF(recv_func, rf);
    PyObject *objs[] = { rt, st, dq, push, pop, conn_o, clos, tclos, fpush, fpop, fev };
    for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++)
        Py_INCREF(objs[i]);
    Py_XSETREF(result_type, (PyTypeObject *)rt);
    Py_XSETREF(sga_type, (PyTypeObject *)st);
    Py_XSETREF(deque_type, (PyTypeObject *)dq);
    Py_XSETREF(op_push, push);
    Py_XSETREF(op_pop, pop);
    Py_XSETREF(q_connected, conn_o);
    Py_XSETREF(q_closed, clos);
    Py_XSETREF(tcp_closed, tclos);
    Py_XSETREF(py_push, fpush);
    Py_XSETREF(py_pop, fpop);
    Py_XSETREF(py_on_event, fev);
    Py_INCREF(cls);
    Py_XSETREF(sock_type, (PyTypeObject *)cls);
    PyObject *a = PyDescr_NewMethod(sock_type, &sock_push_def);
    PyObject *b = a ? PyDescr_NewMethod(sock_type, &sock_pop_def) : NULL;
    PyObject *c = b ? PyDescr_NewMethod(sock_type, &sock_on_event_def) : NULL;
    if (c == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    return Py_BuildValue("(NNN)", a, b, c);
}

PyDoc_STRVAR(setup_backend_doc,
"setup_backend(Backend, kick_connection_py, LibOS._poller or None, use_tx) -> kick_connection\n\n"
"The C Backend.kick_connection (a method descriptor to install on the class; after\n"
"setup_sockets()); use_tx: poll_connection's C send path (tx_established) is on.");

static PyObject *setup_backend(PyObject *mod, PyObject *args)
{
    PyObject *cls, *fkc, *prop;
    int use_tx;
    if (!PyArg_ParseTuple(args, "O!OOp:setup_backend", &PyType_Type, &cls, &fkc, &prop, &use_tx))
        return NULL;
    if (stack_type == NULL || sock_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_backend: setup_stack() and setup_sockets() were not done");
        return NULL;
    }
    PyObject *pc = _PyType_Lookup(stack_type, m_keys[M_POLL_CONNECTION]);
    Py_XINCREF(pc);
    Py_XSETREF(poll_connection_func, pc);
    Py_INCREF(fkc);
    Py_XSETREF(py_kick_connection, fkc);
    if (prop == Py_None)
        Py_CLEAR(poller_prop);
    else {
        Py_INCREF(prop);
        Py_XSETREF(poller_prop, prop);
    }
    kick_tx = use_tx && pc != NULL;
    Py_INCREF(cls);
    Py_XSETREF(backend_type, (PyTypeObject *)cls);
    return PyDescr_NewMethod(backend_type, &kick_connection_def);
}

static PyObject *get_sock_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("{s(KK)s(KK)s(KK)s(KK)}", "push", sock_counts[0][0], sock_counts[0][1],
                         "pop", sock_counts[1][0], sock_counts[1][1], "on_event", sock_counts[2][0],
                         sock_counts[2][1], "kick_connection", sock_counts[3][0], sock_counts[3][1]);
}

/* ------------------------------------------------------------------ rx_frames
 * Backend._run's loop over a device batch, ``for data, not_ready in frames:
 * stack.receive(data, now, not not_ready)``, with Stack.receive's common case in C: the checks
 * of tcp_rx (libos/inet/_csum_build.py, called through set_csum_api) and rx_established.  A frame either
 * of them declines (and every frame when the stack is not exactly a Stack, or receive was
 * replaced on the class) goes to stack.receive, which starts over (its C steps changed
 * nothing but _now, which it sets to the same value first). */

static PyObject *receive_name, *receive_func;   /* "receive", Stack.receive at setup_rx */
static int rx_ok;                               /* the stack's C receive path is on */
static unsigned long long rxf_counts[2];        /* frames handled here, handed to receive */

/* 1: Stack.receive(frame, now, csum_ok) done here; 0: not (nothing changed but _now); -1 */
static int rx_one(PyObject *stack, PyObject *sdict, PyObject *frame, PyObject *now, int csum_ok)
{
    PyObject *mac = PyDict_GetItemWithError(sdict, tx_keys[T_MAC_RAW]);
    PyObject *ipo = mac != NULL ? PyDict_GetItemWithError(sdict, tx_keys[T_IP_INT]) : NULL;
    long long myip;
    if (ipo == NULL || !PyBytes_CheckExact(mac) || PyBytes_GET_SIZE(mac) != 6 || !get_ranged(ipo, 0, 0xFFFFFFFFLL, &myip)) {
        PyErr_Clear();
        return 0;
    }
    /* self._now = now (receive's first step) */
    if (PyDict_SetItem(sdict, tx_keys[T_NOW], now) < 0)
        return -1;
    Py_buffer buf;
    if (PyObject_GetBuffer(frame, &buf, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    long total = csum_tcp_rx(buf.buf, (size_t)buf.len, PyBytes_AS_STRING(mac), (uint32_t)myip, csum_ok);
    PyBuffer_Release(&buf);
    if (total <= 0)
        return 0;
    PyObject *tot = PyLong_FromLong(total);
    if (tot == NULL)
        return -1;
    PyObject *a[4] = { stack, frame, tot, now };
    PyObject *r = rx_impl(a, 4);
    Py_DECREF(tot);
    if (r == NULL)
        return -1;
    int done = r == Py_True;
    Py_DECREF(r);
    if (done)
        rx_counts[0]++;
    return done;
}

PyDoc_STRVAR(rx_frames_doc,
"rx_frames(stack, frames, now) -> None\n\n"
"for data, not_ready in frames: stack.receive(data, now, not not_ready), with the common\n"
"case of Stack.receive in C.");

static PyObject *rx_frames(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "rx_frames(stack, frames, now)");
        return NULL;
    }
    PyObject *stack = args[0], *now = args[2];
    PyObject *it = PyObject_GetIter(args[1]);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *data, *not_ready;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
            data = PyTuple_GET_ITEM(item, 0);
            not_ready = PyTuple_GET_ITEM(item, 1);
        } else {   /* unpack as Python does (its errors included) */
            PyObject *seq = PySequence_Tuple(item);
            Py_DECREF(item);
            if (seq == NULL)
                goto error;
            if (PyTuple_GET_SIZE(seq) != 2) {
                PyErr_Format(PyExc_ValueError, "expected 2 values to unpack, got %zd", PyTuple_GET_SIZE(seq));
                Py_DECREF(seq);
                goto error;
            }
            item = seq;
            data = PyTuple_GET_ITEM(item, 0);
            not_ready = PyTuple_GET_ITEM(item, 1);
        }
        int nr = PyObject_IsTrue(not_ready);
        if (nr < 0) {
            Py_DECREF(item);
            goto error;
        }
        int done = 0;
        PyObject *sdict;
        if (rx_ok && Py_TYPE(stack) == stack_type && _PyType_Lookup(stack_type, receive_name) == receive_func
            && (sdict = dict_of(stack)) != NULL) {
            Py_INCREF(sdict);
            done = rx_one(stack, sdict, data, now, !nr);
            Py_DECREF(sdict);
        }
        if (done < 0) {
            Py_DECREF(item);
            goto error;
        }
        if (done)
            rxf_counts[0]++;
        else {
            rxf_counts[1]++;
            PyObject *a[4] = { stack, data, now, nr ? Py_False : Py_True };
            PyObject *r = PyObject_VectorcallMethod(receive_name, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (r == NULL) {
                Py_DECREF(item);
                goto error;
            }
            Py_DECREF(r);
        }
        Py_DECREF(item);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
error:
    Py_DECREF(it);
    return NULL;
}

PyDoc_STRVAR(setup_rx_doc,
"setup_rx(use_rx) -> rx_frames\n\n"
"After setup_stack(): rx_frames, with its C receive path when use_rx (the stack's tcp_rx\n"
"and rx_established are in use) and while Stack.receive is the one of now.");

static PyObject *setup_rx(PyObject *mod, PyObject *arg)
{
    int use = PyObject_IsTrue(arg);
    if (use < 0)
        return NULL;
    if (stack_type == NULL || tx_keys[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_rx: setup_stack() was not done");
        return NULL;
    }
    if (receive_name == NULL && (receive_name = PyUnicode_InternFromString("receive")) == NULL)
        return NULL;
    PyObject *rf = _PyType_Lookup(stack_type, receive_name);
    Py_XINCREF(rf);
    Py_XSETREF(receive_func, rf);
    rx_ok = use && rf != NULL && csum_tcp_rx != NULL;
    return PyObject_GetAttrString(mod, "rx_frames");
}

static PyObject *get_rxf_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", rxf_counts[0], rxf_counts[1]);
}

/* ------------------------------------------------------------------ fire_due
 * Stack._fire_due(heap, sched, deadline_of, now) (libos/inet/stack.py) for its two heaps
 * (deadline_of stack._timer_deadline or stack._delack_deadline): the due entries popped, a
 * connection whose timer is due made active, one whose timer moved later scheduled again
 * (Stack._schedule: schedule() here), a stale entry dropped.  A connection that is not exactly
 * a TcpConnection (or whose next_deadline was replaced, or a slot unset), Stack._schedule
 * replaced, an unexpected value: that step in Python (deadline_of(conn), self._schedule(conn)),
 * or, for an entry that is not a 3-tuple, the rest of the call in the Python method. */

enum { F_NEXT_DEADLINE, F_SCHEDULE, F_FIRE_DUE, F_N };
static const char *const f_names[F_N] = { "next_deadline", "_schedule", "_fire_due" };
static PyObject *f_keys[F_N];
static PyObject *nd_func, *schedule_func;         /* TcpConnection.next_deadline, Stack._schedule */
static PyObject *timer_dl, *delack_dl;            /* stack._timer_deadline, stack._delack_deadline */
static PyObject *py_fire_due, *heappop;
static unsigned long long fd_counts[2];           /* entries handled here, calls handed to Python */

/* a <= b, a > b for numbers: floats compared in C, anything else by Python */
static inline int num_cmp(PyObject *a, PyObject *b, int op)
{
    if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b)) {
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return op == Py_LE ? x <= y : op == Py_GT ? x > y : x == y;
    }
    return PyObject_RichCompareBool(a, b, op);
}

/* conn is exactly a TcpConnection with the slots next_deadline() reads set, and its
 * next_deadline is the Python method of setup_fire_due's time */
static int nd_ok(PyObject *conn)
{
    if (Py_TYPE(conn) != conn_cls.type || _PyType_Lookup(conn_cls.type, f_keys[F_NEXT_DEADLINE]) != nd_func)
        return 0;
    static const int slots[] = { C_DIRTY, C_ACK_NOW, C_CTL, C_RETRANSMIT_NOW, C_NOW, C_RTO_DEADLINE,
                                 C_DELACK_DEADLINE, C_PERSIST_DEADLINE, C_KEEPALIVE_DEADLINE, C_CLOSE_DEADLINE };
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (GET(conn, conn_off, slots[i]) == NULL)
            return 0;
    return 1;
}

PyDoc_STRVAR(fire_due_doc, "Stack._fire_due(heap, sched, deadline_of, now), in C (libos/inet/_tcpfast.c).");

static PyObject *stack_fire_due(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *sdict;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 4 || Py_TYPE(self) != stack_type || heappop == NULL
        || (sdict = dict_of(self)) == NULL)
        goto python;
    PyObject *heap = args[0], *sched = args[1], *dl = args[2], *now = args[3];
    int timers = dl == timer_dl;
    if (!PyList_CheckExact(heap) || !PyDict_CheckExact(sched) || (!timers && dl != delack_dl))
        goto python;
    Py_INCREF(self);
    Py_INCREF(sdict);
    Py_INCREF(heap);
    Py_INCREF(sched);
    PyObject *res = NULL, *entry = NULL, *s[S_N];
    while (PyList_GET_SIZE(heap) > 0) {
        PyObject *top = PyList_GET_ITEM(heap, 0);
        if (!PyTuple_CheckExact(top) || PyTuple_GET_SIZE(top) != 3) {   /* the rest in Python */
            fd_counts[1]++;
            PyObject *a[5] = { self, heap, sched, dl, now };
            PyObject *r = PyObject_Vectorcall(py_fire_due, a, 5, NULL);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            break;
        }
        int due = num_cmp(PyTuple_GET_ITEM(top, 0), now, Py_LE);
        if (due < 0)
            goto done;
        if (!due)
            break;
        entry = PyObject_Vectorcall(heappop, &heap, 1, NULL);
        if (entry == NULL)
            goto done;
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_ValueError, "a timer entry is not (deadline, n, conn)");
            goto done;
        }
        fd_counts[0]++;
        PyObject *d = PyTuple_GET_ITEM(entry, 0), *conn = PyTuple_GET_ITEM(entry, 2);
        /* if sched.get(conn) == d */
        PyObject *old = PyDict_GetItemWithError(sched, conn);
        int eq = 0;
        if (old == NULL && PyErr_Occurred())
            goto done;
        if (old != NULL && (eq = num_cmp(old, d, Py_EQ)) < 0)
            goto done;
        if (!eq) {
            Py_CLEAR(entry);
            continue;
        }
        if (PyDict_DelItem(sched, conn) < 0)
            goto done;
        /* nd = deadline_of(conn) */
        PyObject *nd;
        if (timers ? nd_ok(conn) : (Py_TYPE(conn) == conn_cls.type && GET(conn, conn_off, C_DELACK_DEADLINE) != NULL)) {
            nd = timers ? next_deadline(conn) : GET(conn, conn_off, C_DELACK_DEADLINE);
            if (nd == NULL)
                goto done;
            Py_INCREF(nd);
        } else if ((nd = PyObject_CallOneArg(dl, conn)) == NULL)
            goto done;
        if (nd == Py_None) {
            Py_DECREF(nd);
            Py_CLEAR(entry);
            continue;
        }
        int later = num_cmp(nd, now, Py_GT);
        Py_DECREF(nd);
        if (later < 0)
            goto done;
        if (later) {   /* self._schedule(conn) */
            int c_sched = 0;
            if (nd_ok(conn) && _PyType_Lookup(stack_type, f_keys[F_SCHEDULE]) == schedule_func) {
                c_sched = 1;
                for (int i = 0; i < S_N && c_sched; i++)
                    if ((s[i] = PyDict_GetItemWithError(sdict, stack_keys[i])) == NULL) {
                        if (PyErr_Occurred())
                            goto done;
                        c_sched = 0;
                    }
                c_sched = c_sched && PyDict_CheckExact(s[S_ACK_SCHED]) && PyDict_CheckExact(s[S_SCHED])
                          && PyList_CheckExact(s[S_ACK_TIMERS]) && PyList_CheckExact(s[S_TIMERS])
                          && PyLong_CheckExact(s[S_TIMER_N]);
            }
            if (c_sched) {
                if (schedule(sdict, s, conn) < 0)
                    goto done;
            } else {
                PyObject *a[2] = { self, conn };
                if (call_method_void(f_keys[F_SCHEDULE], a, 2) < 0)
                    goto done;
            }
        } else {   /* self._active[conn] = None */
            PyObject *active = PyObject_GetAttr(self, stack_keys[S_ACTIVE]);
            if (active == NULL)
                goto done;
            int rc = PyObject_SetItem(active, conn, Py_None);
            Py_DECREF(active);
            if (rc < 0)
                goto done;
        }
        Py_CLEAR(entry);
    }
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(entry);
    Py_DECREF(self);
    Py_DECREF(sdict);
    Py_DECREF(heap);
    Py_DECREF(sched);
    return res;
python:
    fd_counts[1]++;
    {
        Py_ssize_t n = PyVectorcall_NARGS(nargsf), total = n + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        PyObject *small[8], **argv = small;
        if (total + 1 > 8 && (argv = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *))) == NULL)
            return PyErr_NoMemory();
        argv[0] = self;
        for (Py_ssize_t i = 0; i < total; i++)
            argv[i + 1] = args[i];
        PyObject *r = PyObject_Vectorcall(py_fire_due, argv, (size_t)(n + 1), kwnames);
        if (argv != small)
            PyMem_Free(argv);
        return r;
    }
}

static PyMethodDef fire_due_def = {
    "_fire_due", (PyCFunction)(void (*)(void))stack_fire_due, METH_FASTCALL | METH_KEYWORDS, fire_due_doc,
};

PyDoc_STRVAR(setup_fire_due_doc,
"setup_fire_due(timer_deadline, delack_deadline, fire_due_py) -> _fire_due\n\n"
"After setup_stack(): the C Stack._fire_due (a method descriptor to install on the class).");

static PyObject *setup_fire_due(PyObject *mod, PyObject *args)
{
    PyObject *td, *dd, *fp;
    if (!PyArg_ParseTuple(args, "OOO:setup_fire_due", &td, &dd, &fp))
        return NULL;
    if (stack_type == NULL || stack_keys[0] == NULL || conn_cls.type == NULL) {
        PyErr_SetString(PyExc_TypeError, "_tcpfast.setup_fire_due: setup_stack() was not done");
        return NULL;
    }
    if (intern_all(f_keys, f_names, F_N))
        return NULL;
    if (heappop == NULL) {
        PyObject *heapq = PyImport_ImportModule("heapq");
        if (heapq == NULL)
            return NULL;
        heappop = PyObject_GetAttrString(heapq, "heappop");
        Py_DECREF(heapq);
        if (heappop == NULL)
            return NULL;
    }
    PyObject *nf = _PyType_Lookup(conn_cls.type, f_keys[F_NEXT_DEADLINE]);
    PyObject *sf = _PyType_Lookup(stack_type, f_keys[F_SCHEDULE]);
    Py_XINCREF(nf);
    Py_XSETREF(nd_func, nf);
    Py_XINCREF(sf);
    Py_XSETREF(schedule_func, sf);
    Py_INCREF(td);
    Py_XSETREF(timer_dl, td);
    Py_INCREF(dd);
    Py_XSETREF(delack_dl, dd);
    Py_INCREF(fp);
    Py_XSETREF(py_fire_due, fp);
    return PyDescr_NewMethod(stack_type, &fire_due_def);
}

static PyObject *get_fd_counts(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("(KK)", fd_counts[0], fd_counts[1]);
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
    {"set_csum_api", set_csum_api, METH_VARARGS, set_csum_api_doc},
    {"rx_counts", get_rx_counts, METH_NOARGS,
     "rx_counts() -> (handled, declined): rx_established calls so far"},
    {"tx_established", (PyCFunction)(void (*)(void))tx_established, METH_FASTCALL, tx_established_doc},
    {"send", (PyCFunction)(void (*)(void))conn_send, METH_FASTCALL, conn_send_doc},
    {"send_counts", get_send_counts, METH_NOARGS,
     "send_counts() -> (handled, handed to conn.send): send calls so far"},
    {"setup_sockets", setup_sockets, METH_VARARGS, setup_sockets_doc},
    {"setup_fire_due", setup_fire_due, METH_VARARGS, setup_fire_due_doc},
    {"fire_due_counts", get_fd_counts, METH_NOARGS,
     "fire_due_counts() -> (timer entries handled here, calls handed to Python)"},
    {"rx_frames", (PyCFunction)(void (*)(void))rx_frames, METH_FASTCALL, rx_frames_doc},
    {"setup_rx", setup_rx, METH_O, setup_rx_doc},
    {"rx_frames_counts", get_rxf_counts, METH_NOARGS,
     "rx_frames_counts() -> (handled, handed to Stack.receive): frames of rx_frames so far"},
    {"setup_backend", setup_backend, METH_VARARGS, setup_backend_doc},
    {"sock_counts", get_sock_counts, METH_NOARGS,
     "sock_counts() -> {method: (handled, handed to Python)}: the socket methods' calls so far"},
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
