/* hash.h — the 64-bit mixer shared by the shim's and the collector's tables. */
#ifndef MT_HASH_H
#define MT_HASH_H

#include <stdint.h>

/* MurmurHash3's finalizer: every input bit affects every output bit. */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

#endif /* MT_HASH_H */
