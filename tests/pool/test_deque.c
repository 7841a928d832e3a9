// SPDX-License-Identifier: MIT
/*
 * Chase-Lev deque stress: the owner pushes and pops while thieves steal;
 * every item must be taken exactly once.  Also checks that a taker asking
 * for some tasks (a tag, or a tag and a family) never takes another.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "../tsan/tap.h"
#include "pool/deque.h"
#include "internal.h"
#include "pool/pool.h"
#include "util.h"

#define NTHIEVES 3

struct item {
	struct ag_task task;
	int tag;
	atomic_int taken;
};

static struct ag_deque dq;
static struct item *items;
static atomic_bool done;
static atomic_long stolen;
static atomic_int wrong_tag;

/* Tags 0 and 1 are of family 0, tag 2 of family 1. */
static const int tags[3];
static const int fams[2];

static const void *fam_of(int tag)
{
	return &fams[tag == 2];
}

static bool wanted(struct ag_task *t, const struct ag_want *w)
{
	int tag = ag_container_of(t, struct item, task)->tag;

	return !w || &tags[tag] == w->tag ||
	       (w->family && fam_of(tag) == w->family);
}

/* What thief i wants, tagged: one tag; one tag; a tag or a family. */
static const struct ag_want thief_wants[NTHIEVES] = {
	{ &tags[0], NULL },
	{ &tags[2], NULL },
	{ &tags[2], &fams[0] },
};

static void take(struct ag_task *t)
{
	struct item *it = ag_container_of(t, struct item, task);

	atomic_fetch_add_explicit(&it->taken, 1, memory_order_relaxed);
}

/* arg: what this thief wants, or NULL for any task. */
static void *thief(void *arg)
{
	const struct ag_want *want = arg;

	while (!atomic_load_explicit(&done, memory_order_acquire)) {
		struct ag_task *t;
		enum ag_steal r = ag__deque_steal(&dq, want, &t);

		if (r != AG_STEAL_OK)
			continue;
		if (!wanted(t, want))
			atomic_fetch_add(&wrong_tag, 1);
		take(t);
		atomic_fetch_add_explicit(&stolen, 1, memory_order_relaxed);
	}
	return NULL;
}

/*
 * Owner: bursts of pushes (some past the initial capacity), some pops.
 * With tagged, thieves want what thief_wants says.
 */
static int run(long n, bool tagged)
{
	pthread_t th[NTHIEVES];
	unsigned seed = 12345;
	long pushed = 0, popped = 0, bad = 0;

	items = calloc((size_t)n, sizeof(*items));
	TAP_CHECK(items);
	TAP_CHECK(ag__deque_init(&dq) == 0);
	atomic_store(&done, false);
	atomic_store(&stolen, 0);
	atomic_store(&wrong_tag, 0);
	for (int i = 0; i < NTHIEVES; i++)
		TAP_CHECK(pthread_create(&th[i], NULL, thief,
					 tagged ? (void *)&thief_wants[i] :
						  NULL) == 0);
	while (pushed < n) {
		int burst = (int)(rand_r(&seed) % 700) + 1;
		int pops = (int)(rand_r(&seed) % (pushed & 4096 ? 400 : 1000));

		for (int i = 0; i < burst && pushed < n; i++, pushed++) {
			struct item *it = &items[pushed];

			it->tag = (int)((pushed >> 6) % 3); /* runs of 64 */
			TAP_CHECK(ag__deque_push(&dq, &it->task, &tags[it->tag],
						 fam_of(it->tag)) == 0);
		}
		for (int i = 0; i < pops; i++) {
			/*
			 * Sometimes pop only some, as a waiting owner does:
			 * tag 1, or tag 2 and family 0 (that is, anything).
			 */
			static const struct ag_want owner_wants[2] = {
				{ &tags[1], NULL },
				{ &tags[2], &fams[0] },
			};
			const struct ag_want *want =
				(i & 3) == 0 ? &owner_wants[(i >> 2) & 1] :
					       NULL;
			struct ag_task *t = ag__deque_pop(&dq, want);

			if (!t) {
				if (want)
					continue; /* bottom has the other tag */
				break;
			}
			if (!wanted(t, want))
				bad++;
			take(t);
			popped++;
		}
	}
	/* Drain whatever is left: the owner takes everything. */
	for (;;) {
		struct ag_task *t = ag__deque_pop(&dq, NULL);

		if (!t) {
			if (!ag__deque_maybe_nonempty(&dq))
				break;
			continue;
		}
		take(t);
		popped++;
	}
	atomic_store_explicit(&done, true, memory_order_release);
	for (int i = 0; i < NTHIEVES; i++)
		pthread_join(th[i], NULL);
	printf("# n=%ld popped=%ld stolen=%ld\n", n, popped,
	       atomic_load(&stolen));
	TAP_CHECK(bad == 0);
	TAP_CHECK(atomic_load(&wrong_tag) == 0);
	TAP_CHECK(popped + atomic_load(&stolen) == n);
	for (long i = 0; i < n; i++)
		TAP_CHECKF(atomic_load(&items[i].taken) == 1,
			   "item %ld taken %d times", i,
			   atomic_load(&items[i].taken));
	ag__deque_destroy(&dq);
	free(items);
	return 0;
}

