/* shim._speedups: the shim's per-request socket and selector work in C.
 *
 * A Redis-style server under demishim makes, per request, one recv and one send on a
 * library-OS socket and a share of one selector select.  In Python each of those is several
 * frames around the queue core's C calls (push, pop, wait), and those frames cost more than
 * the command itself.  This module does the common case of each in C:
 *
 *   socket.recv / recv_into   one whole buffered chunk (select already took the pop's data)
 *   socket.send / sendall     bytes on a connected stream with nothing queued before them:
 *                             push, then take the push's completion (it completes at once)
 *   scan                      select.poll's per-fd look at a connection registered for
 *                             POLLIN (shim.select._Poll._scan): ready, or its pop armed
 *   take_done                 the completions of a poll's other tokens after its wait_any
 *   dispatch                  the results of a poll's wait handed to their sockets
 *   probe, probe_fd           a new poll object's zero-timeout poll of one connection,
 *                             and select.select's of one connection
 *   poll, poll.register,      select.poll() itself, and a new poll object's registrations
 *   poll.poll                 and zero-timeout poll (what hiredis makes per command)
 *   select                    select.select's zero-timeout look at one connection
 *   DemiSelector.select       the selector's select: timeout, the poll object's wait, keys
 *
 * and falls back to the Python code (shim/socket.py, shim/select.py, which handle
 * everything) for every other case: other threads exist (the runtime lock could be held by
 * one of them), flags, keyword arguments, partial chunks, errors, kernel-mode sockets...
 *
 * SocketState's fields are slots, read here at fixed offsets, only while SocketState is
 * unmodified (its type version tag is the one seen at install: a test or a program that
 * replaces one of its attributes makes everything take the Python path).  The socket methods
 * are method descriptors of the shim's socket class (PyDescr_NewMethod), so a call costs
 * what a call of a C method of _socket.socket costs.  The LibOS's push/pop/wait (bound C
 * methods set once in LibOS.__init__) are looked up once per LibOS object.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <time.h>
#include <poll.h>
#include <limits.h>
#include <math.h>
#include <pythread.h>

/* ------------------------------------------------------------------ module state */

enum {
    F_RT, F_LOS, F_QD, F_STREAM, F_STATUS, F_CLOSED, F_RBUF, F_ROFF, F_EOF, F_RERR, F_WERR,
    F_POP_QT, F_PUSHES, F_INFLIGHT, F_SHUT_RD, F_CLOSING, F_LOST, F_COUNT
};
static const char *field_names[F_COUNT] = {
    "rt", "los", "qd", "stream", "status", "closed", "rbuf", "roff", "eof", "rerr", "werr",
    "pop_qt", "pushes", "inflight_limit", "shut_rd", "closing", "lost",
};

static struct {
    int ready;
    Py_ssize_t off_st, off_fd, off_tmo;  /* the socket class's __slots__ _st, _fd, _tmo */
    PyTypeObject *st_type;         /* SocketState */
    unsigned int st_version;       /* its tp_version_tag at install */
    Py_ssize_t off[F_COUNT];       /* its slots */
    PyObject *deque_type, *deque_append, *deque_clear;
    PyObject *py_recv, *py_recv_into, *py_send, *py_sendall, *py_settimeout;  /* the Python methods */
    PyObject *zero_float;          /* 0.0 */
    PyObject *push_failed;         /* shim.socket._push_failed(st, qt, n, r) */
    PyObject *connected;           /* shim.socket.CONNECTED */
    PyObject *op_failed, *op_pop;  /* Opcode.FAILED, Opcode.POP */
    PyObject *kind_pop;            /* "pop" */
    PyObject *pop_size;            /* POP_SIZE */
    Py_ssize_t max_push;
    PyObject *zero, *one;          /* 0, 1 (POLLIN) */
    /* the cached bound methods of one LibOS */
    PyObject *los, *los_push, *los_pop, *los_wait, *los_wait_any, *los_ops;  /* ops: or NULL */
    PyObject *los_push_done;  /* the core's push_done (no token when complete at once), or NULL */
    /* shim.runtime.Runtime: its slots, its version tag */
    PyTypeObject *rt_type;
    unsigned int rt_version;
    Py_ssize_t r_off[6];
    /* Op.result's offset (from its member descriptor), for the type seen */
    PyTypeObject *op_type;
    Py_ssize_t off_result;
    /* an SGArray type's tobytes and free (method descriptors), while its version holds */
    PyTypeObject *sga_type;
    unsigned int sga_version;
    PyObject *sga_tobytes, *sga_free;
    /* shim.select._Poll: its slots, its version tag at install */
    PyTypeObject *poll_type;
    unsigned int poll_version;
    Py_ssize_t p_off[12];
    Py_ssize_t off_polling, off_poked;  /* its other two slots */
    PyObject *rt_globals;          /* shim.runtime's globals: ``_runtime`` is the runtime */
    PyObject *py_poll_poll, *py_poll_register;  /* the Python poll() and register() */
    PyTypeObject *sock_type;       /* the shim's socket class, and its fileno at install */
    PyObject *py_fileno;
    PyObject *s__runtime, *s_fileno, *default_mask;
    /* DemiSelector: the Python select, selectors' own _key_from_fd, SelectorKey */
    PyObject *py_sel_select, *base_key_from_fd, *selector_key;
    PyObject *py_select;           /* the Python select.select of the shim */
    PyObject *s__selector, *s__fd_to_key, *s__key_from_fd, *s__poll_ready, *s__unblock;
    PyObject *s_los, *s_log, *s_log_base, *s_tokens, *s_by_fd, *s_blocked, *s__ops, *s_wait_any,
        *s__wait, *s__next, *s__prune, *s_trim_log, *s__dispatch;
    Py_ssize_t log_max, mine_slack, wait_any_max;
    PyObject *s_push, *s_pop, *s_wait, *s_get, *s_tobytes, *s_free, *s_on_result,
        *s_scan_slow, *s_result, *s_events;
} S;

enum { R_LOS, R_TOKENS, R_BY_FD, R_LOG, R_LOG_BASE, R_BLOCKED, R_COUNT };
static const char *rt_fields[R_COUNT] = {"los", "tokens", "by_fd", "log", "log_base", "blocked"};

#define RF(rt, f) (*(PyObject **)((char *)(rt) + S.r_off[f]))

static inline int rt_ok(PyObject *rt)
{
    PyTypeObject *t = S.rt_type;
    if (t == NULL || Py_TYPE(rt) != t || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        || t->tp_version_tag != S.rt_version)
        return 0;
    for (int i = 0; i < R_COUNT; i++)
        if (RF(rt, i) == NULL)
            return 0;
    return 1;
}

/* The only thread of the interpreter: nobody else can hold the runtime lock or run while we
 * hold the GIL (nothing below releases it between its checks and its changes; where Python
 * code is called, the checks are made again after it). */
static inline int only_thread(void)
{
    PyThreadState *ts = PyThreadState_Get();
    PyThreadState *head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(ts));
    return head == ts && PyThreadState_Next(head) == NULL;
}

static inline PyObject *slot(PyObject *self, Py_ssize_t off)
{
    return *(PyObject **)((char *)self + off);
}

/* A SocketState whose slots may be read at the offsets found at install. */
static inline int state_ok(PyObject *st)
{
    PyTypeObject *t = S.st_type;
    return Py_TYPE(st) == t && (t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        && t->tp_version_tag == S.st_version;
}

/* A field of a SocketState (borrowed; NULL if unset). */
#define FLD(st, f) slot((st), S.off[f])

static inline void set_fld(PyObject *st, int f, PyObject *v)
{
    PyObject **p = (PyObject **)((char *)st + S.off[f]);
    PyObject *old = *p;
    Py_INCREF(v);
    *p = v;
    Py_XDECREF(old);
}

/* ``v`` is the int 0 (not False, not 0.0: those take the Python path). */
static inline int is_int_zero(PyObject *v)
{
    return v != NULL && PyLong_CheckExact(v) && Py_SIZE(v) == 0;
}

/* ``v`` is the int 1 (POLLIN). */
static inline int is_pollin(PyObject *v)
{
    if (v == S.one)
        return 1;
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    return PyLong_AsLongAndOverflow(v, &overflow) == 1;
}

static inline int is_empty_dict(PyObject *v)
{
    return v != NULL && PyDict_CheckExact(v) && PyDict_GET_SIZE(v) == 0;
}

/* The bound push/pop/wait of ``los`` (looked up once per LibOS object). */
static int los_methods(PyObject *los)
{
    if (los == S.los)
        return 0;
    PyObject *push = PyObject_GetAttr(los, S.s_push);
    PyObject *pop = push ? PyObject_GetAttr(los, S.s_pop) : NULL;
    PyObject *wait = pop ? PyObject_GetAttr(los, S.s_wait) : NULL;
    PyObject *wait_any = wait ? PyObject_GetAttr(los, S.s_wait_any) : NULL;
    if (wait_any == NULL) {
        Py_XDECREF(push);
        Py_XDECREF(pop);
        Py_XDECREF(wait);
        return -1;
    }
    PyObject *ops = PyObject_GetAttr(los, S.s__ops);  /* the token table, if it has one */
    if (ops == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(push);
            Py_DECREF(pop);
            Py_DECREF(wait);
            Py_DECREF(wait_any);
            return -1;
        }
        PyErr_Clear();
    }
    PyObject *push_done = NULL, *fc = PyObject_GetAttrString(los, "_fc");  /* optional */
    if (fc != NULL) {
        push_done = PyObject_GetAttrString(fc, "push_done");
        Py_DECREF(fc);
    }
    if (push_done == NULL)
        PyErr_Clear();
    Py_XSETREF(S.los_push_done, push_done);
    Py_INCREF(los);
    Py_XSETREF(S.los, los);
    Py_XSETREF(S.los_push, push);
    Py_XSETREF(S.los_pop, pop);
    Py_XSETREF(S.los_wait, wait);
    Py_XSETREF(S.los_wait_any, wait_any);
    Py_XSETREF(S.los_ops, ops);
    return 0;
}

/* Call the Python method ``fn`` with self and the vector arguments. */
static PyObject *fallback(PyObject *fn, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *stack[9];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw + 1 > 9) {
        PyObject *tup = PyTuple_New(nargs + 1);
        if (tup == NULL)
            return NULL;
        Py_INCREF(self);
        PyTuple_SET_ITEM(tup, 0, self);
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(tup, i + 1, args[i]);
        }
        PyObject *kw = NULL;
        if (nkw) {
            kw = PyDict_New();
            if (kw == NULL) {
                Py_DECREF(tup);
                return NULL;
            }
            for (Py_ssize_t i = 0; i < nkw; i++)
                if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                    Py_DECREF(tup);
                    Py_DECREF(kw);
                    return NULL;
                }
        }
        PyObject *r = PyObject_Call(fn, tup, kw);
        Py_DECREF(tup);
        Py_XDECREF(kw);
        return r;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(fn, stack, nargs + 1, kwnames);
}

/* The state of a library-OS socket whose fd is open and whose slots may be read, in a
 * single-threaded process (else NULL: the Python path). Borrowed. */
static inline PyObject *live_state(PyObject *self)
{
    if (!S.ready)
        return NULL;
    PyObject *st = slot(self, S.off_st);
    if (st == NULL || st == Py_None || !state_ok(st))
        return NULL;
    PyObject *fd = slot(self, S.off_fd);
    if (fd == NULL || !PyLong_CheckExact(fd) || Py_SIZE(fd) < 0)
        return NULL;
    if (!only_thread())
        return NULL;
    return st;
}

/* ------------------------------------------------------------------ reading */

/* When the stream's buffer holds exactly one chunk, from its start, of at most ``limit``
 * bytes: that chunk (a new reference), removed from the buffer.  NULL without an error: the
 * Python path. */
