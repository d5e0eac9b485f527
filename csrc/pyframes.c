/* pyframes.c — the frame reader for the CPython it is built against.
 *
 * A CPython extension (tracer._pyframes) that the bootstrap loads inside the
 * traced interpreter. It hands the shim (found with dlsym, see shim_api.h)
 * functions that read the calling thread's own frame chain at allocation
 * time: the cost follows allocations, not Python calls, and there is no
 * profile hook. Every reader function runs inside malloc, possibly without
 * the GIL: it only reads memory that the calling thread owns (its frames,
 * and the code objects they keep alive), never allocates, never blocks.
 *
 * It also labels NumPy array data: NumPy's default data-memory handler
 * (NEP 49) gets wrappers that raise the shim's "NumPy data" flag around the
 * original functions, for every thread and every context.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Which frame layout this reader is built for. Each is read with the
 * interpreter's own (internal) headers for that minor version:
 *   3.9, 3.10   PyFrameObject chain from the thread state
 *   3.11, 3.12  _PyInterpreterFrame chain from the thread's cframe
 *   3.13        _PyInterpreterFrame from tstate->current_frame, f_executable
 *   3.14, 3.15  the same, f_executable a tagged _PyStackRef, entry frames owned
 *               by the interpreter (3.15: also the thread state's base frame)
 * Any other Python, and free-threaded builds, get a reader without frames
 * (MT_FRAMES_UNKNOWN: the reason): the program is traced native-only, and
 * NumPy labels and pymalloc statistics still work. */
#if defined(Py_GIL_DISABLED)
#define MT_FRAMES_UNKNOWN "free-threaded CPython (no GIL) is traced without Python frames"
#elif PY_VERSION_HEX >= 0x03100000
#define MT_FRAMES_UNKNOWN "this memtrace does not know the frame layout of this CPython"
#elif PY_VERSION_HEX >= 0x030E0000
#define Py_BUILD_CORE 1
#include <internal/pycore_debug_offsets.h>
#include <internal/pycore_interpframe.h>
#undef Py_BUILD_CORE
#define MT_FIRST_SHIM_OWNER FRAME_OWNED_BY_INTERPRETER /* entry and base frames */
#elif PY_VERSION_HEX >= 0x030B0000
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#if PY_VERSION_HEX >= 0x030C0000
#define MT_FIRST_SHIM_OWNER FRAME_OWNED_BY_CSTACK
#endif
#else
#include <frameobject.h>
#endif

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "shim_api.h"

/* ---- Frame reading --------------------------------------------------------- */

/* The walk of a thread whose frames cannot be read: native-only. */
static int no_frames(void **frame, void **code, int32_t *lasti, int max) {
    return 0;
}

#ifndef MT_FRAMES_UNKNOWN
static int walk(void **frame, void **code, int32_t *lasti, int max) {
    /* The calling thread's own state, by thread-specific key: right even when
     * this thread released the GIL, and NULL for threads without Python. */
    PyThreadState *ts = PyGILState_GetThisThreadState();
    if (ts == NULL)
        return 0;
    int n = 0;
#if PY_VERSION_HEX >= 0x030B0000
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = ts->current_frame;
#else
    _PyInterpreterFrame *f = ts->cframe ? ts->cframe->current_frame : NULL;
#endif
    for (; f != NULL && n < max; f = f->previous) {
#ifdef MT_FIRST_SHIM_OWNER
        /* Frames the interpreter pushes for itself (C-stack entry frames, the
         * base frame) run no code of the program. */
        if (f->owner >= MT_FIRST_SHIM_OWNER)
            continue;
#endif
        /* Only the innermost frame can be incomplete (pushed, not started): a
         * frame with a callee has run. Checking it alone keeps the code
         * object's cache line out of the walk. */
        if (n == 0 && _PyFrame_IsIncomplete(f))
            continue;
#if PY_VERSION_HEX >= 0x030D0000
        PyCodeObject *co = _PyFrame_GetCode(f); /* clears the stack reference's tag bits */
#else
        PyCodeObject *co = f->f_code;
#endif
        frame[n] = f;
        code[n] = co;
        lasti[n] = _PyInterpreterFrame_LASTI(f) * (int32_t)sizeof(_Py_CODEUNIT);
        n++;
    }
#else
    for (PyFrameObject *f = ts->frame; f != NULL && n < max; f = f->f_back) {
        frame[n] = f;
        code[n] = f->f_code;
#if PY_VERSION_HEX >= 0x030A0000
        lasti[n] = f->f_lasti * (int32_t)sizeof(_Py_CODEUNIT);
#else
        lasti[n] = f->f_lasti;
#endif
        n++;
    }
#endif
    return n;
}
#endif

