/* SPDX-License-Identifier: MIT */
#ifndef AG_POOL_DEQUE_H
#define AG_POOL_DEQUE_H

/*
 * Chase-Lev work-stealing deque with the C11 orders of Le, Pop, Cohen and
 * Zappa Nardelli, "Correct and efficient work-stealing for weak memory
 * models" (PPoPP 2013).  The owner pushes and pops at the bottom; thieves
 * take from the top with a CAS.
 *
 * Differences from the paper, and why:
 *  - No standalone fences: ThreadSanitizer does not model
 *    atomic_thread_fence, so the two seq_cst fences of the paper become
 *    seq_cst on the atomic operations they order (pop: the store of bottom
 *    and the load of top; steal: the loads of top and bottom).  push stores
 *    bottom seq_cst as well, which the pool's eventcount relies on: a
 *    parked thread's re-check cannot miss a push that was not followed by
 *    a wake-up (see eventcount.h).
 *  - Every slot holds two tags beside the task: its group, and the group's
 *    family (the outermost group it was opened under).  A thief that only
 *    wants some tasks compares the tags before its CAS and leaves the task
 *    alone otherwise.  It never dereferences a task it has not won: a slot
 *    can be overwritten, and a task freed, as soon as top has moved past
 *    it, and then the CAS fails anyway.
 *  - Buffers grow by doubling and retired buffers are kept until
 *    ag__deque_destroy(), because a slow thief may still read them.
 *
 * Indices are signed 64-bit and never wrap in practice.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "alloc.h"

struct ag_task;

struct ag_deque_slot {
	_Atomic(struct ag_task *) task;
	_Atomic(const void *) tag;
	_Atomic(const void *) family;
};

/*
 * Which tasks a taker accepts (NULL: any): those tagged tag, and, if family
 * is set, every task of that family.
 */
struct ag_want {
	const void *tag;
	const void *family;
};

/* Whether w accepts a task with these tags (the rule, wherever it is). */
static inline bool ag__want_match(const struct ag_want *w, const void *tag,
				  const void *family)
{
	return !w || tag == w->tag || (w->family && family == w->family);
}

static inline bool ag__deque_wants(struct ag_deque_slot *s,
				   const struct ag_want *w)
{
	return ag__want_match(
		w, atomic_load_explicit(&s->tag, memory_order_relaxed),
		atomic_load_explicit(&s->family, memory_order_relaxed));
}

struct ag_deque_buf {
	int64_t mask; /* capacity - 1; capacity is a power of two */
	struct ag_deque_buf *retired; /* older buffers, owner only */
	struct ag_deque_slot slots[];
};

struct ag_deque {
	_Alignas(64) atomic_int_least64_t top;
	_Alignas(64) atomic_int_least64_t bottom;
	_Atomic(struct ag_deque_buf *) buf;
};

enum ag_steal {
	AG_STEAL_OK,
	AG_STEAL_EMPTY,
	AG_STEAL_ABORT, /* lost a race with another taker: worth retrying */
	AG_STEAL_OTHER, /* the top task has another tag */
};

#define AG_DEQUE_INIT_CAP 256

static inline struct ag_deque_buf *ag__deque_buf_new(int64_t cap)
{
	struct ag_deque_buf *a;

	a = ag__calloc(1, sizeof(*a) + (size_t)cap * sizeof(a->slots[0]));
	if (a)
		a->mask = cap - 1;
	return a;
}

/* Returns 0 or -1 when out of memory. */
static inline int ag__deque_init(struct ag_deque *d)
{
	struct ag_deque_buf *a = ag__deque_buf_new(AG_DEQUE_INIT_CAP);

	if (!a)
		return -1;
	atomic_init(&d->top, 0);
	atomic_init(&d->bottom, 0);
	atomic_init(&d->buf, a);
	return 0;
}

/* Only when no thread can touch d any more. */
static inline void ag__deque_destroy(struct ag_deque *d)
{
	struct ag_deque_buf *a =
		atomic_load_explicit(&d->buf, memory_order_relaxed);

	while (a) {
		struct ag_deque_buf *old = a->retired;

		ag__mfree(a);
		a = old;
	}
	atomic_store_explicit(&d->buf, NULL, memory_order_relaxed);
}

/*
 * Owner only, with no concurrent thief (after fork, in the child): forgets
 * the contents.
 */
static inline void ag__deque_reset(struct ag_deque *d)
{
	atomic_store_explicit(&d->top, 0, memory_order_relaxed);
	atomic_store_explicit(&d->bottom, 0, memory_order_relaxed);
}