static PyObject *take_whole_chunk(PyObject *st, Py_ssize_t limit)
{
    PyObject *rbuf = FLD(st, F_RBUF);
    if (rbuf == NULL || (PyObject *)Py_TYPE(rbuf) != S.deque_type || Py_SIZE(rbuf) != 1
        || FLD(st, F_STREAM) != Py_True || !is_int_zero(FLD(st, F_ROFF)))
        return NULL;
    PyObject *data = PySequence_GetItem(rbuf, 0);
    if (data == NULL)
        return NULL;
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) > limit) {
        Py_DECREF(data);
        return NULL;
    }
    PyObject *r = PyObject_Vectorcall(S.deque_clear, &rbuf, 1, NULL);
    if (r == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    Py_DECREF(r);
    return data;
}

static int take_pop_result(PyObject *st, PyObject *r);

/* rt.changed(st) as SocketState.on_result does it for a pop's data: append st to the
 * readiness log, or call rt.changed when a poll is blocked or the log is full.  0 or -1. */
static int log_changed(PyObject *rt, PyObject *st)
{
    PyObject *log = RF(rt, R_LOG);
    int blocked = PyObject_IsTrue(RF(rt, R_BLOCKED));
    if (blocked < 0)
        return -1;
    if (!blocked && PyList_CheckExact(log) && PyList_GET_SIZE(log) < S.log_max)
        return PyList_Append(log, st);
    PyObject *x = PyObject_CallMethod(rt, "changed", "O", st);
    Py_XDECREF(x);
    return x == NULL ? -1 : 0;
}

/* The socket's pop on a connected stream with an empty buffer (issued now if it was not),
 * waited for up to ``tmo`` (None: no limit, a float >= 0; 0.0: one poll), and its result
 * taken into the buffer as Runtime.dispatch does.  1: the pop completed, 2: the wait timed
 * out (no exception set), 0: the Python path, -1: an exception.  Anything unusual (end of
 * stream, an error to report, a wait that fails other than by timing out) is left to the
 * Python path, which finds the same state (the token stays the socket's). */
static int pop_and_wait(PyObject *st, PyObject *tmo)
{
    PyObject *rbuf = FLD(st, F_RBUF);
    if (rbuf == NULL || (PyObject *)Py_TYPE(rbuf) != S.deque_type || Py_SIZE(rbuf) != 0
        || FLD(st, F_STREAM) != Py_True || FLD(st, F_STATUS) != S.connected
        || FLD(st, F_CLOSED) != Py_False || FLD(st, F_EOF) != Py_False
        || FLD(st, F_SHUT_RD) != Py_False || !is_int_zero(FLD(st, F_RERR))
        || !is_empty_dict(FLD(st, F_LOST)))
        return 0;
    PyObject *rt = FLD(st, F_RT), *los = FLD(st, F_LOS), *qd = FLD(st, F_QD);
    if (rt == NULL || los == NULL || qd == NULL || !rt_ok(rt) || S.log_max <= 0
        || !PyDict_CheckExact(RF(rt, R_TOKENS)))
        return 0;
    PyObject *tokens = Py_NewRef(RF(rt, R_TOKENS)), *qt = NULL, *r = NULL, *ent = NULL;
    Py_INCREF(st);
    Py_INCREF(rt);
    Py_INCREF(los);
    Py_INCREF(qd);
    int ret = -1;
    if (los_methods(los) < 0)
        goto done;
    qt = Py_XNewRef(FLD(st, F_POP_QT));
    if (qt == NULL)
        goto slow;
    if (qt == Py_None) {  /* SocketState.ensure_pop */
        PyObject *pargs[2] = {qd, S.pop_size};
        Py_SETREF(qt, PyObject_Vectorcall(S.los_pop, pargs, 2, NULL));
        if (qt == NULL)
            goto done;
        set_fld(st, F_POP_QT, qt);
        PyObject *e = PyTuple_Pack(2, st, S.kind_pop);
        if (e == NULL || PyDict_SetItem(tokens, qt, e) < 0) {
            Py_XDECREF(e);
            goto done;
        }
        Py_DECREF(e);
    }
    PyObject *wargs[2] = {qt, tmo};
    r = PyObject_Vectorcall(S.los_wait, wargs, 2, NULL);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            goto done;
        int timed_out = PyErr_ExceptionMatches(PyExc_TimeoutError);
        PyErr_Clear();
        if (!timed_out || tmo == Py_None)
            goto slow;  /* (e.g. consumed by another waiter: the Python path knows) */
        ret = 2;
        goto done;
    }
    ent = _PyDict_Pop(tokens, qt, Py_None);  /* Runtime.dispatch */
    if (ent == NULL)
        goto done;
    if (ent != Py_None) {
        if (!PyTuple_Check(ent) || PyTuple_GET_SIZE(ent) != 2 || !PyTuple_Check(r)
            || PyTuple_GET_SIZE(r) < 5) {
            PyErr_SetString(PyExc_TypeError, "a token entry must be (state, kind)");
            goto done;
        }
        PyObject *owner = PyTuple_GET_ITEM(ent, 0), *kind = PyTuple_GET_ITEM(ent, 1);
        int taken = 0;
        if (owner == st && kind == S.kind_pop && PyTuple_GET_ITEM(r, 0) == S.op_pop)
            taken = take_pop_result(st, r);
        if (taken < 0 || (taken > 0 && log_changed(rt, st) < 0))
            goto done;
        if (taken == 0) {
            PyObject *oargs[3] = {owner, kind, r};
            PyObject *x = PyObject_VectorcallMethod(S.s_on_result, oargs,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (x == NULL)
                goto done;
            Py_DECREF(x);
        }
    }
    ret = 1;
    goto done;
slow:
    ret = 0;
done:
    Py_XDECREF(ent);
    Py_XDECREF(r);
    Py_XDECREF(qt);
    Py_DECREF(tokens);
    Py_DECREF(qd);
    Py_DECREF(los);
    Py_DECREF(rt);
    Py_DECREF(st);
    return ret;
}

/* A read on a connected stream whose buffer is empty (shim.socket.socket._read's wait):
 * pop_and_wait with the socket's timeout, for a read of at most POP_SIZE bytes.  1: the pop
 * completed (the caller takes from the buffer again), 0: the Python path, -1: an exception
 * (a miss is BlockingIOError EAGAIN at timeout 0, else socket.timeout, as _read raises
 * them). */
static int wait_for_data(PyObject *self, PyObject *st, Py_ssize_t bufsize)
{
    PyObject *tmo = slot(self, S.off_tmo);
    if (tmo == NULL || (tmo != Py_None && !(PyFloat_CheckExact(tmo) && PyFloat_AS_DOUBLE(tmo) >= 0.0))
        || bufsize <= 0 || bufsize > PyLong_AsSsize_t(S.pop_size))
        return 0;
    int w = pop_and_wait(st, tmo);
    if (w != 2)
        return w;
    if (PyFloat_AS_DOUBLE(tmo) == 0.0) {
        errno = EAGAIN;
        PyErr_SetFromErrno(PyExc_OSError);  /* BlockingIOError */
    }
    else
        PyErr_SetString(PyExc_TimeoutError, "timed out");  /* socket.timeout */
    return -1;
}

static PyObject *s_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL || nargs < 1 || nargs > 2 || !PyLong_CheckExact(args[0])
        || (nargs == 2 && !is_int_zero(args[1])))
        goto slow;
    PyObject *st = live_state(self);
    if (st == NULL)
        goto slow;
    Py_ssize_t bufsize = PyLong_AsSsize_t(args[0]);
    if (bufsize < 0) {
        if (PyErr_Occurred())
            PyErr_Clear();
        goto slow;
    }
    PyObject *data = take_whole_chunk(st, bufsize);
    if (data != NULL)
        return data;
    if (PyErr_Occurred())
        return NULL;
    int w = wait_for_data(self, st, bufsize);
    if (w < 0)
        return NULL;
    if (w > 0 && (st = live_state(self)) != NULL) {  /* (the wait may have run handlers) */
        data = take_whole_chunk(st, bufsize);
        if (data != NULL || PyErr_Occurred())
            return data;
    }
slow:
    return fallback(S.py_recv, self, args, nargs, kwnames);
}

static PyObject *s_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    /* recv_into(buffer[, nbytes[, flags]]) with nbytes 0 and flags 0: a whole buffered
     * chunk, else (an empty buffer) the wait of s_recv, then the chunk it brought */
    if (kwnames != NULL || nargs < 1 || nargs > 3 || (nargs >= 2 && !is_int_zero(args[1]))
        || (nargs == 3 && !is_int_zero(args[2])))
        goto slow;
    for (int waited = 0; waited < 2; waited++) {
        PyObject *st = live_state(self);  /* (the wait may have run handlers) */
        if (st == NULL || !is_empty_dict(FLD(st, F_LOST)))  /* (socket._live's check) */
            goto slow;
        Py_buffer view;
        if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();  /* the Python path raises the right error */
            goto slow;
        }
        Py_ssize_t len = view.len;
        PyObject *data = take_whole_chunk(st, len);
        if (data != NULL) {
            Py_ssize_t n = PyBytes_GET_SIZE(data);
            memcpy(view.buf, PyBytes_AS_STRING(data), (size_t)n);
            PyBuffer_Release(&view);
            Py_DECREF(data);
            return PyLong_FromSsize_t(n);
        }
        PyBuffer_Release(&view);  /* no view is held while waiting (see _read_into) */
        if (PyErr_Occurred())
            return NULL;
        if (waited)
            break;
        int w = wait_for_data(self, st, len);
        if (w < 0)
            return NULL;
        if (w == 0)
            break;
    }
slow:
    return fallback(S.py_recv_into, self, args, nargs, kwnames);
}

/* ------------------------------------------------------------------ timeouts */

/* settimeout(None) and settimeout(0) (redis-py sets them around every input probe): the
 * _tmo slot, on a library-OS socket whose fd is open (socket._live's checks).  Any other
 * value takes the Python path, which parses it exactly as _socket does. */
static PyObject *s_settimeout(PyObject *self, PyObject *value)
{
    PyObject *t = value == Py_None ? Py_None
        : (is_int_zero(value) || (PyFloat_CheckExact(value) && PyFloat_AS_DOUBLE(value) == 0.0))
        ? S.zero_float : NULL;
    PyObject *st = t != NULL ? live_state(self) : NULL;
    if (st == NULL || !is_empty_dict(FLD(st, F_LOST)))
        return fallback(S.py_settimeout, self, &value, 1, NULL);
    PyObject **p = (PyObject **)((char *)self + S.off_tmo);
    Py_INCREF(t);
    Py_XSETREF(*p, t);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ writing */

/* Push ``data`` (exact bytes) on a connected stream with no unfinished push and no pending
 * write error, and take the push's completion if it came at once (else track it).
 * Returns 1 (pushed), 0 (the Python path), -1 (an exception). */
static int push_now(PyObject *st, PyObject *data)
{
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n <= 0 || n > S.max_push || FLD(st, F_STREAM) != Py_True
        || FLD(st, F_STATUS) != S.connected || !is_empty_dict(FLD(st, F_PUSHES))
        || !is_int_zero(FLD(st, F_WERR)))
        return 0;
    PyObject *v = FLD(st, F_INFLIGHT);
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long limit = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow < 0 || (overflow == 0 && n > limit))
        return 0;
    PyObject *los = FLD(st, F_LOS), *qd = FLD(st, F_QD);
    if (los == NULL || qd == NULL)
        return 0;
    Py_INCREF(los);
    Py_INCREF(qd);
    Py_INCREF(st);
    int ret = -1;
    PyObject *qt = NULL, *r = NULL;
    if (los_methods(los) < 0)
        goto done;
    PyObject *pargs[2] = {qd, data};
    qt = PyObject_Vectorcall(S.los_push_done != NULL ? S.los_push_done : S.los_push, pargs, 2, NULL);
    if (qt == NULL)
        goto done;
    if (qt == Py_None) {  /* push_done: complete, no token to take */
        ret = 1;
        goto done;
    }
    PyObject *wargs[2] = {qt, S.zero};
    r = PyObject_Vectorcall(S.los_wait, wargs, 2, NULL);
    if (r == NULL) {
        /* TimeoutError: not sent yet (tracked by _push_failed); another OSError: consumed
         * by another thread, which dispatches it */
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            goto done;
        if (!PyErr_ExceptionMatches(PyExc_TimeoutError)) {
            PyErr_Clear();
            ret = 1;
            goto done;
        }
        PyErr_Clear();
        r = Py_None;
        Py_INCREF(r);
    }
    else if (!(PyTuple_Check(r) && PyTuple_GET_SIZE(r) > 0
               && PyTuple_GET_ITEM(r, 0) == S.op_failed)) {
        ret = 1;
        goto done;
    }
    /* not complete yet, or failed: the Python code records it */
    PyObject *nn = PyLong_FromSsize_t(n);
    if (nn != NULL) {
        PyObject *fargs[4] = {st, qt, nn, r};
        PyObject *x = PyObject_Vectorcall(S.push_failed, fargs, 4, NULL);
        if (x != NULL) {
            ret = 1;
            Py_DECREF(x);
        }
        Py_DECREF(nn);
    }
