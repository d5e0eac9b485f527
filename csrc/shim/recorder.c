/* recorder.c — events from hooked calls: thread ids, Python stacks, callers.
 *
 * Hot path (an allocation on a thread whose Python stack did not change since
 * its last allocation): a walk of the thread's frame chain compared with the
 * thread's cached copy, a lookup of the caller's return address, one atomic
 * fetch-add to claim a ring slot, 32 bytes written. No lock, no system call,
 * no allocation. Everything else (a new stack node, code object, library or
 * thread) is rare and may take a spin lock or make a system call: the interning
 * tables are in intern.c, heap statistics in heapstats.c. The shim is built with
 * -flto, so calls across these files inline as within one.
 */
#define _GNU_SOURCE
#include "recorder.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../shim_api.h"
#include "intern.h"
#include "sampler.h"
#include "transport.h"

#define EXPORT __attribute__((visibility("default")))

MT_TLS mt_thread mt_self;

/* ---- Python stacks ------------------------------------------------------ */

/* The registered frame reader (NULL: native-only) and a generation bumped on
 * every change, so per-thread caches built with an old reader are dropped. */
static const mt_python_reader *py_reader;
static uint32_t py_reader_gen = 1;

/* A thread's last captured stack, outermost first (index = height above the
 * outermost frame read), with the node id of each frame. A walk that stopped at
 * the thread's pinned frame fills in only the frames at and above the pin's
 * height; the ones below are the same frames as before, with the same nodes. */
typedef struct stack_cache {
    uint32_t gen;
    int depth;
    int anchor_h;       /* height of the pinned frame (-1: none) */
    int pin_below_top;  /* where the next pin goes: this many frames below the top */
    uint32_t pin_walks; /* walks since the current pin was placed */
    void *frame[MT_MAX_FRAMES];
    void *code[MT_MAX_FRAMES];
    int32_t lasti[MT_MAX_FRAMES];
    uint32_t node[MT_MAX_FRAMES];
} stack_cache;

/* The frames one walk read, innermost first. */
typedef struct walk_buffer {
    void *frame[MT_MAX_FRAMES];
    void *code[MT_MAX_FRAMES];
    int32_t lasti[MT_MAX_FRAMES];
} walk_buffer;

static MT_TLS stack_cache stacks;
static MT_TLS walk_buffer walked;
static MT_TLS mt_reader_thread reader_thread;

/* Pin placement. Pins go pin_below_top frames below the top of the stack: the
 * walks they shorten read that many frames and the pin. A pin that leaves the
 * stack within PIN_SHORT_LIVED walks was on a frame that comes and goes (a helper
 * called in a loop), and so is one whose proof has not come by then: the next
 * one goes a frame deeper, up to PIN_MAX_BELOW_TOP.
 * After PIN_LONG_LIVED walks on one pin, pins come a frame closer to the top.
 * A walk that stopped deeper than that (the stack grew above the pin) moves the
 * pin up to a frame it just read, if that pin proves at once. */
#define PIN_SHORT_LIVED 64
#define PIN_LONG_LIVED 256
#define PIN_MAX_BELOW_TOP 8

static int cached_frame_is(int h, const mt_walk *w, int i) {
    return stacks.frame[h] == w->frame[i] && stacks.code[h] == w->code[i] &&
           stacks.lasti[h] == w->lasti[i];
}

static void forget_stack(void) {
    stacks.depth = 0;
    stacks.anchor_h = -1;
    reader_thread.anchor = NULL;
}

/* Pin the frame at index `at` of the walk just made, whose frame[n - 1] sits at
 * height `base` (at_once: see shim_api.h). */
static void pin_at(const mt_python_reader *r, const mt_walk *w, int base, int at, int at_once) {
    if (r->pin(&reader_thread, w->frame[at], w->code[at], at_once)) {
        stacks.anchor_h = base + w->n - 1 - at;
        stacks.pin_walks = 0;
    } else if (!at_once) {
        stacks.anchor_h = -1;
    }
}

/* After a walk: keep the pin it met (its height may have moved), bring it closer
 * to the top, or place a new one if it left the stack. */
