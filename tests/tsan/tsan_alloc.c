// SPDX-License-Identifier: MIT
/*
 * The small-object allocator (engine/alloc.c) under ThreadSanitizer: blocks
 * of every class allocated on one thread and freed on another, magazines
 * traded through the depot, and threads exiting with magazines in hand.
 * Every block is filled with a pattern naming its owner and checked before
 * it is freed, so a block handed out twice shows up as a wrong pattern.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "tap.h"
#include "internal.h"

#define THREADS 4
#define ROUNDS 6
#define PER_ROUND 3000

static const size_t sizes[] = { 1,   48,  49,	112,  176,  240,  300,	368,
				496, 752, 1008, 1520, 2032, 2033, 4096, 70000 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

struct slot {
	unsigned char *p;
	size_t n;
	unsigned char tag;
};

/* Blocks made by thread i in a round are freed by thread i + 1. */
static struct slot made[THREADS][PER_ROUND];
static pthread_barrier_t barrier;
static int bad;

static void fill(struct slot *s, size_t n, unsigned char tag)
{
	s->p = ag__alloc(n);
	s->n = n;
	s->tag = tag;
	if (s->p)
		memset(s->p, tag, n);
}

static int check_and_free(struct slot *s)
{
	int wrong = 0;

	if (!s->p)
		return 1;
	for (size_t k = 0; k < s->n; k++)
		wrong |= s->p[k] != s->tag;
	ag__free(s->p);
	s->p = NULL;
	return wrong;
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint32_t x = 2463534242u + (uint32_t)id;

	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < PER_ROUND; i++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			fill(&made[id][i], sizes[x % NSIZES],
			     (unsigned char)(id * 16 + r + 1));
		}
		pthread_barrier_wait(&barrier);
		for (int i = 0; i < PER_ROUND; i++)
			if (check_and_free(&made[(id + 1) % THREADS][i]))
				__atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
		pthread_barrier_wait(&barrier);
	}
	return NULL;
}

static int test_cross_thread_free_and_exit(void)
{
	pthread_t t[THREADS];

	/* twice: the second set of threads lives off the first one's depot */
	for (int pass = 0; pass < 2; pass++) {
		pthread_barrier_init(&barrier, NULL, THREADS);
		for (int i = 0; i < THREADS; i++)
			TAP_CHECK(pthread_create(&t[i], NULL, worker,
						 (void *)(intptr_t)i) == 0);
		for (int i = 0; i < THREADS; i++)
			pthread_join(t[i], NULL);
		pthread_barrier_destroy(&barrier);
		TAP_CHECKF(bad == 0, "%d blocks came back altered", bad);
	}
	return 0;
}

/* One thread: blocks are distinct, 16-byte aligned and keep their bytes. */
static int test_distinct_blocks(void)
{
	static struct slot s[2 * 4096];

	for (int i = 0; i < 2 * 4096; i++) {
		fill(&s[i], sizes[i % NSIZES], (unsigned char)i);
		TAP_CHECK(s[i].p && ((uintptr_t)s[i].p & 15) == 0);
	}
	for (int i = 0; i < 2 * 4096; i++)
		TAP_CHECKF(!check_and_free(&s[i]), "block %d altered", i);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_distinct_blocks),
	TAP_TEST(test_cross_thread_free_and_exit),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
