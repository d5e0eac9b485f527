/* query.c — reading an aggregator out: totals, sites, regions, and the live
 * blocks and mappings joined with address ranges (smaps, object censuses). */
#include "aggregate.h"

#include <string.h>

#include "util.h"

void mt_agg_totals(const mt_agg *a, mt_totals *out) {
    *out = a->t;
    out->n_sites = a->n_sites;
    out->live_blocks = a->live.count;
    out->live_mappings = a->n_maps;
}

void mt_agg_size_histogram(const mt_agg *a, uint64_t *out) {
    memcpy(out, a->size_count, sizeof a->size_count);
    memcpy(out + MT_SIZE_BUCKETS, a->size_bytes, sizeof a->size_bytes);
}

size_t mt_agg_sites(const mt_agg *a, mt_site *out, size_t max) {
    size_t n = a->n_sites < max ? a->n_sites : max;
    if (n == 0)
        return a->n_sites; /* a count-only call passes out = NULL */
    memcpy(out, a->sites, n * sizeof(mt_site));
    for (size_t i = 0; i < n; i++) {
        /* A site changed since the last peak still holds its peak value. */
        out[i].dirty = 0;
    }
    return a->n_sites;
}

int mt_agg_site(const mt_agg *a, size_t i, mt_site *out) {
    if (i >= a->n_sites)
        return -1;
    *out = a->sites[i];
    out->dirty = 0;
    return 0;
}

size_t mt_agg_region_rows(const mt_agg *a, mt_region_row *out, size_t max) {
    return mt_regions_rows(a->regions, out, out ? max : 0);
}

size_t mt_agg_region_sites(const mt_agg *a, mt_region_site *out, size_t max) {
    return mt_regions_sites(a->regions, out, out ? max : 0);
}

int mt_agg_region_usage(const mt_agg *a, uint32_t tid, uint32_t region, mt_region_row *out) {
    return mt_regions_usage(a->regions, tid, region, out);
}

size_t mt_agg_region_usage_sites(const mt_agg *a, uint32_t tid, uint32_t region,
                                 mt_region_site *out, size_t max) {
    return mt_regions_usage_sites(a->regions, tid, region, out, out ? max : 0);
}

void mt_agg_blocks_at(const mt_agg *a, const uint64_t *addrs, size_t n, uint32_t *site,
                      uint64_t *size) {
    size_t mask = a->live.cap ? a->live.cap - 1 : 0;
    for (size_t i = 0; i < n; i++) {
        site[i] = UINT32_MAX;
        size[i] = 0;
        if (a->live.cap == 0 || addrs[i] == 0)
            continue;
        for (size_t j = mix64(addrs[i]) & mask; a->live.slots[j].addr; j = (j + 1) & mask) {
            if (a->live.slots[j].addr == addrs[i]) {
                site[i] = a->live.slots[j].site;
                size[i] = a->live.slots[j].size;
                break;
            }
        }
    }
}

/* Index of the first range that ends after addr (n if none). */
static size_t first_ending_after(const uint64_t *ends, size_t n, uint64_t addr) {
    return mt_first_above(ends, n, sizeof *ends, 0, addr);
}

void mt_agg_bytes_in_ranges(const mt_agg *a, const uint64_t *starts, const uint64_t *ends, size_t n,
                            int64_t *block_bytes, int64_t *anon_map_bytes, int64_t *file_map_bytes,
                            uint32_t *top_site, int64_t *top_bytes) {
    for (size_t i = 0; i < n; i++) {
        block_bytes[i] = anon_map_bytes[i] = file_map_bytes[i] = top_bytes[i] = 0;
        top_site[i] = UINT32_MAX;
    }
    for (size_t k = 0; k < a->live.cap; k++) {
        const block *b = &a->live.slots[k];
        if (b->addr == 0)
            continue;
        /* A big block may span several ranges (the kernel splits a mapping where
         * madvise changed part of it, e.g. NumPy's hugepage advice). */
        uint64_t end = b->addr + (b->size ? b->size : 1);
        for (size_t j = first_ending_after(ends, n, b->addr); j < n && starts[j] < end; j++) {
            uint64_t lo = starts[j] > b->addr ? starts[j] : b->addr;
            uint64_t hi = ends[j] < end ? ends[j] : end;
            int64_t bytes = b->size ? (int64_t)(hi - lo) : 0;
            block_bytes[j] += bytes;
            if ((int64_t)b->size > top_bytes[j]) {
                top_bytes[j] = (int64_t)b->size;
                top_site[j] = b->site;
            }
        }
    }
    for (size_t k = 0; k < a->n_maps; k++) {
        const mapping *m = &a->maps[k];
        for (size_t j = first_ending_after(ends, n, m->start); j < n && starts[j] < m->end; j++) {
            uint64_t lo = starts[j] > m->start ? starts[j] : m->start;
            uint64_t hi = ends[j] < m->end ? ends[j] : m->end;
            if (hi <= lo)
                continue;
            int64_t bytes = (int64_t)(hi - lo);
            if (m->flags & MT_FLAG_ANON)
                anon_map_bytes[j] += bytes;
            else
                file_map_bytes[j] += bytes;
            if (bytes > top_bytes[j]) {
                top_bytes[j] = bytes;
                top_site[j] = m->site;
            }
        }
    }
}
