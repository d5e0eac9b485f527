/* module.c — tracer._pyframes, the frame reader for the CPython it is built for.
 *
 * The bootstrap loads it inside the traced interpreter. It hands the shim
 * (found with dlsym, see shim_api.h) the functions that read the calling
 * thread's own frame chain at allocation time: the cost follows allocations,
 * not Python calls, and there is no profile hook. It also labels NumPy array
 * data and sends pymalloc's statistics (reader.h lists the parts).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "reader.h"

mt_meta_text_fn mt_meta_text_to_shim;
mt_position_fn mt_shim_position;
mt_untraced_fn mt_shim_untraced;
mt_reader_thread_fn mt_shim_reader_thread;

void *mt_shim_symbol(const char *name) {
    return dlsym(RTLD_DEFAULT, name);
}

static const mt_python_reader with_pins = {mt_walk_frames,   mt_pin,       mt_describe_code,
                                           mt_code_identity, mt_code_line, mt_request_stats};
static const mt_python_reader whole_walks = {mt_walk_frames,   NULL,         mt_describe_code,
                                             mt_code_identity, mt_code_line, mt_request_stats};
static const mt_python_reader without_frames = {mt_walk_nothing,  NULL,         mt_describe_code,
                                                mt_code_identity, mt_code_line, mt_request_stats};

/* install() -> True | False | str: start recording Python frames. False: no shim
 * in this process. A str: why this interpreter's frames cannot be read; the
 * reader is registered anyway (pymalloc statistics), with no frames. */
static PyObject *install(PyObject *self, PyObject *args) {
    mt_set_python_reader_fn set = (mt_set_python_reader_fn)mt_shim_symbol(MT_SYM_SET_PYTHON_READER);
    if (set == NULL)
        Py_RETURN_FALSE;
    mt_meta_text_to_shim = (mt_meta_text_fn)mt_shim_symbol(MT_SYM_META_TEXT);
    mt_shim_position = (mt_position_fn)mt_shim_symbol(MT_SYM_POSITION);
    mt_shim_untraced = (mt_untraced_fn)mt_shim_symbol(MT_SYM_UNTRACED);
    mt_shim_reader_thread = (mt_reader_thread_fn)mt_shim_symbol(MT_SYM_READER_THREAD);
    const char *why = mt_frames_unavailable();
    if (why) {
        set(&without_frames);
        return PyUnicode_FromString(why);
    }
    set(mt_shim_reader_thread && mt_pins_start() == NULL ? &with_pins : &whole_walks);
    Py_RETURN_TRUE;
}

/* pins() -> str: how this Python's stacks are read (for the capture's notes). */
static PyObject *pins(PyObject *self, PyObject *args) {
    if (mt_pins_on)
        return PyUnicode_FromString(MT_PINS == MT_PINS_MONITORING
                                        ? "pinned frames (sys.monitoring)"
                                        : "pinned frames (last_profiled_frame)");
    const char *why = MT_PINS == MT_PINS_NONE ? "this Python offers no proof that a frame stayed"
                                              : mt_pins_start();
    return PyUnicode_FromFormat("whole walks: %s", why ? why : "the shim keeps no pins");
}

/* uninstall(): stop reading frames (called at interpreter exit, before thread
 * states are torn down). */
static PyObject *uninstall(PyObject *self, PyObject *args) {
    mt_set_python_reader_fn set = (mt_set_python_reader_fn)mt_shim_symbol(MT_SYM_SET_PYTHON_READER);
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
    mt_meta_text_fn fn = (mt_meta_text_fn)mt_shim_symbol(MT_SYM_META_TEXT);
    if (fn)
        fn((uint16_t)key, text, (size_t)len);
    Py_RETURN_NONE;
}

/* pymalloc_stats(reason): send pymalloc's statistics now. */
static PyObject *pymalloc_stats(PyObject *self, PyObject *arg) {
    mt_send_pymalloc_stats((int)PyLong_AsLong(arg));
    Py_RETURN_NONE;
}

