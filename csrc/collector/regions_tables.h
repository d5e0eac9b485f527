/* regions_tables.h — the tables of regions.c, read by regions_rows.c. Internal
 * to tracer._native (the API of regions is regions.h). */
#ifndef MT_REGIONS_TABLES_H
#define MT_REGIONS_TABLES_H

#include <stddef.h>
#include <stdint.h>

#include "regions.h"

#define OPEN_OWNER 0x80000000u /* an entry's owner: an open instance (else a region id) */
#define MAX_REGIONS (1u << 20) /* ids beyond (a corrupt capture): ignored */

typedef struct inst {
    uint32_t region, tid;
    uint32_t parent; /* the enclosing instance on its thread + 1 (0: none) */
    uint32_t refs;   /* open + live blocks and mappings + nested instances kept */
    uint32_t depth;  /* enters of the same region on its thread while open */
    uint32_t open;
    uint32_t first; /* its first site entry + 1 (a list through entry.next) */
    uint32_t next_free;
    int64_t live, live_count, peak;
    uint64_t alloc, n_allocs, peak_event;
    double peak_time, t_enter;
    uint32_t *dirty; /* owned, kept across reuse: entries changed since its last peak */
    size_t n_dirty, dirty_cap;
} inst;

typedef struct entry {
    uint32_t owner, site;
    uint32_t next; /* the owner's next entry + 1 (the free list's, once freed) */
    uint32_t dirty;
    int64_t live, live_count, peak, peak_count;
    uint64_t alloc, n_allocs, temp, temp_count;
} entry;

typedef struct region {
    uint32_t seen, instances; /* closed instances folded in */
    uint32_t first;           /* first folded entry + 1 */
    uint32_t parent;          /* the region around its first instance (0: none) */
    int64_t peak, left, left_count;
    uint64_t peak_event, alloc, n_allocs;
    double peak_time, t_enter, t_leave;
    int64_t last_peak, last_left;
    uint64_t last_alloc;
} region;

typedef struct thread {
    uint32_t tid;
    uint32_t current; /* its innermost open instance + 1 */
} thread;

struct mt_regions {
    inst *inst;
    size_t n_inst, inst_cap;
    uint32_t free_inst;
    entry *ent;
    size_t n_ent, ent_cap;
    uint32_t free_ent;
    uint32_t *index; /* (owner, site) -> entry + 1 */
    size_t index_cap, index_used;
    region *reg;
    size_t reg_cap;
    thread *thr; /* open addressing on tid */
    size_t thr_cap, n_thr;
    uint32_t n_open;
};

/* Thread tid's entry (made if create; NULL: none, or no memory). */
thread *mt_regions_thread(mt_regions *r, uint32_t tid, int create);

#endif /* MT_REGIONS_TABLES_H */
