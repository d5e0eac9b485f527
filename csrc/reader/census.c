/* census.c — live Python objects by type, for `memtrace run --objects` (docs/objects.md).
 *
 * Taken on the main thread with the GIL: by a pending call when the collector
 * asks at its at-peak snapshot, and at the program's exit point. It counts every
 * object the garbage collector tracks (gc.get_objects()) and every object they
 * reference that it does not (strings, numbers, NumPy arrays, untracked tuples and
 * dicts), found through each type's own tp_traverse; on 3.11 and later, also what
 * the running frames' locals hold (those frames are not objects the collector
 * sees). Per type: count and total sys.getsizeof; NumPy arrays also split their
 * nbytes into arrays owning their data and views. For each type it keeps the
 * addresses of its largest objects that live in a traced block of their own (a
 * NumPy array's data, an object above pymalloc's 512 bytes, a list's item array),
 * which the collector joins with its live table to name the allocating lines.
 *
 * Never changes what the program computes: no Python code of the program runs (a
 * __sizeof__ written in Python is not called: that type's sizes are estimated from
 * its basic size, and say so; NumPy's attributes are read through ndarray's own
 * descriptors, which a subclass cannot replace), automatic garbage collection is
 * off while it runs (its own allocations could otherwise start one, and with it
 * finalizers), and all its memory is memtrace's own (mt_untraced, and mmap for its
 * tables so glibc's heap is left as it was).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "census.h"
#include "../events.h"

#define PYMALLOC_MAX 512 /* larger requests go to malloc (pymalloc's threshold) */
#define NPY_OWNDATA 0x0004

/* NumPy's PyArrayObject_fields: part of its stable ABI (1.x and 2.x). */
typedef struct {
    PyObject_HEAD char *data;
    int nd;
    Py_ssize_t *dimensions;
    Py_ssize_t *strides;
    PyObject *base;
    void *descr;
    int flags;
} mt_ndarray;

/* Set at start-up by the bootstrap, before the program's code ran: the real
 * functions, whatever the program later rebinds. */
static PyObject *getsizeof_fn, *get_objects_fn, *gc_isenabled_fn, *gc_disable_fn, *gc_enable_fn;
static PyObject *sizeof_name, *object_sizeof; /* "__sizeof__", object.__sizeof__ */
static PyTypeObject *ndarray_type;            /* NULL until NumPy's core loads */
static PyObject *nbytes_getter;               /* ndarray's own nbytes descriptor */
int mt_census_on;

/* ---- Counting one object ------------------------------------------------------ */

/* sys.getsizeof may only be called when the type's __sizeof__ is C code. That C
 * function is then called directly (sys.getsizeof makes a bound method each time):
 * sys.getsizeof adds what lies in front of the object, the same for every object of
 * a type -- but for type objects (static ones have none) and types whose objects
 * say themselves whether they are collected (tp_is_gc), which keep sys.getsizeof. */
void mt_census_classify(type_row *r, PyTypeObject *tp) {
    PyObject *descr = _PyType_Lookup(tp, sizeof_name); /* borrowed; no code runs */
    r->fixed_size = -1;
    r->pre = -1;
    r->direct = NULL;
    r->python_sizeof = descr == NULL || !PyObject_TypeCheck(descr, &PyMethodDescr_Type);
    if (!r->python_sizeof && tp->tp_is_gc == NULL && !PyType_IsSubtype(tp, &PyType_Type)) {
        PyMethodDef *m = ((PyMethodDescrObject *)descr)->d_method;
        if ((m->ml_flags & (METH_NOARGS | METH_VARARGS | METH_O | METH_KEYWORDS)) == METH_NOARGS)
            r->direct = m->ml_meth;
    }
}

/* __sizeof__ through its C function: -1 on an error (cleared). */
static Py_ssize_t direct_sizeof(type_row *r, PyObject *o) {
    PyObject *v = r->direct(o, NULL);
    Py_ssize_t n = v ? PyLong_AsSsize_t(v) : -1;
    Py_XDECREF(v);
    if (n < 0)
        PyErr_Clear();
    return n;
}

/* Bytes in front of an object: the GC header, and from 3.11 the managed dict and
 * weak references (sys.getsizeof counts them; the allocation starts there). */
static size_t preheader(PyTypeObject *tp) {
    size_t n = PyType_IS_GC(tp) ? 2 * sizeof(void *) : 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (tp->tp_flags & Py_TPFLAGS_PREHEADER)
        n += 2 * sizeof(PyObject *);
#elif PY_VERSION_HEX >= 0x030B0000
    if (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT)
        n += 2 * sizeof(PyObject *);
#endif
    return n;
}

static uint64_t estimated_size(PyObject *o, PyTypeObject *tp) {
    Py_ssize_t n = tp->tp_itemsize ? Py_SIZE(o) : 0;
    if (n < 0)
        n = -n;
    return (uint64_t)tp->tp_basicsize + (uint64_t)n * (uint64_t)tp->tp_itemsize + preheader(tp);
}

