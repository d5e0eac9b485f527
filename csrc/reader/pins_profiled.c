/* pins_profiled.c — pins on CPython 3.15: the thread state's last_profiled_frame.
 *
 * Pinning writes the frame into tstate->last_profiled_frame and remembers
 * last_profiled_frame_seq. When exactly that frame leaves the stack (returns,
 * yields, or is unwound by an exception), the interpreter moves the field to its
 * parent and bumps the sequence number; so while both still read as pinned, the
 * frame has not left, even if another frame was since pushed at its address.
 *
 * The field has one other user: CPython's sampling profiler (profiling.sampling,
 * from another process) clears it when it starts and writes it at each sample.
 * A field that moved while the sequence number did not was written by someone
 * else: pins stop (whole walks, never a write that would mislead the profiler's
 * own cache) until the field has been left alone for QUIET_NS.
 */
#include <time.h>

#include "pins.h"

#if MT_PINS == MT_PINS_PROFILED_FRAME
#define QUIET_NS (2 * 1000 * 1000 * 1000LL)

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

const char *mt_pins_start(void) {
    mt_pins_on = 1;
    return NULL;
}

static void note_foreign(mt_reader_thread *t, PyThreadState *ts) {
    t->fallback = 1;
    t->quiet_since = now_ns();
    t->seen_frame = ts->last_profiled_frame;
    t->seen_seq = ts->last_profiled_frame_seq;
}

int mt_pin_check_foreign(mt_reader_thread *t, PyThreadState *ts) {
    if (ts->last_profiled_frame_seq == t->seq && ts->last_profiled_frame != t->anchor) {
        note_foreign(t, ts);
        return 1;
    }
    return 0;
}

/* Still in the other user's hands? (Checked at each whole walk while pins wait.) */
static int other_user_active(mt_reader_thread *t, PyThreadState *ts) {
    void *now_frame = ts->last_profiled_frame;
    uintptr_t now_seq = ts->last_profiled_frame_seq;
    int64_t now = now_ns();
    if (now_seq == t->seen_seq && now_frame != t->seen_frame)
        t->quiet_since = now; /* written again, not by a frame leaving */
    t->seen_frame = now_frame;
    t->seen_seq = now_seq;
    if (now - t->quiet_since < QUIET_NS)
        return 1;
    t->fallback = 0;
    return 0;
}

int mt_pin(mt_reader_thread *t, void *frame, void *code, int at_once) {
    PyThreadState *ts = PyGILState_GetThisThreadState();
    if (ts == NULL || (t->fallback && other_user_active(t, ts)))
        return 0;
    ts->last_profiled_frame = (struct _PyInterpreterFrame *)frame;
    t->seq = ts->last_profiled_frame_seq;
    t->anchor = frame;
    t->anchor_code = code;
    t->confirmed = 1;
    return 1;
}
#endif