done:
    Py_XDECREF(r);
    Py_XDECREF(qt);
    Py_DECREF(st);
    Py_DECREF(qd);
    Py_DECREF(los);
    return ret;
}

static int send_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     int check_lost)
{
    if (kwnames != NULL || nargs < 1 || nargs > 2 || !PyBytes_CheckExact(args[0])
        || (nargs == 2 && !is_int_zero(args[1])))
        return 0;
    PyObject *st = live_state(self);
    if (st == NULL)
        return 0;
    if (check_lost && !is_empty_dict(FLD(st, F_LOST)))  /* sendall calls _live() first */
        return 0;
    return push_now(st, args[0]);
}

static PyObject *s_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int r = send_fast(self, args, nargs, kwnames, 0);
    if (r > 0)
        return PyLong_FromSsize_t(PyBytes_GET_SIZE(args[0]));
    if (r < 0)
        return NULL;
    return fallback(S.py_send, self, args, nargs, kwnames);
}

static PyObject *s_sendall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    int r = send_fast(self, args, nargs, kwnames, 1);
    if (r > 0)
        Py_RETURN_NONE;
    if (r < 0)
        return NULL;
    return fallback(S.py_sendall, self, args, nargs, kwnames);
}

/* ------------------------------------------------------------------ select.poll */

/* A connection registered for POLLIN only whose readiness follows from its state alone:
 * 1 (ready), 2 (not ready: its pop, armed now if it was not, went into ``toks``), 0 (the
 * Python path: shim.select._Poll._scan_slow), -1 (an exception).  SocketState.poll_mask's
 * common case with ensure_pop, as shim.select._Poll._scan inlines it. */
static int scan_one(PyObject *st, PyObject *fd, PyObject *by_fd, PyObject *toks,
                    PyObject *tokens)
{
    if (!state_ok(st) || FLD(st, F_CLOSED) != Py_False || FLD(st, F_STATUS) != S.connected
        || FLD(st, F_STREAM) != Py_True || FLD(st, F_CLOSING) != Py_False)
        return 0;
    PyObject *cur = PyDict_GetItemWithError(by_fd, fd);
    if (cur != st)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *rbuf = FLD(st, F_RBUF), *eof = FLD(st, F_EOF), *shut_rd = FLD(st, F_SHUT_RD);
    if (rbuf == NULL || (PyObject *)Py_TYPE(rbuf) != S.deque_type || eof == NULL
        || shut_rd == NULL)
        return 0;
    if (Py_SIZE(rbuf) > 0 || eof == Py_True || shut_rd == Py_True)
        return 1;
    if (eof != Py_False || shut_rd != Py_False || !is_int_zero(FLD(st, F_RERR)))
        return 0;
    PyObject *qt = FLD(st, F_POP_QT);
    if (qt == NULL)
        return 0;
    if (qt == Py_None) {
        PyObject *los = FLD(st, F_LOS), *qd = FLD(st, F_QD);
        if (los == NULL || qd == NULL)
            return 0;
        if (los_methods(los) < 0)
            return -1;
        PyObject *args[2] = {qd, S.pop_size};
        qt = PyObject_Vectorcall(S.los_pop, args, 2, NULL);
        if (qt == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_OSError))
                return -1;
            PyErr_Clear();  /* poll_mask, in the Python path, reports it */
            return 0;
        }
        set_fld(st, F_POP_QT, qt);
        PyObject *ent = PyTuple_Pack(2, st, S.kind_pop);
        int e = ent == NULL ? -1 : PyDict_SetItem(tokens, qt, ent);
        Py_XDECREF(ent);
        Py_DECREF(qt);
        if (e < 0)
            return -1;
        qt = FLD(st, F_POP_QT);
    }
    return PyDict_SetItem(toks, qt, Py_None) < 0 ? -1 : 2;
}

/* scan(poll, rt, cands, fds, shim, by_fd, toks, tokens) -> {fd: revents}
 * shim.select._Poll._scan's loop over the candidate fds; what scan_one does not decide is
 * asked of poll._scan_slow(rt, fd, mask). */
static PyObject *c_scan(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 8 arguments");
        return NULL;
    }
    PyObject *poll = args[0], *rt = args[1], *cands = args[2], *fds = args[3], *shim = args[4],
        *by_fd = args[5], *toks = args[6], *tokens = args[7];
    if (!PyDict_Check(fds) || !PyDict_Check(shim) || !PyDict_Check(by_fd) || !PyDict_Check(toks)
        || !PyDict_Check(tokens)) {
        PyErr_SetString(PyExc_TypeError, "scan() needs dicts");
        return NULL;
    }
    PyObject *ready = PyDict_New();
    if (ready == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(cands);
    if (it == NULL) {
        Py_DECREF(ready);
        return NULL;
    }
    int fast = S.ready;  /* (the runtime lock is held: by the caller, or the only thread) */
    PyObject *fd;
    while ((fd = PyIter_Next(it)) != NULL) {
        PyObject *mask = PyDict_GetItemWithError(fds, fd);
        if (mask == NULL) {
            Py_DECREF(fd);
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        int k = 0;
        if (fast && is_pollin(mask)) {
            PyObject *st = PyDict_GetItemWithError(shim, fd);
            if (st != NULL && st != Py_None) {
                Py_INCREF(st);
                k = scan_one(st, fd, by_fd, toks, tokens);
                Py_DECREF(st);
            }
            else if (PyErr_Occurred())
                k = -1;
        }
        if (k == 1)
            k = PyDict_SetItem(ready, fd, S.one) < 0 ? -1 : 1;
        if (k == 0) {
            Py_INCREF(mask);
            PyObject *sargs[4] = {poll, rt, fd, mask};
            PyObject *m = PyObject_VectorcallMethod(S.s_scan_slow, sargs,
                                                    4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(mask);
            if (m == NULL)
                k = -1;
            else {
                int t = PyObject_IsTrue(m);
                if (t < 0 || (t > 0 && PyDict_SetItem(ready, fd, m) < 0))
                    k = -1;
                Py_DECREF(m);
            }
        }
        Py_DECREF(fd);
        if (k < 0)
            goto error;
    }
    if (PyErr_Occurred())
        goto error;
    Py_DECREF(it);
    return ready;
error:
    Py_DECREF(it);
    Py_DECREF(ready);
    return NULL;
}

/* gather(cands, log, start, by_st): add to the set ``cands`` the fds (in ``by_st``: state
 * -> list of fds) of every state in log[start:].  shim.select._Poll._scan's walk of the
 * readiness log. */
static PyObject *c_gather(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PySet_Check(args[0]) || !PyList_Check(args[1])
        || !PyLong_Check(args[2]) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "gather(cands: set, log: list, start: int, by_st: dict)");
        return NULL;
    }
    PyObject *cands = args[0], *log = args[1], *by_st = args[3];
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "negative start");
        return NULL;
    }
    for (Py_ssize_t i = start; i < PyList_GET_SIZE(log); i++) {
        PyObject *st = PyList_GET_ITEM(log, i);
        Py_INCREF(st);
        PyObject *fl = PyDict_GetItemWithError(by_st, st);
        Py_DECREF(st);
        if (fl == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        if (PyList_CheckExact(fl)) {
            for (Py_ssize_t j = 0; j < PyList_GET_SIZE(fl); j++)
                if (PySet_Add(cands, PyList_GET_ITEM(fl, j)) < 0)
                    return NULL;
        }
        else if (_PySet_Update(cands, fl) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* keys(ready, fd_to_key, key_type) -> [(key, events)]: selectors' select over poll's
 * result (a dict fd -> revents), as _PollLikeSelector.select builds it (EVENT_READ 1 is
 * POLLIN, EVENT_WRITE 2 is POLLOUT 4); key_type: selectors.SelectorKey. */
static PyObject *c_keys(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "keys(ready: dict, fd_to_key: dict, key_type)");
        return NULL;
    }
    PyObject *ready = args[0], *fd_to_key = args[1], *key_type = args[2];
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *fd, *ev;
    while (PyDict_Next(ready, &pos, &fd, &ev)) {
        long event = PyLong_AsLong(ev);
        if (event == -1 && PyErr_Occurred())
            goto error;
        long events = 0;
        if (event & ~1L)   /* event & ~POLLIN */
            events |= 2;   /* EVENT_WRITE */
        if (event & ~4L)   /* event & ~POLLOUT */
            events |= 1;   /* EVENT_READ */
        PyObject *key = PyDict_GetItemWithError(fd_to_key, fd);
        if (key == NULL) {
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        /* a SelectorKey (a namedtuple: fileobj, fd, events, data) is true, and its events
         * are item 2; anything else is asked */
        int exact = (PyObject *)Py_TYPE(key) == key_type && PyTuple_GET_SIZE(key) == 4;
        int t = exact ? 1 : PyObject_IsTrue(key);
        if (t < 0)
            goto error;
        if (!t)
            continue;
        Py_INCREF(key);
        PyObject *kev = exact ? Py_NewRef(PyTuple_GET_ITEM(key, 2))
            : PyObject_GetAttr(key, S.s_events);
        PyObject *pair = NULL;
        if (kev != NULL) {
            PyObject *m;
            long k = PyLong_CheckExact(kev) ? PyLong_AsLong(kev) : -1;
            if (k >= 0)  /* an int's & in C (small results are cached ints) */
                m = PyLong_FromLong(events & k);
            else {
                PyErr_Clear();
                PyObject *e = PyLong_FromLong(events);
                m = e ? PyNumber_And(e, kev) : NULL;
                Py_XDECREF(e);
            }
            if (m != NULL) {
                pair = PyTuple_Pack(2, key, m);
                Py_DECREF(m);
            }
            Py_DECREF(kev);
        }
        Py_DECREF(key);
        if (pair == NULL)
            goto error;
        int e = PyList_Append(out, pair);
        Py_DECREF(pair);
        if (e < 0)
            goto error;
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

/* take_done(qts, ops, first, wait, out): append to ``out`` wait(qt, 0) of every token of
 * ``qts`` but ``first`` whose op (in ``ops``, the LibOS's token table) has a result; a
 * token taken meanwhile by another thread (OSError, TimeoutError) is skipped.
 * shim.select._Poll._next's loop after its wait_any. */
static PyObject *c_take_done(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_Check(args[0]) || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "take_done(qts: list, ops, first, wait, out: list)");
        return NULL;
    }
    PyObject *qts = args[0], *ops = args[1], *first = args[2], *wait = args[3], *out = args[4];
    PyObject *get = PyObject_GetAttr(ops, S.s_get);
    if (get == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(qts); i++) {
        PyObject *qt = PyList_GET_ITEM(qts, i);
        Py_INCREF(qt);
        PyObject *op = PyObject_Vectorcall(get, &qt, 1, NULL);
        if (op == NULL)
            goto error;
        PyObject *res;
        if (op == Py_None)
            res = NULL;
        else if (Py_TYPE(op) == S.op_type)
            res = slot(op, S.off_result);
        else {  /* another type of op: its result attribute (its offset, for next time) */
            PyObject *d = _PyType_Lookup(Py_TYPE(op), S.s_result);
            if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type)
                && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT) {
                Py_INCREF(Py_TYPE(op));
                Py_XSETREF(S.op_type, Py_TYPE(op));
                S.off_result = ((PyMemberDescrObject *)d)->d_member->offset;
                res = slot(op, S.off_result);
            }
            else {
                PyObject *r = PyObject_GetAttr(op, S.s_result);
                if (r == NULL) {
                    Py_DECREF(op);
                    goto error;
                }
                res = r == Py_None ? NULL : op;  /* only tested against NULL/None below */
                Py_DECREF(r);
            }
        }
        int done = res != NULL && res != Py_None;
        Py_DECREF(op);
        if (done) {
            int same;
            if (qt == first)
                same = 1;
            else if (PyLong_CheckExact(qt) && PyLong_CheckExact(first)) {
                int o1, o2;
                long long a = PyLong_AsLongLongAndOverflow(qt, &o1);
                long long b = PyLong_AsLongLongAndOverflow(first, &o2);
                same = (o1 || o2) ? PyObject_RichCompareBool(qt, first, Py_EQ) : a == b;
            }
            else
                same = PyObject_RichCompareBool(qt, first, Py_EQ);
            if (same < 0)
                goto error;
            if (!same) {
                PyObject *wargs[2] = {qt, S.zero};
                PyObject *r = PyObject_Vectorcall(wait, wargs, 2, NULL);
                if (r == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_OSError))
                        goto error;
                    PyErr_Clear();  /* taken by another thread meanwhile: it dispatches it */
                }
                else {
                    int e = PyList_Append(out, r);
                    Py_DECREF(r);
                    if (e < 0)
                        goto error;
                }
            }
        }
        Py_DECREF(qt);
    }
    Py_DECREF(get);
    Py_RETURN_NONE;