static void place_pin(const mt_python_reader *r, const mt_walk *w, int base) {
    stacks.pin_walks++;
    int want = stacks.pin_below_top < w->n ? stacks.pin_below_top : w->n - 1;
    int deeper; /* the pin just lost was on a frame that does not stay */
    if (w->anchor_at >= 0 && !w->stopped && stacks.pin_walks > PIN_SHORT_LIVED) {
        reader_thread.anchor = NULL; /* its proof never came */
        deeper = 1;
    } else if (w->anchor_at >= 0) {
        stacks.anchor_h = base + w->n - 1 - w->anchor_at;
        if (!w->stopped)
            return; /* the pin waits for its proof */
        if (stacks.pin_walks >= PIN_LONG_LIVED) {
            stacks.pin_walks = PIN_SHORT_LIVED; /* counts again, never as short-lived */
            if (stacks.pin_below_top > 0)
                stacks.pin_below_top--;
        }
        if (w->anchor_at > want)
            pin_at(r, w, base, want, 1);
        return;
    } else {
        deeper = stacks.anchor_h >= 0 && stacks.pin_walks < PIN_SHORT_LIVED;
    }
    if (deeper && stacks.pin_below_top < PIN_MAX_BELOW_TOP) {
        stacks.pin_below_top++;
        want = stacks.pin_below_top < w->n ? stacks.pin_below_top : w->n - 1;
    }
    stacks.anchor_h = -1;
    if (r->pin != NULL)
        pin_at(r, w, base, want, 0);
}

/* The calling thread's Python stack as a node id (0: no Python frame). */
static uint32_t current_stack(void) {
    const mt_python_reader *r = __atomic_load_n(&py_reader, __ATOMIC_ACQUIRE);
    if (r == NULL)
        return 0;
    uint32_t gen = __atomic_load_n(&py_reader_gen, __ATOMIC_RELAXED);
    if (stacks.gen != gen) { /* a new reader: nothing cached is its */
        forget_stack();
        stacks.gen = gen;
    }
    mt_walk w = {walked.frame, walked.code, walked.lasti, MT_MAX_FRAMES, 0, -1, 0};
    r->walk(&reader_thread, &w);
    int n = w.n;
    if (n == 0)
        return 0;
    int top = stacks.depth - 1;
    if (w.stopped && n == 1 && stacks.anchor_h == top && stacks.frame[top] == w.frame[0] &&
        stacks.lasti[top] == w.lasti[0] && ++stacks.pin_walks < PIN_LONG_LIVED)
        return stacks.node[top]; /* the pinned top frame, on the same line: a loop */
    int base = 0;                /* height of frame[n - 1] */
    if (w.stopped) {
        base = stacks.anchor_h;
        if (base < 0 || base >= stacks.depth || base + n > MT_MAX_FRAMES ||
            stacks.frame[base] != w.frame[n - 1]) {
            /* the pin and the cache disagree (or the stack outgrew the cache):
             * drop the pin and read the whole stack */
            forget_stack();
            w = (mt_walk){walked.frame, walked.code, walked.lasti, MT_MAX_FRAMES, 0, -1, 0};
            r->walk(&reader_thread, &w);
            if ((n = w.n) == 0)
                return 0;
            base = 0;
        }
    }
    /* Keep the node ids of the frames, from the bottom up, that did not change. */
    int h = base, i = n - 1;
    while (i >= 0 && h < stacks.depth && cached_frame_is(h, &w, i)) {
        h++;
        i--;
    }
    if (i >= 0) {
        uint32_t parent = h ? stacks.node[h - 1] : 0;
        for (; i >= 0; i--, h++) {
            parent = mt_intern_node(r, parent, w.code[i], w.lasti[i]);
            if (parent == 0) {
                forget_stack(); /* do not cache a half-interned stack */
                __atomic_fetch_add(&mt_stream->unattributed, 1, __ATOMIC_RELAXED);
                return 0;
            }
            stacks.frame[h] = w.frame[i];
            stacks.code[h] = w.code[i];
            stacks.lasti[h] = w.lasti[i];
            stacks.node[h] = parent;
        }
    }
    stacks.depth = base + n;
    place_pin(r, &w, base);
    return stacks.node[stacks.depth - 1];
}

const mt_python_reader *mt_python_reader_now(void) {
    return __atomic_load_n(&py_reader, __ATOMIC_ACQUIRE);
}

/* ---- Callers' shared objects -------------------------------------------- */

/* Most calls come from the call site of the thread's previous call. */
static inline uint16_t caller_lib(void *caller) {
    if (caller == mt_self.last_caller && mt_self.last_lib)
        return (uint16_t)(mt_self.last_lib - 1);
    uint16_t lib = mt_caller_lib_lookup(caller);
    mt_self.last_caller = caller;
    mt_self.last_lib = lib ? (uint32_t)lib + 1 : 0; /* unknown (being named): ask again */
    return lib;
}

/* ---- Threads ------------------------------------------------------------- */

static void first_event_of_thread(void) {
    mt_self.tid = (uint32_t)syscall(SYS_gettid);
    char name[17] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    if (mt_stream) {
        mt_thread_payload rec = {mt_self.tid};
        mt_meta_write(mt_stream, MT_META_THREAD, &rec, sizeof rec, name, strlen(name));
    }
}

