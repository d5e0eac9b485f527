/* walk.c — reading the calling thread's Python frames from inside malloc.
 *
 * Runs on the allocating thread, possibly without the GIL: it only reads memory
 * that thread owns (its frames, and the code objects they keep alive), never
 * allocates, never blocks. The thread state comes by thread-specific key
 * (PyGILState_GetThisThreadState): right even when the thread released the GIL,
 * NULL on threads that run no Python.
 */
#include <dlfcn.h>
#include <string.h>

#include "pins.h"

/* The walk of a Python whose frames cannot be read: native-only. */
void mt_walk_nothing(mt_reader_thread *t, mt_walk *w) {
    w->n = 0;
}

#ifdef MT_FRAMES_UNKNOWN
void mt_walk_frames(mt_reader_thread *t, mt_walk *w) {
    w->n = 0;
}
#elif PY_VERSION_HEX >= 0x030B0000
void mt_walk_frames(mt_reader_thread *t, mt_walk *w) {
    PyThreadState *ts = PyGILState_GetThisThreadState();
    int n = 0;
    if (ts == NULL) {
        w->n = 0;
        return;
    }
    int proven = t->anchor != NULL && mt_pin_holds(t, ts);
    void *anchor = t->anchor;
    for (mt_frame *f = mt_top_frame(ts); f != NULL && n < w->max; f = f->previous) {
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
        PyCodeObject *co = mt_frame_code(f);
        w->frame[n] = f;
        w->code[n] = co;
        w->lasti[n] = _PyInterpreterFrame_LASTI(f) * (int32_t)sizeof(_Py_CODEUNIT);
        n++;
        if ((void *)f == anchor) {
            if (proven) {
                w->stopped = 1;
                w->anchor_at = n - 1;
                break;
            }
            if (mt_pin_met_unproven(t, co))
                w->anchor_at = n - 1;
            else
                t->anchor = anchor = NULL;
        }
    }
    if (t->anchor != NULL && w->anchor_at < 0)
        t->anchor = NULL; /* not on this chain (a greenlet switched stacks): re-pin */
    w->n = n;
}
#else
void mt_walk_frames(mt_reader_thread *t, mt_walk *w) {
    PyThreadState *ts = PyGILState_GetThisThreadState();
    int n = 0;
    for (PyFrameObject *f = ts ? ts->frame : NULL; f != NULL && n < w->max; f = f->f_back) {
        w->frame[n] = f;
        w->code[n] = f->f_code;
#if PY_VERSION_HEX >= 0x030A0000
        w->lasti[n] = f->f_lasti * (int32_t)sizeof(_Py_CODEUNIT);
#else
        w->lasti[n] = f->f_lasti;
#endif
        n++;
    }
    w->n = n;
}
#endif

/* Why frames cannot be read in this interpreter (NULL: they can). From 3.14 the
 * interpreter publishes the offsets debuggers use (_Py_DebugOffsets, at the start
 * of _PyRuntime): the layout this reader was compiled with must match them. */
const char *mt_frames_unavailable(void) {
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
size_t mt_utf8_of(PyObject *s, char *out, size_t cap) {
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

int mt_describe_code(void *code, char *file, size_t *file_len, char *name, size_t *name_len,
                     int32_t *firstlineno) {
    PyCodeObject *co = (PyCodeObject *)code;
    *file_len = mt_utf8_of(co->co_filename, file, *file_len);
#if PY_VERSION_HEX >= 0x030B0000
    *name_len = mt_utf8_of(co->co_qualname, name, *name_len);
#else
    *name_len = mt_utf8_of(co->co_name, name, *name_len);
#endif
    *firstlineno = co->co_firstlineno;
    return 0;
}

uintptr_t mt_code_identity(void *code) {
    PyCodeObject *co = (PyCodeObject *)code;
    return (uintptr_t)co->co_name ^ ((uintptr_t)co->co_filename << 7) ^
           (uintptr_t)co->co_firstlineno;
}

int32_t mt_code_line(void *code, int32_t lasti) {
    return PyCode_Addr2Line((PyCodeObject *)code, lasti);
}
