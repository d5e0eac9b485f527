/* recorder.h — the shim's back end: turns hooked calls into events.
 *
 * preload.c (the front end) calls these with the reentrancy guard held.
 * recorder.c records; heapstats.c answers requests for heap statistics.
 */
#ifndef MT_RECORDER_H
#define MT_RECORDER_H

#include <stddef.h>
#include <stdint.h>

#include "../events.h"

#define MT_TLS __thread __attribute__((tls_model("initial-exec")))

/* Per-thread state, all initial-exec TLS so that touching it never calls
 * __tls_get_addr (which may call malloc). */
typedef struct mt_thread {
    int in_hook;         /* reentrancy guard: >0 while inside a hook */
    int untraced;        /* >0 while memtrace's own work runs in the target (not counted) */
    int numpy_data;      /* >0 while NumPy's data-memory handler is allocating */
    void *numpy_caller;  /* the handler's address, reported as the caller */
    uint32_t tid;        /* cached gettid(), 0 until the thread's first event */
    void *last_caller;   /* one-entry cache of caller -> library id */
    uint32_t last_lib;   /* its library id + 1 (0: empty) */
    int64_t sample_left; /* --sample-rate: bytes to this thread's next sample point */
    uint64_t rng;        /* its random state (0: not started) */
} mt_thread;

extern MT_TLS mt_thread mt_self;

/* Set up the recorder once the real allocator is known (idempotent). */
void mt_recorder_init(void);

/* Record an allocation (kind <= MT_LAST_ALLOC or MT_MMAP/MT_MREMAP) made by `caller`.
 * When sampling, a malloc-family block is recorded only if the sampler keeps it. */
void mt_record_alloc(uint8_t kind, uint8_t flags, void *addr, size_t size, void *caller);

/* Calls whose event must be placed in the stream before the real call runs
 * (free, munmap: so the address cannot be handed out again before the
 * collector sees it released) claim their slots first, then fill them.
 * mt_claim returns UINT64_MAX when not tracing; the commit functions accept
 * it and do nothing. A call that failed is committed as MT_NONE. */
uint64_t mt_claim(uint32_t n);
void mt_commit_free(uint64_t pos, uint8_t kind, uint8_t flags, void *addr, size_t size);
void mt_commit_alloc(uint64_t pos, uint8_t kind, uint8_t flags, void *addr, size_t size,
                     void *caller);
/* realloc when sampling: should the free of `old` and the new block of `size`
 * be recorded? (Decided before the real call; see preload.c.) */
void mt_realloc_decide(void *old, size_t size, int *free_kept, int *new_kept);

/* Record a free (before the real free runs: the address cannot be handed out
 * again before the collector sees it released). */
void mt_record_free(void *addr);

/* At the end of every traced call: answer the collector's pending request for
 * heap statistics, if any. mt_stats_wanted is the one shared load and compare
 * of the common case; mt_after_call does the rest. */
extern uint32_t mt_stats_seen;
static inline int mt_stats_wanted(const mt_shm_header *h) {
    return h != NULL && __builtin_expect(__atomic_load_n(&h->stats_request, __ATOMIC_ACQUIRE) !=
                                             __atomic_load_n(&mt_stats_seen, __ATOMIC_RELAXED),
                                         0);
}
void mt_after_call(void);
void mt_heapstats_init(void);
void mt_heapstats_after_fork_child(void);

/* The registered frame reader (NULL: native-only). */
const struct mt_python_reader *mt_python_reader_now(void);

/* exit() is running: send the final heap statistics and let the collector look
 * at the process before it goes. */
void mt_recorder_exit(void);

/* fork handlers. */
void mt_recorder_after_fork_child(void);

#endif /* MT_RECORDER_H */