static int test_exactly_once(void)
{
	return run(SCALE(400000), false);
}

static int test_exactly_once_tagged_thieves(void)
{
	return run(SCALE(200000), true);
}

/*
 * Single-threaded edge cases: empty pops, tag and family mismatches at
 * either end.
 */
static int test_edges(void)
{
	static const struct ag_want only[3] = {
		{ &tags[0], NULL },
		{ &tags[1], NULL },
		{ &tags[2], NULL },
	};
	/* tag, or family: fam0 takes all but tag 2 on family grounds */
	static const struct ag_want fam0 = { &tags[2], &fams[0] };
	static const struct ag_want t1f0 = { &tags[1], &fams[0] };
	static const struct ag_want t0f0 = { &tags[0], &fams[0] };
	static const struct ag_want t2f1 = { &tags[2], &fams[1] };
	struct item a = { .tag = 0 }, b = { .tag = 1 }, c = { .tag = 2 };
	struct ag_task *t = NULL;

	TAP_CHECK(ag__deque_init(&dq) == 0);
	TAP_CHECK(ag__deque_pop(&dq, NULL) == NULL);
	TAP_CHECK(ag__deque_steal(&dq, NULL, &t) == AG_STEAL_EMPTY);
	TAP_CHECK(ag__deque_push(&dq, &a.task, &tags[0], fam_of(0)) == 0);
	TAP_CHECK(ag__deque_push(&dq, &b.task, &tags[1], fam_of(1)) == 0);
	TAP_CHECK(ag__deque_pop(&dq, &only[0]) == NULL); /* bottom is b */
	TAP_CHECK(ag__deque_steal(&dq, &only[1], &t) == AG_STEAL_OTHER);
	TAP_CHECK(ag__deque_steal(&dq, &only[0], &t) == AG_STEAL_OK);
	TAP_CHECK(t == &a.task);
	TAP_CHECK(ag__deque_pop(&dq, &only[1]) == &b.task);
	TAP_CHECK(ag__deque_pop(&dq, NULL) == NULL);
	/* A family matches every tag of it, and nothing else. */
	TAP_CHECK(ag__deque_push(&dq, &c.task, &tags[2], fam_of(2)) == 0);
	TAP_CHECK(ag__deque_push(&dq, &a.task, &tags[0], fam_of(0)) == 0);
	TAP_CHECK(ag__deque_steal(&dq, &t1f0, &t) == AG_STEAL_OTHER); /* c */
	TAP_CHECK(ag__deque_pop(&dq, &t1f0) == &a.task);
	TAP_CHECK(ag__deque_pop(&dq, &t0f0) == NULL); /* c is of family 1 */
	TAP_CHECK(ag__deque_steal(&dq, &fam0, &t) == AG_STEAL_OK);
	TAP_CHECK(t == &c.task);
	TAP_CHECK(ag__deque_pop(&dq, NULL) == NULL);
	/* Growth keeps order and contents, tags and families. */
	for (int i = 0; i < 3 * AG_DEQUE_INIT_CAP; i++)
		TAP_CHECK(ag__deque_push(&dq, &a.task, &tags[i % 3],
					 fam_of(i % 3)) == 0);
	for (int i = 3 * AG_DEQUE_INIT_CAP - 1; i >= 0; i--) {
		int tag = i % 3;

		TAP_CHECK(ag__deque_pop(&dq, tag == 2 ? &t0f0 : &t2f1) == NULL);
		TAP_CHECK(ag__deque_pop(&dq, i & 1 ? &only[tag] : &fam0) ==
			  &a.task);
	}
	TAP_CHECK(ag__deque_pop(&dq, NULL) == NULL);
	ag__deque_destroy(&dq);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_edges),
	TAP_TEST(test_exactly_once),
	TAP_TEST(test_exactly_once_tagged_thieves),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