/* Why frames cannot be read in this interpreter (NULL: they can). From 3.14 the
 * interpreter publishes the offsets debuggers use (_Py_DebugOffsets, at the start
 * of _PyRuntime): the layout this reader was compiled with must match them. */
static const char *frames_unavailable(void) {
#if defined(MT_FRAMES_UNKNOWN)
    return MT_FRAMES_UNKNOWN;
#elif PY_VERSION_HEX >= 0x030E0000
    const _Py_DebugOffsets *d = (const _Py_DebugOffsets *)dlsym(RTLD_DEFAULT, "_PyRuntime");
    if (d == NULL || memcmp(d->cookie, "xdebugpy", 8) != 0)
        return "the interpreter's debug offsets (_PyRuntime) were not found";
    if ((d->version >> 16) != (PY_VERSION_HEX >> 16))
        return "the running interpreter is not the CPython this reader was built for";
    if (d->interpreter_frame.previous != offsetof(_PyInterpreterFrame, previous) ||
        d->interpreter_frame.executable != offsetof(_PyInterpreterFrame, f_executable) ||
        d->interpreter_frame.instr_ptr != offsetof(_PyInterpreterFrame, instr_ptr) ||
        d->interpreter_frame.owner != offsetof(_PyInterpreterFrame, owner) ||
        d->thread_state.current_frame != offsetof(PyThreadState, current_frame) ||
        d->code_object.filename != offsetof(PyCodeObject, co_filename) ||
        d->code_object.qualname != offsetof(PyCodeObject, co_qualname) ||
        d->code_object.firstlineno != offsetof(PyCodeObject, co_firstlineno) ||
        d->code_object.co_code_adaptive != offsetof(PyCodeObject, co_code_adaptive))
        return "the interpreter's frame layout differs from the headers this reader was built with";
    return NULL;
#else
    return NULL;
#endif
}

/* UTF-8 of a str without allocating (PyUnicode_AsUTF8 may allocate). */
static size_t utf8_of(PyObject *s, char *out, size_t cap) {
    if (s == NULL || !PyUnicode_Check(s))
        return 0;
#if PY_VERSION_HEX < 0x030C0000
    if (!PyUnicode_IS_READY(s))
        return 0;
#endif
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    size_t n = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        char buf[4];
        size_t k;
        if (c < 0x80) {
            buf[0] = (char)c;
            k = 1;
        } else if (c < 0x800) {
            buf[0] = (char)(0xC0 | (c >> 6));
            buf[1] = (char)(0x80 | (c & 0x3F));
            k = 2;
        } else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF) /* lone surrogate: not valid UTF-8 */
                c = 0xFFFD;
            buf[0] = (char)(0xE0 | (c >> 12));
            buf[1] = (char)(0x80 | ((c >> 6) & 0x3F));
            buf[2] = (char)(0x80 | (c & 0x3F));
            k = 3;
        } else {
            buf[0] = (char)(0xF0 | (c >> 18));
            buf[1] = (char)(0x80 | ((c >> 12) & 0x3F));
            buf[2] = (char)(0x80 | ((c >> 6) & 0x3F));
            buf[3] = (char)(0x80 | (c & 0x3F));
            k = 4;
        }
        if (n + k > cap)
            break;
        memcpy(out + n, buf, k);
        n += k;
    }
    return n;
}

static int describe(void *code, char *file, size_t *file_len, char *name, size_t *name_len,
                    int32_t *firstlineno) {
    PyCodeObject *co = (PyCodeObject *)code;
    *file_len = utf8_of(co->co_filename, file, *file_len);
#if PY_VERSION_HEX >= 0x030B0000
    *name_len = utf8_of(co->co_qualname, name, *name_len);
#else
    *name_len = utf8_of(co->co_name, name, *name_len);
#endif
    *firstlineno = co->co_firstlineno;
    return 0;
}

static uintptr_t identity(void *code) {
    PyCodeObject *co = (PyCodeObject *)code;
    return (uintptr_t)co->co_name ^ ((uintptr_t)co->co_filename << 7) ^
           (uintptr_t)co->co_firstlineno;
}

static int32_t line(void *code, int32_t lasti) {
    return PyCode_Addr2Line((PyCodeObject *)code, lasti);
}

/* ---- pymalloc statistics ------------------------------------------------------ */

/* Exported by every CPython 3.9-3.15, declared only in internal headers since 3.10. */
extern int _PyObject_DebugMallocStats(FILE *out);