static uint64_t size_of(PyObject *o, PyTypeObject *tp, type_row *r) {
    if (r->python_sizeof)
        return estimated_size(o, tp);
    if (r->fixed_size >= 0)
        return (uint64_t)r->fixed_size;
    if (r->direct && r->pre >= 0) {
        Py_ssize_t n = direct_sizeof(r, o);
        if (n >= 0)
            return (uint64_t)(n + r->pre);
    }
    PyObject *v = PyObject_CallOneArg(getsizeof_fn, o);
    Py_ssize_t n = v ? PyLong_AsSsize_t(v) : -1;
    Py_XDECREF(v);
    if (n < 0) { /* a C __sizeof__ that raised: estimated */
        PyErr_Clear();
        return estimated_size(o, tp);
    }
    /* object.__sizeof__ of a fixed-size type: the same for every instance */
    if (tp->tp_itemsize == 0 && _PyType_Lookup(tp, sizeof_name) == object_sizeof)
        r->fixed_size = n;
    else if (r->direct && r->pre < 0) { /* learn what sys.getsizeof adds for this type */
        Py_ssize_t own = direct_sizeof(r, o);
        if (own >= 0 && own <= n)
            r->pre = n - own;
        else
            r->direct = NULL;
    }
    return (uint64_t)n;
}

static int visit(PyObject *o, void *arg);

static uint64_t array_nbytes(PyObject *o) {
    PyObject *v = Py_TYPE(nbytes_getter)->tp_descr_get(nbytes_getter, o, (PyObject *)ndarray_type);
    Py_ssize_t n = v ? PyLong_AsSsize_t(v) : -1;
    Py_XDECREF(v);
    if (n < 0) {
        PyErr_Clear();
        return 0;
    }
    return (uint64_t)n;
}

static void count(census *c, PyObject *o) {
    PyTypeObject *tp = Py_TYPE(o);
    type_row *r = mt_census_type(c, tp);
    if (r == NULL) {
        c->failed = 1;
        return;
    }
    uint64_t size = size_of(o, tp, r);
    r->count++;
    r->bytes += size;
    c->n_objects++;
    c->n_bytes += size;
    if (ndarray_type && PyObject_TypeCheck(o, ndarray_type)) {
        mt_ndarray *a = (mt_ndarray *)o;
        uint64_t nbytes = array_nbytes(o);
        if (a->flags & NPY_OWNDATA) {
            r->own_count++;
            r->own_nbytes += nbytes;
            mt_census_candidate(c, r, (uintptr_t)a->data, nbytes);
        } else {
            r->view_count++;
            r->view_nbytes += nbytes;
        }
        /* arrays are not tracked by the collector: a view's base may be known to
         * nothing else */
        if (a->base)
            visit(a->base, c);
        return;
    }
    if (size > PYMALLOC_MAX)
        mt_census_candidate(c, r, (uintptr_t)o - preheader(tp), size);
    if (PyList_CheckExact(o)) {
        PyListObject *l = (PyListObject *)o;
        uint64_t items = (uint64_t)l->allocated * sizeof(PyObject *);
        if (items > PYMALLOC_MAX)
            mt_census_candidate(c, r, (uintptr_t)l->ob_item, items);
    }
}

/* An object referenced by another: count it here if the collector does not track
 * it (tracked ones are counted from gc.get_objects()), once. */
static int visit(PyObject *o, void *arg) {
    census *c = arg;
    if (o == NULL || PyObject_GC_IsTracked(o))
        return 0;
    int added = mt_census_seen_add(c, o);
    if (added < 0) {
        c->failed = 1;
        return 0;
    }
    if (added == 0)
        return 0;
    c->n_untracked++;
    count(c, o);
    /* an untracked container (a tuple or dict of atoms) may hold more of them */
    if (PyObject_IS_GC(o) && Py_TYPE(o)->tp_traverse) {
        if (mt_big_grow((void **)&c->todo, &c->todo_cap, c->n_todo + 1, sizeof(PyObject *)) < 0) {
            c->failed = 1;
            return 0;
        }
        c->todo[c->n_todo++] = o;
    }
    return 0;
}

/* The untracked containers found so far: what they hold. */
static void drain(census *c) {
    while (c->n_todo) {
        PyObject *u = c->todo[--c->n_todo];
        Py_TYPE(u)->tp_traverse(u, visit, c);
    }
}

static void traverse(census *c, PyObject *o) {
    traverseproc t = Py_TYPE(o)->tp_traverse;
    if (t)
        t(o, visit, c);
    drain(c);
}

/* 3.11 and later: a running function's locals live in its interpreter frame, which
 * the collector does not see as an object. */
static void visit_frames(census *c) {
#if PY_VERSION_HEX >= 0x030B0000 && !defined(MT_FRAMES_UNKNOWN)
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts;
         ts = PyThreadState_Next(ts)) {
        for (mt_frame *f = mt_top_frame(ts); f != NULL; f = f->previous) {
#ifdef MT_FIRST_SHIM_OWNER
            if (f->owner >= MT_FIRST_SHIM_OWNER)
                continue;
#endif
            int n = mt_frame_code(f)->co_nlocalsplus;
            for (int i = 0; i < n; i++) {
#if PY_VERSION_HEX >= 0x030E0000
                _PyStackRef ref = f->localsplus[i];
                if (PyStackRef_IsNull(ref) || PyStackRef_IsTaggedInt(ref))
                    continue;
                PyObject *o = PyStackRef_AsPyObjectBorrow(ref);
#else
                PyObject *o = f->localsplus[i];
#endif
                if (o == NULL)
                    continue;
                c->n_frame_roots++;
                visit(o, c); /* (a tracked one was counted, and traversed, already) */
                drain(c);
            }
        }
    }
