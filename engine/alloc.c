// SPDX-License-Identifier: MIT
/*
 * Per-thread free lists for the small objects every op makes: tensors,
 * autograd state, nodes and small storages.  A backward pass frees tens of
 * thousands of them and the next forward makes them again; through glibc
 * that churn cost more than the math (bin consolidation on every batch).
 *
 * Blocks come in size classes; a 16-byte header keeps the class, and a
 * header plus its class is a whole number of cache lines.  Each thread
 * keeps two magazines (arrays of free blocks) per class and pops and
 * pushes there without touching the blocks themselves: a free list linked
 * through the blocks made every allocation wait on a cache miss to read
 * the next link, one after another.  A full or empty magazine is traded
 * with a global depot under one mutex, once per MAG_SIZE operations.  New
 * blocks are carved in order from per-thread slabs, so a forward pass
 * writes its objects as one stream.  Memory is kept for reuse, so the
 * small-object cache is bounded by the peak of live objects (each thread
 * holds at most two magazines per class; the rest is in the depot), and
 * ag_trim() returns every slab whose blocks are all free in the depot.
 * Under AddressSanitizer all of it is bypassed so that use-after-free is
 * caught.
 *
 * The C library's allocator is wrapped here too (ag__malloc and friends):
 * every allocation of libag passes this file, which sets the error when one
 * fails and, in tests, makes a chosen one fail (ag__fault_set).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <ag/memory.h>

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
/*
 * A header plus its class is a whole number of cache lines: every line up
 * to 512 bytes, then four steps per power of two.  Fine steps matter: the
 * objects of a small-tensor op are a few hundred bytes each, and the
 * footprint of a long graph decides whether backward runs from cache.
 */
static const size_t class_size[] = {
	48,  112, 176, 240,  304,  368,	 432,  496,
	624, 752, 880, 1008, 1264, 1520, 1776, 2032
};
#define MAG_SIZE 254 /* a magazine is 2 KiB */
#define SLAB_BYTES ((size_t)256 << 10)
#define NCLASS (sizeof(class_size) / sizeof(class_size[0]))
#define LARGE ((int)NCLASS)

struct free_block {
	struct free_block *next;
};

/*
 * Big blocks (over 2032 bytes) would come from mmap past glibc's threshold, and
 * every fresh page then faults in on first touch: on the machines measured
 * that made a forward of 65536-element ops cost ten times its math.  They
 * are kept on global lists instead, in classes of 8 steps per power of two
 * (at most 12.5% slack), up to BIG_CACHE_MAX bytes in all.
 *
 * In front of the global lists each thread keeps a few blocks per class
 * (BIG_TC_PER_CLASS, at most BIG_TC_BYTES in all, blocks up to
 * BIG_TC_BLOCK): a batch-1 forward makes a handful of 2-8 KiB activations,
 * and taking the global lock for each made every request thread of a
 * service wait on the others (ag-bench --workload serve).  Eight per class,
 * not four: the cnn's batch-1 input-gradient request frees more than four
 * blocks of some classes, and at 64 request threads four cost it 5-14% of
 * its rate (docs/serving.md).  ag_trim() frees the global lists and its
 * caller's cache, and bumps trim_epoch: every other thread frees its own
 * cache at its next big allocation or free.  An ag_gate's places keep
 * caches of the same kind (ag__big_cache, below).
 */
#define BIG_BASE 100 /* header class of the first big class */
#define BIG_MIN_SHIFT 11
#define BIG_MAX_SHIFT 31
#define BIG_NCLASS ((BIG_MAX_SHIFT - BIG_MIN_SHIFT) * 8)
#define BIG_CACHE_MAX ((size_t)512 << 20)

#define BIG_TC_PER_CLASS AG__BIG_TC_PER_CLASS
#define BIG_TC_BYTES ((size_t)4 << 20)
#define BIG_TC_BLOCK ((size_t)1 << 20)

static pthread_mutex_t big_lock = PTHREAD_MUTEX_INITIALIZER;
static struct free_block *big_head[BIG_NCLASS];
static size_t big_cached;
static atomic_uint trim_epoch;