/* ---- Recording ----------------------------------------------------------- */

static inline void fill(mt_event *e, uint8_t kind, uint8_t flags, void *addr, size_t size,
                        uint32_t stack, uint16_t lib) {
    e->addr = (uint64_t)(uintptr_t)addr;
    e->size = size;
    e->stack = stack;
    e->tid = mt_self.tid;
    e->lib = lib;
    e->kind = kind;
    e->flags = flags;
}

/* Fill the claimed slot at pos and publish it. */
static inline __attribute__((always_inline)) void put(mt_shm_header *h, uint64_t pos, uint8_t kind,
                                                      uint8_t flags, void *addr, size_t size,
                                                      uint32_t stack, uint16_t lib) {
    mt_event *e = mt_ring_slot(h, pos);
    if (e == NULL)
        return;
    fill(e, kind, flags, addr, size, stack, lib);
    mt_ring_commit(e, pos);
}

uint64_t mt_claim(uint32_t n) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return UINT64_MAX;
    if (__builtin_expect(mt_self.tid == 0, 0))
        first_event_of_thread();
    return mt_ring_claim(h, n);
}

/* mt_commit_free(mt_claim(1), MT_FREE, ...) in one call: free's hot path (36
 * fewer instructions per free, callgrind). */
void mt_record_free(void *addr) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    if (__builtin_expect(mt_self.tid == 0, 0))
        first_event_of_thread();
    uint64_t pos = mt_ring_claim(h, 1);
    if (pos != UINT64_MAX)
        put(h, pos, MT_FREE, 0, addr, 0, 0, 0);
}

void mt_commit_free(uint64_t pos, uint8_t kind, uint8_t flags, void *addr, size_t size) {
    mt_shm_header *h = mt_stream;
    if (pos == UINT64_MAX || h == NULL)
        return;
    put(h, pos, kind, flags, addr, size, 0, 0);
}

/* Stack and caller of an allocation being recorded (NumPy's handler, when its
 * flag is up, is the caller). */
static void attribute(uint8_t *flags, void **caller, uint32_t *stack, uint16_t *lib) {
    if (mt_self.numpy_data) {
        *flags |= MT_FLAG_NUMPY;
        *caller = mt_self.numpy_caller;
    }
    *stack = current_stack();
    *lib = caller_lib(*caller);
}

void mt_commit_alloc(uint64_t pos, uint8_t kind, uint8_t flags, void *addr, size_t size,
                     void *caller) {
    mt_shm_header *h = mt_stream;
    if (pos == UINT64_MAX || h == NULL)
        return;
    uint32_t stack = 0;
    uint16_t lib = 0;
    if (kind != MT_NONE)
        attribute(&flags, &caller, &stack, &lib);
    if (kind != MT_NONE && (flags & MT_FLAG_SAMPLED))
        mt_sampled_add(addr);
    put(h, pos, kind, flags, addr, size, stack, lib);
}

void mt_realloc_decide(void *old, size_t size, int *free_kept, int *new_kept) {
    *new_kept = mt_sample_keep(size);
    *free_kept = old != NULL && mt_sampled_take(old);
}

void mt_record_alloc(uint8_t kind, uint8_t flags, void *addr, size_t size, void *caller) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    if (kind <= MT_LAST_ALLOC && mt_sample_rate) {
        if (!mt_sample_keep(size))
            return;
        flags |= MT_FLAG_SAMPLED;
        mt_sampled_add(addr);
    }
    if (__builtin_expect(mt_self.tid == 0, 0))
        first_event_of_thread();
    /* Attribute first, claim last: a claimed slot holds the collector up
     * until it is committed. */
    uint32_t stack;
    uint16_t lib;
    attribute(&flags, &caller, &stack, &lib);
    uint64_t pos = mt_ring_claim(h, 1);
    if (pos != UINT64_MAX)
        put(h, pos, kind, flags, addr, size, stack, lib);
}

/* ---- Set-up and fork ----------------------------------------------------- */

/* Sampled streams say so: their events carry MT_FLAG_SAMPLED and real sizes,
 * and the collector weights them with this rate. */
static void send_sample_rate(void) {
    if (mt_sample_rate == 0)
        return;
    char text[24];
    int n = 0;
    char digits[24];
    uint64_t v = mt_sample_rate;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        text[i] = digits[n - 1 - i];
    uint16_t key = MT_TEXT_SAMPLE_RATE;
    mt_meta_write(mt_stream, MT_META_TEXT, &key, sizeof key, text, (size_t)n);
}

