// SPDX-License-Identifier: MIT
/*
 * Storage: refcounted bytes shared by a tensor and its views, with the
 * version counter every in-place write bumps.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct ag_live ag__live;

struct ag_storage *ag__storage_new(size_t nbytes)
{
	struct ag_storage *s = calloc(1, sizeof(*s));
	/* aligned_alloc wants a multiple of the alignment, and never 0 */
	size_t alloc = (nbytes + AG_ALIGN - 1) / AG_ALIGN * AG_ALIGN;

	if (!s)
		goto oom;
	if (alloc == 0)
		alloc = AG_ALIGN;
	s->data = aligned_alloc(AG_ALIGN, alloc);
	if (!s->data)
		goto oom_free;
	atomic_init(&s->refcount, 1);
	atomic_init(&s->version, 0);
	atomic_init(&s->last_writer, NULL);
	s->nbytes = nbytes;
	atomic_fetch_add(&ag__live.storages, 1);
	atomic_fetch_add(&ag__live.bytes, (long)nbytes);
	return s;
oom_free:
	free(s);
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
		free(s->data);
		atomic_fetch_sub(&ag__live.bytes, (long)s->nbytes);
	}
	atomic_fetch_sub(&ag__live.storages, 1);
	free(s);
}

void ag__storage_bump(struct ag_storage *s, const char *who)
{
	if (s->inference)
		return;
	atomic_store_explicit(&s->last_writer, who, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->version, 1, memory_order_release);
}
