/* aggregate.c — aggregating a process's events (mt_agg_feed).
 *
 * The aggregator keeps, per traced process: the live malloc-family blocks
 * (address -> size, site), the live mappings (sorted address ranges, since
 * munmap may cut or span them), and per-site totals. The heap peak is exact
 * at event granularity: every site changed since the last peak is marked
 * dirty, and when the heap reaches a new maximum the dirty sites' live bytes
 * are copied into their peak column — each change is folded at most once,
 * so the cost stays O(1) amortised per event. Region marks and the blocks
 * allocated inside regions are handed to regions.c; query.c reads it all out.
 */
#include "aggregate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ---- Live blocks: open addressing, linear probing, backward-shift delete --- */

static int blocks_rehash(blocks *b, size_t cap) {
    block *old = b->slots;
    size_t old_cap = b->cap;
    b->slots = calloc(cap, sizeof(block));
    if (b->slots == NULL) {
        b->slots = old;
        return -1;
    }
    b->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].addr == 0)
            continue;
        size_t j = mix64(old[i].addr) & (cap - 1);
        while (b->slots[j].addr)
            j = (j + 1) & (cap - 1);
        b->slots[j] = old[i];
    }
    free(old);
    return 0;
}

/* The slot now holding addr (NULL: no memory); *replaced: a block it replaced. */
static block *blocks_put(blocks *b, uint64_t addr, uint64_t size, uint32_t site, block *replaced) {
    if ((b->count + 1) * 2 > b->cap && blocks_rehash(b, b->cap ? b->cap * 2 : 1024) < 0)
        return NULL;
    size_t j = mix64(addr) & (b->cap - 1);
    while (b->slots[j].addr && b->slots[j].addr != addr)
        j = (j + 1) & (b->cap - 1);
    if (b->slots[j].addr == addr) {
        *replaced = b->slots[j]; /* an address allocated twice: its free was never seen */
    } else {
        replaced->addr = 0;
        b->count++;
    }
    b->slots[j].addr = addr;
    b->slots[j].size = size;
    b->slots[j].site = site;
    b->slots[j].region = 0;
    return &b->slots[j];
}

static int blocks_take(blocks *b, uint64_t addr, block *out) {
    if (b->cap == 0)
        return 0;
    size_t mask = b->cap - 1;
    size_t j = mix64(addr) & mask;
    while (b->slots[j].addr != addr) {
        if (b->slots[j].addr == 0)
            return 0;
        j = (j + 1) & mask;
    }
    *out = b->slots[j];
    /* Backward-shift deletion keeps probe chains intact without tombstones. */
    size_t hole = j;
    for (size_t k = (j + 1) & mask; b->slots[k].addr; k = (k + 1) & mask) {
        size_t home = mix64(b->slots[k].addr) & mask;
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            b->slots[hole] = b->slots[k];
            hole = k;
        }
    }
    b->slots[hole].addr = 0;
    b->count--;
    return 1;
}

/* ---- The aggregator --------------------------------------------------------- */

mt_agg *mt_agg_new(uint64_t page_size) {
    mt_agg *a = calloc(1, sizeof *a);
    if (a)
        a->page = page_size ? page_size : mt_page_size();
    return a;
}

void mt_agg_set_sample_rate(mt_agg *a, uint64_t rate) {
    a->sample_rate = (double)rate;
}

/* A kept block of size s stands for s / P(kept) bytes, P(kept) = 1 - e^(-s/rate):
 * the expected total over all blocks is then exactly the true total. */
static uint64_t sample_weight(const mt_agg *a, uint64_t s) {
    if (a->sample_rate <= 0)
        return s;
    if (s == 0)
        return (uint64_t)(a->sample_rate + 0.5);
    double p = -expm1(-(double)s / a->sample_rate);
    return (uint64_t)((double)s / p + 0.5);
}

int mt_agg_track_temporary(mt_agg *a, uint32_t threshold) {
    if (threshold > MAX_TEMP_THRESHOLD)
        return -1;
    a->temp_threshold = threshold;
    return 0;
}

static recent *recent_of(mt_agg *a, uint32_t tid, int create) {
    for (size_t i = 0; i < a->n_recent; i++)
        if (a->recent[i].tid == tid)
            return &a->recent[i];
    if (!create ||
        mt_grow((void **)&a->recent, &a->recent_cap, a->n_recent + 1, sizeof(recent)) < 0)
        return NULL;
    recent *r = &a->recent[a->n_recent++];
    memset(r, 0, sizeof *r);
    r->tid = tid;
    return r;
}

