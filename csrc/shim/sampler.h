/* sampler.h — byte-weighted Poisson sampling (memtrace run --sample-rate BYTES).
 *
 * Every allocated byte is a sample point with probability 1/rate, so a block of
 * size s is kept with probability 1 - exp(-s/rate); the collector reports it
 * with weight s / (1 - exp(-s/rate)), which makes every byte total an unbiased
 * estimate. Each thread counts down the bytes to its next sample point (an
 * exponential draw), so the common case is one subtraction and one compare.
 *
 * A free is recorded only for a block that was kept: kept addresses live in a
 * small open-addressing set. Lookups (every free) are lock-free reads
 * validated by a sequence counter; inserts and deletes (kept blocks only, a
 * few per rate-worth of bytes) take a spin lock.
 */
#ifndef MT_SAMPLER_H
#define MT_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "recorder.h"

extern uint64_t mt_sample_rate; /* 0: record every event */

/* Read MEMTRACE_SAMPLE_RATE (not under secure execution: the caller checks). */
void mt_sampler_init(void);

int mt_sample_slow(size_t size);

/* Keep an allocation of `size` bytes? Always 1 when not sampling. */
static inline int mt_sample_keep(size_t size) {
    if (__builtin_expect(mt_sample_rate == 0, 1))
        return 1;
    if (__builtin_expect((mt_self.sample_left -= (int64_t)size) > 0, 1))
        return 0;
    return mt_sample_slow(size);
}

/* The hooks' fast paths (preload.c): the common case of sampling inline,
 * everything else through the functions above and below. */

/* Sampling, and this allocation ends before the thread's next sample point:
 * count its bytes, and do not record it (mt_sample_keep's common case). */
static inline int mt_sample_drop(size_t size) {
    if (__builtin_expect(mt_sample_rate == 0, 1) || mt_self.sample_left <= (int64_t)size)
        return 0;
    mt_self.sample_left -= (int64_t)size;
    return 1;
}

/* A counting filter over kept addresses: 0 at p's slot means p was not kept. */
#define MT_FILTER_BITS 16
extern uint8_t mt_kept_filter[1u << MT_FILTER_BITS];
extern int mt_kept_overflow;
static inline uint32_t mt_filter_slot(uint64_t p) {
    return (uint32_t)(((p >> 4) * 0x9e3779b97f4a7c15ULL) >> (64 - MT_FILTER_BITS));
}

/* Sampling, and p was certainly not kept: its free is not recorded. */
static inline int mt_sample_unkept(void *p) {
    return mt_sample_rate != 0 && !__atomic_load_n(&mt_kept_overflow, __ATOMIC_RELAXED) &&
           __atomic_load_n(&mt_kept_filter[mt_filter_slot((uint64_t)(uintptr_t)p)],
                           __ATOMIC_RELAXED) == 0;
}

/* Remember a kept block's address (call after the real allocation returned). */
void mt_sampled_add(void *p);
/* Forget p; 1 if its free must be recorded (p was kept, or the set overflowed). */
int mt_sampled_take(void *p);

/* After fork: only this thread exists; a lock held by a vanished thread is reset. */
void mt_sampler_after_fork_child(void);

#endif /* MT_SAMPLER_H */
