// SPDX-License-Identifier: MIT
/*
 * Storage: refcounted bytes shared by a tensor and its views, with the
 * version counter every in-place write bumps.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

size_t ag__storage_bytes(size_t nbytes)
{
	size_t head = sizeof(struct ag_storage) + AG_ALIGN;

	return nbytes > SIZE_MAX - head - AG_ALIGN ? 0 : head + nbytes;
}

struct ag_storage *ag__storage_init(void *mem, size_t nbytes, bool in_tensor)
{
	struct ag_storage *s = mem;
	uintptr_t p = (uintptr_t)(s + 1);

	memset(s, 0, sizeof(*s));
	p = (p + AG_ALIGN - 1) & ~(uintptr_t)(AG_ALIGN - 1);
	s->data = (void *)p;
	s->in_tensor = in_tensor;
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
	return ag__storage_init(mem, nbytes, false);
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
	ag__free(s->in_tensor ? (void *)((struct ag_tensor *)s - 1) : s);
}

void ag__storage_bump(struct ag_storage *s, const char *who)
{
	if (s->inference)
		return;
	atomic_store_explicit(&s->last_writer, who, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->version, 1, memory_order_release);
}