error:
    Py_DECREF(get);
    return NULL;
}

/* sga.tobytes(), then sga.free() (its errors ignored): shim.socket.sga_bytes.  The two
 * methods are looked up once per sga type, when they are C methods of the type (else by
 * name every time). */
static PyObject *sga_bytes(PyObject *sga)
{
    PyTypeObject *tp = Py_TYPE(sga);
    if (tp != S.sga_type) {
        PyObject *tb = _PyType_Lookup(tp, S.s_tobytes), *fr = _PyType_Lookup(tp, S.s_free);
        if (tb != NULL && fr != NULL && Py_IS_TYPE(tb, &PyMethodDescr_Type)
            && Py_IS_TYPE(fr, &PyMethodDescr_Type)) {
            Py_INCREF(tb);
            Py_INCREF(fr);
            Py_INCREF(tp);
            Py_XSETREF(S.sga_tobytes, tb);
            Py_XSETREF(S.sga_free, fr);
            Py_XSETREF(S.sga_type, tp);
        }
    }
    int cached = tp == S.sga_type && (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        && tp->tp_version_tag == S.sga_version;
    if (tp == S.sga_type && !cached) {  /* (re)check the version: the methods may be new */
        PyObject *tb = _PyType_Lookup(tp, S.s_tobytes), *fr = _PyType_Lookup(tp, S.s_free);
        if (tb == S.sga_tobytes && fr == S.sga_free && (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
            S.sga_version = tp->tp_version_tag;
            cached = 1;
        }
    }
    PyObject *data = cached ? PyObject_Vectorcall(S.sga_tobytes, &sga, 1, NULL)
        : PyObject_VectorcallMethod(S.s_tobytes, &sga, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (data == NULL)
        return NULL;
    PyObject *r = cached ? PyObject_Vectorcall(S.sga_free, &sga, 1, NULL)
        : PyObject_VectorcallMethod(S.s_free, &sga, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
            Py_DECREF(data);
            return NULL;
        }
        PyErr_Clear();
    }
    Py_XDECREF(r);
    return data;
}

/* A stream pop's data (or end of stream) into the socket's buffer: SocketState.on_result's
 * common case without its Runtime.changed (the caller logs it). 1 done, 0 the Python path,
 * -1 an exception. */
static int take_pop_result(PyObject *st, PyObject *r)
{
    if (!state_ok(st) || FLD(st, F_STREAM) != Py_True)
        return 0;
    PyObject *rbuf = FLD(st, F_RBUF);
    if (rbuf == NULL || (PyObject *)Py_TYPE(rbuf) != S.deque_type)
        return 0;
    set_fld(st, F_POP_QT, Py_None);
    PyObject *data = sga_bytes(PyTuple_GET_ITEM(r, 4));
    if (data == NULL)
        return -1;
    int t = PyObject_IsTrue(data);
    if (t > 0) {
        PyObject *a[2] = {rbuf, data};
        PyObject *x = PyObject_Vectorcall(S.deque_append, a, 2, NULL);
        if (x == NULL)
            t = -1;
        Py_XDECREF(x);
    }
    else if (t == 0)
        set_fld(st, F_EOF, Py_True);
    Py_DECREF(data);
    return t < 0 ? -1 : 1;
}

/* dispatch(results, tokens, mine, log, by_st, fds, fast, ready) -> ready or None
 * shim.select._Poll._dispatch's loop (the runtime lock held by the caller): each result to
 * the socket state that issued its token; ``ready`` (a dict, True for a new one, or None)
 * gets the fds made ready for POLLIN by the results, or becomes None when readiness needs
 * a scan. */
static PyObject *c_dispatch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "dispatch() takes 8 arguments");
        return NULL;
    }
    PyObject *results = args[0], *tokens = args[1], *mine = args[2], *log = args[3],
        *by_st = args[4], *fds = args[5], *ready = args[7];
    int fast = PyObject_IsTrue(args[6]);
    if (fast < 0)
        return NULL;
    if (!PyDict_Check(tokens) || !PyDict_Check(mine) || !PyList_Check(log)
        || !PyDict_Check(by_st) || !PyDict_Check(fds)) {
        PyErr_SetString(PyExc_TypeError, "dispatch() needs dicts and a list");
        return NULL;
    }
    fast = fast && S.ready;  /* (the runtime lock is held: by the caller, or the only thread) */
    PyObject *seq = PySequence_Fast(results, "results must be a sequence");
    if (seq == NULL)
        return NULL;
    if (ready == Py_True)  /* make the dict, sized for the results */
        ready = _PyDict_NewPresized(PySequence_Fast_GET_SIZE(seq));
    else if (ready != Py_None && !PyDict_Check(ready))
        ready = Py_NewRef(Py_None);
    else
        Py_INCREF(ready);
    if (ready == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 5) {
            PyErr_SetString(PyExc_TypeError, "a result must be a QResult");
            goto error;
        }
        PyObject *qt = PyTuple_GET_ITEM(r, 2);
        PyObject *x = _PyDict_Pop(mine, qt, Py_None);
        if (x == NULL)
            goto error;
        Py_DECREF(x);
        PyObject *ent = _PyDict_Pop(tokens, qt, Py_None);
        if (ent == NULL)
            goto error;
        if (ent == Py_None) {  /* a wake-up or a watch: the next scan or kernel poll tells */
            Py_DECREF(ent);
            Py_SETREF(ready, Py_NewRef(Py_None));
            continue;
        }
        if (!PyTuple_Check(ent) || PyTuple_GET_SIZE(ent) != 2) {
            Py_DECREF(ent);
            PyErr_SetString(PyExc_TypeError, "a token entry must be (state, kind)");
            goto error;
        }
        PyObject *st = PyTuple_GET_ITEM(ent, 0), *kind = PyTuple_GET_ITEM(ent, 1);
        int done = 0;
        if (fast && PyTuple_GET_ITEM(r, 0) == S.op_pop) {
            int is_pop = kind == S.kind_pop;
            if (!is_pop && PyUnicode_CheckExact(kind))
                is_pop = PyUnicode_Compare(kind, S.kind_pop) == 0;
            if (is_pop)
                done = take_pop_result(st, r);
        }
        if (done > 0) {
            if (PyList_Append(log, st) < 0)
                done = -1;
            else if (ready != Py_None) {
                if (FLD(st, F_STATUS) == S.connected && FLD(st, F_CLOSING) == Py_False
                    && FLD(st, F_CLOSED) == Py_False) {
                    PyObject *fl = PyDict_GetItemWithError(by_st, st);
                    if (fl == NULL && PyErr_Occurred())
                        done = -1;
                    else if (fl != NULL && !PyList_Check(fl))
                        Py_SETREF(ready, Py_NewRef(Py_None));
                    else if (fl != NULL) {
                        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(fl); j++) {
                            PyObject *fd = PyList_GET_ITEM(fl, j);
                            PyObject *m = PyDict_GetItemWithError(fds, fd);
                            if (m == NULL && PyErr_Occurred()) {
                                done = -1;
                                break;
                            }
                            if (!is_pollin(m)) {
                                Py_SETREF(ready, Py_NewRef(Py_None));
                                break;
                            }
                            if (PyDict_SetItem(ready, fd, S.one) < 0) {
                                done = -1;
                                break;
                            }
                        }
                    }
                }
                else
                    Py_SETREF(ready, Py_NewRef(Py_None));
            }
        }
        else if (done == 0) {
            PyObject *oargs[3] = {st, kind, r};
            PyObject *x = PyObject_VectorcallMethod(S.s_on_result, oargs,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (x == NULL)
                done = -1;
            Py_XDECREF(x);
            Py_SETREF(ready, Py_NewRef(Py_None));
        }
        Py_DECREF(ent);
        if (done < 0)
            goto error;
    }
    Py_DECREF(seq);
    return ready;
error:
    Py_DECREF(seq);
    Py_DECREF(ready);
    return NULL;
}

static Py_ssize_t slot_offset(PyObject *cls, const char *name)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL)
        return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
            off = m->offset;
    }
    Py_DECREF(d);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "%s is not a __slots__ member", name);
    return off;
}

/* ------------------------------------------------------------------ select.poll's wait */

enum { P_FDS, P_RT, P_SHIM, P_BY_ST, P_KERN, P_PRI, P_CHECK, P_READY, P_SEQ, P_WAKE_TOKS,
       P_WATCH_TOKS, P_MINE, P_COUNT };
static const char *poll_fields[P_COUNT] = {
    "_fds", "_rt", "_shim", "_by_st", "_kern", "_pri", "_check", "_ready", "_seq",
    "_wake_toks", "_watch_toks", "_mine",
};
#define PF(p, f) slot((p), S.p_off[f])

static inline void set_pf(PyObject *p, int f, PyObject *v)  /* steals v */
{
    PyObject **a = (PyObject **)((char *)p + S.p_off[f]);
    PyObject *old = *a;
    *a = v;
    Py_XDECREF(old);
}

/* poll._ready = list(ready): 0, or -1 with an exception (ready is left to the caller). */
static int set_ready_keys(PyObject *poll, PyObject *ready)
{
    PyObject *lst = PyDict_Keys(ready);
    if (lst == NULL)
        return -1;
    set_pf(poll, P_READY, lst);
    return 0;
}

static inline double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* What one wait of a poll reads of the runtime (new references). */
typedef struct {
    PyObject *log, *tokens, *by_fd, *los, *ops, *wait_any, *wait;
} WaitCtx;

static void ctx_clear(WaitCtx *c)
{
    Py_CLEAR(c->log);
    Py_CLEAR(c->tokens);
    Py_CLEAR(c->by_fd);
    Py_CLEAR(c->los);
    Py_CLEAR(c->ops);
    Py_CLEAR(c->wait_any);
    Py_CLEAR(c->wait);
}

/* rt.log_base (rt_ok(rt) checked): -1 with an exception */
static Py_ssize_t log_base(PyObject *rt)
{
    PyObject *v = RF(rt, R_LOG_BASE);
    if (!PyLong_CheckExact(v)) {
        PyErr_SetString(PyExc_TypeError, "log_base must be an int");
        return -1;
    }
    return PyLong_AsSsize_t(v);
}

