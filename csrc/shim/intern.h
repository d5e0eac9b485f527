/* intern.h — the shim's interning tables (intern.c): Python stack nodes, code
 * objects and callers' libraries, each named once in the stream's metadata.
 *
 * recorder.c calls these only when its per-thread caches miss (a stack or caller
 * not seen before on the thread); they may take a spin lock or make a system call.
 */
#ifndef MT_INTERN_H
#define MT_INTERN_H

#include <stdint.h>

#include "../shim_api.h"

/* Node id of frame (code, lasti) under node `parent`, made and sent on first
 * sight (0: a table is full). */
uint32_t mt_intern_node(const mt_python_reader *r, uint32_t parent, void *code, int32_t lasti);

/* Library id of the shared object holding a caller address (0: unknown, or
 * being named by another thread right now). */
uint16_t mt_caller_lib_lookup(void *caller);

/* Map the tables (MT_OK or MT_ERR), unmap them, and send their address ranges so
 * the collector counts them as memtrace's own. */
int mt_intern_open(void);
void mt_intern_close(void);
void mt_intern_send_ranges(void);

/* In a forked child: ids restart in the child's stream (call before mt_intern_open). */
void mt_intern_after_fork_child(void);

#endif /* MT_INTERN_H */