/* Owner: a buffer twice as large holding the live range [t, b). */
static inline struct ag_deque_buf *
ag__deque_grow(struct ag_deque *d, struct ag_deque_buf *a, int64_t t, int64_t b)
{
	struct ag_deque_buf *na = ag__deque_buf_new(2 * (a->mask + 1));

	if (!na)
		return NULL;
	for (int64_t i = t; i < b; i++) {
		struct ag_deque_slot *s = &a->slots[i & a->mask];
		struct ag_deque_slot *ns = &na->slots[i & na->mask];

		atomic_store_explicit(
			&ns->task,
			atomic_load_explicit(&s->task, memory_order_relaxed),
			memory_order_relaxed);
		atomic_store_explicit(
			&ns->tag,
			atomic_load_explicit(&s->tag, memory_order_relaxed),
			memory_order_relaxed);
		atomic_store_explicit(
			&ns->family,
			atomic_load_explicit(&s->family, memory_order_relaxed),
			memory_order_relaxed);
	}
	na->retired = a;
	/* Release: a thief that loads na must see the copied slots. */
	atomic_store_explicit(&d->buf, na, memory_order_release);
	return na;
}

/* Owner.  Returns 0, or -1 if the deque was full and could not grow. */
static inline int ag__deque_push(struct ag_deque *d, struct ag_task *x,
				 const void *tag, const void *family)
{
	int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
	int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
	struct ag_deque_buf *a =
		atomic_load_explicit(&d->buf, memory_order_relaxed);
	struct ag_deque_slot *s;

	if (b - t > a->mask) {
		a = ag__deque_grow(d, a, t, b);
		if (!a)
			return -1;
	}
	s = &a->slots[b & a->mask];
	atomic_store_explicit(&s->task, x, memory_order_relaxed);
	atomic_store_explicit(&s->tag, tag, memory_order_relaxed);
	atomic_store_explicit(&s->family, family, memory_order_relaxed);
	/*
	 * Release publishes the slot and the task's fields to thieves;
	 * seq_cst orders this store before the caller's load of the
	 * eventcount's waiter count (no lost wake-up).
	 */
	atomic_store_explicit(&d->bottom, b + 1, memory_order_seq_cst);
	return 0;
}

/*
 * Owner.  Takes the bottom task, or NULL if the deque is empty.  With a
 * non-NULL want, takes it only if it is wanted: the owner wrote every slot
 * itself, so it may read the bottom tags before claiming the slot.
 */
static inline struct ag_task *ag__deque_pop(struct ag_deque *d,
					    const struct ag_want *want)
{
	int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
	struct ag_deque_buf *a =
		atomic_load_explicit(&d->buf, memory_order_relaxed);
	struct ag_deque_slot *s = &a->slots[b & a->mask];
	struct ag_task *x = NULL;
	int64_t t;

	/* top only grows: if even a stale top is past b, it is empty. */
	if (b < atomic_load_explicit(&d->top, memory_order_relaxed))
		return NULL;
	if (!ag__deque_wants(s, want))
		return NULL;

	atomic_store_explicit(&d->bottom, b, memory_order_seq_cst);
	t = atomic_load_explicit(&d->top, memory_order_seq_cst);
	if (t > b) {
		/* Thieves emptied it meanwhile. */
		atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
		return NULL;
	}
	x = atomic_load_explicit(&s->task, memory_order_relaxed);
	if (t == b) {
		/* The last task: race the thieves for it. */
		if (!atomic_compare_exchange_strong_explicit(
			    &d->top, &t, t + 1, memory_order_seq_cst,
			    memory_order_relaxed))
			x = NULL;
		atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
	}
	return x;
}

/*
 * Any thread.  With a non-NULL want, steals only a top task it wants.
 */
static inline enum ag_steal ag__deque_steal(struct ag_deque *d,
					    const struct ag_want *want,
					    struct ag_task **out)
{
	int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
	int64_t b = atomic_load_explicit(&d->bottom, memory_order_seq_cst);
	struct ag_deque_buf *a;
	struct ag_deque_slot *s;
	struct ag_task *x;

	if (t >= b)
		return AG_STEAL_EMPTY;
	a = atomic_load_explicit(&d->buf, memory_order_acquire);
	s = &a->slots[t & a->mask];
	/*
	 * The loads may see a slot the owner has reused since; then top has
	 * moved and the CAS below fails, so a wrong tag only costs a retry.
	 */
	if (!ag__deque_wants(s, want))
		return AG_STEAL_OTHER;
	x = atomic_load_explicit(&s->task, memory_order_relaxed);
	if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1,
						     memory_order_seq_cst,
						     memory_order_relaxed))
		return AG_STEAL_ABORT;
	*out = x;
	return AG_STEAL_OK;
}

/* Any thread: a hint, exact only when the deque is quiescent. */
static inline bool ag__deque_maybe_nonempty(struct ag_deque *d)
{
	int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
	int64_t b = atomic_load_explicit(&d->bottom, memory_order_seq_cst);

	return t < b;
}

#endif /* AG_POOL_DEQUE_H */