static int set_seq(PyObject *poll, Py_ssize_t seq)
{
    PyObject *v = PyLong_FromSsize_t(seq);
    if (v == NULL)
        return -1;
    set_pf(poll, P_SEQ, v);
    return 0;
}

/* shim.select._Poll._scan, for a poll whose runtime is rt and whose cursor is in the log:
 * the ready fds (a new dict), or NULL with an exception. */
static PyObject *fast_scan(PyObject *poll, PyObject *rt, WaitCtx *c)
{
    Py_ssize_t base = log_base(rt);
    if (base < 0)
        return NULL;
    Py_ssize_t seq = PyLong_AsSsize_t(PF(poll, P_SEQ));
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t start = seq - base;
    PyObject *cands = PF(poll, P_CHECK);
    Py_INCREF(cands);
    PyObject *fresh = PySet_New(NULL);
    if (fresh == NULL) {
        Py_DECREF(cands);
        return NULL;
    }
    set_pf(poll, P_CHECK, fresh);
    PyObject *rd = PF(poll, P_READY);
    if (PyList_GET_SIZE(rd) && _PySet_Update(cands, rd) < 0)
        goto error;
    Py_ssize_t n = PyList_GET_SIZE(c->log);
    if (start < n) {
        PyObject *gargs[4] = {cands, c->log, NULL, PF(poll, P_BY_ST)};  /* (no Python runs) */
        gargs[2] = PyLong_FromSsize_t(start);
        if (gargs[2] == NULL)
            goto error;
        PyObject *r = c_gather(NULL, gargs, 4);
        Py_DECREF(gargs[2]);
        if (r == NULL)
            goto error;
        Py_DECREF(r);
    }
    if (set_seq(poll, base + n) < 0)
        goto error;
    PyObject *ready;
    if (PySet_GET_SIZE(cands) == 0) {
        ready = PyDict_New();
    }
    else {
        /* (held: the Python code c_scan may call changes these in place, but hold them) */
        PyObject *sargs[8] = {poll, rt, cands, Py_NewRef(PF(poll, P_FDS)),
                              Py_NewRef(PF(poll, P_SHIM)), c->by_fd, Py_NewRef(PF(poll, P_MINE)),
                              c->tokens};
        ready = c_scan(NULL, sargs, 8);
        Py_DECREF(sargs[3]);
        Py_DECREF(sargs[4]);
        Py_DECREF(sargs[6]);
        if (ready != NULL && PyDict_GET_SIZE(PF(poll, P_MINE))
                > 2 * PyDict_GET_SIZE(PF(poll, P_FDS)) + S.mine_slack) {
            PyObject *x = PyObject_CallMethodOneArg(poll, S.s__prune, rt);
            if (x == NULL)
                Py_CLEAR(ready);
            Py_XDECREF(x);
        }
    }
    Py_DECREF(cands);
    if (ready == NULL)
        return NULL;
    if (set_ready_keys(poll, ready) < 0) {
        Py_DECREF(ready);
        return NULL;
    }
    return ready;
error:
    Py_DECREF(cands);
    return NULL;
}

/* shim.select._Poll._next: completions of the poll's tokens (a new list, maybe empty), or
 * NULL with an exception. */
static PyObject *fast_next(PyObject *poll, PyObject *rt, WaitCtx *c, PyObject *timeout)
{
    PyObject *mine = PF(poll, P_MINE);
    Py_ssize_t n = PyDict_GET_SIZE(mine);
    if (n == 0 || n > S.wait_any_max || c->ops == NULL || !only_thread())
        goto python;
    /* the live tokens of ``mine``; those consumed elsewhere (a recv waited on the pop this
     * poll had noted) are dropped from it: wait_any would refuse them (EINVAL) */
    PyObject *qts = PyList_New(0), *stale = NULL;
    if (qts == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *val;
    while (PyDict_Next(mine, &pos, &key, &val)) {
        int live = PySequence_Contains(c->ops, key);
        if (live < 0)
            goto fail;
        PyObject **into = live ? &qts : &stale;
        if ((*into == NULL && (*into = PyList_New(0)) == NULL) || PyList_Append(*into, key) < 0)
            goto fail;
    }
    if (stale != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(stale); i++)
            if (PyDict_DelItem(mine, PyList_GET_ITEM(stale, i)) < 0)
                goto fail;
        Py_CLEAR(stale);
    }
    if (PyList_GET_SIZE(qts) == 0) {
        Py_DECREF(qts);
        goto python;
    }
    PyObject *args[2] = {qts, timeout};
    PyObject *got = PyObject_Vectorcall(c->wait_any, args, 2, NULL);
    if (got == NULL) {
        Py_DECREF(qts);
        if (PyErr_ExceptionMatches(PyExc_TimeoutError)) {
            PyErr_Clear();
            return PyList_New(0);
        }
        if (PyErr_ExceptionMatches(PyExc_OSError)) {  /* EINVAL: the Python path prunes */
            PyErr_Clear();
            goto python;
        }
        return NULL;
    }
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(got, 1))
        || PyTuple_GET_SIZE(PyTuple_GET_ITEM(got, 1)) < 5) {
        Py_DECREF(got);
        Py_DECREF(qts);
        PyErr_SetString(PyExc_TypeError, "wait_any must return (index, result)");
        return NULL;
    }
    PyObject *r = PyTuple_GET_ITEM(got, 1);
    PyObject *out = PyList_New(1);
    if (out == NULL) {
        Py_DECREF(got);
        Py_DECREF(qts);
        return NULL;
    }
    Py_INCREF(r);
    PyList_SET_ITEM(out, 0, r);
    PyObject *targs[5] = {qts, c->ops, PyTuple_GET_ITEM(r, 2), c->wait, out};
    PyObject *x = c_take_done(NULL, targs, 5);
    Py_DECREF(got);
    Py_DECREF(qts);
    if (x == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    Py_DECREF(x);
    return out;
fail:
    Py_DECREF(qts);
    Py_XDECREF(stale);
    return NULL;
python:;
    PyObject *nargs[3] = {poll, rt, timeout};
    PyObject *res = PyObject_VectorcallMethod(S.s__next, nargs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                              NULL);
    if (res == NULL)
        return NULL;
    PyObject *lst = PySequence_List(res);
    Py_DECREF(res);
    return lst;
}

/* shim.select._Poll._dispatch: ready (a new dict, quick), or None (new reference). */
static PyObject *fast_dispatch(PyObject *poll, PyObject *rt, WaitCtx *c, PyObject *results,
                               int quick)
{
    Py_ssize_t base = log_base(rt);
    if (base < 0)
        return NULL;
    int want = 0;
    if (quick && PySet_GET_SIZE(PF(poll, P_CHECK)) == 0) {
        Py_ssize_t seq = PyLong_AsSsize_t(PF(poll, P_SEQ));
        if (seq == -1 && PyErr_Occurred())
            return NULL;
        want = seq == base + PyList_GET_SIZE(c->log);
    }
    PyObject *dargs[8] = {results, c->tokens, Py_NewRef(PF(poll, P_MINE)), c->log,
                          Py_NewRef(PF(poll, P_BY_ST)), Py_NewRef(PF(poll, P_FDS)), Py_True,
                          want ? Py_True : Py_None};
    PyObject *ready = c_dispatch(NULL, dargs, 8);
    Py_DECREF(dargs[2]);
    Py_DECREF(dargs[4]);
    Py_DECREF(dargs[5]);
    if (ready == NULL)
        return NULL;
    if (PyList_GET_SIZE(c->log) > S.log_max) {
        PyObject *x = PyObject_CallMethodNoArgs(rt, S.s_trim_log);
        if (x == NULL) {
            Py_DECREF(ready);
            return NULL;
        }
        Py_DECREF(x);
        if ((base = log_base(rt)) < 0) {
            Py_DECREF(ready);
            return NULL;
        }
    }
    if (ready != Py_None) {
        if (set_seq(poll, base + PyList_GET_SIZE(c->log)) < 0) {
            Py_DECREF(ready);
            return NULL;
        }
        if (PyDict_GET_SIZE(ready) && set_ready_keys(poll, ready) < 0) {
            Py_DECREF(ready);
            return NULL;
        }
    }
    return ready;
}

/* Is the poll in the state the fast wait handles (else its Python _wait does it)? */
static int wait_ok(PyObject *poll, PyObject *rt, WaitCtx *c)
{
    PyTypeObject *t = S.poll_type;
    if (t == NULL || Py_TYPE(poll) != t || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        || t->tp_version_tag != S.poll_version || !S.ready || !only_thread())
        return 0;
    for (int i = 0; i < P_COUNT; i++)
        if (PF(poll, i) == NULL)
            return 0;
    if (PF(poll, P_RT) != rt || !PyDict_CheckExact(PF(poll, P_FDS))
        || !PyDict_CheckExact(PF(poll, P_SHIM)) || PyDict_GET_SIZE(PF(poll, P_SHIM)) == 0
        || !PyDict_CheckExact(PF(poll, P_BY_ST)) || !PyDict_CheckExact(PF(poll, P_KERN))
        || PyDict_GET_SIZE(PF(poll, P_KERN)) || !PyDict_CheckExact(PF(poll, P_PRI))
        || PyDict_GET_SIZE(PF(poll, P_PRI)) || !PySet_CheckExact(PF(poll, P_CHECK))
        || !PyList_CheckExact(PF(poll, P_READY)) || !PyLong_CheckExact(PF(poll, P_SEQ))
        || !PyDict_CheckExact(PF(poll, P_WAKE_TOKS)) || PyDict_GET_SIZE(PF(poll, P_WAKE_TOKS))
        || !PyDict_CheckExact(PF(poll, P_WATCH_TOKS)) || PyDict_GET_SIZE(PF(poll, P_WATCH_TOKS))
        || !PyDict_CheckExact(PF(poll, P_MINE)))
        return 0;
    if (!rt_ok(rt))
        return 0;
    PyObject *blocked = RF(rt, R_BLOCKED);
    if (!PyDict_CheckExact(blocked) || PyDict_GET_SIZE(blocked) != 0)
        return 0;
    c->log = Py_NewRef(RF(rt, R_LOG));
    c->tokens = Py_NewRef(RF(rt, R_TOKENS));
    c->by_fd = Py_NewRef(RF(rt, R_BY_FD));
    c->los = Py_NewRef(RF(rt, R_LOS));
    if (!PyList_CheckExact(c->log) || !PyDict_CheckExact(c->tokens) || !PyDict_CheckExact(c->by_fd))
        return 0;
    Py_ssize_t base = log_base(rt);
    if (base < 0)
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t seq = PyLong_AsSsize_t(PF(poll, P_SEQ));
    if (seq == -1 && PyErr_Occurred())
        return -1;
    if (seq < base)  /* too far behind in the log: the Python scan looks at everything */
        return 0;
    if (los_methods(c->los) < 0)
        return -1;
    c->ops = Py_XNewRef(S.los_ops);
    c->wait_any = Py_NewRef(S.los_wait_any);
    c->wait = Py_NewRef(S.los_wait);
    return 1;
}

