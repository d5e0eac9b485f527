/* transport.h — the shim's stream to the collector (see events.h). */
#ifndef MT_TRANSPORT_H
#define MT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "../events.h"

#define MT_OK 0
#define MT_ERR (-1)

/* The current process's stream: NULL when not tracing. Only changed by
 * mt_transport_open (once, under the init flag) and the fork child handler. */
extern mt_shm_header *mt_stream;

/* Connect to the collector named by MEMTRACE_SOCKET. Makes system calls;
 * called once at init and once in each forked child. */
int mt_transport_open(void);

/* Forget the parent's stream in a forked child and open the child's own. */
void mt_transport_after_fork_child(void);

/* Claim n consecutive event slots; returns the first position, or UINT64_MAX
 * when the stream is gone. */
uint64_t mt_ring_claim(mt_shm_header *h, uint32_t n);

static inline mt_event *mt_ring_at(mt_shm_header *h, uint64_t pos) {
    return (mt_event *)((char *)h + h->ring_offset) + (pos & (h->ring_slots - 1));
}

/* The slot for a claimed position, once it is free (waits if the ring is full);
 * NULL when the stream died while waiting. The slot is free once the
 * collector's tail has passed its previous lap. The collector never writes to
 * slots: each cache line of the ring is written by producers only, and read by
 * the collector. */
extern uint64_t mt_tail_seen;
mt_event *mt_ring_slot_wait(mt_shm_header *h, uint64_t pos);
static inline mt_event *mt_ring_slot(mt_shm_header *h, uint64_t pos) {
    if (__builtin_expect(pos - __atomic_load_n(&mt_tail_seen, __ATOMIC_RELAXED) >= h->ring_slots,
                         0))
        return mt_ring_slot_wait(h, pos);
    return mt_ring_at(h, pos);
}

/* Publish a filled slot. */
static inline void mt_ring_commit(mt_event *slot, uint64_t pos) {
    __atomic_store_n(&slot->seq, (uint32_t)(pos + 1), __ATOMIC_RELEASE);
}

/* Append one metadata record made of two byte ranges (payload = a then b). */
void mt_meta_write(mt_shm_header *h, uint16_t type, const void *a, size_t alen, const void *b,
                   size_t blen);

/* exit() is running: say so, give the collector a moment to read /proc while the
 * process still exists (bounded wait), then mark the stream as ended by exit(). */
void mt_transport_exit_handshake(void);

/* Wake the collector now (a connection it drops): it answers sooner. */
void mt_transport_wake(void);

/* Ask the collector a question about a region (see events.h) and wait up to
 * timeout_ms for its answer: the length of the JSON text copied into out, or -1
 * (no answer: the collector is gone or too slow). One question at a time. */
int mt_transport_ask(mt_shm_header *h, uint32_t what, uint32_t tid, uint32_t region, char *out,
                     size_t cap, uint32_t timeout_ms);
/* Object census (events.h): claim the collector's request, and say a census
 * record was written (waits, bounded, for the collector to join it). */
int mt_transport_census_due(void);
void mt_transport_census_sent(void);

/* mmap/munmap without going through the shim's own hooks. */
void *mt_sys_mmap(size_t len);
void mt_sys_munmap(void *p, size_t len);

#endif /* MT_TRANSPORT_H */
