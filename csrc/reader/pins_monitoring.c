/* pins_monitoring.c — pins on CPython 3.12-3.14: sys.monitoring (PEP 669).
 *
 * memtrace takes a monitoring tool id of its own. PY_UNWIND is on for all code
 * (an exception leaving a frame), and PY_RETURN and PY_YIELD are turned on for
 * the code object of each frame that gets pinned; one callback, run by the
 * thread whose frame is leaving, drops that thread's pin when the leaving frame
 * is exactly the pinned one. Events on other frames of the same code, or on
 * other threads, leave the pin alone.
 *
 * Turning events on needs Python, and the pin is made inside malloc, maybe
 * without the GIL: so the pin is queued (thread, frame, code object) and a
 * pending call, holding the GIL, turns the code's events on if that frame is
 * still running it (so the code object is alive), and keeps a reference. This
 * is done only for code that keeps being asked for (asked_often). Until then
 * the pin waits:
 * walks stay whole, and the first whole walk that meets the same frame after
 * the events are on confirms it (everything under it was just read, and from
 * then on its leaving is seen). A code object whose events are already on
 * gives a pin that proves at once.
 */
#include "pins.h"

#if MT_PINS == MT_PINS_MONITORING
#include <string.h>

void *mt_watched[1 << MT_WATCH_BITS];
static int n_watched;
#define MAX_WATCHED ((1 << MT_WATCH_BITS) / 2)

/* Preferred tool ids: ones no standard tool claims (0 debugger, 1 coverage,
 * 2 profiler, 5 optimizer). */
static const int TOOL_IDS[] = {4, 3};

static int tool_id = -1;
static long leave_events;          /* PY_RETURN | PY_YIELD */
static PyObject *set_local_events; /* sys.monitoring.set_local_events */
static const char *why_not;

/* Pins waiting for their code object's events: which thread, which frame. Written
 * from inside malloc on any thread (a short spin lock: this is the rare path),
 * served by a pending call that holds the GIL. */
typedef struct request {
    PyThreadState *ts;
    void *frame;
    void *code;
} request;

#define MAX_REQUESTS 64
static request requests[MAX_REQUESTS];
static int n_requests, requests_lock, call_scheduled;

