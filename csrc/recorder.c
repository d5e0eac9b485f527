/* recorder.c — events from hooked calls: thread ids, Python stacks, callers.
 *
 * Hot path (an allocation on a thread whose Python stack did not change since
 * its last allocation): a walk of the thread's frame chain compared with the
 * thread's cached copy, a lookup of the caller's return address, one atomic
 * fetch-add to claim a ring slot, 32 bytes written. No lock, no system call,
 * no allocation. Everything else (a new stack node, code object, library or
 * thread) is rare and may take a spin lock or make a system call.
 */
#define _GNU_SOURCE
#include "recorder.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "sampler.h"
#include "shim_api.h"
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
    int anchor_h;      /* height of the pinned frame (-1: none) */
    int pin_below_top; /* where the next pin goes: this many frames below the top */
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

/* Interning tables: open addressing, insert-only, lock-free. A slot is
 * claimed by CAS on its tag; its id is published last (release), so a reader
 * that sees a matching tag waits for the id, then checks the full key. */
#define NODE_BITS 19
#define CODE_BITS 16
#define CALLER_BITS 16
#define MAX_LIBS 4096

typedef struct node_slot {
    uint64_t tag;
    uint32_t parent;
    uint32_t code;
    int32_t lasti;
    uint32_t id;
} node_slot;

typedef struct code_slot {
    uint64_t tag;
    uintptr_t code;
    uintptr_t identity;
    uint32_t id;
    uint32_t pad;
} code_slot;

typedef struct caller_slot {
    uintptr_t addr;
    uint32_t lib; /* lib id + 1 once published */
    uint32_t pad;
} caller_slot;

/* Owned; re-made in a forked child (ids restart in the child's stream). */
static node_slot *nodes;
static code_slot *codes;
static caller_slot *callers;
static uint32_t next_node = 1, next_code = 1;

/* Libraries by load address. Protected by lib_lock (taken only on a caller
 * address never seen before). */
static uintptr_t lib_base[MAX_LIBS];
static uint32_t n_libs;
static int lib_lock;

static char exe_path[512];

static uint32_t wait_id(const uint32_t *id) {
    uint32_t v;
    while ((v = __atomic_load_n(id, __ATOMIC_ACQUIRE)) == 0)
        __builtin_ia32_pause();
    return v;
}

static uint32_t intern_code(const mt_python_reader *r, void *code) {
    uintptr_t identity = r->identity(code);
    uint64_t tag = mix64((uintptr_t)code ^ (identity << 1)) | 1;
    uint64_t mask = (1u << CODE_BITS) - 1;
    for (uint64_t i = tag, n = 0; n <= mask; i++, n++) {
        code_slot *s = &codes[i & mask];
        uint64_t t = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
        if (t == 0) {
            if (!__atomic_compare_exchange_n(&s->tag, &t, tag, 0, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE)) {
                if (t != tag) /* someone else took it for another key */
                    continue;
            } else {
                s->code = (uintptr_t)code;
                s->identity = identity;
                uint32_t id = __atomic_fetch_add(&next_code, 1, __ATOMIC_RELAXED);
                char file[1024], name[256];
                size_t file_len = sizeof file, name_len = sizeof name;
                int32_t first = 0;
                if (r->describe(code, file, &file_len, name, &name_len, &first) != 0) {
                    file_len = name_len = 0;
                }
                struct {
                    uint32_t id;
                    int32_t first;
                    uint16_t file_len, name_len;
                } head = {id, first, (uint16_t)file_len, (uint16_t)name_len};
                char text[sizeof file + sizeof name];
                memcpy(text, file, file_len);
                memcpy(text + file_len, name, name_len);
                mt_meta_write(mt_stream, MT_META_CODE, &head, sizeof head, text,
                              file_len + name_len);
                __atomic_store_n(&s->id, id, __ATOMIC_RELEASE);
                return id;
            }
        }
        if (t == tag) {
            uint32_t id = wait_id(&s->id);
            if (s->code == (uintptr_t)code && s->identity == identity)
                return id;
        }
    }
    return 0; /* table full */
}