/* A thread's big blocks; malloc'd on first use, to keep the TLS small. */
struct big_tc {
	struct free_block *head[BIG_NCLASS];
	unsigned char n[BIG_NCLASS];
	size_t bytes;
	unsigned epoch; /* trim_epoch when last emptied */
};

/* Big class index for size (>= 2048), or -1 past the largest class. */
static int big_class(size_t size, size_t *class_bytes)
{
	int shift = 63 - __builtin_clzll((unsigned long long)size);
	size_t step, sub;

	if (shift >= BIG_MAX_SHIFT)
		return -1;
	step = (size_t)1 << (shift - 3);
	sub = (size - ((size_t)1 << shift) + step - 1) / step;
	*class_bytes = ((size_t)1 << shift) + sub * step;
	return (shift - BIG_MIN_SHIFT) * 8 + (int)sub;
}

static size_t big_bytes(int k)
{
	int shift = BIG_MIN_SHIFT + k / 8;

	return ((size_t)1 << shift) +
	       (size_t)(k % 8) * ((size_t)1 << (shift - 3));
}

static void *oom(size_t size);
static struct big_tc *big_tc_get(bool make);

/* Frees every block of bt (this thread's). */
static void big_tc_drain(struct big_tc *bt)
{
	for (int k = 0; k < BIG_NCLASS; k++) {
		while (bt->head[k]) {
			struct free_block *b = bt->head[k];

			bt->head[k] = b->next;
			free((unsigned char *)b - HEADER);
		}
		bt->n[k] = 0;
	}
	bt->bytes = 0;
}

/* This thread's big cache, emptied first if ag_trim() ran since. */
static struct big_tc *big_tc_current(bool make)
{
	struct big_tc *bt = big_tc_get(make);
	unsigned e;

	if (!bt)
		return NULL;
	e = atomic_load_explicit(&trim_epoch, memory_order_relaxed);
	if (bt->epoch != e) {
		big_tc_drain(bt);
		bt->epoch = e;
	}
	return bt;
}

/* NULL with the error set when out of memory, like every path below. */
static void *big_alloc(size_t size)
{
	size_t req = size, bytes, min = (size_t)1 << BIG_MIN_SHIFT;
	unsigned char *p = NULL;
	struct big_tc *bt;
	int k;

	size = bytes = size < min ? min : size;
	k = big_class(size, &bytes);

	if (k >= 0 && !passthrough) {
		bt = big_tc_current(false);
		if (bt && bt->head[k]) {
			struct free_block *b = bt->head[k];

			bt->head[k] = b->next;
			bt->n[k]--;
			bt->bytes -= bytes;
			return b;
		}
		pthread_mutex_lock(&big_lock);
		if (big_head[k]) {
			struct free_block *b = big_head[k];

			big_head[k] = b->next;
			big_cached -= bytes;
			pthread_mutex_unlock(&big_lock);
			return b;
		}
		pthread_mutex_unlock(&big_lock);
	}
	p = malloc(HEADER + bytes);
	if (!p)
		return oom(req);
	*(int *)p = k >= 0 ? BIG_BASE + k : LARGE;
	return p + HEADER;
}

static void big_free(void *ptr, int c)
{
	struct free_block *b = ptr;
	int k = c - BIG_BASE;
	size_t bytes = big_bytes(k);
	struct big_tc *bt;

	if (bytes <= BIG_TC_BLOCK && (bt = big_tc_current(true)) &&
	    bt->n[k] < BIG_TC_PER_CLASS && bt->bytes + bytes <= BIG_TC_BYTES) {
		b->next = bt->head[k];
		bt->head[k] = b;
		bt->n[k]++;
		bt->bytes += bytes;
		return;
	}
	pthread_mutex_lock(&big_lock);
	if (big_cached + bytes <= BIG_CACHE_MAX) {
		b->next = big_head[k];
		big_head[k] = b;
		big_cached += bytes;
		b = NULL;
	}
	pthread_mutex_unlock(&big_lock);
	if (b)
		free((unsigned char *)ptr - HEADER);
}

