/* transport.h — the shim's stream to the collector (see events.h). */
#ifndef MT_TRANSPORT_H
#define MT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "events.h"

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

/* The slot for a claimed position, once it is free (waits if the ring is full);
 * NULL when the stream died while waiting. */
mt_event *mt_ring_slot(mt_shm_header *h, uint64_t pos);

/* Publish a filled slot. */
void mt_ring_commit(mt_event *slot, uint64_t pos);

/* Append one metadata record made of two byte ranges (payload = a then b). */
void mt_meta_write(mt_shm_header *h, uint16_t type, const void *a, size_t alen, const void *b,
                   size_t blen);

/* exit() is running: say so, give the collector a moment to read /proc while the
 * process still exists (bounded wait), then mark the stream as ended by exit(). */
void mt_transport_exit_handshake(void);

/* mmap/munmap without going through the shim's own hooks. */
void *mt_sys_mmap(size_t len);
void mt_sys_munmap(void *p, size_t len);

#endif /* MT_TRANSPORT_H */
