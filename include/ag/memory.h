/* SPDX-License-Identifier: MIT */
#ifndef AG_MEMORY_H
#define AG_MEMORY_H

#include <stddef.h>
#include <ag/export.h>

/*
 * libag keeps freed memory for reuse: per-thread magazines of small
 * objects (tensors, nodes, small storages; at most two magazines of 254
 * blocks per size class per thread), the slabs those are carved from, and
 * free big blocks (per thread at most 4 per size class and 4 MiB in all,
 * globally at most 512 MiB).  Cached memory is bounded by these limits and
 * by the peak of live objects; it is never returned on its own.
 *
 * ag_trim() returns free memory to the system on demand (after a burst of
 * large requests, before a fork, when the service is told memory is
 * short): the calling thread's magazines and the global depot are swept,
 * every slab whose blocks are all free is unmapped, the global big-block
 * lists and the calling thread's are freed, and the C library is asked to
 * release its free pages (malloc_trim).  Other threads free their own big
 * blocks at their next big allocation or free; the small blocks in their
 * magazines stay until they exit or their magazines trade with the depot.
 * Safe to call from any thread at any time, concurrently with requests.
 *
 * Returns the bytes libag's caches gave back (not counting the C library's
 * own trimming).
 */
AG_API size_t ag_trim(void);

#endif /* AG_MEMORY_H */
