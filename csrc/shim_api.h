/* shim_api.h — what the shim exports to code running inside the target.
 *
 * The per-interpreter frame reader (csrc/reader/, a CPython extension the
 * bootstrap loads) finds these with dlsym(RTLD_DEFAULT, ...), so the shim
 * itself stays independent of any Python version and works native-only
 * when nobody registers a reader.
 */
#ifndef MT_SHIM_API_H
#define MT_SHIM_API_H

#include <stddef.h>
#include <stdint.h>

/* Cap on the Python frames one walk reads: the innermost ones are kept. */
#define MT_MAX_FRAMES 128

/* What a reader may keep per thread: the shim owns it (initial-exec TLS, so the
 * reader, a dlopen'ed extension, needs no TLS of its own that could allocate on
 * first touch) and hands it to every call on that thread. */
typedef struct mt_reader_thread {
    void *anchor; /* the frame pinned on this thread (NULL: none); cleared by
                     the reader when the pin no longer proves anything */
    /* The reader's own (see csrc/reader/pins.h). */
    void *anchor_code;
    uintptr_t seq;
    void *seen_frame;
    uintptr_t seen_seq;
    int64_t quiet_since;
    void *candidate; /* a code object asked for again and again ... */
    uint32_t candidate_asks;
    uint32_t confirmed; /* the pin proves (1) or waits for its proof (0) */
    uint32_t fallback;  /* pins wait (another user of the proof's field) */
} mt_reader_thread;

/* One walk of the calling thread's frames. */
typedef struct mt_walk {
    void **frame; /* in: arrays of `max` entries, filled innermost first */
    void **code;
    int32_t *lasti;
    int max;
    int n;         /* out: frames read */
    int anchor_at; /* out: index of the thread's pinned frame among them (-1: not met) */
    int stopped;   /* out: 1 if the walk stopped at the pinned frame (frame[n-1]): the
                      frames outer of it are proven unchanged since it was pinned */
} mt_walk;

/* Called by the shim from inside allocation hooks, on the allocating thread,
 * without the GIL. None of them may allocate, take a lock or call back into
 * Python. */
typedef struct mt_python_reader {
    /* Read the calling thread's Python frames, innermost first (n = 0 when the
     * thread runs no Python). Where this Python can prove a pinned frame has not
     * left the stack, the walk stops there. */
    void (*walk)(mt_reader_thread *t, mt_walk *w);
    /* Pin frame (read by the walk just made) as the thread's anchor: 1 if pinned
     * (t->anchor set), 0 if not. With at_once, only a pin that proves at once
     * replaces the current one (the reader may start arranging a proof for a
     * later call). NULL: this Python offers no proof (3.9-3.11), every walk is
     * whole. */
    int (*pin)(mt_reader_thread *t, void *frame, void *code, int at_once);
    /* Describe a code object: UTF-8 file and function names (truncated to fit,
     * lengths returned), first line, and two identities that change when the
     * address is reused by another code object. Return 0 on success. */
    int (*describe)(void *code, char *file, size_t *file_len, char *name, size_t *name_len,
                    int32_t *firstlineno);
    /* Identity of a code object besides its address (e.g. its name's address). */
    uintptr_t (*identity)(void *code);
    /* Line of an instruction offset in a code object. */
    int32_t (*line)(void *code, int32_t lasti);
    /* Arrange for pymalloc statistics to be sent soon (called from inside a
     * hook on any thread: it may only schedule work, e.g. Py_AddPendingCall). */
    void (*request_stats)(void);
} mt_python_reader;

typedef void (*mt_set_python_reader_fn)(const mt_python_reader *reader);
/* on: raise (1) or lower (0) the flag; handler: an address inside NumPy's own
 * handler, named as the caller (its functions may tail-call malloc). */
typedef void (*mt_numpy_data_fn)(int on, void *handler);
typedef void (*mt_meta_text_fn)(uint16_t key, const char *text, size_t len);
typedef uint64_t (*mt_position_fn)(void);

/* Exported names (dlsym). */
#define MT_SYM_SET_PYTHON_READER "mt_set_python_reader"
#define MT_SYM_NUMPY_DATA "mt_numpy_data"
#define MT_SYM_META_TEXT "mt_meta_text"
#define MT_SYM_POSITION "mt_position"     /* events claimed so far in this process's stream */
#define MT_SYM_EXIT_POINT "mt_exit_point" /* the program is done: final statistics now */
#define MT_SYM_UNTRACED "mt_untraced"     /* 1/0: what this thread allocates now is memtrace's */
typedef void (*mt_untraced_fn)(int on);
#define MT_SYM_READER_THREAD "mt_reader_thread_state" /* this thread's mt_reader_thread */
typedef mt_reader_thread *(*mt_reader_thread_fn)(void);
typedef void (*mt_exit_point_fn)(void);
#define MT_SYM_CENSUS_DUE "mt_census_due"   /* 1: the collector asked for an object census */
#define MT_SYM_CENSUS_SENT "mt_census_sent" /* a census record was written: wait for its join */
typedef int (*mt_census_due_fn)(void);
typedef void (*mt_census_sent_fn)(void);

/* Regions (tracer.region, src/tracer/_regions.py): mark, name, ask the collector. */
#define MT_SYM_REGION_MARK "mt_region_mark"
typedef void (*mt_region_mark_fn)(uint32_t id, int enter);
#define MT_SYM_REGION_NAME "mt_region_name"
typedef void (*mt_region_name_fn)(uint32_t id, uint32_t kind, const char *name, size_t len);
#define MT_SYM_REGION_ASK "mt_region_ask"
typedef int (*mt_region_ask_fn)(uint32_t what, uint32_t id, char *out, size_t cap,
                                uint32_t timeout_ms);

#endif /* MT_SHIM_API_H */