struct magazine {
	struct magazine *next; /* on a depot list */
	int n;
	void *p[MAG_SIZE];
};

struct cache {
	struct magazine *loaded[NCLASS];
	struct magazine *prev[NCLASS];
	unsigned char *slab; /* fresh blocks are carved from here */
	size_t slab_left;
	struct slab *cur; /* the slab being carved */
	struct big_tc *big;
	struct big_tc *bound; /* a gate place's, used instead of big */
	bool registered;
};

/*
 * A slab: SLAB_BYTES, aligned to SLAB_BYTES so that a block finds its slab
 * by masking its address; this header fills the first line.  nblocks counts
 * the blocks carved (written by the carving thread only, until retired);
 * a retired slab is carved no more, and once ag_trim() finds all its blocks
 * free in the depot, it goes back to the system.
 */
struct slab {
	struct slab *next; /* every slab, in the depot */
	size_t nblocks;
	size_t nfree; /* ag_trim's count, under global_lock */
	bool retired;
};

/*
 * The depot, under global_lock: per class, magazines holding blocks and
 * empty ones; blocks that found no magazine (its malloc failed) on an
 * intrusive list; and every slab ever carved, so that none is lost.
 */
struct depot {
	struct magazine *full[NCLASS];
	struct magazine *empty[NCLASS];
	struct free_block *loose[NCLASS];
	struct slab *slabs;
	size_t nslabs;
};

static AG_TLS struct cache tcache;
static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;
static struct depot depot;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

/* The class whose block (header + class) holds size bytes. */
static int class_of(size_t size)
{
	size_t b = size + HEADER - 1;
	int shift;

	if (size > class_size[NCLASS - 1])
		return LARGE;
	if (b < 512)
		return (int)(b / 64);
	shift = 63 - __builtin_clzll((unsigned long long)b);
	return 8 + (shift - 9) * 4 +
	       (int)((b - ((size_t)1 << shift)) >> (shift - 2));
}

/* Under global_lock: tc's magazines and slab go to the depot. */
static void cache_to_depot(struct cache *tc)
{
	for (size_t c = 0; c < NCLASS; c++) {
		struct magazine *m[2] = { tc->loaded[c], tc->prev[c] };

		for (int i = 0; i < 2; i++) {
			struct magazine **list;

			if (!m[i])
				continue;
			list = m[i]->n ? &depot.full[c] : &depot.empty[c];
			m[i]->next = *list;
			*list = m[i];
		}
		tc->loaded[c] = tc->prev[c] = NULL;
	}
	if (tc->cur)
		tc->cur->retired = true;
	tc->cur = NULL;
	tc->slab = NULL;
	tc->slab_left = 0;
}

static void thread_exit(void *arg)
{
	struct cache *tc = arg;

	pthread_mutex_lock(&global_lock);
	cache_to_depot(tc);
	pthread_mutex_unlock(&global_lock);
	if (tc->big) {
		big_tc_drain(tc->big);
		free(tc->big);
		tc->big = NULL;
	}
	tc->bound = NULL; /* the gate's, not ours to free */
	/* a destructor that runs later and frees registers again */
	tc->registered = false;
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

static struct big_tc *big_tc_get(bool make)
{
	struct cache *tc = &tcache;

	if (tc->bound)
		return tc->bound;
	if (tc->big || !make)
		return tc->big;
	tc->big = calloc(1, sizeof(*tc->big));
	if (!tc->big)
		return NULL;
	tc->big->epoch =
		atomic_load_explicit(&trim_epoch, memory_order_relaxed);
	if (!tc->registered)
		register_thread(tc);
	return tc->big;
}

/*
 * Big-block caches that belong to an ag_gate's places (engine/pool/gate.c)
 * rather than to threads.  While a thread holds a place, its big blocks
 * come from and go to the place's cache: the next holder, usually woken on
 * the CPU the last one left, reuses the activations that one freed, still
 * in that CPU's cache, instead of its own blocks, cold after a wait for
 * every other thread's turn.  Exclusive like a thread's: one holder at a
 * time, handed over under the gate's lock.
 */
struct ag__big_cache *ag__big_cache_new(void)
{
	struct big_tc *bt = calloc(1, sizeof(*bt));

	if (bt)
		bt->epoch =
			atomic_load_explicit(&trim_epoch, memory_order_relaxed);
	return (struct ag__big_cache *)bt;
}

void ag__big_cache_free(struct ag__big_cache *c)
{
	struct big_tc *bt = (struct big_tc *)c;

	if (!bt)
		return;
	big_tc_drain(bt);
	free(bt);
}

void ag__big_cache_bind(struct ag__big_cache *c)
{
	struct cache *tc = &tcache;

	if (c && !tc->registered)
		register_thread(tc); /* so that thread exit unbinds */
	tc->bound = (struct big_tc *)c;
}

/* A zeroed slab aligned to SLAB_BYTES, from the system; NULL if none. */
static struct slab *slab_map(void)
{
	size_t len = 2 * SLAB_BYTES;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t a, head, tail;

	if (p == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)p + SLAB_BYTES - 1) & ~(uintptr_t)(SLAB_BYTES - 1);
	head = a - (uintptr_t)p;
	tail = len - head - SLAB_BYTES;
	if (head)
		munmap(p, head);
	if (tail)
		munmap((unsigned char *)a + SLAB_BYTES, tail);
	return (struct slab *)a;
}

