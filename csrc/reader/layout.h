/* layout.h — which CPython frame layout this reader is built for.
 *
 * The reader (tracer._pyframes) is compiled for the interpreter memtrace is
 * installed into, with that minor version's own (internal) headers:
 *   3.9, 3.10   PyFrameObject chain from the thread state
 *   3.11, 3.12  _PyInterpreterFrame chain from the thread's cframe
 *   3.13        _PyInterpreterFrame from tstate->current_frame, f_executable
 *   3.14, 3.15  the same, f_executable a tagged _PyStackRef, entry frames owned
 *               by the interpreter (3.15: also the thread state's base frame)
 * Any other Python, and free-threaded builds, get a reader without frames
 * (MT_FRAMES_UNKNOWN is the reason): the program is traced native-only, while
 * NumPy labels and pymalloc statistics still work.
 *
 * MT_PINS says how this Python proves that a frame has not left the stack
 * (pins.h): not at all before 3.12, by sys.monitoring events on 3.12-3.14, by
 * the thread state's last_profiled_frame from 3.15.
 */
#ifndef MT_READER_LAYOUT_H
#define MT_READER_LAYOUT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MT_PINS_NONE 0
#define MT_PINS_MONITORING 1
#define MT_PINS_PROFILED_FRAME 2

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

#if defined(MT_FRAMES_UNKNOWN) || PY_VERSION_HEX < 0x030C0000
#define MT_PINS MT_PINS_NONE
#elif PY_VERSION_HEX < 0x030F0000
#define MT_PINS MT_PINS_MONITORING
#else
#define MT_PINS MT_PINS_PROFILED_FRAME
#endif

#if PY_VERSION_HEX >= 0x030B0000 && !defined(MT_FRAMES_UNKNOWN)
typedef _PyInterpreterFrame mt_frame;

/* The thread's innermost frame (it may be one the interpreter pushed for itself). */
static inline mt_frame *mt_top_frame(PyThreadState *ts) {
#if PY_VERSION_HEX >= 0x030D0000
    return ts->current_frame;
#else
    return ts->cframe ? ts->cframe->current_frame : NULL;
#endif
}

/* The code object a frame runs (not for frames the interpreter pushed for itself). */
static inline PyCodeObject *mt_frame_code(mt_frame *f) {
#if PY_VERSION_HEX >= 0x030D0000
    return _PyFrame_GetCode(f); /* clears the stack reference's tag bits */
#else
    return f->f_code;
#endif
}
#endif

#endif /* MT_READER_LAYOUT_H */
