/* native.c — draining the shared-memory stream and aggregating events.
 *
 * The aggregator keeps, per traced process: the live malloc-family blocks
 * (address -> size, site), the live mappings (sorted address ranges, since
 * munmap may cut or span them), and per-site totals. The heap peak is exact
 * at event granularity: every site changed since the last peak is marked
 * dirty, and when the heap reaches a new maximum the dirty sites' live bytes
 * are copied into their peak column — each change is folded at most once,
 * so the cost stays O(1) amortised per event.
 */
#include "native.h"

#include "hash.h"
#include "regions.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* ---- Small growable arrays and hashing ------------------------------------ */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

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
    double sample_rate;    /* 0: not sampled */
    uint32_t last_site;    /* the site of the last allocation (a one-entry cache) */
    mt_regions *regions;   /* owned; made at the first region mark (NULL: none yet) */
    double t_feed;         /* the time of the batch being fed */
};

mt_agg *mt_agg_new(uint64_t page_size) {
    mt_agg *a = calloc(1, sizeof *a);
    if (a)
        a->page = page_size ? page_size : 4096;
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
    if (!create || grow((void **)&a->recent, &a->recent_cap, a->n_recent + 1, sizeof(recent)) < 0)
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
    if (grow((void **)&a->sites, &a->sites_cap, a->n_sites + 1, sizeof(mt_site)) < 0)
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
    if (grow((void **)&a->dirty, &a->dirty_cap, a->n_dirty + 1, sizeof(uint32_t)) < 0)
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

/* Index of the first mapping that ends after addr (binary search). */
static size_t first_map_ending_after(const mt_agg *a, uint64_t addr) {
    size_t lo = 0, hi = a->n_maps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a->maps[mid].end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
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
            if (grow((void **)&a->maps, &a->maps_cap, a->n_maps + 1, sizeof(mapping)) < 0)
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
    if (grow((void **)&a->maps, &a->maps_cap, a->n_maps + 1, sizeof(mapping)) < 0)
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
        a->maps[lo].region = mt_regions_alloc(a->regions, tid, site, bytes, a->t_feed,
                                              a->t.n_events);
    return 0;
}

static uint64_t page_up(const mt_agg *a, uint64_t n) {
    return (n + a->page - 1) & ~(a->page - 1);
}

int mt_agg_feed(mt_agg *a, const mt_event *events, size_t n, double t) {
    a->t.feed_max = a->t.heap;
    a->t_feed = t;
    for (size_t i = 0; i < n; i++) {
        const mt_event *e = &events[i];
        a->t.n_events++;
        uint8_t kind = e->kind;
        if (kind >= MT_MALLOC && kind <= MT_LAST_ALLOC) {
            int64_t s = site_of(a, e, kind, e->flags & MT_FLAG_NUMPY);
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
                slot->region = mt_regions_alloc(a->regions, e->tid, (uint32_t)s, (int64_t)size, t,
                                                a->t.n_events);
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
        } else if (kind == MT_FREE) {
            block old;
            if (blocks_take(&a->live, e->addr, &old)) {
                change(a, old.site, -(int64_t)old.size, -1, 1);
                a->t.n_frees++;
                int temporary = a->temp_threshold && note_free(a, e->tid, e->addr);
                if (old.region)
                    mt_regions_release(a->regions, old.region, old.site, (int64_t)old.size, 1,
                                       temporary, 1);
            } else {
                a->t.unknown_frees++;
            }
        } else if (kind == MT_MMAP || kind == MT_MREMAP) {
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

/* ---- Shared-memory stream --------------------------------------------------- */

int mt_shm_check(const void *shm, size_t size) {
    const mt_shm_header *h = shm;
    if (size < sizeof *h || memcmp(h->magic, MT_SHM_MAGIC, 8) != 0 ||
        h->version != MT_WIRE_VERSION)
        return -1;
    if (h->ring_slots == 0 || (h->ring_slots & (h->ring_slots - 1)) || h->meta_bytes == 0 ||
        (h->meta_bytes & (h->meta_bytes - 1)))
        return -1;
    if (h->ring_offset + (uint64_t)h->ring_slots * sizeof(mt_event) > size ||
        h->meta_offset + h->meta_bytes > size || h->answer_offset + h->answer_bytes > size)
        return -1;
    return 0;
}

#define DRAIN_KEEP_BACK 256 /* slots (8 KiB) */

static size_t drain(void *shm, mt_event *out, size_t max, int dead, uint64_t *lost) {
    mt_shm_header *h = shm;
    mt_event *ring = (mt_event *)((char *)shm + h->ring_offset);
    uint64_t mask = h->ring_slots - 1;
    uint64_t pos = h->tail;
    uint64_t head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    /* While producers are busy, stay a page behind the slots being filled:
     * reading a line a producer is still writing sends the line back and
     * forth between the cores and makes every producer's next claim wait.
     * The last slots are read once the producers pause, and at once when the
     * process is exiting (the exit point's aggregate needs every event) or dead. */
    uint64_t limit = UINT64_MAX;
    if (!dead && __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != MT_STATE_EXITING &&
        head - pos > 2 * DRAIN_KEEP_BACK) {
        uint64_t slots_per_page = 4096 / sizeof(mt_event);
        uint64_t first = h->ring_offset / sizeof(mt_event); /* page phase of slot 0 */
        limit = head - DRAIN_KEEP_BACK;
        limit -= (first + limit) & (slots_per_page - 1);
    }
    size_t n = 0;
    while (n < max && pos < limit) {
        mt_event *slot = &ring[pos & mask];
        uint32_t seq = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
        if (seq != (uint32_t)(pos + 1)) {
            if (!dead || pos >= head)
                break;
            (*lost)++; /* claimed by a thread that never filled it */
        } else {
            out[n] = *slot;
            if (out[n].kind != MT_NONE)
                n++;
        }
        pos++;
    }
    __atomic_store_n(&h->tail, pos, __ATOMIC_RELEASE);
    h->heartbeat++;
    return n;
}

size_t mt_ring_drain(void *shm, mt_event *out, size_t max) {
    return drain(shm, out, max, 0, NULL);
}

size_t mt_ring_drain_dead(void *shm, mt_event *out, size_t max, uint64_t *lost) {
    return drain(shm, out, max, 1, lost);
}

size_t mt_meta_drain(void *shm, uint8_t *out, size_t max) {
    mt_shm_header *h = shm;
    const uint8_t *ring = (const uint8_t *)shm + h->meta_offset;
    uint64_t mask = h->meta_bytes - 1;
    uint64_t tail = h->meta_tail;
    uint64_t head = __atomic_load_n(&h->meta_head, __ATOMIC_ACQUIRE);
    size_t n = (size_t)(head - tail);
    if (n > max)
        n = max & ~(size_t)3; /* records are 4-byte aligned; the reader re-frames them */
    for (size_t i = 0; i < n; i++)
        out[i] = ring[(tail + i) & mask];
    __atomic_store_n(&h->meta_tail, tail + n, __ATOMIC_RELEASE);
    return n;
}

size_t mt_meta_sift(const uint8_t *in, size_t len, uint8_t *keep, uint8_t *aside,
                    size_t aside_cap, size_t *aside_len, size_t *consumed, uint8_t *heapstats,
                    int *heapstats_seen) {
    size_t pos = 0, kept = 0;
    while (pos + 4 <= len) {
        uint16_t type, length, key = 0;
        memcpy(&type, in + pos, 2);
        memcpy(&length, in + pos + 2, 2);
        size_t size = (4 + (size_t)length + 3) & ~(size_t)3;
        if (pos + size > len)
            break;
        if (type == MT_META_TEXT && length >= 2)
            memcpy(&key, in + pos + 4, 2);
        if (type == MT_META_HEAPSTATS && length >= 96) {
            memcpy(heapstats, in + pos + 4, 96);
            *heapstats_seen = 1;
        } else if (type == MT_META_TEXT && key == MT_TEXT_CENSUS) {
            if (*aside_len + size <= aside_cap) {
                memcpy(aside + *aside_len, in + pos, size);
                *aside_len += size;
            }
        } else if (!(type == MT_META_TEXT && key == MT_TEXT_PYMALLOC)) {
            memcpy(keep + kept, in + pos, size);
            kept += size;
        }
        pos += size;
    }
    *consumed = pos;
    return kept;
}

uint64_t mt_shm_counter(const void *shm, int which) {
    const mt_shm_header *h = shm;
    switch (which) {
    case 0:
        return __atomic_load_n(&h->dropped, __ATOMIC_RELAXED);
    case 1:
        return __atomic_load_n(&h->unattributed, __ATOMIC_RELAXED);
    case 2:
        return __atomic_load_n(&h->reentrant, __ATOMIC_RELAXED);
    case 3:
        return __atomic_load_n(&h->state, __ATOMIC_RELAXED);
    case 4:
        return __atomic_load_n(&h->head, __ATOMIC_RELAXED);
    case 5:
        return __atomic_load_n(&h->tail, __ATOMIC_RELAXED);
    case 6:
        return __atomic_load_n(&h->stats_cost_ns, __ATOMIC_RELAXED);
    case 7:
        return __atomic_load_n(&h->forks, __ATOMIC_RELAXED);
    case 8:
        return __atomic_load_n(&h->exit_status, __ATOMIC_RELAXED);
    case 9:
        return __atomic_load_n(&h->census_sent, __ATOMIC_ACQUIRE);
    case 10:
        return __atomic_load_n(&h->census_ack, __ATOMIC_RELAXED);
    }
    return 0;
}

void mt_shm_request_stats(void *shm, int python) {
    mt_shm_header *h = shm;
    /* python first: the shim reads python_request only after seeing a new stats_request */
    if (python)
        __atomic_fetch_add(&h->python_request, 1, __ATOMIC_RELEASE);
    __atomic_fetch_add(&h->stats_request, 1, __ATOMIC_RELEASE);
}

void mt_shm_ack_exit(void *shm) {
    mt_shm_header *h = shm;
    __atomic_store_n(&h->exit_ack, 1, __ATOMIC_RELEASE);
}

int mt_shm_question(const void *shm, mt_question *out) {
    const mt_shm_header *h = shm;
    uint32_t seq = __atomic_load_n(&h->ask_seq, __ATOMIC_ACQUIRE);
    if (seq == __atomic_load_n(&h->answer_seq, __ATOMIC_RELAXED))
        return 0;
    out->seq = seq;
    out->what = h->ask_what;
    out->tid = h->ask_tid;
    out->region = h->ask_region;
    out->position = h->ask_position;
    return 1;
}

void mt_shm_answer(void *shm, uint32_t seq, const char *text, size_t len) {
    mt_shm_header *h = shm;
    if (len > h->answer_bytes)
        len = h->answer_bytes;
    memcpy((char *)shm + h->answer_offset, text, len);
    __atomic_store_n(&h->answer_len, (uint32_t)len, __ATOMIC_RELAXED);
    __atomic_store_n(&h->answer_seq, seq, __ATOMIC_RELEASE);
}

void mt_shm_request_census(void *shm) {
    mt_shm_header *h = shm;
    /* before the python request that makes the target look for it */
    __atomic_fetch_add(&h->census_request, 1, __ATOMIC_RELEASE);
    mt_shm_request_stats(shm, 1);
}

void mt_shm_ack_census(void *shm, uint32_t sent) {
    mt_shm_header *h = shm;
    __atomic_store_n(&h->census_ack, sent, __ATOMIC_RELEASE);
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
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ends[mid] <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void mt_agg_bytes_in_ranges(const mt_agg *a, const uint64_t *starts, const uint64_t *ends,
                            size_t n, int64_t *block_bytes, int64_t *anon_map_bytes,
                            int64_t *file_map_bytes, uint32_t *top_site, int64_t *top_bytes) {
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

/* ---- /proc/PID/smaps ---------------------------------------------------------
 * Parsed here because a snapshot near the heap peak must be quick: a big
 * process's smaps is thousands of lines. A mapping's header line starts with
 * its lower-case hex start address; its fields ("Rss:   12 kB") with a capital. */

static uint64_t parse_hex(const char **p, const char *end) {
    uint64_t v = 0;
    for (; *p < end; (*p)++) {
        char c = **p;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            break;
        v = v * 16 + (uint64_t)d;
    }
    return v;
}

static const char *skip_field(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (p < end && *p != ' ' && *p != '\t')
        p++;
    return p;
}

static uint64_t field_kib(const char *p, const char *end) {
    while (p < end && (*p < '0' || *p > '9'))
        p++;
    uint64_t v = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    return v * 1024;
}

static int starts_with(const char *p, const char *end, const char *key) {
    size_t n = strlen(key);
    return (size_t)(end - p) >= n && memcmp(p, key, n) == 0;
}

size_t mt_parse_smaps(const char *text, size_t len, mt_vma *out, size_t max) {
    const char *p = text, *end = text + len;
    size_t n = 0;
    mt_vma *cur = NULL, spare;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        char c = *p;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
            cur = n < max ? &out[n] : &spare;
            n++;
            memset(cur, 0, sizeof *cur);
            const char *q = p;
            cur->start = parse_hex(&q, eol);
            if (q < eol && *q == '-')
                q++;
            cur->end = parse_hex(&q, eol);
            while (q < eol && *q == ' ')
                q++;
            for (int i = 0; i < 7 && q < eol && *q != ' '; i++)
                cur->perms[i] = *q++;
            for (int i = 0; i < 3; i++) /* offset, device, inode */
                q = skip_field(q, eol);
            while (q < eol && (*q == ' ' || *q == '\t'))
                q++;
            cur->path_at = (uint32_t)(q - text);
            cur->path_len = (uint32_t)(eol - q);
        } else if (cur != NULL) {
            if (starts_with(p, eol, "Rss:"))
                cur->rss = field_kib(p + 4, eol);
            else if (starts_with(p, eol, "Anonymous:"))
                cur->anon = field_kib(p + 10, eol);
            else if (starts_with(p, eol, "Swap:"))
                cur->swap = field_kib(p + 5, eol);
        }
        p = eol + 1;
    }
    return n;
}

/* ---- Capture encoding ---------------------------------------------------------
 * Per event: a header byte, then only what changed. Header bits 0-3: kind;
 * bit 4: a flags byte follows; bit 5: the thread id changed (varint);
 * bit 6: the stack changed (varint); bit 7: the library changed (varint).
 * Then the address as a zigzag varint delta from the previous event's, and
 * for everything but a free the size as a varint. A free of one of the last
 * MRU_SIZE blocks allocated (most frees) sets bit 6 instead and gives that
 * block's position in the most-recent-first list as a varint, no address. A
 * region mark (MT_REGION) carries neither stack nor library: its region id and
 * size as plain varints, leaving the address state as it was. State starts at
 * zero in every batch, so each batch decodes on its own. */

#define H_FLAGS 0x10
#define H_TID 0x20
#define H_STACK 0x40
#define H_LIB 0x80
#define H_RECENT 0x40 /* on a free: bit 6 (never a stack change there) */
#define MRU_SIZE 32 /* = the length of mt_codec.recent */

static void mru_push(mt_codec *m, uint64_t addr) {
    int n = m->n_recent < MRU_SIZE ? m->n_recent : MRU_SIZE - 1;
    memmove(&m->recent[1], &m->recent[0], (size_t)n * sizeof m->recent[0]);
    m->recent[0] = addr;
    m->n_recent = (uint16_t)(n + 1);
}

static int mru_find(const mt_codec *m, uint64_t addr) {
    for (int i = 0; i < m->n_recent; i++)
        if (m->recent[i] == addr)
            return i;
    return -1;
}

static void mru_remove(mt_codec *m, int i) {
    memmove(&m->recent[i], &m->recent[i + 1], (size_t)(m->n_recent - i - 1) * sizeof m->recent[0]);
    m->n_recent--;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static const uint8_t *get_varint(const uint8_t *p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end)
            return NULL;
        uint8_t b = *p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return p;
        }
    }
    return NULL; /* more than 10 bytes: malformed */
}

size_t mt_encode_more(mt_codec *st, const mt_event *events, size_t n, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        const mt_event *e = &events[i];
        if (e->kind == MT_REGION) {
            uint8_t h = MT_REGION | (e->flags ? H_FLAGS : 0) | (e->tid != st->tid ? H_TID : 0);
            *p++ = h;
            if (h & H_FLAGS)
                *p++ = e->flags;
            if (h & H_TID)
                p = put_varint(p, st->tid = e->tid);
            p = put_varint(p, e->addr);
            p = put_varint(p, e->size);
            continue;
        }
        int is_free = e->kind == MT_FREE;
        int at = is_free ? mru_find(st, e->addr) : -1;
        uint8_t h = e->kind & 0x0f;
        if (e->flags)
            h |= H_FLAGS;
        if (e->tid != st->tid)
            h |= H_TID;
        if (!is_free && e->stack != st->stack)
            h |= H_STACK;
        if (!is_free && e->lib != st->lib)
            h |= H_LIB;
        if (at >= 0)
            h |= H_RECENT;
        *p++ = h;
        if (h & H_FLAGS)
            *p++ = e->flags;
        if (h & H_TID)
            p = put_varint(p, st->tid = e->tid);
        if (!is_free && (h & H_STACK))
            p = put_varint(p, st->stack = e->stack);
        if (h & H_LIB)
            p = put_varint(p, st->lib = e->lib);
        if (at >= 0) {
            *p++ = (uint8_t)at;
            mru_remove(st, at);
            continue; /* the address is known: the previous address stays as it was */
        }
        if (e->kind >= MT_MALLOC && e->kind <= MT_LAST_ALLOC)
            mru_push(st, e->addr);
        int64_t delta = (int64_t)(e->addr - st->addr);
        p = put_varint(p, ((uint64_t)delta << 1) ^ (uint64_t)(delta >> 63));
        st->addr = e->addr;
        if (!is_free)
            p = put_varint(p, e->size);
    }
    return (size_t)(p - out);
}

size_t mt_encode(const mt_event *events, size_t n, uint8_t *out) {
    mt_codec st;
    memset(&st, 0, sizeof st);
    return mt_encode_more(&st, events, n, out);
}

int64_t mt_decode_more(mt_codec *st, const uint8_t *in, size_t len, mt_event *out, size_t max) {
    const uint8_t *p = in, *end = in + len;
    uint64_t v;
    size_t n = 0;
    while (p < end) {
        if (n >= max)
            return -1;
        uint8_t h = *p++;
        mt_event *e = &out[n];
        memset(e, 0, sizeof *e);
        e->kind = h & 0x0f;
        if (e->kind == MT_NONE || e->kind >= MT_KIND_COUNT)
            return -1;
        if (h & H_FLAGS) {
            if (p >= end)
                return -1;
            e->flags = *p++;
        }
        if (h & H_TID) {
            if (!(p = get_varint(p, end, &v)) || v > UINT32_MAX)
                return -1;
            st->tid = (uint32_t)v;
        }
        e->tid = st->tid;
        if (e->kind == MT_REGION) {
            if ((h & (H_STACK | H_LIB)) || !(p = get_varint(p, end, &e->addr)) ||
                !(p = get_varint(p, end, &e->size)))
                return -1;
            n++;
            continue;
        }
        if (e->kind == MT_FREE && (h & H_RECENT)) {
            if (p >= end || *p >= st->n_recent)
                return -1;
            int at = *p++;
            e->addr = st->recent[at];
            mru_remove(st, at);
            n++;
            continue;
        }
        if (h & H_STACK) {
            if (!(p = get_varint(p, end, &v)) || v > UINT32_MAX)
                return -1;
            st->stack = (uint32_t)v;
        }
        if (h & H_LIB) {
            if (!(p = get_varint(p, end, &v)) || v > UINT16_MAX)
                return -1;
            st->lib = (uint16_t)v;
        }
        if (!(p = get_varint(p, end, &v)))
            return -1;
        st->addr += (uint64_t)((int64_t)(v >> 1) ^ -(int64_t)(v & 1));
        e->addr = st->addr;
        if (e->kind >= MT_MALLOC && e->kind <= MT_LAST_ALLOC)
            mru_push(st, e->addr);
        if (e->kind != MT_FREE) {
            if (!(p = get_varint(p, end, &v)))
                return -1;
            e->size = v;
            e->stack = st->stack;
            e->lib = st->lib;
        }
        n++;
    }
    return (int64_t)n;
}

int64_t mt_decode(const uint8_t *in, size_t len, mt_event *out, size_t max) {
    mt_codec st;
    memset(&st, 0, sizeof st);
    return mt_decode_more(&st, in, len, out, max);
}

/* ---- Report helpers ------------------------------------------------------------ */

void mt_keep_freed_memory(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

size_t mt_meta_index(const uint8_t *data, size_t len, uint16_t *type, uint64_t *offset,
                     uint16_t *length, size_t max) {
    size_t n = 0, pos = 0;
    while (pos + 4 <= len) {
        uint16_t rtype, rlen;
        memcpy(&rtype, data + pos, 2);
        memcpy(&rlen, data + pos + 2, 2);
        if (pos + 4 + rlen > len)
            break; /* cut short: the process died mid-record */
        if (n < max) {
            type[n] = rtype;
            offset[n] = pos + 4;
            length[n] = rlen;
        }
        n++;
        pos += (4 + (size_t)rlen + 3) & ~(size_t)3;
    }
    return n;
}

/* (a, b) -> value, open addressing; a == INT64_MIN marks an empty slot. */
typedef struct pair_slot {
    int64_t a, b, value;
} pair_slot;

typedef struct pair_map {
    pair_slot *slots;
    size_t cap, count; /* cap: a power of two */
} pair_map;

static size_t pair_hash(int64_t a, int64_t b, size_t mask) {
    return mix64((uint64_t)a * 0x9E3779B97F4A7C15ULL ^ mix64((uint64_t)b)) & mask;
}

static int pair_init(pair_map *m, size_t cap) {
    m->slots = malloc(cap * sizeof(pair_slot));
    if (m->slots == NULL)
        return -1;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].a = INT64_MIN;
    m->cap = cap;
    m->count = 0;
    return 0;
}

static pair_slot *pair_slot_of(const pair_map *m, int64_t a, int64_t b) {
    size_t j = pair_hash(a, b, m->cap - 1);
    while (m->slots[j].a != INT64_MIN && (m->slots[j].a != a || m->slots[j].b != b))
        j = (j + 1) & (m->cap - 1);
    return &m->slots[j];
}

static int pair_resize(pair_map *m, size_t cap) {
    pair_map bigger;
    if (pair_init(&bigger, cap) < 0)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].a != INT64_MIN)
            *pair_slot_of(&bigger, m->slots[i].a, m->slots[i].b) = m->slots[i];
    bigger.count = m->count;
    free(m->slots);
    *m = bigger;
    return 0;
}