static void note_allocation(mt_agg *a, uint32_t tid, uint64_t addr, uint32_t site, uint64_t size) {
    recent *r = recent_of(a, tid, 1);
    if (r == NULL)
        return;
    uint32_t i = r->next++ % a->temp_threshold;
    r->addr[i] = addr;
    r->site[i] = site;
    r->size[i] = size;
}

/* 1 if the freed block counts as temporary. */
static int note_free(mt_agg *a, uint32_t tid, uint64_t addr) {
    recent *r = recent_of(a, tid, 0);
    if (r == NULL)
        return 0;
    for (uint32_t i = 0; i < a->temp_threshold; i++)
        if (r->addr[i] == addr) {
            mt_site *s = &a->sites[r->site[i]];
            s->temp_bytes += r->size[i];
            s->temp_count++;
            r->addr[i] = 0;
            return 1;
        }
    return 0;
}

void mt_agg_free(mt_agg *a) {
    if (a == NULL)
        return;
    mt_regions_free(a->regions);
    free(a->recent);
    free(a->sites);
    free(a->site_index);
    free(a->dirty);
    free(a->live.slots);
    free(a->maps);
    free(a);
}

static uint64_t site_hash(uint32_t stack, uint32_t tid, uint16_t lib, uint8_t kind, uint8_t flags) {
    return mix64(((uint64_t)stack << 32 | tid) ^ mix64((uint64_t)lib << 16 | kind << 8 | flags));
}

static int site_index_rebuild(mt_agg *a, size_t cap) {
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (idx == NULL)
        return -1;
    for (size_t i = 0; i < a->n_sites; i++) {
        mt_site *s = &a->sites[i];
        size_t j = site_hash(s->stack, s->tid, s->lib, s->kind, s->flags) & (cap - 1);
        while (idx[j])
            j = (j + 1) & (cap - 1);
        idx[j] = (uint32_t)i + 1;
    }
    free(a->site_index);
    a->site_index = idx;
    a->site_index_cap = cap;
    return 0;
}

/* Index of the site for an event, created on first sight; -1 on no memory. */
static int64_t site_of(mt_agg *a, const mt_event *e, uint8_t kind, uint8_t flags) {
    uint32_t tid = e->tid;
    if (a->n_sites) { /* runs of events from one site are the rule: check the last one */
        const mt_site *last = &a->sites[a->last_site];
        if (last->stack == e->stack && last->tid == tid && last->lib == e->lib &&
            last->kind == kind && last->flags == flags)
            return a->last_site;
    }
    if ((a->n_sites + 1) * 2 > a->site_index_cap &&
        site_index_rebuild(a, a->site_index_cap ? a->site_index_cap * 2 : 1024) < 0)
        return -1;
    size_t mask = a->site_index_cap - 1;
    size_t j = site_hash(e->stack, tid, e->lib, kind, flags) & mask;
    for (; a->site_index[j]; j = (j + 1) & mask) {
        mt_site *s = &a->sites[a->site_index[j] - 1];
        if (s->stack == e->stack && s->tid == tid && s->lib == e->lib && s->kind == kind &&
            s->flags == flags)
            return a->last_site = a->site_index[j] - 1;
    }
    if (mt_grow((void **)&a->sites, &a->sites_cap, a->n_sites + 1, sizeof(mt_site)) < 0)
        return -1;
    mt_site *s = &a->sites[a->n_sites];
    memset(s, 0, sizeof *s);
    s->stack = e->stack;
    s->tid = tid;
    s->lib = e->lib;
    s->kind = kind;
    s->flags = flags;
    a->site_index[j] = (uint32_t)a->n_sites + 1;
    a->last_site = (uint32_t)a->n_sites;
    return (int64_t)a->n_sites++;
}

static void touch(mt_agg *a, uint32_t site) {
    mt_site *s = &a->sites[site];
    if (s->dirty)
        return;
    if (mt_grow((void **)&a->dirty, &a->dirty_cap, a->n_dirty + 1, sizeof(uint32_t)) < 0)
        return; /* out of memory: the peak column of this site may lag */
    s->dirty = 1;
    a->dirty[a->n_dirty++] = site;
}

static void change(mt_agg *a, uint32_t site, int64_t bytes, int64_t count, int heap) {
    mt_site *s = &a->sites[site];
    s->live_bytes += bytes;
    s->live_count += count;
    touch(a, site);
    if (heap)
        a->t.heap += bytes;
}