static struct slab *slab_of(const void *block)
{
	return (struct slab *)((uintptr_t)block & ~(uintptr_t)(SLAB_BYTES - 1));
}

/* A fresh block of class c, carved from this thread's slab. */
static void *carve(struct cache *tc, int c)
{
	size_t bytes = HEADER + class_size[c];
	unsigned char *p;

	if (tc->slab_left < bytes) {
		struct slab *s = slab_map();

		if (!s)
			return NULL;
		pthread_mutex_lock(&global_lock);
		if (tc->cur)
			tc->cur->retired = true;
		s->next = depot.slabs;
		depot.slabs = s;
		depot.nslabs++;
		pthread_mutex_unlock(&global_lock);
		/* the first line keeps the slab's header */
		tc->cur = s;
		tc->slab = (unsigned char *)s + AG_ALIGN;
		tc->slab_left = SLAB_BYTES - AG_ALIGN;
	}
	p = tc->slab;
	tc->slab += bytes;
	tc->slab_left -= bytes;
	tc->cur->nblocks++;
	*(int *)p = c;
	return p + HEADER;
}

/*
 * The loaded magazine of class c is empty: swap in the previous one if it
 * has blocks, else trade the empty one for a depot magazine with blocks,
 * else carve.
 */
static void *alloc_slow(struct cache *tc, int c, size_t size)
{
	struct magazine *m = tc->prev[c];
	void *b = NULL;

	if (!tc->registered)
		register_thread(tc);
	if (m && m->n) {
		tc->prev[c] = tc->loaded[c];
		tc->loaded[c] = m;
		return m->p[--m->n];
	}
	pthread_mutex_lock(&global_lock);
	m = depot.full[c];
	if (m) {
		depot.full[c] = m->next;
		if (tc->loaded[c]) {
			tc->loaded[c]->next = depot.empty[c];
			depot.empty[c] = tc->loaded[c];
		}
		tc->loaded[c] = m;
		b = m->p[--m->n];
	} else if (depot.loose[c]) {
		struct free_block *f = depot.loose[c];

		depot.loose[c] = f->next;
		b = f;
	}
	pthread_mutex_unlock(&global_lock);
	if (!b)
		b = carve(tc, c);
	return b ? b : oom(size);
}

/* An empty magazine from the depot or malloc; NULL when out of memory. */
static struct magazine *empty_magazine(int c)
{
	struct magazine *m;

	pthread_mutex_lock(&global_lock);
	m = depot.empty[c];
	if (m)
		depot.empty[c] = m->next;
	pthread_mutex_unlock(&global_lock);
	if (!m) {
		m = malloc(sizeof(*m));
		if (m)
			m->n = 0;
	}
	return m;
}

