/* aggregate.h — the aggregator's tables (aggregate.c), shared with query.c,
 * which reads them out. Internal to tracer._native; the API is native.h. */
#ifndef MT_AGGREGATE_H
#define MT_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#include "native.h"
#include "regions.h"

/* ---- Live blocks: open addressing, linear probing, backward-shift delete --- */

typedef struct block {
    uint64_t addr; /* 0 = empty */
    uint64_t size;
    uint32_t site;
    uint32_t region; /* the region instance it was allocated in + 1 (regions.c), 0: none */
} block;

typedef struct blocks {
    block *slots;
    size_t cap; /* power of two */
    size_t count;
} blocks;

/* ---- Mappings: sorted, non-overlapping ranges ------------------------------ */

typedef struct mapping {
    uint64_t start, end;
    uint32_t site;
    uint32_t flags;
    uint32_t region; /* as block.region */
    uint32_t pad;
} mapping;

/* ---- Temporary allocations: each thread's last few allocations --------------- */

#define MAX_TEMP_THRESHOLD 64

typedef struct recent {
    uint32_t tid;
    uint32_t next; /* ring position of the next allocation */
    uint64_t addr[MAX_TEMP_THRESHOLD];
    uint32_t site[MAX_TEMP_THRESHOLD];
    uint64_t size[MAX_TEMP_THRESHOLD];
} recent;

/* ---- The aggregator --------------------------------------------------------- */

struct mt_agg {
    uint64_t page;
    mt_totals t;
    mt_site *sites;
    size_t n_sites, sites_cap;
    uint32_t *site_index; /* hash of site keys -> site + 1 */
    size_t site_index_cap;
    uint32_t *dirty;
    size_t n_dirty, dirty_cap;
    blocks live;
    mapping *maps;
    size_t n_maps, maps_cap;
    uint8_t remap_flags; /* flags of the mapping an mremap just moved */
    uint64_t size_count[MT_SIZE_BUCKETS], size_bytes[MT_SIZE_BUCKETS];
    uint32_t temp_threshold;
    struct recent *recent; /* per-thread recent allocations (temporary tracking) */
    size_t n_recent, recent_cap;
    double sample_rate;  /* 0: not sampled */
    uint32_t last_site;  /* the site of the last allocation (a one-entry cache) */
    mt_regions *regions; /* owned; made at the first region mark (NULL: none yet) */
    double t_feed;       /* the time of the batch being fed */
};

#endif /* MT_AGGREGATE_H */
