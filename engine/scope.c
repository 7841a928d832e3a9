// SPDX-License-Identifier: MIT
/*
 * Scopes: an autorelease pool per thread.  ag__scope_add() is the one place every
 * returned tensor reference passes, so recording costs one TLS load when no
 * scope is open.
 */
#include <stdlib.h>

#include "internal.h"
#include "lib/ptrvec.h"

struct ag_scope {
	struct ag_scope *parent;
	struct ag__ptrvec refs; /* of struct ag_tensor */
};

static AG_TLS struct ag_scope *scope_top;
atomic_int ag__scoped_threads;

struct ag_scope *ag_scope_begin(void)
{
	struct ag_scope *s = ag__calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->parent = scope_top;
	scope_top = s;
	if (!s->parent)
		atomic_fetch_add_explicit(&ag__scoped_threads, 1,
					  memory_order_relaxed);
	return s;
}

void ag__scope_atfork_child(void)
{
	atomic_store_explicit(&ag__scoped_threads, scope_top ? 1 : 0,
			      memory_order_relaxed);
}

void ag_scope_end(struct ag_scope *s)
{
	if (!s) {
		ag__err(AG_EINVAL, "ag_scope_end: scope is NULL");
		return;
	}
	if (s != scope_top) {
		ag__err(AG_EINVAL,
			"ag_scope_end: %s; end the innermost scope first",
			scope_top ?
				"this is not the innermost open scope of this thread" :
				"no scope is open on this thread");
		return;
	}
	scope_top = s->parent;
	if (!scope_top)
		atomic_fetch_sub_explicit(&ag__scoped_threads, 1,
					  memory_order_relaxed);
	/* newest first, as a stack of temporaries unwinds */
	while (s->refs.n)
		ag_tensor_put(ag__ptrvec_pop(&s->refs));
	ag__ptrvec_free(&s->refs);
	ag__mfree(s);
}

struct ag_tensor *ag__scope_add(struct ag_tensor *t)
{
	struct ag_scope *s = scope_top;

	if (!t || !s)
		return t;
	if (ag__ptrvec_push(&s->refs, t)) {
		ag_tensor_put(t);
		return NULL;
	}
	return t;
}

struct ag_scope *ag__scope_suspend(void)
{
	struct ag_scope *s = scope_top;

	scope_top = NULL;
	return s;
}

void ag__scope_resume(struct ag_scope *s)
{
	scope_top = s;
}

size_t ag__scope_count(const struct ag_scope *s)
{
	return s->refs.n;
}

struct ag_scope *ag_scope_suspend(void)
{
	return ag__scope_suspend();
}

void ag_scope_resume(struct ag_scope *s)
{
	ag__scope_resume(s);
}

struct ag_tensor *ag_scope_adopt(struct ag_tensor *t)
{
	return ag__scope_add(t);
}