static int pair_put(pair_map *m, int64_t a, int64_t b, int64_t value) {
    if ((m->count + 1) * 2 > m->cap && pair_resize(m, m->cap * 2) < 0)
        return -1;
    pair_slot *s = pair_slot_of(m, a, b);
    if (s->a == INT64_MIN)
        m->count++;
    s->a = a;
    s->b = b;
    s->value = value;
    return 0;
}

typedef struct made_node {
    int64_t parent, row;
} made_node;

struct mt_tree {
    pair_map children; /* (parent node, frame id) -> node, for the whole tree */
    made_node *made;   /* the nodes the last mt_tree_frames made */
    size_t n_made, made_cap;
    int64_t *chain;
    size_t chain_cap;
};

mt_tree *mt_tree_new(void) {
    mt_tree *t = calloc(1, sizeof *t);
    if (t == NULL || pair_init(&t->children, 1024) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void mt_tree_free(mt_tree *t) {
    if (t == NULL)
        return;
    free(t->children.slots);
    free(t->made);
    free(t->chain);
    free(t);
}

/* The node of a frame under a node, made (numbered *next) on first sight. */
static int64_t tree_child(mt_tree *t, int64_t parent, int64_t frame, int64_t row, int64_t *next) {
    pair_slot *s = pair_slot_of(&t->children, parent, frame);
    if (s->a != INT64_MIN)
        return s->value;
    if (grow((void **)&t->made, &t->made_cap, t->n_made + 1, sizeof(made_node)) < 0)
        return -1;
    int64_t node = (*next)++;
    if (pair_put(&t->children, parent, frame, node) < 0)
        return -1;
    t->made[t->n_made].parent = parent;
    t->made[t->n_made++].row = row;
    return node;
}

int64_t mt_tree_frames(mt_tree *t, const int64_t *parent, const int64_t *frame, size_t nrows,
                       const int64_t *base, const int64_t *row, size_t n, int64_t first_id,
                       int64_t *node_out) {
    /* A cache of each row's node under the base it was last reached from (the
     * children index is what defines the nodes: a miss only costs a walk). */
    made_node *seen = malloc((nrows ? nrows : 1) * sizeof *seen); /* .parent: base, .row: node */
    if (seen == NULL)
        return -1;
    /* room for a node per row at once: one table, not a doubling per power of two */
    size_t want = t->children.cap;
    while ((t->children.count + nrows + 1) * 2 > want)
        want *= 2;
    if (want > t->children.cap && pair_resize(&t->children, want) < 0) {
        free(seen);
        return -1;
    }
    for (size_t r = 0; r < nrows; r++)
        seen[r].parent = -1;
    int64_t next = first_id;
    t->n_made = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t r = row[i], b = base[i];
        /* Walk up to the first row whose node is known (or past the outermost),
         * then come back down making nodes. */
        size_t depth = 0;
        int64_t node = b;
        while (r >= 0 && (size_t)r < nrows) {
            if (seen[r].parent == b) {
                node = seen[r].row;
                break;
            }
            if (grow((void **)&t->chain, &t->chain_cap, depth + 1, sizeof(int64_t)) < 0)
                goto oom;
            t->chain[depth++] = r;
            r = parent[r];
        }
        while (depth) {
            int64_t cr = t->chain[--depth];
            node = tree_child(t, node, frame[cr], cr, &next);
            if (node < 0)
                goto oom;
            seen[cr].parent = b;
            seen[cr].row = node;
        }
        node_out[i] = node;
    }
    free(seen);
    return next - first_id;
oom:
    free(seen);
    return -1;
}

int64_t mt_tree_children(mt_tree *t, const int64_t *parent, const int64_t *key, size_t n,
                         int64_t first_id, int64_t *node_out) {
    int64_t next = first_id;
    t->n_made = 0;
    for (size_t i = 0; i < n; i++)
        if ((node_out[i] = tree_child(t, parent[i], key[i], (int64_t)i, &next)) < 0)
            return -1;
    return next - first_id;
}

void mt_tree_made(const mt_tree *t, int64_t *parent, int64_t *row) {
    for (size_t i = 0; i < t->n_made; i++) {
        parent[i] = t->made[i].parent;
        row[i] = t->made[i].row;
    }
}

int64_t mt_tree_fold(mt_tree *t, const int64_t *parent, const int64_t *key, const uint8_t *fold,
                     size_t n, int64_t fold_key, int64_t *out) {
    int64_t next = 1;
    t->n_made = 0;
    if (n)
        out[0] = 0;
    for (size_t i = 1; i < n; i++) {
        int64_t p = parent[i];
        if (fold[i] && fold[p]) {
            out[i] = out[p];
            continue;
        }
        if ((out[i] = tree_child(t, out[p], fold[i] ? fold_key : key[i], (int64_t)i, &next)) < 0)
            return -1;
    }
    return next - 1;
}

typedef struct dfs_item {
    int64_t node, entry; /* a node, and the entry of its parent */
} dfs_item;

size_t mt_tree_preorder(const int64_t *start, const int64_t *kids, const int64_t *n_kids,
                        size_t n, int64_t max_nodes, int64_t *order_out, int64_t *parent_out,
                        int64_t *shown_out) {
    if (n == 0)
        return 0;
    dfs_item *stack = malloc(n * sizeof *stack); /* each node is pushed at most once */
    if (stack == NULL)
        return 0;
    size_t top = 0, count = 0;
    stack[top++] = (dfs_item){0, -1};
    while (top) {
        dfs_item e = stack[--top];
        int64_t index = (int64_t)count;
        order_out[count] = e.node;
        parent_out[count++] = e.entry;
        int64_t keep = start[e.node + 1] - start[e.node];
        if ((int64_t)count + keep > max_nodes)
            keep = 0;
        shown_out[index] = keep;
        if (keep < n_kids[e.node]) {
            order_out[count] = -1 - e.node;
            shown_out[count] = keep;
            parent_out[count++] = index;
        }
        for (int64_t k = keep; k-- > 0;)
            stack[top++] = (dfs_item){kids[start[e.node] + k], index};
    }
    free(stack);
    return count;
}

void mt_tree_child_sums(const int64_t *parent, size_t n, const int64_t *bytes, const int64_t *count,
                        const int64_t *numpy, int64_t threshold, int64_t *n_kids, int64_t *all_bytes,
                        int64_t *all_count, int64_t *all_numpy, int64_t *small_bytes,
                        int64_t *small_count, int64_t *small_numpy) {
    size_t size = n * sizeof(int64_t);
    memset(n_kids, 0, size);
    memset(all_bytes, 0, size);
    memset(all_count, 0, size);
    memset(all_numpy, 0, size);
    memset(small_bytes, 0, size);
    memset(small_count, 0, size);
    memset(small_numpy, 0, size);
    for (size_t i = 1; i < n; i++) {
        if (bytes[i] <= 0)
            continue; /* not in this metric's tree */
        int64_t p = parent[i];
        n_kids[p]++;
        all_bytes[p] += bytes[i];
        all_count[p] += count[i];
        all_numpy[p] += numpy[i];
        if (bytes[i] < threshold) {
            small_bytes[p] += bytes[i];
            small_count[p] += count[i];
            small_numpy[p] += numpy[i];
        }
    }
}

void mt_nearest_flagged(const int64_t *parent, const uint8_t *flag, size_t n, int64_t *out) {
    for (size_t r = 0; r < n; r++)
        out[r] = flag[r] ? (int64_t)r : parent[r] < 0 ? parent[r] : out[parent[r]];
}

void mt_tree_sum_down(const int64_t *parent, size_t n, const int64_t *add, int64_t *out) {
    for (size_t i = 0; i < n; i++)
        out[i] = (i ? out[parent[i]] : 0) + add[i];
}

void mt_tree_leaf_values(const int64_t *leaf, size_t n, const int64_t *size, const int64_t *count,
                         const int64_t *numpy, const int64_t *pos, size_t n_nodes, int64_t *bytes,
                         int64_t *counts, int64_t *numpys, int64_t *first) {
    for (size_t i = 0; i < n_nodes; i++) {
        bytes[i] = counts[i] = numpys[i] = 0;
        first[i] = INT64_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t node = leaf[i];
        bytes[node] += size[i];
        counts[node] += count[i];
        numpys[node] += numpy[i];
        if (pos[i] < first[node])
            first[node] = pos[i];
    }
}

void mt_tree_sum_up(const int64_t *parent, size_t n, int64_t *bytes, int64_t *count,
                    int64_t *numpy, int64_t *first) {
    for (size_t i = n; i-- > 1;) {
        int64_t p = parent[i];
        bytes[p] += bytes[i];
        count[p] += count[i];
        numpy[p] += numpy[i];
        if (first[i] < first[p])
            first[p] = first[i];
    }
}

static char *put_decimal(char *p, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = digits[--n];
    return p;
}

size_t mt_json_int_lists(const uint64_t *values, const uint64_t *starts, size_t n, char *out) {
    char *p = out;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }
        *p++ = '[';
        for (uint64_t k = starts[i]; k < starts[i + 1]; k++) {
            if (k > starts[i]) {
                *p++ = ',';
                *p++ = ' ';
            }
            p = put_decimal(p, values[k]);
        }
        *p++ = ']';
    }
    *p++ = ']';
    return (size_t)(p - out);
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A length-delimited field: tag, then the length of what follows. */
static uint8_t *put_field_head(uint8_t *p, unsigned field, size_t len) {
    return put_varint(put_varint(p, (uint64_t)field << 3 | 2), len);
}

