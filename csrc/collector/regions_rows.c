/* regions_rows.c — the rows and site records of regions (native.h, mt_region_row
 * and mt_region_site) made from the tables of regions.c.
 *
 * Rows: each region with closed instances (in id order), then each open
 * instance (in slot order); a site record names its row by index. */
#include "regions_tables.h"

#include <string.h>

static void region_row(const region *g, uint32_t id, mt_region_row *out) {
    memset(out, 0, sizeof *out);
    out->region = id;
    out->instances = g->instances;
    out->parent = g->parent;
    out->peak_bytes = g->peak;
    out->peak_time = g->peak_time;
    out->peak_event = g->peak_event;
    out->t_enter = g->t_enter;
    out->t_leave = g->t_leave;
    out->alloc_bytes = g->alloc;
    out->n_allocs = g->n_allocs;
    out->live_bytes = g->left;
    out->live_count = g->left_count;
    out->last_peak_bytes = g->last_peak;
    out->last_live_bytes = g->last_left;
    out->last_alloc_bytes = g->last_alloc;
}

static void open_row(const mt_regions *r, const inst *x, mt_region_row *out) {
    memset(out, 0, sizeof *out);
    out->region = x->region;
    out->tid = x->tid;
    out->parent = x->parent ? r->inst[x->parent - 1].region : 0;
    out->peak_bytes = x->peak;
    out->peak_time = x->peak_time;
    out->peak_event = x->peak_event;
    out->t_enter = x->t_enter;
    out->t_leave = -1;
    out->alloc_bytes = x->alloc;
    out->n_allocs = x->n_allocs;
    out->live_bytes = x->live;
    out->live_count = x->live_count;
}

size_t mt_regions_rows(const mt_regions *r, mt_region_row *out, size_t max) {
    size_t n = 0;
    for (size_t id = 1; r && id < r->reg_cap; id++)
        if (r->reg[id].instances) {
            if (n < max)
                region_row(&r->reg[id], (uint32_t)id, &out[n]);
            n++;
        }
    for (size_t i = 0; r && i < r->n_inst; i++)
        if (r->inst[i].open) {
            if (n < max)
                open_row(r, &r->inst[i], &out[n]);
            n++;
        }
    return n;
}

/* Append the entries of a list as records of `row`; returns the new count. */
static size_t list_sites(const mt_regions *r, uint32_t first, uint32_t row, mt_region_site *out,
                         size_t n, size_t max) {
    for (uint32_t e = first; e; e = r->ent[e - 1].next) {
        const entry *d = &r->ent[e - 1];
        if (n < max) {
            mt_region_site *s = &out[n];
            s->row = row;
            s->site = d->site;
            s->alloc_bytes = d->alloc;
            s->n_allocs = d->n_allocs;
            s->live_bytes = d->live;
            s->live_count = d->live_count;
            s->peak_bytes = d->peak;
            s->peak_count = d->peak_count;
            s->temp_bytes = d->temp;
            s->temp_count = d->temp_count;
        }
        n++;
    }
    return n;
}

size_t mt_regions_sites(const mt_regions *r, mt_region_site *out, size_t max) {
    size_t n = 0;
    uint32_t row = 0;
    for (size_t id = 1; r && id < r->reg_cap; id++)
        if (r->reg[id].instances)
            n = list_sites(r, r->reg[id].first, row++, out, n, max);
    for (size_t i = 0; r && i < r->n_inst; i++)
        if (r->inst[i].open)
            n = list_sites(r, r->inst[i].first, row++, out, n, max);
    return n;
}

/* The innermost instance of region id (0: of any region) open on thread tid. */
static const inst *open_on(const mt_regions *r, uint32_t tid, uint32_t id) {
    thread *th = r ? mt_regions_thread((mt_regions *)r, tid, 0) : NULL;
    for (uint32_t i = th ? th->current : 0; i; i = r->inst[i - 1].parent)
        if (id == 0 || r->inst[i - 1].region == id)
            return &r->inst[i - 1];
    return NULL;
}

int mt_regions_usage(const mt_regions *r, uint32_t tid, uint32_t id, mt_region_row *out) {
    const inst *x = open_on(r, tid, id);
    if (x != NULL) {
        open_row(r, x, out);
        return 1;
    }
    if (r && id && id < r->reg_cap && r->reg[id].instances) {
        region_row(&r->reg[id], id, out);
        return 2;
    }
    return 0;
}

size_t mt_regions_usage_sites(const mt_regions *r, uint32_t tid, uint32_t id, mt_region_site *out,
                              size_t max) {
    const inst *x = open_on(r, tid, id);
    return x ? list_sites(r, x->first, 0, out, 0, max) : 0;
}