static PyObject *py_wait(PyObject *poll, PyObject *rt, PyObject *timeout)
{
    PyObject *args[3] = {poll, rt, timeout};
    return PyObject_VectorcallMethod(S.s__wait, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Whether a connected stream is readable by its state alone (data, end of stream, read
 * side shut down), as SocketState.poll_mask says it for POLLIN. */
static inline int readable_now(PyObject *st)
{
    PyObject *rbuf = FLD(st, F_RBUF);
    return (rbuf != NULL && Py_SIZE(rbuf) != 0) || FLD(st, F_EOF) == Py_True
        || FLD(st, F_SHUT_RD) == Py_True;
}

/* Whether the library-OS stream behind ``fd`` has input, looked at once: 1 yes, 0 no, 2 the
 * Python path decides (not a connected stream, a result that is not data...), -1 an
 * exception.  The stream's own state says it, else its pop (armed here, as the scan arms it)
 * is taken if the library OS has completed it: wait(qt, 0). */
static int probe_input(PyObject *rt, PyObject *fd)
{
    if (!S.ready || !only_thread() || !rt_ok(rt) || !PyDict_CheckExact(RF(rt, R_BY_FD)))
        return 2;
    PyObject *st = PyDict_GetItemWithError(RF(rt, R_BY_FD), fd);
    if (st == NULL)
        return PyErr_Occurred() ? -1 : 2;
    if (!state_ok(st) || FLD(st, F_CLOSED) != Py_False || FLD(st, F_STATUS) != S.connected
        || FLD(st, F_STREAM) != Py_True || FLD(st, F_CLOSING) != Py_False
        || FLD(st, F_RBUF) == NULL || (PyObject *)Py_TYPE(FLD(st, F_RBUF)) != S.deque_type)
        return 2;
    if (readable_now(st))
        return 1;
    Py_INCREF(st);
    int w = pop_and_wait(st, S.zero_float);
    if (w == 1 && !readable_now(st))
        w = 0;  /* (a result that is not data: the Python path reports it) */
    Py_DECREF(st);
    return w < 0 ? -1 : w == 2 ? 0 : w == 1 ? 1 : 2;
}

/* probe(poll, rt) -> {fd: POLLIN} or {}; None: the Python path.  A zero-timeout poll of a new
 * poll object (never waited on) that holds one connected library-OS stream registered for
 * POLLIN: what redis-py's hiredis parser makes before every command.  The poll object is left
 * unclassified, as a new one is. */
static PyObject *probe_poll(PyObject *poll, PyObject *rt)
{
    PyTypeObject *t = S.poll_type;
    if (t == NULL || Py_TYPE(poll) != t || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        || t->tp_version_tag != S.poll_version)
        Py_RETURN_NONE;
    PyObject *fds = PF(poll, P_FDS);
    if (fds == NULL || !PyDict_CheckExact(fds) || PyDict_GET_SIZE(fds) != 1)
        Py_RETURN_NONE;
    Py_ssize_t pos = 0;
    PyObject *fd, *mask;
    PyDict_Next(fds, &pos, &fd, &mask);
    if (!is_pollin(mask))
        Py_RETURN_NONE;
    Py_INCREF(fd);
    int w = probe_input(rt, fd);
    PyObject *ret = w < 0 ? NULL : w == 2 ? Py_NewRef(Py_None) : PyDict_New();
    if (ret != NULL && w == 1 && PyDict_SetItem(ret, fd, S.one) < 0)
        Py_CLEAR(ret);
    Py_DECREF(fd);
    return ret;
}

static PyObject *c_probe(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "probe(poll, rt)");
        return NULL;
    }
    return probe_poll(args[0], args[1]);
}

/* probe_fd(rt, fd) -> True, False, or None (the Python path): select.select([s], [], [], 0)
 * on one connected library-OS stream, as probe() looks at it. */
static PyObject *c_probe_fd(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "probe_fd(rt, fd)");
        return NULL;
    }
    int w = probe_input(args[0], args[1]);
    return w < 0 ? NULL : w == 2 ? Py_NewRef(Py_None) : PyBool_FromLong(w);
}

/* wait(poll, rt, timeout) -> {fd: revents}: shim.select._Poll._wait, for a poll of
 * library-OS sockets only in a single-threaded process (no kernel fds, no urgent data, no
 * other thread to wake it); anything else, at the start or on the way, is handed to the
 * Python _wait (with the time left). */
static PyObject *c_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "wait(poll, rt, timeout)");
        return NULL;
    }
    PyObject *poll = args[0], *rt = args[1], *timeout = args[2];
    WaitCtx c = {0};
    int ok = wait_ok(poll, rt, &c);
    if (ok <= 0) {
        ctx_clear(&c);
        return ok < 0 ? NULL : py_wait(poll, rt, timeout);
    }
    double deadline = 0;
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            ctx_clear(&c);
            return NULL;
        }
        deadline = mono() + t;
    }
    int polled = 0;
    PyObject *ready = NULL, *rem = NULL, *results = NULL;
    for (;;) {
        ready = fast_scan(poll, rt, &c);
        if (ready == NULL)
            goto error;
        if (PyDict_GET_SIZE(PF(poll, P_KERN)) || PyDict_GET_SIZE(PF(poll, P_PRI))
            || !only_thread())
            goto python;  /* kernel fds or urgent data now (a fd reused): the Python wait */
        if (PyDict_GET_SIZE(ready)) {
            if (polled || PyDict_GET_SIZE(PF(poll, P_SHIM)) == 0)
                break;
            /* once: let the library OS report what else is ready */
            polled = 1;
            Py_CLEAR(ready);
            results = fast_next(poll, rt, &c, S.zero);
            if (results == NULL)
                goto error;
            if (!only_thread()) {  /* (as below) */
                PyObject *dargs[3] = {poll, rt, results};
                PyObject *x = PyList_GET_SIZE(results) ? PyObject_VectorcallMethod(
                    S.s__dispatch, dargs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                    : Py_NewRef(Py_None);
                Py_CLEAR(results);
                if (x == NULL)
                    goto error;
                Py_DECREF(x);
                goto python_after;
            }
            if (PyList_GET_SIZE(results)) {
                PyObject *x = fast_dispatch(poll, rt, &c, results, 0);
                if (x == NULL)
                    goto error;
                Py_DECREF(x);
            }
            Py_CLEAR(results);
            continue;
        }
        if (PyDict_GET_SIZE(PF(poll, P_SHIM)) == 0)
            goto python;
        if (timeout == Py_None) {
            rem = Py_NewRef(Py_None);
        }
        else {
            double left = deadline - mono();
            if (left < 0)
                left = 0;
            if (polled && left == 0)
                break;  /* the empty dict */
            rem = PyFloat_FromDouble(left);
            if (rem == NULL)
                goto error;
        }
        polled = 1;
        results = fast_next(poll, rt, &c, rem);
        Py_CLEAR(rem);
        if (results == NULL)
            goto error;
        if (!only_thread()) {
            /* a thread started meanwhile (by a signal handler): the Python dispatch, under
             * the runtime lock, then the Python wait */
            PyObject *dargs[4] = {poll, rt, results, Py_True};
            PyObject *x = PyList_GET_SIZE(results) ? PyObject_VectorcallMethod(
                S.s__dispatch, dargs, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL) : Py_NewRef(Py_None);
            Py_CLEAR(results);
            if (x == NULL)
                goto error;
            if (x != Py_None && PyDict_Check(x) && PyDict_GET_SIZE(x)) {
                Py_DECREF(ready);
                ctx_clear(&c);
                return x;
            }
            Py_DECREF(x);
            Py_CLEAR(ready);
            goto python_after;
        }
        if (PyList_GET_SIZE(results)) {
            PyObject *x = fast_dispatch(poll, rt, &c, results, 1);
            if (x == NULL)
                goto error;
            if (x != Py_None && PyDict_GET_SIZE(x)) {
                Py_DECREF(ready);
                ready = x;
                Py_CLEAR(results);
                break;
            }
            Py_DECREF(x);
        }
        Py_CLEAR(results);
        Py_CLEAR(ready);
        if (!only_thread())
            goto python_after;
    }
    ctx_clear(&c);
    return ready;
python:
    Py_CLEAR(ready);
python_after:;
    /* the rest of this wait in Python, with the time left */
    PyObject *left = Py_NewRef(Py_None);
    if (timeout != Py_None) {
        double l = deadline - mono();
        Py_SETREF(left, PyFloat_FromDouble(l < 0 ? 0 : l));
        if (left == NULL)
            goto error;
    }
    ctx_clear(&c);
    PyObject *r = py_wait(poll, rt, left);
    Py_DECREF(left);
    return r;
error:
    Py_XDECREF(ready);
    Py_XDECREF(rem);
    Py_XDECREF(results);
    ctx_clear(&c);
    return NULL;
}

/* ------------------------------------------------------------------ select.poll's object */

#define SET_REF(field, v) do { Py_INCREF(v); Py_XSETREF(S.field, (v)); } while (0)


/* A timeout of zero: the int 0 or the float 0.0 (select's seconds, poll's milliseconds). */
static inline int is_zero_timeout(PyObject *v)
{
    return is_int_zero(v) || (PyFloat_CheckExact(v) && PyFloat_AS_DOUBLE(v) == 0.0);
}

/* probe_poll(poll, rt) with the poll marked busy meanwhile, as the Python poll does while it
 * polls (a signal handler polling it again gets "concurrent poll() invocation").  A probe
 * blocks nothing, so there is nothing to undo on an error. */
static PyObject *probe_marked(PyObject *poll, PyObject *rt)
{
    PyObject **polling = (PyObject **)((char *)poll + S.off_polling);
    Py_INCREF(rt);
    Py_SETREF(*polling, Py_NewRef(Py_True));
    PyObject *ready = probe_poll(poll, rt);
    Py_SETREF(*polling, Py_NewRef(Py_False));
    Py_DECREF(rt);
    return ready;
}

/* select.poll() -> a new shim.select._Poll with its slots as _Poll._init sets them (that
 * function is the Python path's; tests/test_shim.py compares the two). */
static PyObject *c_new_poll(PyObject *mod, PyObject *unused)
{
    PyTypeObject *t = S.poll_type;
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shim._speedups.install_poll has not run");
        return NULL;
    }
    PyObject *p = t->tp_alloc(t, 0);
    if (p == NULL)
        return NULL;
    PyObject *v[P_COUNT];
    v[P_FDS] = PyDict_New();
    v[P_RT] = Py_NewRef(Py_None);
    v[P_SHIM] = PyDict_New();
    v[P_BY_ST] = PyDict_New();
    v[P_KERN] = PyDict_New();
    v[P_PRI] = PyDict_New();
    v[P_CHECK] = PySet_New(NULL);
    v[P_READY] = PyList_New(0);
    v[P_SEQ] = Py_NewRef(S.zero);
    v[P_WAKE_TOKS] = PyDict_New();
    v[P_WATCH_TOKS] = PyDict_New();
    v[P_MINE] = PyDict_New();
    int failed = 0;
    for (int i = 0; i < P_COUNT; i++) {
        if (v[i] == NULL)
            failed = 1;
        else
            set_pf(p, i, v[i]);
    }
    *(PyObject **)((char *)p + S.off_polling) = Py_NewRef(Py_False);
    *(PyObject **)((char *)p + S.off_poked) = Py_NewRef(Py_False);
    if (failed)
        Py_CLEAR(p);
    return p;
}

/* ``fd`` of _Poll.register when C may take it (a new reference), else NULL without an error:
 * a non-negative C int, or a library-OS socket of the shim's socket class (its ``fileno``). */
static PyObject *register_fd(PyObject *obj)
{
    if (PyLong_CheckExact(obj)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(obj, &overflow);
        return !overflow && v >= 0 && v <= INT_MAX ? Py_NewRef(obj) : NULL;
    }
    if (Py_TYPE(obj) != S.sock_type || S.py_fileno == NULL
        || _PyType_Lookup(S.sock_type, S.s_fileno) != S.py_fileno)
        return NULL;
    PyObject *st = slot(obj, S.off_st), *fd = slot(obj, S.off_fd);
    if (st == NULL || st == Py_None || fd == NULL || !PyLong_CheckExact(fd) || Py_SIZE(fd) < 0)
        return NULL;
    return Py_NewRef(fd);
}

/* _Poll.register(fd, eventmask=POLLIN|POLLPRI|POLLOUT): on a poll object not classified yet
 * (never waited on, so there is nothing to re-classify), an int or a library-OS socket with
 * an int mask is recorded here; everything else is the Python method's. */