static uint32_t intern_node(const mt_python_reader *r, uint32_t parent, void *code,
                            int32_t lasti) {
    uint32_t code_id = intern_code(r, code);
    if (code_id == 0)
        return 0;
    uint64_t tag = mix64(((uint64_t)parent << 32 | code_id) ^ mix64((uint32_t)lasti)) | 1;
    uint64_t mask = (1u << NODE_BITS) - 1;
    for (uint64_t i = tag, n = 0; n <= mask / 4 * 3; i++, n++) {
        node_slot *s = &nodes[i & mask];
        uint64_t t = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
        if (t == 0) {
            if (!__atomic_compare_exchange_n(&s->tag, &t, tag, 0, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE)) {
                if (t != tag)
                    continue;
            } else {
                s->parent = parent;
                s->code = code_id;
                s->lasti = lasti;
                uint32_t id = __atomic_fetch_add(&next_node, 1, __ATOMIC_RELAXED);
                struct {
                    uint32_t id, parent, code;
                    int32_t line;
                } rec = {id, parent, code_id, r->line(code, lasti)};
                mt_meta_write(mt_stream, MT_META_NODE, &rec, sizeof rec, NULL, 0);
                __atomic_store_n(&s->id, id, __ATOMIC_RELEASE);
                return id;
            }
        }
        if (t == tag) {
            uint32_t id = wait_id(&s->id);
            if (s->parent == parent && s->code == code_id && s->lasti == lasti)
                return id;
        }
    }
    return 0;
}

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
    int base = 0; /* height of frame[n - 1] */
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
            parent = intern_node(r, parent, w.code[i], w.lasti[i]);
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

/* ---- Callers' shared objects -------------------------------------------- */

static void lib_name(const Dl_info *info, const char **name, size_t *len) {
    const char *fname = info->dli_fname;
    if (fname == NULL || fname[0] == '\0' || strchr(fname, '/') == NULL) {
        /* The main executable's link map has no path. */
        if (exe_path[0] == '\0') {
            ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
            exe_path[n > 0 ? n : 0] = '\0';
        }
        fname = exe_path[0] ? exe_path : (fname ? fname : "?");
    }
    *name = fname;
    *len = strlen(fname);
}

