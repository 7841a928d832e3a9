// SPDX-License-Identifier: MIT
/*
 * Storage: refcounted bytes shared by a tensor and its views, with the
 * version counter every in-place write bumps.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct ag_live ag__live;

/*
 * One allocation holds the header and the data, aligned by hand, from the
 * small-object lists when it fits (engine/alloc.c); aligned_alloc of many
 * small blocks fragmented glibc's heap and dominated the chain workload.
 */
struct ag_storage *ag__storage_new(size_t nbytes)
{
	size_t head = sizeof(struct ag_storage);
	struct ag_storage *s;
	uintptr_t p;

	if (nbytes > SIZE_MAX - head - AG_ALIGN)
		goto oom;
	s = ag__alloc(head + AG_ALIGN + nbytes);
	if (!s)
		goto oom;
	memset(s, 0, head);
	p = ((uintptr_t)s + head + AG_ALIGN - 1) & ~(uintptr_t)(AG_ALIGN - 1);
	s->data = (void *)p;
	atomic_init(&s->refcount, 1);
	atomic_init(&s->version, 0);
	atomic_init(&s->last_writer, NULL);
	s->nbytes = nbytes;
	atomic_fetch_add_explicit(&ag__live.storages, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&ag__live.bytes, (long)nbytes,
				  memory_order_relaxed);
	return s;
oom:
	ag__err(AG_ENOMEM, "out of memory allocating %zu bytes", nbytes);
	return NULL;
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
		atomic_fetch_sub_explicit(&ag__live.bytes, (long)s->nbytes,
					  memory_order_relaxed);
	}
	atomic_fetch_sub_explicit(&ag__live.storages, 1, memory_order_relaxed);
	ag__free(s);
}

void ag__storage_bump(struct ag_storage *s, const char *who)
{
	if (s->inference)
		return;
	atomic_store_explicit(&s->last_writer, who, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->version, 1, memory_order_release);
}
