// SPDX-License-Identifier: MIT
/*
 * Live-object counters, kept per thread.  Every tensor, storage and node
 * counts itself in and out, several times per small op; with one shared
 * set of atomics that was a locked instruction each time, and a cache
 * line every thread fought over.  Here each thread writes only its own
 * counts (relaxed load and store: plain moves, and no data race for a
 * reader), registers them in a list on first use, and folds them into
 * the retired totals when it exits.  A sum over the list is exact once
 * the threads that made and freed the objects are quiet, which is when
 * tests read it.
 */
#include <pthread.h>

#include "internal.h"

AG_TLS struct ag_live_counts ag__live_tls;

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ag__list live_head = AG_LIST_INIT(live_head);
static long retired[AG_LIVE_KINDS]; /* under live_lock */
static pthread_key_t live_key;
static pthread_once_t live_once = PTHREAD_ONCE_INIT;

static void live_retire(void *arg)
{
	struct ag_live_counts *c = arg;

	pthread_mutex_lock(&live_lock);
	for (int k = 0; k < AG_LIVE_KINDS; k++) {
		retired[k] +=
			atomic_load_explicit(&c->n[k], memory_order_relaxed);
		atomic_store_explicit(&c->n[k], 0, memory_order_relaxed);
	}
	ag__list_del(&c->link);
	c->registered = false; /* a later count registers again */
	pthread_mutex_unlock(&live_lock);
}

static void live_fork_prepare(void)
{
	pthread_mutex_lock(&live_lock);
}

static void live_fork_release(void)
{
	pthread_mutex_unlock(&live_lock);
}

/*
 * Only the forking thread lives on in the child, but the others' counts
 * stay in the list, in memory glibc hands to the child's next threads as
 * their stacks and static TLS: a new thread would zero a listed block and
 * lose its counts (a worker's -1 for a tensor the main thread made showed
 * up as a leak).  Fold every other block into the retired totals and keep
 * only this thread's.
 */
static void live_fork_child(void)
{
	struct ag_live_counts *self = &ag__live_tls;
	struct ag__list *pos;

	ag__list_for_each(pos, &live_head)
	{
		struct ag_live_counts *c =
			ag__list_entry(pos, struct ag_live_counts, link);

		if (c == self)
			continue;
		for (int k = 0; k < AG_LIVE_KINDS; k++)
			retired[k] += atomic_load_explicit(
				&c->n[k], memory_order_relaxed);
	}
	ag__list_init(&live_head);
	if (self->registered)
		ag__list_add(&self->link, &live_head);
	pthread_mutex_unlock(&live_lock);
}

static void live_init(void)
{
	/* nothing to do without the key: counts are then never retired */
	if (pthread_key_create(&live_key, live_retire))
		live_key = (pthread_key_t)-1;
	pthread_atfork(live_fork_prepare, live_fork_release, live_fork_child);
}

void ag__live_register(struct ag_live_counts *c)
{
	pthread_once(&live_once, live_init);
	pthread_mutex_lock(&live_lock);
	ag__list_add(&c->link, &live_head);
	c->registered = true;
	pthread_mutex_unlock(&live_lock);
	if (live_key != (pthread_key_t)-1)
		pthread_setspecific(live_key, c);
}

long ag__live_sum(enum ag_live_kind k)
{
	struct ag__list *pos;
	long sum;

	pthread_mutex_lock(&live_lock);
	sum = retired[k];
	ag__list_for_each(pos, &live_head)
	{
		struct ag_live_counts *c =
			ag__list_entry(pos, struct ag_live_counts, link);

		sum += atomic_load_explicit(&c->n[k], memory_order_relaxed);
	}
	pthread_mutex_unlock(&live_lock);
	return sum;
}
