/* codec.c — the compact encoding of event batches in capture files
 * (docs/capture-format.md).
 *
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

#include "native.h"

#include <string.h>

#include "util.h"

#define H_FLAGS 0x10
#define H_TID 0x20
#define H_STACK 0x40
#define H_LIB 0x80
#define H_RECENT 0x40 /* on a free: bit 6 (never a stack change there) */
#define MRU_SIZE 32   /* = the length of mt_codec.recent */

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
                p = mt_put_varint(p, st->tid = e->tid);
            p = mt_put_varint(p, e->addr);
            p = mt_put_varint(p, e->size);
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
            p = mt_put_varint(p, st->tid = e->tid);
        if (!is_free && (h & H_STACK))
            p = mt_put_varint(p, st->stack = e->stack);
        if (h & H_LIB)
            p = mt_put_varint(p, st->lib = e->lib);
        if (at >= 0) {
            *p++ = (uint8_t)at;
            mru_remove(st, at);
            continue; /* the address is known: the previous address stays as it was */
        }
        if (e->kind >= MT_MALLOC && e->kind <= MT_LAST_ALLOC)
            mru_push(st, e->addr);
        int64_t delta = (int64_t)(e->addr - st->addr);
        p = mt_put_varint(p, ((uint64_t)delta << 1) ^ (uint64_t)(delta >> 63));
        st->addr = e->addr;
        if (!is_free)
            p = mt_put_varint(p, e->size);
    }
    return (size_t)(p - out);
}

size_t mt_encode(const mt_event *events, size_t n, uint8_t *out) {
    mt_codec st;
    memset(&st, 0, sizeof st);
    return mt_encode_more(&st, events, n, out);
}

/* One event from p (p < end) into e: where the next one starts, or NULL if the
 * bytes are malformed. */
static const uint8_t *decode_one(mt_codec *st, const uint8_t *p, const uint8_t *end, mt_event *e) {
    uint64_t v;
    uint8_t h = *p++;
    memset(e, 0, sizeof *e);
    e->kind = h & 0x0f;
    if (e->kind == MT_NONE || e->kind >= MT_KIND_COUNT)
        return NULL;
    if (h & H_FLAGS) {
        if (p >= end)
            return NULL;
        e->flags = *p++;
    }
    if (h & H_TID) {
        if (!(p = get_varint(p, end, &v)) || v > UINT32_MAX)
            return NULL;
        st->tid = (uint32_t)v;
    }
    e->tid = st->tid;
    if (e->kind == MT_REGION) {
        if ((h & (H_STACK | H_LIB)) || !(p = get_varint(p, end, &e->addr)) ||
            !(p = get_varint(p, end, &e->size)))
            return NULL;
        return p;
    }
    if (e->kind == MT_FREE && (h & H_RECENT)) {
        if (p >= end || *p >= st->n_recent)
            return NULL;
        int at = *p++;
        e->addr = st->recent[at];
        mru_remove(st, at);
        return p;
    }
    if (h & H_STACK) {
        if (!(p = get_varint(p, end, &v)) || v > UINT32_MAX)
            return NULL;
        st->stack = (uint32_t)v;
    }
    if (h & H_LIB) {
        if (!(p = get_varint(p, end, &v)) || v > UINT16_MAX)
            return NULL;
        st->lib = (uint16_t)v;
    }
    if (!(p = get_varint(p, end, &v)))
        return NULL;
    st->addr += (uint64_t)((int64_t)(v >> 1) ^ -(int64_t)(v & 1));
    e->addr = st->addr;
    if (e->kind >= MT_MALLOC && e->kind <= MT_LAST_ALLOC)
        mru_push(st, e->addr);
    if (e->kind != MT_FREE) {
        if (!(p = get_varint(p, end, &v)))
            return NULL;
        e->size = v;
        e->stack = st->stack;
        e->lib = st->lib;
    }
    return p;
}

int64_t mt_decode_more(mt_codec *st, const uint8_t *in, size_t len, mt_event *out, size_t max) {
    const uint8_t *p = in, *end = in + len;
    size_t n = 0;
    while (p < end) {
        if (n >= max)
            return -1;
        if ((p = decode_one(st, p, end, &out[n])) == NULL)
            return -1;
        n++;
    }
    return (int64_t)n;
}

int64_t mt_decode(const uint8_t *in, size_t len, mt_event *out, size_t max) {
    mt_codec st;
    memset(&st, 0, sizeof st);
    return mt_decode_more(&st, in, len, out, max);
}