/*
 * The loaded magazine of class c is full (or missing): swap in the
 * previous one if it has room, else send the previous one to the depot and
 * start an empty one.
 */
static void free_slow(struct cache *tc, int c, void *ptr)
{
	struct magazine *m = tc->prev[c], *e;

	if (!tc->registered)
		register_thread(tc);
	if (m && m->n < MAG_SIZE) {
		tc->prev[c] = tc->loaded[c];
		tc->loaded[c] = m;
		m->p[m->n++] = ptr;
		return;
	}
	e = empty_magazine(c);
	pthread_mutex_lock(&global_lock);
	if (!e) {
		struct free_block *f = ptr;

		f->next = depot.loose[c];
		depot.loose[c] = f;
	} else if (m) {
		m->next = depot.full[c];
		depot.full[c] = m;
	}
	pthread_mutex_unlock(&global_lock);
	if (!e)
		return;
	tc->prev[c] = tc->loaded[c];
	tc->loaded[c] = e;
	e->p[e->n++] = ptr;
}

/*
 * Fault injection.  Off, an allocation pays one load of fault_armed and a
 * branch that is never taken.  On, every allocation from any thread takes a
 * number from fault_seen; the one numbered fault_at fails, and so does each
 * later one when fault_persistent.
 */
static atomic_bool fault_armed;
static atomic_long fault_seen;
static atomic_long fault_at; /* atomics: workers read them while armed */
static atomic_bool fault_persistent;

void ag__fault_set(long n, bool persistent)
{
	atomic_store(&fault_armed, false);
	atomic_store(&fault_seen, 0);
	atomic_store(&fault_at, n > 0 ? n : 0);
	atomic_store(&fault_persistent, persistent);
	if (n >= 0)
		atomic_store(&fault_armed, true);
}

long ag__fault_count(void)
{
	return atomic_load(&fault_seen);
}

static __attribute__((noinline, cold)) bool fault_hit(void)
{
	long k = atomic_fetch_add(&fault_seen, 1) + 1;
	long at = atomic_load(&fault_at);

	if (!at)
		return false;
	return atomic_load(&fault_persistent) ? k >= at : k == at;
}

static inline bool fault(void)
{
	return __builtin_expect(atomic_load_explicit(&fault_armed,
						     memory_order_relaxed),
				0) &&
	       fault_hit();
}

static __attribute__((noinline, cold)) void *oom(size_t size)
{
	ag__err(AG_ENOMEM, "out of memory allocating %zu bytes", size);
	return NULL;
}

static __attribute__((noinline, cold)) void *oom_n(size_t n, size_t size)
{
	ag__err(AG_ENOMEM, "out of memory allocating %zu x %zu bytes", n, size);
	return NULL;
}

/*
 * How many allocations of a class ahead to prefetch.  A chain step makes
 * five blocks of one class; one step ahead was not enough lead time once
 * blocks are recycled out of order (ag-bench alternates two workloads):
 * 8 gave forward 68-70 ns/node against 72-75 for 1, on quiet runs.
 */
#define ALLOC_AHEAD 8

static inline __attribute__((always_inline)) void *alloc(size_t size)
{
	struct cache *tc = &tcache;
	int c = class_of(size);
	struct magazine *m;
	unsigned char *p;

	if (c == LARGE)
		return big_alloc(size);
	if (passthrough) {
		p = malloc(HEADER + class_size[c]);
		if (!p)
			return oom(size);
		*(int *)p = c;
		return p + HEADER;
	}
	m = tc->loaded[c];
	if (m && m->n) {
		/*
		 * Recycled blocks are usually out of cache: start fetching the
		 * one an allocation of this class a little later will get.
		 */
		if (m->n > ALLOC_AHEAD) {
			char *next = m->p[m->n - 1 - ALLOC_AHEAD];

			/* the lines an op writes first: header, shape, storage;
			 * not past the block (a tensor block is 4 lines) */
			size_t lines = (HEADER + class_size[c]) / AG_CACHE_LINE;

			__builtin_prefetch(next, 1);
			if (lines > 1)
				__builtin_prefetch(next + AG_CACHE_LINE, 1);
			if (lines > 2)
				__builtin_prefetch(next + 2 * AG_CACHE_LINE, 1);
			if (lines > 3)
				__builtin_prefetch(next + 3 * AG_CACHE_LINE, 1);
			if (lines > 4)
				__builtin_prefetch(next + 4 * AG_CACHE_LINE, 1);
		}
		return m->p[--m->n];
	}
	return alloc_slow(tc, c, size);
}