static void lock_requests(void) {
    while (__atomic_exchange_n(&requests_lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

static void unlock_requests(void) {
    __atomic_store_n(&requests_lock, 0, __ATOMIC_RELEASE);
}

static void watch_insert(PyObject *code) {
    uintptr_t mask = (1u << MT_WATCH_BITS) - 1;
    uintptr_t i = ((uintptr_t)code >> 4) & mask;
    while (mt_watched[i] != NULL)
        i = (i + 1) & mask;
    __atomic_store_n(&mt_watched[i], (void *)code, __ATOMIC_RELEASE);
    n_watched++;
}

/* Code objects whose frame was gone by the time its events could be turned on: a
 * function called again and again, not one that stays. Not watched (each of its
 * returns would cost a callback). Written with the GIL, read from any thread; an
 * address reused by another code object only costs that one its pins. */
#define PASSING_BITS 8
static void *passing_codes[1 << PASSING_BITS];

static int passing(void *code) {
    uintptr_t i = ((uintptr_t)code >> 4) & ((1u << PASSING_BITS) - 1);
    return __atomic_load_n(&passing_codes[i], __ATOMIC_RELAXED) == code;
}

/* With the GIL: is `frame` still on thread ts's stack, running `code`? Then the
 * code object is alive (the frame holds it) and a reference can be taken. No
 * thread changes its frames without the GIL, so the chain holds still. */
static int still_running(PyThreadState *ts, void *frame, void *code) {
    PyThreadState *t = PyInterpreterState_ThreadHead(PyInterpreterState_Get());
    while (t != NULL && t != ts)
        t = PyThreadState_Next(t);
    if (t == NULL)
        return 0;
    for (mt_frame *f = mt_top_frame(t); f != NULL; f = f->previous)
        if ((void *)f == frame)
            return f->owner < MT_FIRST_SHIM_OWNER && (void *)mt_frame_code(f) == code;
    return 0;
}

/* The pending call (the main thread, with the GIL): events on for each requested
 * code object whose frame is still there; the pin itself waits for a walk. */
static int watch_requested(void *arg) {
    request batch[MAX_REQUESTS];
    lock_requests();
    int n = n_requests;
    memcpy(batch, requests, (size_t)n * sizeof batch[0]);
    n_requests = 0;
    __atomic_store_n(&call_scheduled, 0, __ATOMIC_RELEASE);
    unlock_requests();
    mt_shim_untraced(1); /* the instrumentation's own memory is memtrace's */
    for (int i = 0; i < n; i++) {
        PyObject *code = (PyObject *)batch[i].code;
        if (mt_watching(code) || n_watched >= MAX_WATCHED)
            continue;
        if (!still_running(batch[i].ts, batch[i].frame, code)) {
            uintptr_t slot = ((uintptr_t)code >> 4) & ((1u << PASSING_BITS) - 1);
            __atomic_store_n(&passing_codes[slot], (void *)code, __ATOMIC_RELAXED);
            continue;
        }
        PyObject *r = PyObject_CallFunction(set_local_events, "iOl", tool_id, code, leave_events);
        if (r == NULL) {
            PyErr_Clear();
            continue;
        }
        Py_DECREF(r);
        Py_INCREF(code); /* kept for good: its address is never reused */
        watch_insert(code);
    }
    mt_shim_untraced(0);
    return 0;
}

static int request_watch(void *frame, void *code) {
    PyThreadState *ts = PyGILState_GetThisThreadState();
    if (ts == NULL)
        return 0;
    int ok = 1;
    lock_requests();
    int i = 0;
    while (i < n_requests && requests[i].code != code)
        i++;
    if (i == n_requests) {
        if (n_requests == MAX_REQUESTS || n_watched + n_requests >= MAX_WATCHED)
            ok = 0;
        else
            requests[n_requests++] = (request){ts, frame, code};
    }
    unlock_requests();
    if (ok && !__atomic_exchange_n(&call_scheduled, 1, __ATOMIC_ACQ_REL) &&
        Py_AddPendingCall(watch_requested, NULL) != 0)
        __atomic_store_n(&call_scheduled, 0, __ATOMIC_RELEASE); /* full: asked again later */
    return ok;
}

/* Events are turned on only for a code object that this thread asked to pin
 * ASKS_BEFORE_WATCH times in a row: a frame that stays while the thread
 * allocates, not each of the functions that come and go (imports, helpers),
 * whose events would cost a callback at every return. */
#define ASKS_BEFORE_WATCH 8

static int asked_often(mt_reader_thread *t, void *code) {
    if (t->candidate != code) {
        t->candidate = code;
        t->candidate_asks = 0;
    }
    if (++t->candidate_asks < ASKS_BEFORE_WATCH || passing(code))
        return 0;
    t->candidate_asks = 0; /* asked now; again only after as many asks */
    return 1;
}

int mt_pin(mt_reader_thread *t, void *frame, void *code, int at_once) {
    int proves = mt_watching(code);
    if (!proves && (!asked_often(t, code) || !request_watch(frame, code)))
        return 0;
    if (at_once && !proves)
        return 0; /* the current pin stays until this code's events are on */
    t->anchor = frame;
    t->anchor_code = code;
    t->confirmed = proves;
    return 1;
}

/* PY_RETURN, PY_YIELD, PY_UNWIND: the thread's current frame is the one leaving. */
static PyObject *frame_leaves(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    mt_reader_thread *t = mt_shim_reader_thread();
    if (t->anchor != NULL && (void *)mt_top_frame(PyThreadState_Get()) == t->anchor)
        t->anchor = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef frame_leaves_def = {"memtrace_frame_leaves",
                                       (PyCFunction)(void (*)(void))frame_leaves, METH_FASTCALL,
                                       "memtrace: a frame with events on is leaving."};

static long event_bit(PyObject *events, const char *name) {
    PyObject *v = PyObject_GetAttrString(events, name);
    long bit = v ? PyLong_AsLong(v) : -1;
    Py_XDECREF(v);
    return bit;
}

static const char *start(PyObject *mon) {
    int id = -1;
    for (size_t i = 0; i < sizeof TOOL_IDS / sizeof TOOL_IDS[0] && id < 0; i++) {
        PyObject *owner = PyObject_CallMethod(mon, "get_tool", "i", TOOL_IDS[i]);
        if (owner == Py_None)
            id = TOOL_IDS[i];
        Py_XDECREF(owner);
    }
    if (id < 0)
        return "no sys.monitoring tool id is free";
    PyObject *events = PyObject_GetAttrString(mon, "events");
    if (events == NULL)
        return "sys.monitoring has no events";
    long ret = event_bit(events, "PY_RETURN"), yield = event_bit(events, "PY_YIELD"),
         unwind = event_bit(events, "PY_UNWIND");
    Py_DECREF(events);
    if (ret < 0 || yield < 0 || unwind < 0)
        return "sys.monitoring lacks PY_RETURN, PY_YIELD or PY_UNWIND";
    PyObject *callback = PyCFunction_New(&frame_leaves_def, NULL);
    PyObject *r = PyObject_CallMethod(mon, "use_tool_id", "is", id, "memtrace");
    int ok = callback != NULL && r != NULL;
    Py_XDECREF(r);
    long bits[] = {ret, yield, unwind};
    for (int i = 0; ok && i < 3; i++) {
        r = PyObject_CallMethod(mon, "register_callback", "ilO", id, bits[i], callback);
        ok = r != NULL;
        Py_XDECREF(r);
    }
    if (ok) {
        r = PyObject_CallMethod(mon, "set_events", "il", id, unwind);
        ok = r != NULL;
        Py_XDECREF(r);
    }
    Py_XDECREF(callback);
    set_local_events = ok ? PyObject_GetAttrString(mon, "set_local_events") : NULL;
    if (set_local_events == NULL)
        return "sys.monitoring refused memtrace's tool";
    tool_id = id;
    leave_events = ret | yield;
    return NULL;
}

const char *mt_pins_start(void) {
    if (mt_pins_on || why_not)
        return why_not;
    PyObject *mon = PySys_GetObject("monitoring"); /* borrowed */
    mt_shim_untraced(1);
    why_not = mon ? start(mon) : "sys.monitoring is missing";
    mt_shim_untraced(0);
    if (PyErr_Occurred())
        PyErr_Clear();
    mt_pins_on = why_not == NULL;
    return why_not;
}
#endif
