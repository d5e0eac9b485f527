/* heapstats.c — glibc's heap statistics (mallinfo2) and pymalloc's, on the
 * collector's request and at exit.
 *
 * Checked at the end of every traced call (mt_stats_wanted, recorder.h): one
 * load and compare when nothing is asked; the rest is here, off the hot path.
 */
#define _GNU_SOURCE
#include "recorder.h"

#include <dlfcn.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "../shim_api.h"
#include "transport.h"

struct mt_mallinfo2 { /* glibc's struct mallinfo2 (2.33+) */
    size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
struct mt_mallinfo { /* the older struct mallinfo: same fields as int */
    int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static struct mt_mallinfo2 (*real_mallinfo2)(void);
static struct mt_mallinfo (*real_mallinfo)(void);
uint32_t mt_stats_seen; /* process-local copies of the served counters */
static uint32_t python_seen;

static int64_t clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_heapstats(mt_shm_header *h, uint32_t reason) {
    int64_t start = clock_ns();
    mt_heapstats_payload rec = {.position = __atomic_load_n(&h->head, __ATOMIC_RELAXED),
                                .reason = reason};
    /* mallinfo2's ten fields are the payload's last ten, in order */
    uint64_t *v = &rec.arena;
    _Static_assert(sizeof rec - offsetof(mt_heapstats_payload, arena) == 10 * sizeof(uint64_t),
                   "mt_heapstats_payload ends with mallinfo2's ten fields");
    if (real_mallinfo2) {
        struct mt_mallinfo2 m = real_mallinfo2();
        memcpy(v, &m, 10 * sizeof *v);
    } else if (real_mallinfo) {
        struct mt_mallinfo m = real_mallinfo();
        const int *f = &m.arena;
        for (int i = 0; i < 10; i++)
            v[i] = (uint32_t)f[i];
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
    const mt_python_reader *r = mt_python_reader_now();
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

void mt_heapstats_init(void) {
    real_mallinfo2 = (struct mt_mallinfo2(*)(void))dlsym(RTLD_DEFAULT, "mallinfo2");
    real_mallinfo = (struct mt_mallinfo(*)(void))dlsym(RTLD_DEFAULT, "mallinfo");
}

void mt_heapstats_after_fork_child(void) {
    mt_stats_seen = python_seen = 0;
}