static PyObject *poll_register(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    if (kwnames == NULL && (nargs == 1 || nargs == 2) && Py_TYPE(self) == S.poll_type
        && slot(self, S.p_off[P_RT]) == Py_None) {
        PyObject *mask = nargs == 2 ? args[1] : S.default_mask, *fds = PF(self, P_FDS);
        int overflow = 1;
        long m = PyLong_CheckExact(mask) ? PyLong_AsLongAndOverflow(mask, &overflow) : -1;
        if (fds != NULL && PyDict_CheckExact(fds) && !overflow && m >= 0 && m <= 0xFFFF) {
            PyObject *fd = register_fd(args[0]);
            if (fd != NULL) {
                int r = PyDict_SetItem(fds, fd, mask);
                Py_DECREF(fd);
                if (r < 0)
                    return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    return fallback(S.py_poll_register, self, args, nargs, kwnames);
}

/* _Poll.poll(timeout=None): a zero-timeout poll of a new poll object (the probe() case) in C,
 * under the runtime installed; everything else is the Python method's. */
static PyObject *poll_poll(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject **polling = (PyObject **)((char *)self + S.off_polling);
    if (kwnames == NULL && nargs == 1 && Py_TYPE(self) == S.poll_type
        && is_zero_timeout(args[0]) && slot(self, S.p_off[P_RT]) == Py_None
        && *polling == Py_False) {
        PyObject *rt = PyDict_GetItemWithError(S.rt_globals, S.s__runtime);
        if (rt == NULL && PyErr_Occurred())
            return NULL;
        if (rt != NULL && rt != Py_None) {
            PyObject *ready = probe_marked(self, rt);
            if (ready == NULL || ready != Py_None) {
                PyObject *items = ready ? PyDict_Items(ready) : NULL;
                Py_XDECREF(ready);
                return items;
            }
            Py_DECREF(ready);
        }
    }
    return fallback(S.py_poll_poll, self, args, nargs, kwnames);
}

static PyMethodDef poll_defs[] = {
    {"poll", (PyCFunction)(void (*)(void))poll_poll, METH_FASTCALL | METH_KEYWORDS,
     "poll([timeout]) -> list of (fd, event) pairs\n\nPolls the set of registered file descriptors."},
    {"register", (PyCFunction)(void (*)(void))poll_register, METH_FASTCALL | METH_KEYWORDS,
     "register(fd[, eventmask])\n\nRegister a file descriptor with the polling object."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ select.select */

static inline int is_empty_seq(PyObject *v)
{
    return (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0)
        || (PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0);
}

/* select.select(rlist, wlist, xlist[, timeout]): a zero-timeout look for input on one
 * library-OS stream (``select([s], [], [], 0)``) in C; everything else is the shim's Python
 * select (install_select saved it). */
static PyObject *c_select(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs == 4) && S.py_select != NULL && S.rt_globals != NULL
        && is_zero_timeout(args[3])
        && is_empty_seq(args[1]) && is_empty_seq(args[2])
        && (PyList_CheckExact(args[0]) || PyTuple_CheckExact(args[0])) && Py_SIZE(args[0]) == 1) {
        PyObject *obj = PyList_CheckExact(args[0]) ? PyList_GET_ITEM(args[0], 0)
                                                   : PyTuple_GET_ITEM(args[0], 0);
        PyObject *rt = PyDict_GetItemWithError(S.rt_globals, S.s__runtime);
        if (rt == NULL && PyErr_Occurred())
            return NULL;
        PyObject *fd = rt != NULL && rt != Py_None ? register_fd(obj) : NULL;
        if (fd != NULL) {
            Py_INCREF(rt);
            Py_INCREF(obj);
            int w = probe_input(rt, fd);
            Py_DECREF(fd);
            Py_DECREF(rt);
            if (w < 0) {
                Py_DECREF(obj);
                return NULL;
            }
            if (w != 2) {
                PyObject *r = w ? PyList_New(1) : PyList_New(0);
                PyObject *e1 = PyList_New(0), *e2 = PyList_New(0), *out = NULL;
                if (r != NULL && w)
                    PyList_SET_ITEM(r, 0, Py_NewRef(obj));
                if (r != NULL && e1 != NULL && e2 != NULL)
                    out = PyTuple_Pack(3, r, e1, e2);
                Py_XDECREF(r);
                Py_XDECREF(e1);
                Py_XDECREF(e2);
                Py_DECREF(obj);
                return out;
            }
            Py_DECREF(obj);
        }
    }
    return PyObject_Vectorcall(S.py_select, args, nargs, NULL);
}

/* install_select(py_select) -> the C select.select (it calls py_select for all it does not do) */
static PyObject *install_select(PyObject *mod, PyObject *py)
{
    if (!PyCallable_Check(py)) {
        PyErr_SetString(PyExc_TypeError, "install_select(py_select)");
        return NULL;
    }
    SET_REF(py_select, py);
    return PyObject_GetAttrString(mod, "select");
}

/* ------------------------------------------------------------------ DemiSelector.select */

/* poll._poll_ready(ms) under the runtime installed, with ms a non-negative int or None: for a
 * classified poll object (waited on before), its C wait with _poll_ready's bookkeeping (no
 * re-entry; on an exception, the wake-ups of this call are dropped); for one not classified
 * yet, at a zero timeout, the C probe.  Else the Python _poll_ready. */
static PyObject *poll_ready(PyObject *poll, PyObject *ms)
{
    PyTypeObject *t = S.poll_type;
    PyObject **polling = (PyObject **)((char *)poll + S.off_polling);
    PyObject *rt = PyDict_GetItemWithError(S.rt_globals, S.s__runtime);
    if (rt == NULL && PyErr_Occurred())
        return NULL;
    if (rt == NULL || rt == Py_None || Py_TYPE(poll) != t || *polling != Py_False
        || (ms != Py_None && !PyLong_CheckExact(ms)))
        return PyObject_CallMethodOneArg(poll, S.s__poll_ready, ms);
    if (PF(poll, P_RT) != rt) {  /* not classified yet: a zero timeout probes, as in Python */
        if (is_int_zero(ms)) {
            PyObject *ready = probe_marked(poll, rt);
            if (ready == NULL || ready != Py_None)
                return ready;
            Py_DECREF(ready);
        }
        return PyObject_CallMethodOneArg(poll, S.s__poll_ready, ms);
    }
    PyObject *secs;
    if (ms == Py_None) {
        secs = Py_NewRef(Py_None);
    }
    else {
        int overflow;
        long v = PyLong_AsLongAndOverflow(ms, &overflow);
        if (overflow || v < 0 || v > INT_MAX)
            return PyObject_CallMethodOneArg(poll, S.s__poll_ready, ms);
        if ((secs = PyFloat_FromDouble(v / 1000.0)) == NULL)
            return NULL;
    }
    Py_INCREF(rt);
    Py_SETREF(*polling, Py_NewRef(Py_True));
    PyObject *args[3] = {poll, rt, secs};
    PyObject *ready = c_wait(NULL, args, 3);
    if (ready == NULL) {  /* as _poll_ready's ``except BaseException``: self._unblock(rt, ident) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
        PyObject *r = ident ? PyObject_CallMethodObjArgs(poll, S.s__unblock, rt, ident, NULL) : NULL;
        Py_XDECREF(ident);
        if (r == NULL) {  /* that error replaces the first (Python chains them) */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        else {
            Py_DECREF(r);
            PyErr_Restore(et, ev, tb);
        }
    }
    Py_SETREF(*polling, Py_NewRef(Py_False));
    Py_DECREF(secs);
    Py_DECREF(rt);
    return ready;
}

/* DemiSelector.select(timeout=None): selectors' _PollLikeSelector.select over the shim's
 * poll object, in C: the timeout in milliseconds rounded up, the wait, the keys.  A subclass
 * that finds keys its own way, another poll object or a keyword argument: the Python method. */
static PyObject *selector_select(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *timeout = nargs ? args[0] : Py_None, *poll = NULL, *ms = NULL, *ready = NULL;
    if (kwnames != NULL || nargs > 1 || S.base_key_from_fd == NULL
        || _PyType_Lookup(Py_TYPE(self), S.s__key_from_fd) != S.base_key_from_fd)
        return fallback(S.py_sel_select, self, args, nargs, kwnames);
    if ((poll = PyObject_GetAttr(self, S.s__selector)) == NULL)
        return NULL;
    if (Py_TYPE(poll) != S.poll_type
        || (timeout != Py_None && !PyLong_CheckExact(timeout) && !PyFloat_CheckExact(timeout))) {
        Py_DECREF(poll);
        return fallback(S.py_sel_select, self, args, nargs, kwnames);
    }
    if (timeout == Py_None) {
        ms = Py_NewRef(Py_None);
    }
    else {
        double t = PyFloat_AsDouble(timeout);  /* (an int too large: OverflowError, as Python) */
        if (t == -1.0 && PyErr_Occurred())
            goto error;
        if (t != t) {  /* NaN: Python's comparison and ceil say what happens */
            Py_DECREF(poll);
            return fallback(S.py_sel_select, self, args, nargs, kwnames);
        }
        /* poll() has a resolution of 1 millisecond: round away from zero, to wait at least
         * timeout seconds (selectors' rule) */
        if (t <= 0)
            ms = Py_NewRef(S.zero);
        else if (t * 1e3 < 1e15)
            ms = PyLong_FromDouble(ceil(t * 1e3));
        else {
            Py_DECREF(poll);
            return fallback(S.py_sel_select, self, args, nargs, kwnames);
        }
        if (ms == NULL)
            goto error;
    }
    ready = poll_ready(poll, ms);
    if (ready == NULL) {
        if (PyErr_ExceptionMatches(PyExc_InterruptedError)) {
            PyErr_Clear();
            Py_DECREF(poll);
            Py_DECREF(ms);
            return PyList_New(0);
        }
        goto error;
    }
    PyObject *fd_to_key = PyObject_GetAttr(self, S.s__fd_to_key), *out = NULL;
    if (fd_to_key != NULL && PyDict_Check(ready) && PyDict_Check(fd_to_key)) {
        PyObject *kargs[3] = {ready, fd_to_key, S.selector_key};
        out = c_keys(NULL, kargs, 3);
    }
    else if (fd_to_key != NULL)
        PyErr_SetString(PyExc_TypeError, "DemiSelector: poll result or _fd_to_key not a dict");
    Py_XDECREF(fd_to_key);
    Py_DECREF(ready);
    Py_DECREF(poll);
    Py_DECREF(ms);
    return out;
error:
    Py_XDECREF(poll);
    Py_XDECREF(ms);
    return NULL;
}

static PyMethodDef selector_defs[] = {
    {"select", (PyCFunction)(void (*)(void))selector_select, METH_FASTCALL | METH_KEYWORDS,
     "Wait until some registered file objects become ready, or for at most timeout seconds;\n"
     "return a list of (key, events) for the ready file objects."},
    {NULL, NULL, 0, NULL},
};

/* install_selector(selector_cls, base_key_from_fd, selector_key): the C select on
 * selector_cls (the Python one stays as ``_py_select``) */
static PyObject *install_selector(PyObject *mod, PyObject *args)
{
    PyObject *cls, *base, *key_type;
    if (!PyArg_ParseTuple(args, "O!OO", &PyType_Type, &cls, &base, &key_type))
        return NULL;
    if (S.poll_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "install_poll() must run before install_selector()");
        return NULL;
    }
    PyObject *py = PyDict_GetItemString(((PyTypeObject *)cls)->tp_dict, "select");
    if (py == NULL || !PyFunction_Check(py)) {
        PyErr_SetString(PyExc_TypeError, "the selector class has no Python select");
        return NULL;
    }
    SET_REF(py_sel_select, py);
    SET_REF(base_key_from_fd, base);
    SET_REF(selector_key, key_type);
    if (PyObject_SetAttrString(cls, "_py_select", py) < 0)
        return NULL;
    PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, &selector_defs[0]);
    int r = d ? PyObject_SetAttrString(cls, "select", d) : -1;
    Py_XDECREF(d);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* install_poll(poll_cls, runtime_cls, runtime_globals, log_max, mine_slack, wait_any_max):
 * also puts the C ``poll`` and ``register`` on poll_cls (the Python ones stay as ``_py_poll``
 * and ``_py_register``) */
static PyObject *install_poll(PyObject *mod, PyObject *args)
{
    PyObject *cls, *rcls, *rglobals;
    Py_ssize_t log_max, slack, wmax;
    if (!PyArg_ParseTuple(args, "O!O!O!nnn", &PyType_Type, &cls, &PyType_Type, &rcls,
                          &PyDict_Type, &rglobals, &log_max, &slack, &wmax))
        return NULL;
    if (S.sock_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "install() must run before install_poll()");
        return NULL;
    }
    for (int i = 0; i < P_COUNT; i++)
        if ((S.p_off[i] = slot_offset(cls, poll_fields[i])) < 0)
            return NULL;
    if ((S.off_polling = slot_offset(cls, "_polling")) < 0
        || (S.off_poked = slot_offset(cls, "_poked")) < 0)
        return NULL;
    PyObject *cdict = ((PyTypeObject *)cls)->tp_dict;
    PyObject *py_poll = PyDict_GetItemString(cdict, "poll");
    PyObject *py_register = PyDict_GetItemString(cdict, "register");
    if (py_poll == NULL || py_register == NULL || !PyFunction_Check(py_poll)
        || !PyFunction_Check(py_register)) {
        PyErr_SetString(PyExc_TypeError, "the poll class has no Python poll and register");
        return NULL;
    }
    SET_REF(py_poll_poll, py_poll);
    SET_REF(py_poll_register, py_register);
    SET_REF(rt_globals, rglobals);
    if (PyObject_SetAttrString(cls, "_py_poll", py_poll) < 0
        || PyObject_SetAttrString(cls, "_py_register", py_register) < 0)
        return NULL;
    for (PyMethodDef *def = poll_defs; def->ml_name != NULL; def++) {
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, def);
        int r = d ? PyObject_SetAttrString(cls, def->ml_name, d) : -1;
        Py_XDECREF(d);
        if (r < 0)
            return NULL;
    }
    for (int i = 0; i < R_COUNT; i++)
        if ((S.r_off[i] = slot_offset(rcls, rt_fields[i])) < 0)
            return NULL;
    (void)_PyType_Lookup((PyTypeObject *)rcls, S.s_result);
    if (!(((PyTypeObject *)rcls)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        PyErr_SetString(PyExc_RuntimeError, "the runtime class has no type version tag");
        return NULL;
    }
    Py_INCREF(rcls);
    Py_XSETREF(S.rt_type, (PyTypeObject *)rcls);
    S.rt_version = ((PyTypeObject *)rcls)->tp_version_tag;
    (void)_PyType_Lookup((PyTypeObject *)cls, S.s_result);
    if (!(((PyTypeObject *)cls)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        PyErr_SetString(PyExc_RuntimeError, "the poll class has no type version tag");
        return NULL;
    }
    S.log_max = log_max;
    S.mine_slack = slack;
    S.wait_any_max = wmax;
    Py_INCREF(cls);
    Py_XSETREF(S.poll_type, (PyTypeObject *)cls);
    S.poll_version = ((PyTypeObject *)cls)->tp_version_tag;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ installation */

static PyMethodDef socket_defs[] = {
    {"recv", (PyCFunction)(void (*)(void))s_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(bufsize[, flags]) -> data\n\nReceive up to bufsize bytes from the socket."},
    {"recv_into", (PyCFunction)(void (*)(void))s_recv_into, METH_FASTCALL | METH_KEYWORDS,
     "recv_into(buffer, [nbytes[, flags]]) -> nbytes_read\n\n"
     "A version of recv() that stores its data into a buffer rather than creating\n"
     "a new string."},
    {"send", (PyCFunction)(void (*)(void))s_send, METH_FASTCALL | METH_KEYWORDS,
     "send(data[, flags]) -> count\n\nSend a data string to the socket."},
    {"sendall", (PyCFunction)(void (*)(void))s_sendall, METH_FASTCALL | METH_KEYWORDS,
     "sendall(data[, flags])\n\nSend a data string to the socket."},
    {"settimeout", (PyCFunction)s_settimeout, METH_O,
     "settimeout(timeout)\n\nSet a timeout on socket operations."},
    {NULL, NULL, 0, NULL},
};

#define N_SOCKET_DEFS ((int)(sizeof(socket_defs) / sizeof(socket_defs[0])) - 1)

/* install(sock_cls, methods: {name: Python function}, state_cls, push_failed, connected,
 *         op_failed, op_pop, max_push, pop_size, deque) -> {name: C method descriptor} */
static PyObject *install(PyObject *mod, PyObject *args)
{
    PyObject *cls, *methods, *st_cls, *push_failed, *connected, *op_failed, *op_pop, *pop_size,
        *deque;
    Py_ssize_t max_push;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOOnOO!", &PyType_Type, &cls, &PyDict_Type, &methods,
                          &PyType_Type, &st_cls, &push_failed, &connected, &op_failed, &op_pop,
                          &max_push, &pop_size, &PyType_Type, &deque))
        return NULL;
    S.ready = 0;
    Py_ssize_t off_st = slot_offset(cls, "_st"), off_fd = slot_offset(cls, "_fd"),
        off_tmo = slot_offset(cls, "_tmo");
    if (off_st < 0 || off_fd < 0 || off_tmo < 0)
        return NULL;
    for (int i = 0; i < F_COUNT; i++)
        if ((S.off[i] = slot_offset(st_cls, field_names[i])) < 0)
            return NULL;
    PyObject *fns[N_SOCKET_DEFS];
    for (int i = 0; i < N_SOCKET_DEFS; i++) {
        fns[i] = PyDict_GetItemString(methods, socket_defs[i].ml_name);
        if (fns[i] == NULL) {
            PyErr_Format(PyExc_KeyError, "no Python method %s", socket_defs[i].ml_name);
            return NULL;
        }
    }
    PyObject *append = PyObject_GetAttrString(deque, "append");
    PyObject *clear = append ? PyObject_GetAttrString(deque, "clear") : NULL;
    if (clear == NULL) {
        Py_XDECREF(append);
        return NULL;
    }
    Py_XSETREF(S.deque_append, append);
    Py_XSETREF(S.deque_clear, clear);
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (int i = 0; i < N_SOCKET_DEFS; i++) {
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, &socket_defs[i]);
        if (d == NULL || PyDict_SetItemString(out, socket_defs[i].ml_name, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    /* SocketState's version tag: assigned by a type lookup, reset by any change to it */
    (void)_PyType_Lookup((PyTypeObject *)st_cls, S.s_result);
    if (!(((PyTypeObject *)st_cls)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "SocketState has no type version tag");
        return NULL;
    }
    S.st_version = ((PyTypeObject *)st_cls)->tp_version_tag;
    S.off_st = off_st;
    S.off_fd = off_fd;
    S.off_tmo = off_tmo;
    SET_REF(st_type, (PyTypeObject *)st_cls);
    SET_REF(sock_type, (PyTypeObject *)cls);
    PyObject *fileno = _PyType_Lookup((PyTypeObject *)cls, S.s_fileno);
    Py_XINCREF(fileno);
    Py_XSETREF(S.py_fileno, fileno);
    SET_REF(deque_type, deque);
    SET_REF(py_recv, fns[0]);
    SET_REF(py_recv_into, fns[1]);
    SET_REF(py_send, fns[2]);
    SET_REF(py_sendall, fns[3]);
    SET_REF(py_settimeout, fns[4]);
    SET_REF(push_failed, push_failed);
    SET_REF(connected, connected);
    SET_REF(op_failed, op_failed);
    SET_REF(op_pop, op_pop);
    SET_REF(pop_size, pop_size);
    S.max_push = max_push;
    S.ready = 1;
    return out;
}

static PyMethodDef module_methods[] = {
    {"install", install, METH_VARARGS,
     "install(sock_cls, methods, state_cls, push_failed, connected, op_failed, op_pop, "
     "max_push, pop_size, deque) -> {name: method descriptor}"},
    {"scan", (PyCFunction)(void (*)(void))c_scan, METH_FASTCALL,
     "scan(poll, rt, cands, fds, shim, by_fd, toks, tokens) -> {fd: revents}"},
    {"gather", (PyCFunction)(void (*)(void))c_gather, METH_FASTCALL,
     "gather(cands, log, start, by_st)"},
    {"keys", (PyCFunction)(void (*)(void))c_keys, METH_FASTCALL,
     "keys(ready, fd_to_key, key_type) -> [(key, events)]"},
    {"wait", (PyCFunction)(void (*)(void))c_wait, METH_FASTCALL,
     "wait(poll, rt, timeout) -> {fd: revents}"},
    {"probe", (PyCFunction)(void (*)(void))c_probe, METH_FASTCALL,
     "probe(poll, rt) -> {fd: POLLIN} or {}; None: the Python path"},
    {"probe_fd", (PyCFunction)(void (*)(void))c_probe_fd, METH_FASTCALL,
     "probe_fd(rt, fd) -> True, False, or None (the Python path)"},
    {"install_poll", install_poll, METH_VARARGS,
     "install_poll(poll_cls, runtime_cls, runtime_globals, log_max, mine_slack, wait_any_max)"},
    {"select", (PyCFunction)(void (*)(void))c_select, METH_FASTCALL,
     "select(rlist, wlist, xlist[, timeout]) -> (rlist, wlist, xlist)\n\n"
     "Wait until one or more file descriptors are ready for some kind of I/O."},
    {"install_select", install_select, METH_O, "install_select(py_select) -> the C select"},
    {"install_selector", install_selector, METH_VARARGS,
     "install_selector(selector_cls, base_key_from_fd, selector_key)"},
    {"poll", c_new_poll, METH_NOARGS,
     "Returns a polling object.\n\n"
     "This object supports registering and unregistering file descriptors, and then\n"
     "polling them for I/O events (the shim's: library-OS sockets and kernel fds)."},
    {"take_done", (PyCFunction)(void (*)(void))c_take_done, METH_FASTCALL,
     "take_done(qts, ops, first, wait, out)"},
    {"dispatch", (PyCFunction)(void (*)(void))c_dispatch, METH_FASTCALL,
     "dispatch(results, tokens, mine, log, by_st, fds, fast, ready) -> ready or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "shim._speedups",
    "The shim's per-request socket and selector work in C (see shim/_speedups.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
#define INTERN(field, s) do { S.field = PyUnicode_InternFromString(s); if (!S.field) return NULL; } while (0)
    INTERN(s_push, "push");
    INTERN(s_pop, "pop");
    INTERN(s_wait, "wait");
    INTERN(s_get, "get");
    INTERN(s_tobytes, "tobytes");
    INTERN(s_free, "free");
    INTERN(s_on_result, "on_result");
    INTERN(s_scan_slow, "_scan_slow");
    INTERN(s_result, "result");
    INTERN(s_events, "events");
    INTERN(s_los, "los");
    INTERN(s_log, "log");
    INTERN(s_log_base, "log_base");
    INTERN(s_tokens, "tokens");
    INTERN(s_by_fd, "by_fd");
    INTERN(s_blocked, "blocked");
    INTERN(s__ops, "_ops");
    INTERN(s_wait_any, "wait_any");
    INTERN(s__wait, "_wait");
    INTERN(s__next, "_next");
    INTERN(s__prune, "_prune");
    INTERN(s_trim_log, "trim_log");
    INTERN(s__dispatch, "_dispatch");
    INTERN(kind_pop, "pop");
    INTERN(s__runtime, "_runtime");
    INTERN(s__selector, "_selector");
    INTERN(s__fd_to_key, "_fd_to_key");
    INTERN(s__key_from_fd, "_key_from_fd");
    INTERN(s__poll_ready, "_poll_ready");
    INTERN(s__unblock, "_unblock");
    INTERN(s_fileno, "fileno");
    S.zero = PyLong_FromLong(0);
    S.one = PyLong_FromLong(1);
    S.zero_float = PyFloat_FromDouble(0.0);
    S.default_mask = PyLong_FromLong(POLLIN | POLLPRI | POLLOUT);
    if (S.zero == NULL || S.one == NULL || S.zero_float == NULL || S.default_mask == NULL)
        return NULL;
    return PyModule_Create(&speedups_module);
}