static mt_meta_text_fn meta_text_fn;
static mt_position_fn position_fn;
static int stats_pending; /* a pending call is scheduled (touched with the GIL) */

static mt_untraced_fn untraced_fn;

static int format_pymalloc_stats(int reason);

/* Send _PyObject_DebugMallocStats' totals ("key = value" lines) to the collector.
 * Needs the GIL. reason: 0 on request, 1 at exit. Its own allocations (the text
 * buffers) are memtrace's, not the program's: the shim does not record them. */
static int send_pymalloc_stats(int reason) {
    if (meta_text_fn == NULL || position_fn == NULL || untraced_fn == NULL)
        return -1;
    untraced_fn(1);
    int ret = format_pymalloc_stats(reason);
    untraced_fn(0);
    return ret;
}

static int format_pymalloc_stats(int reason) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return -1;
    int used = _PyObject_DebugMallocStats(f);
    fclose(f);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long cost = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    char head[96];
    int n = snprintf(head, sizeof head, "position=%llu\nreason=%d\npymalloc=%d\ncost_ns=%lld\n",
                     (unsigned long long)position_fn(), reason, used, cost);
    /* Keep the totals (lines with '='), not the per-size-class table. */
    size_t out_len = 0;
    char *out = malloc(len + sizeof head);
    if (out == NULL) {
        free(buf);
        return -1;
    }
    memcpy(out, head, (size_t)n);
    out_len = (size_t)n;
    for (char *line = buf; line && *line;) {
        char *end = strchr(line, '\n');
        size_t line_len = end ? (size_t)(end - line) : strlen(line);
        if (memchr(line, '=', line_len) && strncmp(line, "Small block threshold", 21) != 0) {
            memcpy(out + out_len, line, line_len);
            out_len += line_len;
            out[out_len++] = '\n';
        }
        line = end ? end + 1 : NULL;
    }
    meta_text_fn(8 /* MT_TEXT_PYMALLOC */, out, out_len);
    free(out);
    free(buf);
    return 0;
}

static int pending_stats(void *arg) {
    stats_pending = 0;
    send_pymalloc_stats(0);
    return 0;
}

/* From inside an allocation hook, any thread, maybe without the GIL: only schedule. */
static void request_stats(void) {
    if (__atomic_exchange_n(&stats_pending, 1, __ATOMIC_ACQ_REL) == 0 &&
        Py_AddPendingCall(pending_stats, NULL) != 0)
        __atomic_store_n(&stats_pending, 0, __ATOMIC_RELEASE);
}

/* pymalloc_stats(reason): send pymalloc's statistics now (the bootstrap calls it at exit). */
static PyObject *pymalloc_stats(PyObject *self, PyObject *arg) {
    send_pymalloc_stats((int)PyLong_AsLong(arg));
    Py_RETURN_NONE;
}

/* exit_point(): the program is done; pymalloc's books, then the shim's exit handshake. */
static PyObject *exit_point(PyObject *self, PyObject *args) {
    send_pymalloc_stats(1);
    mt_exit_point_fn fn = (mt_exit_point_fn)dlsym(RTLD_DEFAULT, MT_SYM_EXIT_POINT);
    if (fn)
        fn();
    Py_RETURN_NONE;
}

#ifdef MT_FRAMES_UNKNOWN
#define walk no_frames
#endif
static const mt_python_reader reader = {walk, describe, identity, line, request_stats};
static const mt_python_reader reader_without_frames = {no_frames, describe, identity, line,
                                                       request_stats};

static void *shim_symbol(const char *name) {
    return dlsym(RTLD_DEFAULT, name);
}

/* install() -> True | False | str: start recording Python frames. False: no
 * shim in this process. A str: why this interpreter's frames cannot be read;
 * the reader is registered anyway (pymalloc statistics), with no frames. */
static PyObject *install(PyObject *self, PyObject *args) {
    mt_set_python_reader_fn set = (mt_set_python_reader_fn)shim_symbol(MT_SYM_SET_PYTHON_READER);
    if (set == NULL)
        Py_RETURN_FALSE;
    meta_text_fn = (mt_meta_text_fn)shim_symbol(MT_SYM_META_TEXT);
    position_fn = (mt_position_fn)shim_symbol(MT_SYM_POSITION);
    untraced_fn = (mt_untraced_fn)shim_symbol(MT_SYM_UNTRACED);
    const char *why = frames_unavailable();
    set(why ? &reader_without_frames : &reader);
    if (why)
        return PyUnicode_FromString(why);
    Py_RETURN_TRUE;
}