static uint16_t lib_for_base(uintptr_t base, const Dl_info *info) {
    while (__atomic_exchange_n(&lib_lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
    uint32_t id = 0;
    for (uint32_t i = 0; i < n_libs; i++)
        if (lib_base[i] == base) {
            id = i + 1;
            break;
        }
    if (id == 0 && n_libs < MAX_LIBS - 1) {
        lib_base[n_libs++] = base;
        id = n_libs;
        const char *name;
        size_t len;
        lib_name(info, &name, &len);
        struct {
            uint16_t id, pad;
            uint32_t pad2;
            uint64_t base;
        } rec = {(uint16_t)id, 0, 0, base};
        mt_meta_write(mt_stream, MT_META_LIB, &rec, sizeof rec, name, len);
    }
    __atomic_store_n(&lib_lock, 0, __ATOMIC_RELEASE);
    return (uint16_t)id;
}

static uint16_t caller_lib_lookup(void *caller) {
    uintptr_t addr = (uintptr_t)caller;
    if (addr == 0)
        return 0;
    uint64_t mask = (1u << CALLER_BITS) - 1;
    for (uint64_t i = mix64(addr), n = 0; n <= mask / 4 * 3; i++, n++) {
        caller_slot *s = &callers[i & mask];
        uintptr_t a = __atomic_load_n(&s->addr, __ATOMIC_ACQUIRE);
        if (a == 0 && __atomic_compare_exchange_n(&s->addr, &a, addr, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_ACQUIRE)) {
            /* This thread names the address (a failed CAS left the slot's
             * current address in `a`, checked below). */
            Dl_info info;
            uint16_t lib = 0;
            /* Not bracketed as memtrace's own work (mt_self.untraced): glibc's
             * dladdr allocates nothing, so a call made in here can only come from a
             * signal handler that interrupted it, and must be counted, not hidden
             * (a child forked by that handler inherits the state). */
            if (dladdr(caller, &info) && info.dli_fbase)
                lib = lib_for_base((uintptr_t)info.dli_fbase, &info);
            __atomic_store_n(&s->lib, (uint32_t)lib + 1, __ATOMIC_RELEASE);
            return lib;
        }
        if (a == addr) {
            /* Another thread is naming it: wait a little (dladdr takes
             * microseconds), never long: that thread may be blocked in dladdr on
             * the loader lock held by this one. Unknown, this once, after that. */
            for (int spins = 0; spins < 4096; spins++) {
                uint32_t lib = __atomic_load_n(&s->lib, __ATOMIC_ACQUIRE);
                if (lib)
                    return (uint16_t)(lib - 1);
                __builtin_ia32_pause();
            }
            return 0;
        }
    }
    return 0;
}

/* Most calls come from the call site of the thread's previous call. */
static inline uint16_t caller_lib(void *caller) {
    if (caller == mt_self.last_caller && mt_self.last_lib)
        return (uint16_t)(mt_self.last_lib - 1);
    uint16_t lib = caller_lib_lookup(caller);
    mt_self.last_caller = caller;
    mt_self.last_lib = lib ? (uint32_t)lib + 1 : 0; /* unknown (being named): ask again */
    return lib;
}

/* ---- Threads ------------------------------------------------------------- */

static void first_event_of_thread(void) {
    mt_self.tid = (uint32_t)syscall(SYS_gettid);
    char name[17] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    if (mt_stream)
        mt_meta_write(mt_stream, MT_META_THREAD, &mt_self.tid, 4, name, strlen(name));
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
static inline __attribute__((always_inline)) void put(mt_shm_header *h, uint64_t pos,
                                                      uint8_t kind, uint8_t flags, void *addr,
                                                      size_t size, uint32_t stack, uint16_t lib) {
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

/* ---- Heap statistics on request ----------------------------------------- */

struct mt_mallinfo2 { /* glibc's struct mallinfo2 (2.33+) */
    size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
struct mt_mallinfo { /* the older struct mallinfo: same fields as int */
    int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static struct mt_mallinfo2 (*real_mallinfo2)(void);
static struct mt_mallinfo (*real_mallinfo)(void);
uint32_t mt_stats_seen;      /* process-local copies of the served counters */
static uint32_t python_seen;

static int64_t clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_heapstats(mt_shm_header *h, uint32_t reason) {
    int64_t start = clock_ns();
    struct {
        uint64_t position;
        uint32_t reason, cost_ns; /* what mallinfo cost the program, saturated */
        uint64_t v[10];
    } rec = {__atomic_load_n(&h->head, __ATOMIC_RELAXED), reason, 0, {0}};
    if (real_mallinfo2) {
        struct mt_mallinfo2 m = real_mallinfo2();
        memcpy(rec.v, &m, sizeof rec.v);
    } else if (real_mallinfo) {
        struct mt_mallinfo m = real_mallinfo();
        const int *f = &m.arena;
        for (int i = 0; i < 10; i++)
            rec.v[i] = (uint32_t)f[i];
    } else {
        return;
    }
    int64_t cost = clock_ns() - start;
    rec.cost_ns = cost > UINT32_MAX ? UINT32_MAX : (uint32_t)cost;
    mt_meta_write(h, MT_META_HEAPSTATS, &rec, sizeof rec, NULL, 0);
    /* The collector spaces its requests by this, so glibc walking long free
     * lists never costs the program more than a few percent. */
    __atomic_store_n(&h->stats_cost_ns, (uint64_t)cost, __ATOMIC_RELAXED);
}

void mt_after_call(void) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    /* The collector bumps python_request before stats_request (release), so one
     * load covers both on the common path. */
    uint32_t want = __atomic_load_n(&h->stats_request, __ATOMIC_ACQUIRE);
    if (__builtin_expect(want == __atomic_load_n(&mt_stats_seen, __ATOMIC_RELAXED), 1))
        return;
    __atomic_store_n(&mt_stats_seen, want, __ATOMIC_RELAXED);
    uint32_t served = __atomic_load_n(&h->stats_served, __ATOMIC_RELAXED);
    if (served != want && __atomic_compare_exchange_n(&h->stats_served, &served, want, 0,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        send_heapstats(h, MT_STATS_REQUESTED);
    uint32_t py_want = __atomic_load_n(&h->python_request, __ATOMIC_RELAXED);
    if (py_want == __atomic_load_n(&python_seen, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&python_seen, py_want, __ATOMIC_RELAXED);
    served = __atomic_load_n(&h->python_served, __ATOMIC_RELAXED);
    const mt_python_reader *r = __atomic_load_n(&py_reader, __ATOMIC_ACQUIRE);
    if (r && r->request_stats && served != py_want &&
        __atomic_compare_exchange_n(&h->python_served, &served, py_want, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED))
        r->request_stats();
}

void mt_recorder_exit(void) {
    mt_shm_header *h = mt_stream;
    if (h == NULL || __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != MT_STATE_RUNNING)
        return; /* once: Python's exit point comes before the C destructor */
    send_heapstats(h, MT_STATS_EXIT);
    mt_transport_exit_handshake();
}

/* The shim's own tables, so the collector can count them as memtrace's. */
static void send_tracer_ranges(void) {
    char text[256];
    int n = 0;
    const void *starts[3] = {nodes, codes, callers};
    size_t sizes[3] = {sizeof(node_slot) << NODE_BITS, sizeof(code_slot) << CODE_BITS,
                       sizeof(caller_slot) << CALLER_BITS};
    for (int i = 0; i < 3; i++) {
        uintptr_t a = (uintptr_t)starts[i];
        /* hand-rolled hex: no stdio in the shim */
        const char *hex = "0123456789abcdef";
        uintptr_t v[2] = {a, a + sizes[i]};
        for (int k = 0; k < 2; k++) {
            char digits[16];
            int d = 0;
            do {
                digits[d++] = hex[v[k] & 15];
                v[k] >>= 4;
            } while (v[k]);
            while (d)
                text[n++] = digits[--d];
            text[n++] = k ? '\n' : '-';
        }
    }
    uint16_t key = MT_TEXT_TRACER_RANGES;
    mt_meta_write(mt_stream, MT_META_TEXT, &key, sizeof key, text, (size_t)n);
}

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

/* ---- Set-up and fork ----------------------------------------------------- */

static int make_tables(void) {
    nodes = mt_sys_mmap(sizeof(node_slot) << NODE_BITS);
    codes = mt_sys_mmap(sizeof(code_slot) << CODE_BITS);
    callers = mt_sys_mmap(sizeof(caller_slot) << CALLER_BITS);
    return nodes && codes && callers ? MT_OK : MT_ERR;
}

static void drop_tables(void) {
    if (nodes)
        mt_sys_munmap(nodes, sizeof(node_slot) << NODE_BITS);
    if (codes)
        mt_sys_munmap(codes, sizeof(code_slot) << CODE_BITS);
    if (callers)
        mt_sys_munmap(callers, sizeof(caller_slot) << CALLER_BITS);
    nodes = NULL;
    codes = NULL;
    callers = NULL;
}

void mt_recorder_init(void) {
    real_mallinfo2 = (struct mt_mallinfo2(*)(void))dlsym(RTLD_DEFAULT, "mallinfo2");
    real_mallinfo = (struct mt_mallinfo(*)(void))dlsym(RTLD_DEFAULT, "mallinfo");
    mt_sampler_init();
    if (make_tables() != MT_OK || mt_transport_open() != MT_OK) {
        drop_tables();
        mt_sample_rate = 0;
        return;
    }
    send_tracer_ranges();
    send_sample_rate();
}

void mt_recorder_after_fork_child(void) {
    /* Only this thread exists now; another may have died holding a lock or
     * half-way through an insert, so start from clean tables and locks. */
    drop_tables();
    n_libs = 0;
    lib_lock = 0;
    next_node = next_code = 1;
    forget_stack();
    mt_self.tid = 0;
    mt_self.last_caller = NULL; /* library ids restart in the child's stream */
    mt_self.last_lib = 0;
    mt_stats_seen = python_seen = 0;
    if (make_tables() != MT_OK) {
        drop_tables();
        mt_stream = NULL;
        return;
    }
    mt_sampler_after_fork_child();
    mt_transport_after_fork_child();
    if (mt_stream) {
        send_tracer_ranges();
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
    struct {
        uint32_t id, kind;
    } head = {id, kind};
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
