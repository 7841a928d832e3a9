/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_ALLOC_H
#define AG_ENGINE_ALLOC_H

/*
 * Every allocation of the library goes through here (engine/alloc.c), so
 * that one place reports running out of memory and one place can make an
 * allocation fail on purpose in tests.  On failure each function sets the
 * thread's error (AG_ENOMEM, with a message naming the size) and returns
 * NULL (or -AG_ENOMEM): a caller only passes the failure on.
 *
 * Two families; a block goes back to the family it came from:
 *  - ag__alloc / ag__zalloc / ag__free: per-thread free lists for the small
 *    objects every op makes, and cached big blocks.  16-byte aligned;
 *    ag__free takes any block from any thread.  ag__array_grow uses them.
 *  - ag__malloc, ag__calloc, ag__realloc, ag__aligned_alloc, ag__strdup /
 *    ag__mfree: the C library's, for long-lived or rare blocks.
 */
#include <stdbool.h>
#include <stddef.h>

void *ag__alloc(size_t size);
void *ag__zalloc(size_t size);
void ag__free(void *p);

/* A size of 0 gets a block of its own, never NULL. */
void *ag__malloc(size_t size);
/* Zeroed; n * size is checked for overflow. */
void *ag__calloc(size_t n, size_t size);
/* On failure *p is left as it was. */
void *ag__realloc(void *p, size_t size);
/* align is a power of two; size need not be a multiple of it. */
void *ag__aligned_alloc(size_t align, size_t size);
char *ag__strdup(const char *s);
void ag__mfree(void *p);

/* Big blocks a thread's or a place's cache keeps per class (alloc.c). */
#define AG__BIG_TC_PER_CLASS 8

/*
 * A big-block cache for an ag_gate place (alloc.c): bound to the calling
 * thread (NULL: its own again), it serves the thread's big blocks.  new
 * returns NULL when out of memory (no error set: the caller goes on
 * without one).
 */
struct ag__big_cache;
struct ag__big_cache *ag__big_cache_new(void);
void ag__big_cache_free(struct ag__big_cache *c);
void ag__big_cache_bind(struct ag__big_cache *c);

/*
 * Makes room for need elements of elem bytes in the array *p of *cap
 * elements, which came from ag__alloc (or is NULL): doubles the capacity
 * (at least 16 elements, at least need), copies the old elements and frees
 * the old block.  Overflow-checked.  Returns 0, or -AG_ENOMEM leaving *p and
 * *cap as they were.
 */
int ag__array_grow(void **p, size_t *cap, size_t need, size_t elem);

/*
 * Fault injection, for tests only.  ag__fault_set(n, persistent) with
 * n > 0: the n-th allocation from now fails (and, when persistent, every
 * one after it); n == 0: only counts; n < 0: off.  ag__fault_count(): the
 * allocations counted since ag__fault_set, from every thread.
 */
void ag__fault_set(long n, bool persistent);
long ag__fault_count(void);

/*
 * What the allocator caches (tests of ag_trim): free big blocks on the
 * global lists and in this thread's cache, slabs mapped, free small blocks
 * in the depot's magazines and its empty magazines.
 */
struct ag__alloc_stats {
	size_t big_global_bytes, big_thread_bytes;
	size_t slabs, depot_blocks, depot_empty_mags;
};
void ag__alloc_stats(struct ag__alloc_stats *st);

#endif /* AG_ENGINE_ALLOC_H */
