/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_LIB_PTRVEC_H
#define AG_ENGINE_LIB_PTRVEC_H

/*
 * A growable array of pointers, used as a stack by the graph walks and
 * the scopes.  Growth goes through ag__array_grow, so the capacity is
 * overflow-checked in one place and a failed allocation has set the
 * error; the array frees with ag__free.  A zeroed struct is empty.
 */
#include <stddef.h>

#include <ag/error.h>

#include "alloc.h"

struct ag__ptrvec {
	void **v;
	size_t n, cap;
};

/* 0, or -AG_ENOMEM with the error set and the vector unchanged */
static inline int ag__ptrvec_push(struct ag__ptrvec *s, void *p)
{
	if (s->n == s->cap &&
	    ag__array_grow((void **)&s->v, &s->cap, s->n + 1, sizeof(*s->v)))
		return -AG_ENOMEM;
	s->v[s->n++] = p;
	return 0;
}

/* the last pointer pushed; the vector must not be empty */
static inline void *ag__ptrvec_pop(struct ag__ptrvec *s)
{
	return s->v[--s->n];
}

static inline void ag__ptrvec_free(struct ag__ptrvec *s)
{
	ag__free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

#endif /* AG_ENGINE_LIB_PTRVEC_H */
