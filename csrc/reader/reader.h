/* reader.h — the parts of the frame reader (tracer._pyframes), and what they share.
 *
 *   module.c  the extension module: install, notes, exit point
 *   walk.c    reading a thread's frames inside malloc (and describing code objects)
 *   pins.h    proving that a pinned frame has not left the stack (3.12+),
 *             pins_monitoring.c (3.12-3.14) and pins_profiled.c (3.15)
 *   stats.c   pymalloc's statistics for the reconciliation
 *   numpy.c   labelling NumPy array data
 *   census.c  live Python objects by type (--objects); census_tables.c its tables
 *             and record (census.h)
 */
#ifndef MT_READER_H
#define MT_READER_H

#include "layout.h"

#include "../shim_api.h"

/* The shim's exports, found with dlsym at install (NULL: no shim here). */
void *mt_shim_symbol(const char *name);
extern mt_meta_text_fn mt_meta_text_to_shim;
extern mt_position_fn mt_shim_position;
extern mt_untraced_fn mt_shim_untraced;
extern mt_reader_thread_fn mt_shim_reader_thread;

/* walk.c */
void mt_walk_frames(mt_reader_thread *t, mt_walk *w);
void mt_walk_nothing(mt_reader_thread *t, mt_walk *w);
const char *mt_frames_unavailable(void);
int mt_describe_code(void *code, char *file, size_t *file_len, char *name, size_t *name_len,
                     int32_t *firstlineno);
uintptr_t mt_code_identity(void *code);
int32_t mt_code_line(void *code, int32_t lasti);

/* pins_*.c: set up at install (Python context; returns the reason pins are not
 * used, or NULL), and pin a frame from inside malloc. */
const char *mt_pins_start(void);
int mt_pin(mt_reader_thread *t, void *frame, void *code, int at_once);
extern int mt_pins_on;

/* stats.c */
int mt_send_pymalloc_stats(int reason);
void mt_request_stats(void);

/* census.c */
extern int mt_census_on;
void mt_take_census(int reason);
void mt_census_if_due(void);
PyObject *mt_census_setup(PyObject *self, PyObject *args);
PyObject *mt_census_numpy(PyObject *self, PyObject *type);
PyObject *mt_census_now(PyObject *self, PyObject *arg);

/* walk.c: UTF-8 of a str without allocating (truncated to cap bytes) */
size_t mt_utf8_of(PyObject *s, char *out, size_t cap);

/* numpy.c */
PyObject *mt_label_numpy(PyObject *self, PyObject *capsule);

#endif /* MT_READER_H */