static void maybe_peak(mt_agg *a, double t) {
    if (a->t.heap > a->t.feed_max)
        a->t.feed_max = a->t.heap;
    if (a->t.heap <= a->t.peak_heap)
        return;
    a->t.peak_heap = a->t.heap;
    a->t.peak_time = t;
    a->t.peak_event = a->t.n_events;
    for (size_t i = 0; i < a->n_dirty; i++) {
        mt_site *s = &a->sites[a->dirty[i]];
        s->peak_bytes = s->live_bytes;
        s->peak_count = s->live_count;
        s->dirty = 0;
    }
    a->n_dirty = 0;
}

static int is_heap_mapping(uint32_t flags) {
    return (flags & MT_FLAG_ANON) != 0;
}

/* Index of the first mapping that ends after addr. */
static size_t first_map_ending_after(const mt_agg *a, uint64_t addr) {
    return mt_first_above(a->maps, a->n_maps, sizeof(mapping), offsetof(mapping, end), addr);
}

/* Flags of the mapping holding addr (an untraced one: anonymous, as mremap's
 * usual source is). */
static uint8_t flags_at(const mt_agg *a, uint64_t addr) {
    size_t lo = first_map_ending_after(a, addr);
    if (lo < a->n_maps && a->maps[lo].start <= addr)
        return (uint8_t)a->maps[lo].flags;
    return MT_FLAG_ANON;
}

/* Remove [start, end) from the mappings, crediting the sites. */
static int unmap_range(mt_agg *a, uint64_t start, uint64_t end, uint8_t *first_flags) {
    int found = 0;
    size_t i = first_map_ending_after(a, start);
    while (i < a->n_maps && a->maps[i].start < end) {
        mapping *m = &a->maps[i];
        if (!found && first_flags)
            *first_flags = (uint8_t)m->flags;
        found = 1;
        uint64_t cut_start = m->start > start ? m->start : start;
        uint64_t cut_end = m->end < end ? m->end : end;
        int64_t bytes = (int64_t)(cut_end - cut_start);
        int whole = cut_start == m->start && cut_end == m->end;
        change(a, m->site, -bytes, whole ? -1 : 0, is_heap_mapping(m->flags));
        if (!is_heap_mapping(m->flags))
            a->t.mapped_file -= bytes;
        if (m->region)
            mt_regions_release(a->regions, m->region, m->site, bytes, whole, 0, whole);
        if (whole) {
            memmove(m, m + 1, (a->n_maps - i - 1) * sizeof *m);
            a->n_maps--;
            continue;
        }
        if (cut_start > m->start && cut_end < m->end) { /* a hole in the middle: split */
            if (mt_grow((void **)&a->maps, &a->maps_cap, a->n_maps + 1, sizeof(mapping)) < 0)
                return -1;
            m = &a->maps[i];
            memmove(m + 2, m + 1, (a->n_maps - i - 1) * sizeof *m);
            a->n_maps++;
            m[1] = m[0];
            m[1].start = cut_end;
            m[0].end = cut_start;
            a->sites[m->site].live_count++; /* one mapping became two */
            if (m->region)
                mt_regions_split(a->regions, m->region, m->site);
            return found;
        }
        if (cut_start == m->start)
            m->start = cut_end;
        else
            m->end = cut_start;
        i++;
    }
    return found;
}

static int map_range(mt_agg *a, uint64_t start, uint64_t end, uint32_t site, uint8_t flags,
                     uint32_t tid) {
    unmap_range(a, start, end, NULL); /* MAP_FIXED over an existing mapping replaces it */
    if (mt_grow((void **)&a->maps, &a->maps_cap, a->n_maps + 1, sizeof(mapping)) < 0)
        return -1;
    size_t lo = 0, hi = a->n_maps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a->maps[mid].start < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(&a->maps[lo + 1], &a->maps[lo], (a->n_maps - lo) * sizeof(mapping));
    a->maps[lo] = (mapping){start, end, site, flags, 0, 0};
    a->n_maps++;
    int64_t bytes = (int64_t)(end - start);
    change(a, site, bytes, 1, is_heap_mapping(flags));
    if (!is_heap_mapping(flags))
        a->t.mapped_file += bytes;
    else if (a->regions)
        a->maps[lo].region =
            mt_regions_alloc(a->regions, tid, site, bytes, a->t_feed, a->t.n_events);
    return 0;
}

static uint64_t page_up(const mt_agg *a, uint64_t n) {
    return (n + a->page - 1) & ~(a->page - 1);
}

