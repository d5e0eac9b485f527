/* regions.c — per-region numbers in the collector's aggregator (see aggregate.c).
 *
 * An instance is one span of one thread between a region's enter and leave
 * marks. Every heap allocation a thread makes while it has instances open
 * counts in each of them (the innermost and those around it); the block
 * remembers its innermost instance, so its free is taken off the same ones,
 * whichever thread frees it and whenever. Per open instance: live bytes, the
 * peak (exact, event by event: live is compared at every allocation), bytes
 * allocated, and the same per allocation site, whose values at the instance's
 * peak are kept with the heap peak's dirty-list rule (aggregate.c): only entries
 * changed since the last peak are copied when a new one is reached.
 *
 * When an instance closes it is folded into its region (per region id): the
 * closed instances' sums, the highest peak with its per-site breakdown, and
 * what each instance left live when it closed. An instance stays in the table
 * while something refers to it — it is open, a block or mapping allocated in
 * it is live, or an instance nested in it stays — so a later free still finds
 * the open instances around it; then its slot is reused. Memory follows the
 * open instances, the regions' sites and the blocks closed instances left
 * live, not the number of instances.
 *
 * The collector is single-threaded: nothing here is shared. The rows and site
 * records handed to Python are made in regions_rows.c.
 */
#include "regions_tables.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

mt_regions *mt_regions_new(void) {
    return calloc(1, sizeof(mt_regions));
}

void mt_regions_free(mt_regions *r) {
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_inst; i++)
        free(r->inst[i].dirty);
    free(r->inst);
    free(r->ent);
    free(r->index);
    free(r->reg);
    free(r->thr);
    free(r);
}

/* ---- Threads: tid -> innermost open instance --------------------------------- */

static int thr_rehash(mt_regions *r, size_t cap) {
    thread *t = calloc(cap, sizeof *t);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < r->thr_cap; i++) {
        if (r->thr[i].tid == 0)
            continue;
        size_t j = mix64(r->thr[i].tid) & (cap - 1);
        while (t[j].tid)
            j = (j + 1) & (cap - 1);
        t[j] = r->thr[i];
    }
    free(r->thr);
    r->thr = t;
    r->thr_cap = cap;
    return 0;
}

thread *mt_regions_thread(mt_regions *r, uint32_t tid, int create) {
    if (r->thr_cap) {
        for (size_t j = mix64(tid) & (r->thr_cap - 1);; j = (j + 1) & (r->thr_cap - 1)) {
            if (r->thr[j].tid == tid)
                return &r->thr[j];
            if (r->thr[j].tid == 0)
                break;
        }
    }
    if (!create || tid == 0)
        return NULL;
    if ((r->n_thr + 1) * 2 > r->thr_cap && thr_rehash(r, r->thr_cap ? r->thr_cap * 2 : 64) < 0)
        return NULL;
    size_t j = mix64(tid) & (r->thr_cap - 1);
    while (r->thr[j].tid)
        j = (j + 1) & (r->thr_cap - 1);
    r->thr[j].tid = tid;
    r->thr[j].current = 0;
    r->n_thr++;
    return &r->thr[j];
}

/* ---- Site entries: (owner, site) -> numbers ---------------------------------- */

static uint64_t entry_hash(uint32_t owner, uint32_t site) {
    return mix64((uint64_t)owner << 32 | site);
}

static int index_rehash(mt_regions *r, size_t cap) {
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (idx == NULL)
        return -1;
    for (size_t i = 0; i < r->index_cap; i++) {
        uint32_t e = r->index[i];
        if (e == 0)
            continue;
        size_t j = entry_hash(r->ent[e - 1].owner, r->ent[e - 1].site) & (cap - 1);
        while (idx[j])
            j = (j + 1) & (cap - 1);
        idx[j] = e;
    }
    free(r->index);
    r->index = idx;
    r->index_cap = cap;
    return 0;
}

/* Slot of the index holding (owner, site), or of the empty slot where it goes. */
static size_t index_slot(const mt_regions *r, uint32_t owner, uint32_t site) {
    size_t mask = r->index_cap - 1;
    size_t j = entry_hash(owner, site) & mask;
    for (; r->index[j]; j = (j + 1) & mask) {
        const entry *e = &r->ent[r->index[j] - 1];
        if (e->owner == owner && e->site == site)
            break;
    }
    return j;
}

static uint32_t *owner_list(mt_regions *r, uint32_t owner) {
    return owner & OPEN_OWNER ? &r->inst[owner & ~OPEN_OWNER].first : &r->reg[owner].first;
}