static __attribute__((noinline, cold)) void *alloc_armed(size_t size)
{
	return fault_hit() ? oom(size) : alloc(size);
}

/*
 * The injector's test is a jump to a function of its own: tested inside
 * alloc(), the call it may make cost the fast path three registers saved
 * and restored.
 */
void *ag__alloc(size_t size)
{
	if (__builtin_expect(atomic_load_explicit(&fault_armed,
						  memory_order_relaxed),
			     0))
		return alloc_armed(size);
	return alloc(size);
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
	struct magazine *m;
	unsigned char *p;
	int c;

	if (!ptr)
		return;
	p = (unsigned char *)ptr - HEADER;
	c = *(int *)p;
	if (c >= BIG_BASE && !passthrough) {
		big_free(ptr, c);
		return;
	}
	if (passthrough || c == LARGE) {
		free(p);
		return;
	}
	m = tc->loaded[c];
	if (m && m->n < MAG_SIZE) {
		m->p[m->n++] = ptr;
		return;
	}
	free_slow(tc, c, ptr);
}

int ag__array_grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t nc = *cap ? *cap : 16;
	void *q;

	if (need <= *cap)
		return 0;
	while (nc < need && nc <= SIZE_MAX / 2)
		nc *= 2;
	if (nc < need || (elem && nc > SIZE_MAX / elem)) {
		oom_n(need, elem);
		return -AG_ENOMEM;
	}
	q = ag__alloc(nc * elem);
	if (!q)
		return -AG_ENOMEM;
	if (*cap)
		memcpy(q, *p, *cap * elem);
	ag__free(*p);
	*p = q;
	*cap = nc;
	return 0;
}

void *ag__malloc(size_t size)
{
	void *p;

	if (fault())
		return oom(size);
	p = malloc(size ? size : 1);
	return p ? p : oom(size);
}

void *ag__calloc(size_t n, size_t size)
{
	void *p;

	if (size && n > SIZE_MAX / size)
		return oom_n(n, size);
	if (fault())
		return oom_n(n, size);
	p = n && size ? calloc(n, size) : calloc(1, 1);
	return p ? p : oom_n(n, size);
}

void *ag__realloc(void *p, size_t size)
{
	void *q;

	if (fault())
		return oom(size);
	q = realloc(p, size ? size : 1);
	return q ? q : oom(size);
}

void *ag__aligned_alloc(size_t align, size_t size)
{
	size_t bytes = (size + align - 1) & ~(align - 1);
	void *p;

	if (bytes < size)
		return oom(size);
	if (fault())
		return oom(size);
	p = aligned_alloc(align, bytes ? bytes : align);
	return p ? p : oom(size);
}

char *ag__strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = ag__malloc(n);

	if (p)
		memcpy(p, s, n);
	return p;
}

void ag__mfree(void *p)
{
	free(p);
}

/* ----------------------------------------------------------- trimming */

/* Under global_lock: drops the blocks of doomed slabs from magazine m. */
static void mag_filter(struct magazine *m)
{
	int j = 0;

	for (int i = 0; i < m->n; i++)
		if (slab_of(m->p[i])->nfree != SIZE_MAX)
			m->p[j++] = m->p[i];
	m->n = j;
}

/* Under global_lock: the same for an intrusive list. */
static void loose_filter(struct free_block **head)
{
	while (*head) {
		if (slab_of(*head)->nfree == SIZE_MAX)
			*head = (*head)->next;
		else
			head = &(*head)->next;
	}
}

/*
 * Under global_lock: counts the depot's free blocks per retired slab,
 * unmaps each slab all of whose blocks are there (nfree == SIZE_MAX marks
 * it doomed while its blocks are dropped), and frees the empty magazines.
 * Returns the bytes given back.
 */