/* A malloc-family allocation: 0, or -1 on no memory. */
static int feed_alloc(mt_agg *a, const mt_event *e, double t) {
    int64_t s = site_of(a, e, e->kind, e->flags & MT_FLAG_NUMPY);
    if (s < 0)
        return -1;
    uint64_t size = e->flags & MT_FLAG_SAMPLED ? sample_weight(a, e->size) : e->size;
    block old;
    block *slot = blocks_put(&a->live, e->addr, size, (uint32_t)s, &old);
    if (slot == NULL)
        return -1;
    if (old.addr) {
        change(a, old.site, -(int64_t)old.size, -1, 1);
        mt_regions_release(a->regions, old.region, old.site, (int64_t)old.size, 1, 0, 1);
    }
    if (a->regions)
        slot->region =
            mt_regions_alloc(a->regions, e->tid, (uint32_t)s, (int64_t)size, t, a->t.n_events);
    mt_site *site = &a->sites[s];
    site->alloc_bytes += size;
    site->n_allocs++;
    int bucket = e->size ? 64 - __builtin_clzll(e->size) : 0;
    a->size_count[bucket]++;
    a->size_bytes[bucket] += size;
    a->t.total_allocated += size;
    a->t.n_allocations++;
    change(a, (uint32_t)s, (int64_t)size, 1, 1);
    maybe_peak(a, t);
    if (a->temp_threshold)
        note_allocation(a, e->tid, e->addr, (uint32_t)s, size);
    return 0;
}

static void feed_free(mt_agg *a, const mt_event *e) {
    block old;
    if (blocks_take(&a->live, e->addr, &old)) {
        change(a, old.site, -(int64_t)old.size, -1, 1);
        a->t.n_frees++;
        int temporary = a->temp_threshold && note_free(a, e->tid, e->addr);
        if (old.region)
            mt_regions_release(a->regions, old.region, old.site, (int64_t)old.size, 1, temporary,
                               1);
    } else {
        a->t.unknown_frees++;
    }
}

/* An mmap, or where an mremap moved a mapping: 0, or -1 on no memory. */
static int feed_map(mt_agg *a, const mt_event *e, double t) {
    uint8_t kind = e->kind;
    uint8_t flags = kind == MT_MREMAP ? a->remap_flags : e->flags;
    flags &= MT_FLAG_ANON | MT_FLAG_SHARED;
    int64_t s = site_of(a, e, kind, flags);
    if (s < 0)
        return -1;
    uint64_t len = page_up(a, e->size);
    mt_site *site = &a->sites[s];
    site->alloc_bytes += len;
    site->n_allocs++;
    if (is_heap_mapping(flags)) {
        a->t.total_allocated += len;
        a->t.n_allocations++;
    }
    if (map_range(a, e->addr, e->addr + len, (uint32_t)s, flags, e->tid) < 0)
        return -1;
    maybe_peak(a, t);
    return 0;
}

int mt_agg_feed(mt_agg *a, const mt_event *events, size_t n, double t) {
    a->t.feed_max = a->t.heap;
    a->t_feed = t;
    for (size_t i = 0; i < n; i++) {
        const mt_event *e = &events[i];
        a->t.n_events++;
        uint8_t kind = e->kind;
        if (kind >= MT_MALLOC && kind <= MT_LAST_ALLOC) {
            if (feed_alloc(a, e, t) < 0)
                return -1;
        } else if (kind == MT_FREE) {
            feed_free(a, e);
        } else if (kind == MT_MMAP || kind == MT_MREMAP) {
            if (feed_map(a, e, t) < 0)
                return -1;
        } else if (kind == MT_MUNMAP && (e->flags & MT_FLAG_KEEP)) {
            a->remap_flags = flags_at(a, e->addr); /* DONTUNMAP: nothing is unmapped */
        } else if (kind == MT_MUNMAP) {
            uint8_t flags = MT_FLAG_ANON;
            if (unmap_range(a, e->addr, e->addr + page_up(a, e->size), &flags) < 0)
                return -1;
            if (e->flags & MT_FLAG_REMAP)
                a->remap_flags = flags;
        } else if (kind == MT_REGION) {
            if (a->regions == NULL && (a->regions = mt_regions_new()) == NULL)
                return -1;
            if (mt_regions_mark(a->regions, e->tid, (uint32_t)e->addr, e->size != 0, t,
                                a->t.n_events) < 0)
                return -1;
        }
    }
    return 0;
}