/* Entry + 1 of (owner, site); created (zeroed, on its owner's list) if asked. */
static uint32_t entry_of(mt_regions *r, uint32_t owner, uint32_t site, int create) {
    if (r->index_cap == 0) {
        if (!create || index_rehash(r, 1024) < 0)
            return 0;
    }
    size_t j = index_slot(r, owner, site);
    if (r->index[j] || !create)
        return r->index[j];
    if ((r->index_used + 1) * 2 > r->index_cap) {
        if (index_rehash(r, r->index_cap * 2) < 0)
            return 0;
        j = index_slot(r, owner, site);
    }
    uint32_t e = r->free_ent;
    if (e) {
        r->free_ent = r->ent[e - 1].next;
    } else {
        if (mt_grow((void **)&r->ent, &r->ent_cap, r->n_ent + 1, sizeof(entry)) < 0)
            return 0;
        e = (uint32_t)++r->n_ent;
    }
    entry *x = &r->ent[e - 1];
    memset(x, 0, sizeof *x);
    x->owner = owner;
    x->site = site;
    uint32_t *list = owner_list(r, owner);
    x->next = *list;
    *list = e;
    r->index[j] = e;
    r->index_used++;
    return e;
}

/* Drop (owner, site) from the index (backward-shift deletion, no tombstones) and
 * free its entry. The caller unlinks it from its owner's list. */
static void entry_drop(mt_regions *r, uint32_t owner, uint32_t site) {
    size_t mask = r->index_cap - 1;
    size_t j = index_slot(r, owner, site);
    uint32_t e = r->index[j];
    if (e == 0)
        return;
    size_t hole = j;
    for (size_t k = (j + 1) & mask; r->index[k]; k = (k + 1) & mask) {
        const entry *x = &r->ent[r->index[k] - 1];
        size_t home = entry_hash(x->owner, x->site) & mask;
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            r->index[hole] = r->index[k];
            hole = k;
        }
    }
    r->index[hole] = 0;
    r->index_used--;
    r->ent[e - 1].next = r->free_ent;
    r->free_ent = e;
}

/* ---- Instances ------------------------------------------------------------- */

static void touch(mt_regions *r, inst *x, uint32_t e) {
    entry *d = &r->ent[e - 1];
    if (d->dirty)
        return;
    if (mt_grow((void **)&x->dirty, &x->dirty_cap, x->n_dirty + 1, sizeof(uint32_t)) < 0)
        return; /* out of memory: this entry's at-peak value may lag */
    d->dirty = 1;
    x->dirty[x->n_dirty++] = e;
}

static void new_peak(mt_regions *r, inst *x, double t, uint64_t event) {
    x->peak = x->live;
    x->peak_time = t;
    x->peak_event = event;
    for (size_t k = 0; k < x->n_dirty; k++) {
        entry *d = &r->ent[x->dirty[k] - 1];
        d->peak = d->live;
        d->peak_count = d->live_count;
        d->dirty = 0;
    }
    x->n_dirty = 0;
}

/* Nothing refers to instance i any more: free its slot, and so on outwards. */
static void unref(mt_regions *r, uint32_t i) {
    for (;;) {
        inst *x = &r->inst[i];
        if (--x->refs > 0)
            return;
        uint32_t parent = x->parent;
        x->next_free = r->free_inst;
        r->free_inst = i + 1;
        if (parent == 0)
            return;
        i = parent - 1;
    }
}

/* Fold closed instance i into its region, then let it go. */
static void close_instance(mt_regions *r, uint32_t i, double t) {
    inst *x = &r->inst[i];
    region *g = &r->reg[x->region];
    int best = g->instances == 0 || x->peak > g->peak;
    if (best) { /* the region's breakdown at its peak becomes this instance's */
        for (uint32_t e = g->first; e; e = r->ent[e - 1].next)
            r->ent[e - 1].peak = r->ent[e - 1].peak_count = 0;
        g->peak = x->peak;
        g->peak_time = x->peak_time;
        g->peak_event = x->peak_event;
    }
    uint32_t region_id = x->region;
    for (uint32_t e = x->first; e;) {
        entry src = r->ent[e - 1]; /* (entry_of may move the array) */
        uint32_t f = entry_of(r, region_id, src.site, 1);
        if (f) {
            entry *d = &r->ent[f - 1];
            d->alloc += src.alloc;
            d->n_allocs += src.n_allocs;
            d->live += src.live; /* left live at the close */
            d->live_count += src.live_count;
            d->temp += src.temp;
            d->temp_count += src.temp_count;
            if (best) {
                d->peak = src.peak;
                d->peak_count = src.peak_count;
            }
        }
        entry_drop(r, src.owner, src.site);
        e = src.next;
    }
    x = &r->inst[i];
    g = &r->reg[region_id];
    x->first = 0;
    x->n_dirty = 0;
    x->open = 0;
    g->instances++;
    g->alloc += x->alloc;
    g->n_allocs += x->n_allocs;
    g->left += x->live;
    g->left_count += x->live_count;
    g->t_leave = t;
    g->last_peak = x->peak;
    g->last_left = x->live;
    g->last_alloc = x->alloc;
    r->n_open--;
    unref(r, i);
}

