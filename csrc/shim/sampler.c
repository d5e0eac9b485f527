/* sampler.c — byte-weighted Poisson sampling and the set of kept blocks (see sampler.h). */
#define _GNU_SOURCE
#include "sampler.h"

#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../hash.h"
#include "transport.h"

uint64_t mt_sample_rate;

/* ---- The countdown ------------------------------------------------------- */

static uint64_t next_random(void) { /* xorshift64*: per thread, never shared */
    uint64_t x = mt_self.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    mt_self.rng = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Bytes to the next sample point: exponential with mean `rate`. */
static int64_t next_gap(void) {
    double u = (double)((next_random() >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double gap = -log(u) * (double)mt_sample_rate;
    return gap >= 9e18 ? INT64_MAX / 2 : (int64_t)gap + 1;
}

int mt_sample_slow(size_t size) {
    if (mt_self.rng == 0) {
        /* The thread's first decision: start its countdown (memoryless, so
         * starting here is as good as anywhere). */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        mt_self.rng = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)(uintptr_t)&mt_self << 16) ^
                            (uint64_t)syscall(SYS_gettid)) |
                      1;
        mt_self.sample_left = next_gap() - (int64_t)size;
        if (mt_self.sample_left > 0)
            return 0;
    }
    do
        mt_self.sample_left += next_gap();
    while (mt_self.sample_left <= 0);
    return 1;
}

void mt_sampler_init(void) {
    const char *rate = getenv("MEMTRACE_SAMPLE_RATE");
    if (rate && *rate) {
        char *end;
        unsigned long long v = strtoull(rate, &end, 10);
        if (*end == '\0' && v > 1)
            mt_sample_rate = v;
    }
}

/* ---- Kept addresses --------------------------------------------------------
 * Linear probing with backward-shift deletion (no tombstones, so probes stay
 * short however long the run). Writers hold `lock` and make `seq` odd while
 * they change the table; a reader retries if seq changed under it. Tables are
 * never unmapped while tracing (a reader may still be probing an old one). */

typedef struct kept_table {
    uint64_t mask;
    uint64_t used;
    uint64_t slot[];
} kept_table;

#define KEPT_MIN_BITS 12
#define KEPT_MAX_BITS 28

static kept_table *kept;
static uint64_t kept_seq;

/* A counting filter in front of the table: how many kept blocks hash to each
 * bucket (changed under the lock, saturating at 255 and then sticky). A free
 * whose bucket is 0 was not kept: one load, no probe, for almost every free.
 * A kept block's own count was added before it could be freed, so a free of a
 * kept block never reads 0. */
uint8_t mt_kept_filter[1u << MT_FILTER_BITS];
static int kept_lock;
int mt_kept_overflow; /* a table could not grow: record every free from now on */

static size_t table_bytes(uint64_t slots) {
    return sizeof(kept_table) + slots * sizeof(uint64_t);
}

static kept_table *new_table(int bits) {
    kept_table *t = mt_sys_mmap(table_bytes((uint64_t)1 << bits));
    if (t)
        t->mask = ((uint64_t)1 << bits) - 1;
    return t;
}

static int64_t probe(const kept_table *t, uint64_t p) {
    uint64_t i = mix64(p) & t->mask;
    for (uint64_t n = 0; n <= t->mask; n++, i = (i + 1) & t->mask) {
        uint64_t v = __atomic_load_n(&t->slot[i], __ATOMIC_RELAXED);
        if (v == p)
            return (int64_t)i;
        if (v == 0)
            return -1;
    }
    return -1;
}

static void put_slot(kept_table *t, uint64_t p) {
    uint64_t i = mix64(p) & t->mask;
    while (t->slot[i] != 0)
        i = (i + 1) & t->mask;
    __atomic_store_n(&t->slot[i], p, __ATOMIC_RELAXED);
    t->used++;
}

