// SPDX-License-Identifier: MIT
/*
 * Per-thread free lists for the small objects every op makes: tensors,
 * autograd state, nodes and small storages.  A backward pass frees tens of
 * thousands of them and the next forward makes them again; through glibc
 * that churn cost more than the math (bin consolidation on every batch).
 *
 * Blocks come in size classes; a 16-byte header keeps the class.  A freed
 * block goes on the freeing thread's list, whoever allocated it; past
 * CACHE_MAX a list spills half to a global list (one mutex), where other
 * threads refill in batches.  Memory is kept for reuse, never returned,
 * so the peak is bounded by the peak of live objects.  Under
 * AddressSanitizer the lists are bypassed so that use-after-free is caught.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define AG_ALLOC_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AG_ALLOC_PASSTHROUGH 1
#endif
#endif

#ifndef AG_ALLOC_PASSTHROUGH
#define AG_ALLOC_PASSTHROUGH 0
#endif
static const bool passthrough = AG_ALLOC_PASSTHROUGH;

#define HEADER 16
#define CACHE_MAX 1024
#define BATCH 256

static const size_t class_size[] = { 64,  128, 192,  256,  384,
				     512, 768, 1024, 1536, 2048 };
#define NCLASS (sizeof(class_size) / sizeof(class_size[0]))
#define LARGE NCLASS

struct free_block {
	struct free_block *next;
};

struct cache {
	struct free_block *head[NCLASS];
	int count[NCLASS];
	bool registered;
};

static _Thread_local struct cache tcache;
static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;
static struct free_block *global_head[NCLASS];
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static int class_of(size_t size)
{
	for (size_t c = 0; c < NCLASS; c++)
		if (size <= class_size[c])
			return (int)c;
	return LARGE;
}

/* Moves up to n blocks of class c from this thread to the global list. */
static void spill(struct cache *tc, int c, int n)
{
	struct free_block *first = tc->head[c], *last = first;
	int k = 1;

	while (k < n && last->next) {
		last = last->next;
		k++;
	}
	tc->head[c] = last->next;
	tc->count[c] -= k;
	pthread_mutex_lock(&global_lock);
	last->next = global_head[c];
	global_head[c] = first;
	pthread_mutex_unlock(&global_lock);
}

static void thread_exit(void *arg)
{
	struct cache *tc = &tcache;

	(void)arg;
	for (size_t c = 0; c < NCLASS; c++)
		if (tc->head[c])
			spill(tc, (int)c, tc->count[c]);
}

static void make_key(void)
{
	pthread_key_create(&exit_key, thread_exit);
}

static void register_thread(struct cache *tc)
{
	pthread_once(&exit_once, make_key);
	pthread_setspecific(exit_key, tc);
	tc->registered = true;
}

/* Takes up to BATCH blocks of class c from the global list. */
static void refill(struct cache *tc, int c)
{
	struct free_block *b;

	pthread_mutex_lock(&global_lock);
	for (int i = 0; i < BATCH && (b = global_head[c]); i++) {
		global_head[c] = b->next;
		b->next = tc->head[c];
		tc->head[c] = b;
		tc->count[c]++;
	}
	pthread_mutex_unlock(&global_lock);
}

void *ag__alloc(size_t size)
{
	struct cache *tc = &tcache;
	int c = class_of(size);
	unsigned char *p;

	if (!passthrough && c != LARGE) {
		struct free_block *b;

		if (!tc->head[c])
			refill(tc, c);
		b = tc->head[c];
		if (b) {
			tc->head[c] = b->next;
			tc->count[c]--;
			return b; /* lists link user areas; headers stay */
		}
	}
	p = malloc(HEADER + (c == LARGE ? size : class_size[c]));
	if (!p)
		return NULL;
	*(int *)p = c;
	return p + HEADER;
}

void *ag__zalloc(size_t size)
{
	void *p = ag__alloc(size);

	if (p)
		memset(p, 0, size);
	return p;
}

void ag__free(void *ptr)
{
	struct cache *tc = &tcache;
	unsigned char *p;
	int c;

	if (!ptr)
		return;
	p = (unsigned char *)ptr - HEADER;
	c = *(int *)p;
	if (!passthrough && c != LARGE) {
		struct free_block *b = ptr;

		if (!tc->registered)
			register_thread(tc);
		b->next = tc->head[c];
		tc->head[c] = b;
		if (++tc->count[c] > CACHE_MAX)
			spill(tc, c, CACHE_MAX / 2);
		return;
	}
	free(p);
}