static int enter(mt_regions *r, uint32_t tid, uint32_t id, double t) {
    if (id == 0 || id >= MAX_REGIONS || tid == 0)
        return 0; /* (a corrupt capture) */
    if (mt_grow((void **)&r->reg, &r->reg_cap, (size_t)id + 1, sizeof(region)) < 0)
        return -1;
    thread *th = mt_regions_thread(r, tid, 1);
    if (th == NULL)
        return -1;
    for (uint32_t i = th->current; i; i = r->inst[i - 1].parent)
        if (r->inst[i - 1].region == id) { /* entered again inside itself (recursion) */
            r->inst[i - 1].depth++;
            return 0;
        }
    uint32_t parent = th->current;
    uint32_t n = r->free_inst;
    if (n) {
        r->free_inst = r->inst[n - 1].next_free;
    } else {
        if (r->n_inst >= OPEN_OWNER ||
            mt_grow((void **)&r->inst, &r->inst_cap, r->n_inst + 1, sizeof(inst)) < 0)
            return -1;
        n = (uint32_t)++r->n_inst;
    }
    inst *x = &r->inst[n - 1];
    uint32_t *dirty = x->dirty;
    size_t dirty_cap = x->dirty_cap;
    memset(x, 0, sizeof *x);
    x->dirty = dirty;
    x->dirty_cap = dirty_cap;
    x->region = id;
    x->tid = tid;
    x->parent = parent;
    x->refs = 1;
    x->depth = 1;
    x->open = 1;
    x->t_enter = t;
    if (parent)
        r->inst[parent - 1].refs++;
    region *g = &r->reg[id];
    if (!g->seen) {
        g->seen = 1;
        g->parent = parent ? r->inst[parent - 1].region : 0;
        g->t_enter = t;
    }
    th->current = n;
    r->n_open++;
    return 0;
}

static void leave(mt_regions *r, uint32_t tid, uint32_t id, double t) {
    thread *th = mt_regions_thread(r, tid, 0);
    if (th == NULL)
        return;
    uint32_t i = th->current;
    while (i && r->inst[i - 1].region != id)
        i = r->inst[i - 1].parent;
    if (i == 0 || --r->inst[i - 1].depth > 0)
        return; /* not open on this thread (a mark without its enter), or re-entered */
    /* Instances nested in it whose leave never came close with it. */
    for (;;) {
        uint32_t j = th->current;
        th->current = r->inst[j - 1].parent;
        close_instance(r, j - 1, t);
        if (j == i)
            return;
    }
}

int mt_regions_mark(mt_regions *r, uint32_t tid, uint32_t id, int enter_it, double t,
                    uint64_t event) {
    if (enter_it)
        return enter(r, tid, id, t);
    leave(r, tid, id, t);
    return 0;
}

uint32_t mt_regions_alloc(mt_regions *r, uint32_t tid, uint32_t site, int64_t bytes, double t,
                          uint64_t event) {
    if (r->n_open == 0)
        return 0;
    thread *th = mt_regions_thread(r, tid, 0);
    if (th == NULL || th->current == 0)
        return 0;
    uint32_t innermost = th->current;
    for (uint32_t i = innermost; i; i = r->inst[i - 1].parent) {
        uint32_t e = entry_of(r, OPEN_OWNER | (i - 1), site, 1);
        inst *x = &r->inst[i - 1];
        if (e) {
            entry *d = &r->ent[e - 1];
            d->live += bytes;
            d->live_count++;
            d->alloc += (uint64_t)bytes;
            d->n_allocs++;
            touch(r, x, e);
        }
        x->live += bytes;
        x->live_count++;
        x->alloc += (uint64_t)bytes;
        x->n_allocs++;
        if (x->live > x->peak)
            new_peak(r, x, t, event);
    }
    r->inst[innermost - 1].refs++;
    return innermost;
}

void mt_regions_release(mt_regions *r, uint32_t i0, uint32_t site, int64_t bytes, int64_t count,
                        int temporary, int unref_it) {
    if (i0 == 0)
        return;
    for (uint32_t i = i0; i; i = r->inst[i - 1].parent) {
        inst *x = &r->inst[i - 1];
        /* a closed instance's numbers are final; only its temporaries still come */
        if (!x->open && !temporary)
            continue;
        uint32_t e = entry_of(r, x->open ? OPEN_OWNER | (i - 1) : x->region, site, 0);
        entry *d = e ? &r->ent[e - 1] : NULL;
        if (x->open) {
            x->live -= bytes;
            x->live_count -= count;
            if (d) {
                d->live -= bytes;
                d->live_count -= count;
                touch(r, x, e);
            }
        }
        if (d && temporary) {
            d->temp += (uint64_t)bytes;
            d->temp_count++;
        }
    }
    if (unref_it)
        unref(r, i0 - 1);
}

void mt_regions_split(mt_regions *r, uint32_t i0, uint32_t site) {
    if (i0 == 0)
        return;
    r->inst[i0 - 1].refs++;
    for (uint32_t i = i0; i; i = r->inst[i - 1].parent) {
        inst *x = &r->inst[i - 1];
        if (!x->open)
            continue;
        x->live_count++;
        uint32_t e = entry_of(r, OPEN_OWNER | (i - 1), site, 0);
        if (e)
            r->ent[e - 1].live_count++;
    }
}