void mt_recorder_init(void) {
    mt_heapstats_init();
    mt_sampler_init();
    if (mt_intern_open() != MT_OK || mt_transport_open() != MT_OK) {
        mt_intern_close();
        mt_sample_rate = 0;
        return;
    }
    mt_intern_send_ranges();
    send_sample_rate();
}

void mt_recorder_after_fork_child(void) {
    /* Only this thread exists now; another may have died holding a lock or
     * half-way through an insert, so start from clean tables and locks. */
    mt_intern_close();
    mt_intern_after_fork_child();
    forget_stack();
    mt_self.tid = 0;
    mt_self.last_caller = NULL; /* library ids restart in the child's stream */
    mt_self.last_lib = 0;
    mt_heapstats_after_fork_child();
    if (mt_intern_open() != MT_OK) {
        mt_intern_close();
        mt_stream = NULL;
        return;
    }
    mt_sampler_after_fork_child();
    mt_transport_after_fork_child();
    if (mt_stream) {
        mt_intern_send_ranges();
        send_sample_rate();
    }
}

/* ---- Exported to the bootstrap (see shim_api.h) -------------------------- */

EXPORT void mt_set_python_reader(const mt_python_reader *reader) {
    __atomic_fetch_add(&py_reader_gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&py_reader, reader, __ATOMIC_RELEASE);
}

/* The calling thread's reader state (for the reader's callbacks in Python). */
EXPORT mt_reader_thread *mt_reader_thread_state(void) {
    return &reader_thread;
}

EXPORT void mt_numpy_data(int on, void *handler) {
    mt_self.numpy_data += on ? 1 : -1;
    mt_self.numpy_caller = handler;
}

/* The program is done (Python calls this from atexit, before the interpreter
 * frees everything): heap statistics and the collector's look at the process
 * are taken here rather than in the C destructor. */
EXPORT void mt_exit_point(void) {
    mt_self.in_hook++;
    mt_recorder_exit();
    mt_self.in_hook--;
}

/* Bracket memtrace's own work inside the target (e.g. formatting pymalloc's
 * statistics) so its allocations are not recorded as the program's. */
EXPORT void mt_untraced(int on) {
    mt_self.in_hook += on ? 1 : -1;
    mt_self.untraced += on ? 1 : -1;
}

/* Object census (--objects): whether the collector asked for one (claims it), and
 * that one was written (waits for the collector's join; see events.h). */
EXPORT int mt_census_due(void) {
    return mt_transport_census_due();
}

EXPORT void mt_census_sent(void) {
    mt_self.in_hook++;
    mt_transport_census_sent();
    mt_self.in_hook--;
}

EXPORT uint64_t mt_position(void) {
    mt_shm_header *h = mt_stream;
    return h ? __atomic_load_n(&h->head, __ATOMIC_RELAXED) : 0;
}

EXPORT void mt_meta_text(uint16_t key, const char *text, size_t len) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    mt_self.in_hook++;
    mt_meta_write(h, MT_META_TEXT, &key, sizeof key, text, len);
    mt_self.in_hook--;
}

/* ---- Regions (tracer.region; see events.h) -------------------------------- */

/* The calling thread enters (enter = 1) or leaves (0) region `id`: one event in
 * the thread's order, so every allocation and free before or after it is
 * attributed on the right side of the mark. */
EXPORT void mt_region_mark(uint32_t id, int enter) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    mt_self.in_hook++;
    if (__builtin_expect(mt_self.tid == 0, 0))
        first_event_of_thread();
    uint64_t pos = mt_ring_claim(h, 1);
    if (pos != UINT64_MAX)
        put(h, pos, MT_REGION, 0, (void *)(uintptr_t)id, enter ? 1 : 0, 0, 0);
    mt_self.in_hook--;
}

/* Name region `id` (once per id in a stream; kind: mt_region_kind). */
EXPORT void mt_region_name(uint32_t id, uint32_t kind, const char *name, size_t len) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    mt_region_payload head = {id, kind};
    mt_self.in_hook++;
    mt_meta_write(h, MT_META_REGION, &head, sizeof head, name, len);
    mt_self.in_hook--;
}

/* Ask the collector about region `id` on this thread (0: its innermost open
 * region): JSON text into out, its length, or -1 when there is no answer. */
EXPORT int mt_region_ask(uint32_t what, uint32_t id, char *out, size_t cap, uint32_t timeout_ms) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return -1;
    mt_self.in_hook++;
    if (__builtin_expect(mt_self.tid == 0, 0))
        first_event_of_thread();
    int n = mt_transport_ask(h, what, mt_self.tid, id, out, cap, timeout_ms);
    mt_self.in_hook--;
    return n;
}
