/* stream.c — the collector's side of a process's shared-memory stream
 * (events.h): draining the event ring and the metadata ring, the counters, and
 * the requests and answers that go back to the shim. */
#include "native.h"

#include <string.h>

int mt_shm_check(const void *shm, size_t size) {
    const mt_shm_header *h = shm;
    if (size < sizeof *h || memcmp(h->magic, MT_SHM_MAGIC, 8) != 0 || h->version != MT_WIRE_VERSION)
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
/* The drain stops at a 4 KiB boundary of the ring, whatever the machine's page
 * size: the rounding must stay under DRAIN_KEEP_BACK, or a paused producer's last
 * committed slots could wait for the next events. */
#define DRAIN_ALIGN 4096

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
        uint64_t slots_per_page = DRAIN_ALIGN / sizeof(mt_event);
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

size_t mt_meta_sift(const uint8_t *in, size_t len, uint8_t *keep, uint8_t *aside, size_t aside_cap,
                    size_t *aside_len, size_t *consumed, uint8_t *heapstats, int *heapstats_seen) {
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

void mt_shm_read_counters(const void *shm, mt_shm_counters *out) {
    const mt_shm_header *h = shm;
    out->dropped = __atomic_load_n(&h->dropped, __ATOMIC_RELAXED);
    out->unattributed = __atomic_load_n(&h->unattributed, __ATOMIC_RELAXED);
    out->reentrant = __atomic_load_n(&h->reentrant, __ATOMIC_RELAXED);
    out->state = __atomic_load_n(&h->state, __ATOMIC_RELAXED);
    out->claimed = __atomic_load_n(&h->head, __ATOMIC_RELAXED);
    out->consumed = __atomic_load_n(&h->tail, __ATOMIC_RELAXED);
    out->stats_cost_ns = __atomic_load_n(&h->stats_cost_ns, __ATOMIC_RELAXED);
    out->forks = __atomic_load_n(&h->forks, __ATOMIC_RELAXED);
    out->exit_status = __atomic_load_n(&h->exit_status, __ATOMIC_RELAXED);
    /* acquire: the census text it counts is then visible in the metadata ring */
    out->census_sent = __atomic_load_n(&h->census_sent, __ATOMIC_ACQUIRE);
    out->census_ack = __atomic_load_n(&h->census_ack, __ATOMIC_RELAXED);
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