/* exit_point(): the program is done; pymalloc's books, then the shim's exit handshake. */
static PyObject *exit_point(PyObject *self, PyObject *args) {
    mt_send_pymalloc_stats(1);
    mt_take_census(1); /* (only with --objects) */
    mt_exit_point_fn fn = (mt_exit_point_fn)mt_shim_symbol(MT_SYM_EXIT_POINT);
    if (fn)
        fn();
    Py_RETURN_NONE;
}

/* ---- Regions (tracer.region, src/tracer/_regions.py) ----------------------
 * Thin calls into the shim, so that marking a region costs a C call rather
 * than a ctypes one. The module may be loaded without a shim (untraced): then
 * region_bind() says so and nothing else is called. */

static mt_region_mark_fn region_mark_fn;
static mt_region_name_fn region_name_fn;
static mt_region_ask_fn region_ask_fn;

/* region_bind() -> bool: whether this process has a shim that takes regions. */
static PyObject *region_bind(PyObject *self, PyObject *args) {
    region_mark_fn = (mt_region_mark_fn)mt_shim_symbol(MT_SYM_REGION_MARK);
    region_name_fn = (mt_region_name_fn)mt_shim_symbol(MT_SYM_REGION_NAME);
    region_ask_fn = (mt_region_ask_fn)mt_shim_symbol(MT_SYM_REGION_ASK);
    return PyBool_FromLong(region_mark_fn && region_name_fn && region_ask_fn);
}

/* region_mark(id, enter): the calling thread enters (1) or leaves (0) region id. */
static PyObject *region_mark(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2 || region_mark_fn == NULL) {
        PyErr_SetString(PyExc_TypeError, "region_mark(id, enter) after region_bind()");
        return NULL;
    }
    unsigned long id = PyLong_AsUnsignedLong(args[0]);
    long enter = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    region_mark_fn((uint32_t)id, enter != 0);
    Py_RETURN_NONE;
}

/* region_name(id, kind, name): name region id once (name: UTF-8 bytes). */
static PyObject *region_name(PyObject *self, PyObject *args) {
    unsigned int id, kind;
    const char *name;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "IIy#", &id, &kind, &name, &len))
        return NULL;
    if (region_name_fn)
        region_name_fn(id, kind, name, (size_t)len);
    Py_RETURN_NONE;
}

/* region_ask(what, id, timeout_ms) -> bytes | None: the collector's JSON answer
 * about region id on this thread (0: its innermost open region); the GIL is
 * released while waiting. */
static PyObject *region_ask(PyObject *self, PyObject *args) {
    unsigned int what, id, timeout_ms;
    if (!PyArg_ParseTuple(args, "III", &what, &id, &timeout_ms))
        return NULL;
    if (region_ask_fn == NULL)
        Py_RETURN_NONE;
    char answer[1 << 16]; /* the answer area's size (shim/transport.c) */
    int n;
    Py_BEGIN_ALLOW_THREADS n = region_ask_fn(what, id, answer, sizeof answer, timeout_ms);
    Py_END_ALLOW_THREADS if (n < 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(answer, n);
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, "Start recording Python frames."},
    {"pins", pins, METH_NOARGS, "How this Python's stacks are read."},
    {"uninstall", uninstall, METH_NOARGS, "Stop recording Python frames."},
    {"meta_text", meta_text, METH_VARARGS, "Send a note about this process."},
    {"label_numpy", mt_label_numpy, METH_O, "Label NumPy array data."},
    {"pymalloc_stats", pymalloc_stats, METH_O, "Send pymalloc's statistics now."},
    {"exit_point", exit_point, METH_NOARGS, "The program is done: final statistics now."},
    {"region_bind", region_bind, METH_NOARGS, "Whether this process's shim takes regions."},
    {"region_mark", (PyCFunction)(void (*)(void))region_mark, METH_FASTCALL,
     "Enter (1) or leave (0) a region."},
    {"region_name", region_name, METH_VARARGS, "Name a region id."},
    {"region_ask", region_ask, METH_VARARGS, "Ask the collector about a region."},
    {"census_setup", mt_census_setup, METH_VARARGS, "Switch the object census on."},
    {"census_numpy", mt_census_numpy, METH_O, "Count NumPy arrays' data in the census."},
    {"census", mt_census_now, METH_O, "Take an object census now."},
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