#endif
}

static int gc_off(void) {
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    PyObject *on = PyObject_CallNoArgs(gc_isenabled_fn);
    int was = on ? PyObject_IsTrue(on) : 0;
    Py_XDECREF(on);
    Py_XDECREF(PyObject_CallNoArgs(gc_disable_fn));
    return was;
#endif
}

static void gc_restore(int was) {
    if (!was)
        return;
#if PY_VERSION_HEX >= 0x030A0000
    PyGC_Enable();
#else
    Py_XDECREF(PyObject_CallNoArgs(gc_enable_fn));
#endif
}

/* Walk the heap and write the record into t. */
static void take(census *c, text *t, int reason) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t position = mt_shim_position ? mt_shim_position() : 0;
    int was = gc_off();
    PyObject *all = PyObject_CallNoArgs(get_objects_fn);
    if (all && PyList_Check(all)) {
        Py_ssize_t n = PyList_GET_SIZE(all);
        for (Py_ssize_t i = 0; i < n && !c->failed; i++)
            count(c, PyList_GET_ITEM(all, i));
        for (Py_ssize_t i = 0; i < n && !c->failed; i++)
            traverse(c, PyList_GET_ITEM(all, i));
        visit_frames(c);
    } else {
        c->failed = 1;
    }
    Py_XDECREF(all);
    PyErr_Clear();
    gc_restore(was);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long cost = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    if (!c->failed)
        mt_census_record(t, c, reason, position, cost);
}

/* Take a census and send it (reason 0: the collector asked, 1: the exit point);
 * then wait for the collector to join it with its live table. */
void mt_take_census(int reason) {
    mt_census_sent_fn sent = (mt_census_sent_fn)mt_shim_symbol(MT_SYM_CENSUS_SENT);
    if (!mt_census_on || mt_meta_text_to_shim == NULL || mt_shim_untraced == NULL || !sent)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    mt_shim_untraced(1);
    census c = {0};
    text t = {0};
    take(&c, &t, reason);
    mt_census_free(&c);
    if (!c.failed && !t.failed && t.len)
        mt_meta_text_to_shim(MT_TEXT_CENSUS, t.p, t.len);
    mt_big_free(t.p, t.cap);
    mt_shim_untraced(0);
    PyErr_Restore(type, value, tb);
    if (!c.failed && !t.failed)
        sent();
}

/* A pending call on the main thread: a census if the collector asked for one. */
void mt_census_if_due(void) {
    mt_census_due_fn due = (mt_census_due_fn)mt_shim_symbol(MT_SYM_CENSUS_DUE);
    if (mt_census_on && due && due())
        mt_take_census(0);
}

/* census_setup(getsizeof, get_objects, isenabled, disable, enable): switch the census
 * on, with the functions as they are before the program runs. */
PyObject *mt_census_setup(PyObject *self, PyObject *args) {
    if (!PyArg_ParseTuple(args, "OOOOO", &getsizeof_fn, &get_objects_fn, &gc_isenabled_fn,
                          &gc_disable_fn, &gc_enable_fn))
        return NULL;
    Py_INCREF(getsizeof_fn);
    Py_INCREF(get_objects_fn);
    Py_INCREF(gc_isenabled_fn);
    Py_INCREF(gc_disable_fn);
    Py_INCREF(gc_enable_fn);
    sizeof_name = PyUnicode_InternFromString("__sizeof__");
    object_sizeof = sizeof_name ? _PyType_Lookup(&PyBaseObject_Type, sizeof_name) : NULL;
    if (object_sizeof == NULL)
        return NULL;
    Py_INCREF(object_sizeof);
    mt_census_on = 1;
    Py_RETURN_NONE;
}

/* census_numpy(ndarray): NumPy's core loaded; its arrays get their own columns. */
PyObject *mt_census_numpy(PyObject *self, PyObject *type) {
    if (!PyType_Check(type))
        Py_RETURN_NONE;
    PyObject *name = PyUnicode_InternFromString("nbytes");
    PyObject *getter = name ? _PyType_Lookup((PyTypeObject *)type, name) : NULL;
    Py_XDECREF(name);
    if (getter == NULL || Py_TYPE(getter)->tp_descr_get == NULL)
        Py_RETURN_NONE;
    Py_INCREF(type);
    Py_INCREF(getter);
    ndarray_type = (PyTypeObject *)type;
    nbytes_getter = getter;
    Py_RETURN_NONE;
}

/* census(reason): take one now (tests, and the exit point). */
PyObject *mt_census_now(PyObject *self, PyObject *arg) {
    mt_take_census((int)PyLong_AsLong(arg));
    Py_RETURN_NONE;
}
