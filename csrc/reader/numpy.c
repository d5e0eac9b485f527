/* numpy.c — labelling NumPy array data.
 *
 * NumPy's default data-memory handler (NEP 49) gets wrappers that raise the
 * shim's "NumPy data" flag around the original functions, for every thread and
 * every context: each allocation NumPy makes for array data is flagged, with
 * NumPy's handler as its caller.
 */
#include "reader.h"

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
PyObject *mt_label_numpy(PyObject *self, PyObject *capsule) {
    numpy_flag = (mt_numpy_data_fn)mt_shim_symbol(MT_SYM_NUMPY_DATA);
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