/* A varint field, left out when zero (as proto3 writers do). */
static uint8_t *put_field_varint(uint8_t *p, unsigned field, uint64_t v) {
    return v ? put_varint(put_varint(p, (uint64_t)field << 3), v) : p;
}

static size_t field_varint_len(unsigned field, uint64_t v) {
    return v ? varint_len((uint64_t)field << 3) + varint_len(v) : 0;
}

size_t mt_pprof_samples(const uint64_t *ids, const uint64_t *starts, size_t n,
                        const int64_t *counts, const int64_t *sizes, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t ids_len = 0;
        for (uint64_t k = starts[i]; k < starts[i + 1]; k++)
            ids_len += varint_len(ids[k]);
        size_t values_len = varint_len((uint64_t)counts[i]) + varint_len((uint64_t)sizes[i]);
        size_t ids_field = ids_len ? 1 + varint_len(ids_len) + ids_len : 0;
        p = put_field_head(p, 2, ids_field + 1 + varint_len(values_len) + values_len);
        if (ids_len) {
            p = put_field_head(p, 1, ids_len);
            for (uint64_t k = starts[i]; k < starts[i + 1]; k++)
                p = put_varint(p, ids[k]);
        }
        p = put_field_head(p, 2, values_len);
        p = put_varint(p, (uint64_t)counts[i]);
        p = put_varint(p, (uint64_t)sizes[i]);
    }
    return (size_t)(p - out);
}

size_t mt_pprof_locations(const uint64_t *functions, const int64_t *lines, size_t n,
                          uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t line_len = field_varint_len(1, functions[i]) + field_varint_len(2, (uint64_t)lines[i]);
        size_t len = field_varint_len(1, i + 1) + 1 + varint_len(line_len) + line_len;
        p = put_field_head(p, 4, len);
        p = put_field_varint(p, 1, i + 1);
        p = put_field_head(p, 4, line_len);
        p = put_field_varint(p, 1, functions[i]);
        p = put_field_varint(p, 2, (uint64_t)lines[i]);
    }
    return (size_t)(p - out);
}

size_t mt_pprof_functions(const uint64_t *names, const uint64_t *files, size_t n, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t len = field_varint_len(1, i + 1) + 2 * field_varint_len(2, names[i]) +
                     field_varint_len(4, files[i]);
        /* system_name is field 3: the same length as field 2's */
        p = put_field_head(p, 5, len);
        p = put_field_varint(p, 1, i + 1);
        p = put_field_varint(p, 2, names[i]);
        p = put_field_varint(p, 3, names[i]);
        p = put_field_varint(p, 4, files[i]);
    }
    return (size_t)(p - out);
}