/* uninstall(): stop reading frames (called at interpreter exit, before thread
 * states are torn down). */
static PyObject *uninstall(PyObject *self, PyObject *args) {
    mt_set_python_reader_fn set = (mt_set_python_reader_fn)shim_symbol(MT_SYM_SET_PYTHON_READER);
    if (set)
        set(NULL);
    Py_RETURN_NONE;
}

/* meta_text(key, text): send a note about this process to the collector. */
static PyObject *meta_text(PyObject *self, PyObject *args) {
    int key;
    const char *text;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "is#", &key, &text, &len))
        return NULL;
    mt_meta_text_fn fn = (mt_meta_text_fn)shim_symbol(MT_SYM_META_TEXT);
    if (fn)
        fn((uint16_t)key, text, (size_t)len);
    Py_RETURN_NONE;
}

/* ---- NumPy data labelling -------------------------------------------------- */

/* NumPy's PyDataMem_Handler, version 1 (numpy/ndarraytypes.h). */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} np_allocator;

typedef struct {
    char name[127];
    uint8_t version;
    np_allocator allocator;
} np_handler;

/* Slot of PyDataMem_DefaultHandler in NumPy's C-API table (stable ABI, 1.22+). */
#define NP_API_DEFAULT_HANDLER 306

static np_allocator numpy_original;
static mt_numpy_data_fn numpy_flag;

static void *np_malloc(void *ctx, size_t size) {
    numpy_flag(1, (void *)numpy_original.malloc);
    void *p = numpy_original.malloc(ctx, size);
    numpy_flag(0, NULL);
    return p;
}

static void *np_calloc(void *ctx, size_t n, size_t size) {
    numpy_flag(1, (void *)numpy_original.calloc);
    void *p = numpy_original.calloc(ctx, n, size);
    numpy_flag(0, NULL);
    return p;
}

static void *np_realloc(void *ctx, void *ptr, size_t size) {
    numpy_flag(1, (void *)numpy_original.realloc);
    void *p = numpy_original.realloc(ctx, ptr, size);
    numpy_flag(0, NULL);
    return p;
}

/* label_numpy(api_capsule) -> str|None: wrap NumPy's default data handler;
 * returns None on success or the reason it could not. */
static PyObject *label_numpy(PyObject *self, PyObject *capsule) {
    numpy_flag = (mt_numpy_data_fn)shim_symbol(MT_SYM_NUMPY_DATA);
    if (numpy_flag == NULL)
        return PyUnicode_FromString("the memtrace shim is not loaded");
    void **api = (void **)PyCapsule_GetPointer(capsule, NULL);
    if (api == NULL) {
        PyErr_Clear();
        return PyUnicode_FromString("NumPy's C-API capsule is unreadable");
    }
    PyObject *handler_capsule = *(PyObject **)api[NP_API_DEFAULT_HANDLER];
    if (handler_capsule == NULL || !PyCapsule_IsValid(handler_capsule, "mem_handler"))
        return PyUnicode_FromString("NumPy has no default data-memory handler");
    np_handler *h = (np_handler *)PyCapsule_GetPointer(handler_capsule, "mem_handler");
    if (h->version != 1)
        return PyUnicode_FromFormat("unknown NumPy handler version %d", (int)h->version);
    if (h->allocator.malloc == np_malloc)
        Py_RETURN_NONE; /* already done (numpy imported twice in subinterpreters) */
    numpy_original = h->allocator;
    h->allocator.calloc = np_calloc;
    h->allocator.realloc = np_realloc;
    h->allocator.malloc = np_malloc;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, "Start recording Python frames."},
    {"uninstall", uninstall, METH_NOARGS, "Stop recording Python frames."},
    {"meta_text", meta_text, METH_VARARGS, "Send a note about this process."},
    {"label_numpy", label_numpy, METH_O, "Label NumPy array data."},
    {"pymalloc_stats", pymalloc_stats, METH_O, "Send pymalloc's statistics now."},
    {"exit_point", exit_point, METH_NOARGS, "The program is done: final statistics now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pyframes", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pyframes(void) {
    /* Frame layouts differ between minor versions: refuse any other. */
    char expected[16];
    snprintf(expected, sizeof expected, "%d.%d.", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    if (strncmp(Py_GetVersion(), expected, strlen(expected)) != 0) {
        PyErr_Format(PyExc_ImportError, "memtrace's frame reader was built for Python %d.%d",
                     PY_MAJOR_VERSION, PY_MINOR_VERSION);
        return NULL;
    }
    return PyModule_Create(&module);
}