static void lock(void) {
    for (int spins = 0; __atomic_exchange_n(&kept_lock, 1, __ATOMIC_ACQUIRE); spins++)
        if (spins > 100)
            sched_yield(); /* the holder was preempted: let it finish */
        else
            __builtin_ia32_pause();
}

static void write_begin(void) {
    lock();
    __atomic_fetch_add(&kept_seq, 1, __ATOMIC_SEQ_CST);
}

static void write_end(void) {
    __atomic_fetch_add(&kept_seq, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&kept_lock, 0, __ATOMIC_RELEASE);
}

void mt_sampled_add(void *p) {
    if (p == NULL)
        return;
    write_begin();
    kept_table *t = kept;
    if (t == NULL || (t->used + 1) * 2 > t->mask + 1) {
        int bits = t ? 64 - __builtin_clzll(t->mask) + 1 : KEPT_MIN_BITS;
        kept_table *bigger = bits <= KEPT_MAX_BITS ? new_table(bits) : NULL;
        if (bigger == NULL) {
            __atomic_store_n(&mt_kept_overflow, 1, __ATOMIC_RELAXED);
            write_end();
            return;
        }
        for (uint64_t i = 0; t && i <= t->mask; i++)
            if (t->slot[i])
                put_slot(bigger, t->slot[i]);
        __atomic_store_n(&kept, bigger, __ATOMIC_RELEASE);
        t = bigger;
    }
    put_slot(t, (uint64_t)(uintptr_t)p);
    uint8_t *f = &mt_kept_filter[mt_filter_slot((uint64_t)(uintptr_t)p)];
    if (*f < 255)
        __atomic_store_n(f, (uint8_t)(*f + 1), __ATOMIC_RELAXED);
    write_end();
}

static void delete_at(kept_table *t, uint64_t i) {
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        uint64_t v = t->slot[j];
        if (v == 0)
            break;
        uint64_t home = mix64(v) & t->mask;
        /* v may move back to i only if its home is not cyclically in (i, j]. */
        int in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            __atomic_store_n(&t->slot[i], v, __ATOMIC_RELAXED);
            i = j;
        }
    }
    __atomic_store_n(&t->slot[i], 0, __ATOMIC_RELAXED);
    t->used--;
}

int mt_sampled_take(void *p) {
    if (mt_sample_rate == 0 || __atomic_load_n(&mt_kept_overflow, __ATOMIC_RELAXED))
        return 1;
    uint64_t key = (uint64_t)(uintptr_t)p;
    if (__atomic_load_n(&mt_kept_filter[mt_filter_slot(key)], __ATOMIC_RELAXED) == 0)
        return 0;
    int64_t found;
    for (;;) {
        uint64_t s1 = __atomic_load_n(&kept_seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            __builtin_ia32_pause();
            continue;
        }
        kept_table *t = __atomic_load_n(&kept, __ATOMIC_ACQUIRE);
        found = t ? probe(t, key) : -1;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&kept_seq, __ATOMIC_RELAXED) == s1)
            break;
    }
    if (found < 0)
        return 0;
    write_begin();
    kept_table *t = kept;
    int64_t i = probe(t, key); /* the table may have changed since */
    if (i >= 0) {
        delete_at(t, (uint64_t)i);
        uint8_t *f = &mt_kept_filter[mt_filter_slot(key)];
        if (*f < 255)
            __atomic_store_n(f, (uint8_t)(*f - 1), __ATOMIC_RELAXED);
    }
    write_end();
    return 1;
}

void mt_sampler_after_fork_child(void) {
    /* The child's stream starts empty: blocks kept for the parent are not its. */
    if (kept)
        mt_sys_munmap(kept, table_bytes(kept->mask + 1));
    kept = NULL;
    memset(mt_kept_filter, 0, sizeof mt_kept_filter);
    kept_lock = 0;
    kept_seq = 0;
    mt_kept_overflow = 0;
    mt_self.rng = 0; /* a fresh countdown, not a copy of the parent's */
}