static size_t trim_depot(void)
{
	struct slab **sp, *s;
	size_t freed = 0, ndoomed = 0;

	for (s = depot.slabs; s; s = s->next)
		s->nfree = 0;
	for (size_t c = 0; c < NCLASS; c++) {
		for (struct magazine *m = depot.full[c]; m; m = m->next)
			for (int i = 0; i < m->n; i++)
				slab_of(m->p[i])->nfree++;
		for (struct free_block *f = depot.loose[c]; f; f = f->next)
			slab_of(f)->nfree++;
	}
	for (s = depot.slabs; s; s = s->next) {
		if (s->retired && s->nfree == s->nblocks) {
			s->nfree = SIZE_MAX;
			ndoomed++;
		}
	}
	for (size_t c = 0; c < NCLASS; c++) {
		struct magazine **mp = &depot.full[c];

		if (ndoomed) {
			loose_filter(&depot.loose[c]);
			while (*mp) {
				struct magazine *m = *mp;

				mag_filter(m);
				if (m->n) {
					mp = &m->next;
					continue;
				}
				*mp = m->next;
				free(m);
				freed += sizeof(*m);
			}
		}
		while (depot.empty[c]) {
			struct magazine *m = depot.empty[c];

			depot.empty[c] = m->next;
			free(m);
			freed += sizeof(*m);
		}
	}
	for (sp = &depot.slabs; (s = *sp);) {
		if (s->nfree != SIZE_MAX) {
			sp = &s->next;
			continue;
		}
		*sp = s->next;
		depot.nslabs--;
		munmap(s, SLAB_BYTES);
		freed += SLAB_BYTES;
	}
	return freed;
}

size_t ag_trim(void)
{
	struct cache *tc = &tcache;
	size_t freed = 0;

	if (passthrough)
		goto out;
	/* this thread's magazines and slab go to the depot, as at exit */
	pthread_mutex_lock(&global_lock);
	cache_to_depot(tc);
	freed += trim_depot();
	pthread_mutex_unlock(&global_lock);

	/* every thread's big cache: this one now, the others on next use */
	atomic_fetch_add_explicit(&trim_epoch, 1, memory_order_relaxed);
	if (tc->big) {
		freed += tc->big->bytes;
		big_tc_drain(tc->big);
		tc->big->epoch =
			atomic_load_explicit(&trim_epoch, memory_order_relaxed);
	}
	pthread_mutex_lock(&big_lock);
	for (int k = 0; k < BIG_NCLASS; k++) {
		while (big_head[k]) {
			struct free_block *b = big_head[k];

			big_head[k] = b->next;
			free((unsigned char *)b - HEADER);
		}
	}
	freed += big_cached;
	big_cached = 0;
	pthread_mutex_unlock(&big_lock);
out:
#if defined(__GLIBC__)
	malloc_trim(0);
#endif
	return freed;
}

void ag__alloc_stats(struct ag__alloc_stats *st)
{
	struct big_tc *bt = tcache.big;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&big_lock);
	st->big_global_bytes = big_cached;
	pthread_mutex_unlock(&big_lock);
	st->big_thread_bytes = bt ? bt->bytes : 0;
	pthread_mutex_lock(&global_lock);
	st->slabs = depot.nslabs;
	for (size_t c = 0; c < NCLASS; c++) {
		for (struct magazine *m = depot.full[c]; m; m = m->next)
			st->depot_blocks += (size_t)m->n;
		for (struct magazine *m = depot.empty[c]; m; m = m->next)
			st->depot_empty_mags++;
	}
	pthread_mutex_unlock(&global_lock);
}

/* A child of fork() must not inherit a lock some other thread held. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&big_lock);
	pthread_mutex_lock(&global_lock);
}

static void atfork_release(void)
{
	pthread_mutex_unlock(&global_lock);
	pthread_mutex_unlock(&big_lock);
}

__attribute__((constructor)) static void alloc_init(void)
{
	pthread_atfork(atfork_prepare, atfork_release, atfork_release);
}
