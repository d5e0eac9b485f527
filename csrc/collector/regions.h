/* regions.h — per-region numbers inside the collector's aggregator (aggregate.c).
 *
 * Internal to tracer._native: aggregate.c feeds region marks, heap allocations and
 * releases here; the row and site records it hands to Python are declared in
 * native.h (mt_region_row, mt_region_site).
 */
#ifndef MT_REGIONS_H
#define MT_REGIONS_H

#include <stddef.h>
#include <stdint.h>

#include "native.h"

typedef struct mt_regions mt_regions;

mt_regions *mt_regions_new(void);
void mt_regions_free(mt_regions *r);

/* A MT_REGION event: thread tid enters (enter = 1) or leaves region id. t and
 * event: when (seconds, the aggregator's event index). 0, or -1 on no memory. */
int mt_regions_mark(mt_regions *r, uint32_t tid, uint32_t id, int enter, double t, uint64_t event);

/* Thread tid allocated `bytes` of heap at site: counted in every region open on
 * the thread. Returns what the block must remember (its innermost open region
 * instance + 1; 0: none) and hand back to mt_regions_release. */
uint32_t mt_regions_alloc(mt_regions *r, uint32_t tid, uint32_t site, int64_t bytes, double t,
                          uint64_t event);

/* `bytes` (and `count` blocks) of what was allocated in instance `inst` at site
 * are released; temporary: they count as a temporary allocation; unref: nothing
 * of that block or mapping is left. */
void mt_regions_release(mt_regions *r, uint32_t inst, uint32_t site, int64_t bytes, int64_t count,
                        int temporary, int unref);

/* A mapping allocated in `inst` was cut in two: one more piece refers to it. */
void mt_regions_split(mt_regions *r, uint32_t inst, uint32_t site);

size_t mt_regions_rows(const mt_regions *r, mt_region_row *out, size_t max);
size_t mt_regions_sites(const mt_regions *r, mt_region_site *out, size_t max);
int mt_regions_usage(const mt_regions *r, uint32_t tid, uint32_t id, mt_region_row *out);
size_t mt_regions_usage_sites(const mt_regions *r, uint32_t tid, uint32_t id, mt_region_site *out,
                              size_t max);

#endif /* MT_REGIONS_H */
