/* util.h — small helpers shared by the collector's C files (tracer._native). */
#ifndef MT_UTIL_H
#define MT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../hash.h"

/* Grow an array of *cap elements of elem bytes to hold `need` (doubling, from 64):
 * 0, or -1 on no memory (the array is left as it was). New elements are zeroed:
 * regions.c counts on it. */
static inline int mt_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (q == NULL)
        return -1;
    memset((char *)q + *cap * elem, 0, (n - *cap) * elem);
    *p = q;
    *cap = n;
    return 0;
}

/* Binary search over n records of `stride` bytes sorted by the uint64_t field at
 * `offset`: the index of the first whose field is above key (n if none). */
static inline size_t mt_first_above(const void *records, size_t n, size_t stride, size_t offset,
                                    uint64_t key) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t v;
        memcpy(&v, (const char *)records + mid * stride + offset, sizeof v);
        if (v <= key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The machine's page size, asked once. */
static inline uint64_t mt_page_size(void) {
    static uint64_t page;
    if (page == 0) {
        long n = sysconf(_SC_PAGESIZE);
        page = n > 0 ? (uint64_t)n : 4096;
    }
    return page;
}

/* A protobuf-style varint (capture encoding, pprof): 1 to 10 bytes. */
static inline uint8_t *mt_put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

#endif /* MT_UTIL_H */
