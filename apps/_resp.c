/* apps._resp: the common case of apps.resp.Parser._parse in C.
 *
 *   scan(buf, left, bulklen, argv, commands) -> (pos, left, bulklen, argv)
 *
 * Parses well-formed multibulk requests from the start of ``buf`` (bytes) exactly as the
 * Python loop of Parser._parse does, with the same state: ``left`` arguments still expected
 * by the request in progress, ``bulklen`` the length of the bulk being read (-1 before its
 * header), ``argv`` that request's arguments so far.  Each complete request is appended to
 * ``commands`` as a list of bytes.
 *
 * It stops, with the state consistent, at the first element that is not the plain case:
 * an inline request, a header that is incomplete or is not ``*`` / ``$`` followed by
 * digits without a leading zero (a count up to MAX_MULTIBULK_LEN, a bulk length of fewer
 * than 9 digits), or a bulk whose payload has not fully arrived.  The Python loop then goes
 * on from the returned ``pos`` with the returned state, so every error, every limit and
 * every partial element is handled by the Python code alone; what this function accepts
 * it parses to the same commands.  Nothing here trusts the bytes: every read is bounded
 * by the buffer's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* apps.resp.MAX_MULTIBULK_LEN (Redis 7.0 accepts counts up to INT_MAX) */
#define MAX_MULTIBULK_LEN 2147483647LL

/* The digits of s[0:len] as a number when they are 1..maxdigits plain ASCII digits without
 * a leading zero ("0" itself is fine); else -1. */
static long long plain_number(const char *s, Py_ssize_t len, Py_ssize_t maxdigits)
{
    if (len < 1 || len > maxdigits || (s[0] == '0' && len > 1))
        return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyList_Check(args[3])
        || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(buf: bytes, left: int, bulklen: int, argv: list, commands: list)");
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    const Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t left = PyLong_AsSsize_t(args[1]);
    if (left == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t bulklen = PyLong_AsSsize_t(args[2]);
    if (bulklen == -1 && PyErr_Occurred())
        return NULL;
    PyObject *commands = args[4];
    PyObject *argv = args[3];  /* borrowed while it is the caller's list */
    Py_INCREF(argv);
    Py_ssize_t pos = 0;

    while (pos < n) {
        if (left == 0) {
            if (buf[pos] != '*')
                break;  /* an inline request */
            const char *cr = memchr(buf + pos, '\r', (size_t)(n - pos));
            if (cr == NULL || cr - buf + 1 >= n)
                break;
            long long count = plain_number(buf + pos + 1, cr - buf - pos - 1, 10);
            if (count < 0 || count > MAX_MULTIBULK_LEN)
                break;  /* a sign, a leading zero, junk, too many: the Python loop decides */
            pos = cr - buf + 2;
            if (count == 0)
                continue;
            left = (Py_ssize_t)count;
            PyObject *fresh = PyList_New(0);
            if (fresh == NULL)
                goto error;
            Py_SETREF(argv, fresh);
        }
        while (left) {
            if (bulklen < 0) {
                if (pos >= n || buf[pos] != '$')
                    goto done;
                const char *cr = memchr(buf + pos, '\r', (size_t)(n - pos));
                if (cr == NULL || cr - buf + 1 >= n)
                    goto done;
                long long len = plain_number(buf + pos + 1, cr - buf - pos - 1, 8);
                if (len < 0)
                    goto done;
                bulklen = (Py_ssize_t)len;
                pos = cr - buf + 2;
            }
            if (bulklen > n - pos - 2)  /* the payload and its two end bytes are not all here */
                goto done;
            PyObject *arg = PyBytes_FromStringAndSize(buf + pos, bulklen);
            if (arg == NULL)
                goto error;
            int rc = PyList_Append(argv, arg);
            Py_DECREF(arg);
            if (rc < 0)
                goto error;
            /* Like Redis (and the Python loop), the two bytes after the payload are skipped
             * unchecked. */
            pos += bulklen + 2;
            bulklen = -1;
            left--;
        }
        if (PyList_Append(commands, argv) < 0)
            goto error;
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL)
            goto error;
        Py_SETREF(argv, fresh);
    }
done:;
    PyObject *out = PyTuple_New(4);
    if (out == NULL)
        goto error;
    PyObject *p = PyLong_FromSsize_t(pos), *l = PyLong_FromSsize_t(left),
             *b = PyLong_FromSsize_t(bulklen);
    if (p == NULL || l == NULL || b == NULL) {
        Py_XDECREF(p);
        Py_XDECREF(l);
        Py_XDECREF(b);
        Py_DECREF(out);
        goto error;
    }
    PyTuple_SET_ITEM(out, 0, p);
    PyTuple_SET_ITEM(out, 1, l);
    PyTuple_SET_ITEM(out, 2, b);
    PyTuple_SET_ITEM(out, 3, argv);  /* (the reference held here moves into the tuple) */
    return out;
error:
    Py_DECREF(argv);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, left, bulklen, argv, commands) -> (pos, left, bulklen, argv): the plain "
     "multibulk requests at the start of buf (see apps/_resp.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "apps._resp",
    "The common case of apps.resp.Parser._parse in C (apps.resp uses it when built).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__resp(void)
{
    return PyModule_Create(&module);
}
