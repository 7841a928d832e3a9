// SPDX-License-Identifier: MIT
/*
 * Storage: refcounted bytes shared by a tensor and its views, with the
 * version counter every in-place write bumps.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/*
 * Data alignment: AG_ALIGN (a cache line) from AG_ALIGN bytes up, so that
 * large buffers start on a line and vector loads do not split lines; below
 * that the smallest power of two >= nbytes, at least 16, which keeps small
 * data within one line without padding it out to the next.
 */
static size_t data_align(size_t nbytes)
{
	size_t a = 32;

	if (nbytes <= 16)
		return 16;
	if (nbytes >= AG_ALIGN)
		return AG_ALIGN;
	while (a < nbytes)
		a <<= 1;
	return a;
}

size_t ag__storage_bytes(size_t nbytes)
{
	/* the header starts 8-aligned and is 64 bytes: its end is 8-aligned,
	 * so at most align - 8 bytes of padding come before the data */
	size_t head = sizeof(struct ag_storage) + data_align(nbytes) -
		      _Alignof(struct ag_storage);

	return nbytes > SIZE_MAX - head ? 0 : head + nbytes;
}

struct ag_storage *ag__storage_init(void *mem, size_t nbytes, size_t block_off)
{
	struct ag_storage *s = mem;
	uintptr_t p = (uintptr_t)(s + 1), a = data_align(nbytes);

	memset(s, 0, sizeof(*s));
	p = (p + a - 1) & ~(a - 1);
	s->data = (void *)p;
	s->block_off = (uint16_t)block_off;
	atomic_init(&s->refcount, 1);
	atomic_init(&s->version, 0);
	atomic_init(&s->last_writer, NULL);
	s->nbytes = nbytes;
	ag__live_add(AG_LIVE_STORAGES, 1);
	ag__live_add(AG_LIVE_BYTES, (long)nbytes);
	return s;
}

/*
 * One allocation holds the header and the data, aligned by hand, from the
 * small-object lists when it fits (engine/alloc.c); aligned_alloc of many
 * small blocks fragmented glibc's heap and dominated the chain workload.
 */
struct ag_storage *ag__storage_new(size_t nbytes)
{
	size_t bytes = ag__storage_bytes(nbytes);
	void *mem = bytes ? ag__alloc(bytes) : NULL;

	if (!mem) {
		ag__err(AG_ENOMEM, "out of memory allocating %zu bytes",
			nbytes);
		return NULL;
	}
	return ag__storage_init(mem, nbytes, 0);
}

void ag__storage_get(struct ag_storage *s)
{
	atomic_fetch_add_explicit(&s->refcount, 1, memory_order_relaxed);
}

void ag__storage_put(struct ag_storage *s)
{
	if (!s)
		return;
	if (atomic_fetch_sub_explicit(&s->refcount, 1, memory_order_acq_rel) !=
	    1)
		return;
	if (s->user_owned) {
		if (s->free_fn)
			s->free_fn(s->data, s->free_arg);
	} else {
		ag__live_add(AG_LIVE_BYTES, -(long)s->nbytes);
	}
	ag__live_add(AG_LIVE_STORAGES, -1);
	/* a tensor made with its storage in one block went before it */
	ag__free((char *)s - s->block_off);
}

void ag__storage_bump(struct ag_storage *s, const char *who)
{
	if (s->inference)
		return;
	atomic_store_explicit(&s->last_writer, who, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->version, 1, memory_order_release);
}
