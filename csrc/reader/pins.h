/* pins.h — when a walk may stop at the thread's pinned frame.
 *
 * After a whole walk the shim pins one frame near the top of the stack (see
 * csrc/shim/recorder.c). If this Python can prove the pinned frame has not left the stack
 * since — not returned, not yielded, not unwound by an exception — then the
 * frames outer of it cannot have changed either (they are suspended in calls
 * under it), and the next walk stops there: its cost no longer grows with the
 * depth of the stack. A frame at the same address is not such a proof (a frame
 * pushed again in the same place may have other callers), so:
 *
 *   3.12-3.14  sys.monitoring: PY_RETURN and PY_YIELD events on the pinned
 *              frame's code object, PY_UNWIND on all code; the callback drops the
 *              pin when exactly that frame leaves (pins_monitoring.c).
 *   3.15       the thread state's last_profiled_frame: the interpreter moves it
 *              to the parent, and bumps last_profiled_frame_seq, when exactly that
 *              frame leaves (pins_profiled.c).
 *   older      no proof: every walk is whole.
 */
#ifndef MT_READER_PINS_H
#define MT_READER_PINS_H

#include "reader.h"

#if MT_PINS == MT_PINS_MONITORING
/* Code objects with PY_RETURN/PY_YIELD events on (memtrace holds a reference to
 * each, so an address in the set is never reused by another code object).
 * Open addressing, insert-only; written with the GIL, read from any thread. */
#define MT_WATCH_BITS 12
extern void *mt_watched[1 << MT_WATCH_BITS];

static inline int mt_watching(void *code) {
    uintptr_t mask = (1u << MT_WATCH_BITS) - 1;
    for (uintptr_t i = ((uintptr_t)code >> 4) & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        void *c = __atomic_load_n(&mt_watched[i], __ATOMIC_ACQUIRE);
        if (c == code)
            return 1;
        if (c == NULL)
            return 0;
    }
    return 0;
}

/* A confirmed pin proves: the callback drops it when the frame leaves. */
static inline int mt_pin_holds(mt_reader_thread *t, PyThreadState *ts) {
    return t->confirmed;
}

/* The walk met the pinned frame's address without a proof: keep the pin if it is
 * the same code, and from now on it proves if that code's events are on (this
 * walk has just read every frame under it). */
static inline int mt_pin_met_unproven(mt_reader_thread *t, void *code) {
    if (code != t->anchor_code)
        return 0;
    t->confirmed = mt_watching(code);
    return 1;
}

#elif MT_PINS == MT_PINS_PROFILED_FRAME
int mt_pin_check_foreign(mt_reader_thread *t, PyThreadState *ts);

static inline int mt_pin_holds(mt_reader_thread *t, PyThreadState *ts) {
    if (ts->last_profiled_frame == t->anchor && ts->last_profiled_frame_seq == t->seq)
        return 1;
    mt_pin_check_foreign(t, ts);
    t->anchor = NULL; /* the frame left (or someone else moved the field) */
    return 0;
}

static inline int mt_pin_met_unproven(mt_reader_thread *t, void *code) {
    return 0;
}

#else
static inline int mt_pin_holds(mt_reader_thread *t, PyThreadState *ts) {
    return 0;
}

static inline int mt_pin_met_unproven(mt_reader_thread *t, void *code) {
    return 0;
}
#endif

#endif /* MT_READER_PINS_H */
