// SPDX-License-Identifier: MIT
/*
 * ag_parallel_for: every index exactly once, chunk sizes, nesting three
 * deep, calls from inside pool tasks and from many threads at once,
 * resizing between uses, and argument errors.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>
#include <ag/tensor.h>

#include "../tsan/tap.h"
#include "internal.h"
#include "pool/pool.h"
#include "util.h"

struct cover {
	atomic_uchar *hits;
	int64_t grain;
	int64_t n;
	atomic_int short_chunks;
	atomic_int bad;
};

static void cover_fn(int64_t b, int64_t e, void *arg)
{
	struct cover *c = arg;

	if (b < 0 || e > c->n || b >= e)
		atomic_fetch_add(&c->bad, 1);
	if (e - b < c->grain && e != c->n)
		atomic_fetch_add(&c->short_chunks, 1);
	for (int64_t i = b; i < e; i++)
		atomic_fetch_add_explicit(&c->hits[i], 1, memory_order_relaxed);
}

static int check_cover(int64_t n, int64_t grain)
{
	struct cover c = { .grain = grain < 1 ? 1 : grain, .n = n };

	c.hits = calloc((size_t)n + 1, 1);
	TAP_CHECK(c.hits);
	TAP_CHECK(ag_parallel_for(n, grain, cover_fn, &c) == 0);
	TAP_CHECK(atomic_load(&c.bad) == 0);
	TAP_CHECK(atomic_load(&c.short_chunks) == 0);
	for (int64_t i = 0; i < n; i++)
		TAP_CHECKF(atomic_load(&c.hits[i]) == 1,
			   "n=%lld grain=%lld: index %lld hit %d times",
			   (long long)n, (long long)grain, (long long)i,
			   atomic_load(&c.hits[i]));
	free(c.hits);
	return 0;
}

static int test_cover(void)
{
	static const int64_t ns[] = { 0, 1, 2, 3, 7, 100, 1000, 4097, 100003 };
	static const int64_t grains[] = { -5, 0, 1, 3, 64, 1000, 200000 };
	static const int sizes[] = { 1, 2, 3, 16 };

	for (unsigned s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		TAP_CHECK(ag_set_num_threads(sizes[s]) == 0);
		for (unsigned i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
			for (unsigned j = 0;
			     j < sizeof(grains) / sizeof(grains[0]); j++)
				TAP_CHECK(check_cover(ns[i], grains[j]) == 0);
	}
	return 0;
}

static void nop(int64_t b, int64_t e, void *arg)
{
	(void)b;
	(void)e;
	(void)arg;
}

static int test_errors(void)
{
	ag_clear_error();
	TAP_CHECK(ag_parallel_for(10, 1, NULL, NULL) == -AG_EINVAL);
	TAP_CHECK(ag_errcode() == AG_EINVAL);
	TAP_CHECK(ag_parallel_for(-1, 1, nop, NULL) == -AG_EINVAL);
	TAP_CHECK(ag_parallel_for(0, 1, nop, NULL) == 0);
	return 0;
}

/*
 * A split too large for the on-stack task array allocates it; when that
 * fails the loop runs serially, correctly, and leaves no error behind:
 * a caller that cleared the error and got 0 must read no error.
 */
static void count_fn(int64_t b, int64_t e, void *arg)
{
	atomic_fetch_add_explicit((atomic_llong *)arg, e - b,
				  memory_order_relaxed);
}

static int test_alloc_failure_runs_serially(void)
{
	int64_t n = 1 << 16;
	atomic_llong done = 0;

	TAP_CHECK(ag_set_num_threads(8) == 0);
	TAP_CHECK(check_cover(n, 1) == 0); /* starts the workers */
	ag_clear_error();
	ag__fault_set(1, true);
	TAP_CHECK(ag_parallel_for(n, 1, count_fn, &done) == 0);
	TAP_CHECKF(ag__fault_count() >= 1, "no allocation was made (%ld)",
		   ag__fault_count());
	ag__fault_set(-1, false);
	TAP_CHECKF(ag_errcode() == 0, "error left set: %s", ag_errmsg());
	TAP_CHECK(atomic_load(&done) == n);
	return 0;
}

/* ---- nested three deep: sum over an n x n x n cube ---- */

#define N3 24

struct nest {
	atomic_long sum;
	atomic_int rc;
};

struct lvl {
	struct nest *nest;
	int64_t i, j;
};

static void lvl3(int64_t b, int64_t e, void *arg)
{
	struct lvl *l = arg;

	for (int64_t k = b; k < e; k++)
		atomic_fetch_add_explicit(&l->nest->sum,
					  l->i * N3 * N3 + l->j * N3 + k,
					  memory_order_relaxed);
}

static void lvl2(int64_t b, int64_t e, void *arg)
{
	struct lvl *up = arg;

	for (int64_t j = b; j < e; j++) {
		struct lvl l = { up->nest, up->i, j };

		if (ag_parallel_for(N3, 2, lvl3, &l))
			atomic_store(&up->nest->rc, -1);
	}
}

static void lvl1(int64_t b, int64_t e, void *arg)
{
	struct nest *nest = arg;

	for (int64_t i = b; i < e; i++) {
		struct lvl l = { nest, i, 0 };

		if (ag_parallel_for(N3, 1, lvl2, &l))
			atomic_store(&nest->rc, -1);
	}
}

static int run_nested(void)
{
	struct nest nest = { 0 };
	long n = (long)N3 * N3 * N3;

	TAP_CHECK(ag_parallel_for(N3, 1, lvl1, &nest) == 0);
	TAP_CHECK(atomic_load(&nest.rc) == 0);
	TAP_CHECK(atomic_load(&nest.sum) == n * (n - 1) / 2);
	return 0;
}

static int test_nested_3_deep(void)
{
	static const int sizes[] = { 1, 2, 16 };

	for (unsigned s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		TAP_CHECK(ag_set_num_threads(sizes[s]) == 0);
		for (int rep = 0; rep < SCALE(16); rep++)
			TAP_CHECK(run_nested() == 0);
	}
	return 0;
}

/* ---- from inside pool tasks, and from many threads ---- */

struct in_task {
	struct ag_task task;
	int rc;
};

static void in_task_run(struct ag_task *t)
{
	struct in_task *it = ag_container_of(t, struct in_task, task);

	it->rc = check_cover(5000, 16);
}

static int test_inside_tasks(void)
{
	enum { N = 16 };
	struct in_task it[N];
	struct ag_group g;

	TAP_CHECK(ag_set_num_threads(4) == 0);
	ag__group_init(&g);
	for (int i = 0; i < N; i++) {
		ag__task_init(&it[i].task, in_task_run);
		it[i].rc = -1;
		ag__group_submit(&g, &it[i].task);
	}
	ag__group_wait(&g);
	for (int i = 0; i < N; i++)
		TAP_CHECK(it[i].rc == 0);
	return 0;
}

static void *caller(void *arg)
{
	long rc = 0;

	(void)arg;
	for (int i = 0; i < SCALE(40) && !rc; i++) {
		rc = check_cover(3000 + i, 8);
		if (!rc && i % 8 == 0)
			rc = run_nested();
	}
	return (void *)rc;
}

static int test_many_callers(void)
{
	enum { T = 4 };
	pthread_t th[T];

	TAP_CHECK(ag_set_num_threads(3) == 0);
	for (int i = 0; i < T; i++)
		TAP_CHECK(pthread_create(&th[i], NULL, caller, NULL) == 0);
	for (int i = 0; i < T; i++) {
		void *rc;

		pthread_join(th[i], &rc);
		TAP_CHECK(rc == NULL);
	}
	return 0;
}

/* ---- resize between uses ---- */

static int test_resize(void)
{
	static const int sizes[] = { 2, 1, 16, 3, 2, 0, 5 };

	for (unsigned s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		TAP_CHECK(ag_set_num_threads(sizes[s]) == 0);
		TAP_CHECK(check_cover(20000, 10) == 0);
		if (sizes[s])
			TAP_CHECK(ag_get_num_threads() == sizes[s]);
	}
	return 0;
}

/* Resizing while other threads use the pool drains it safely. */
static void *resizer(void *arg)
{
	atomic_bool *stop = arg;

	for (int i = 0; !atomic_load(stop); i++) {
		ag_set_num_threads(1 + i % 4);
		burn(20000);
	}
	return NULL;
}

static int test_resize_under_load(void)
{
	enum { T = 3 };
	pthread_t th[T], rs;
	atomic_bool stop = false;

	TAP_CHECK(pthread_create(&rs, NULL, resizer, &stop) == 0);
	for (int i = 0; i < T; i++)
		TAP_CHECK(pthread_create(&th[i], NULL, caller, NULL) == 0);
	for (int i = 0; i < T; i++) {
		void *rc;

		pthread_join(th[i], &rc);
		TAP_CHECK(rc == NULL);
	}
	atomic_store(&stop, true);
	pthread_join(rs, NULL);
	return 0;
}

static int test_threshold(void)
{
	TAP_CHECK(ag__parallel_threshold() > 0);
	return 0;
}

/* A pool with nothing to do sleeps: no core burns while idle. */
static int test_idle_no_cpu(void)
{
	struct timespec a, b;
	double cpu_ms;

	TAP_CHECK(ag_set_num_threads(4) == 0);
	TAP_CHECK(check_cover(50000, 10) == 0);
	usleep(20000); /* past the short spin */
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
	usleep(300000);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
	cpu_ms = (double)(b.tv_sec - a.tv_sec) * 1e3 +
		 (double)(b.tv_nsec - a.tv_nsec) / 1e6;
	printf("# idle pool of 4: %.2f ms CPU in 300 ms\n", cpu_ms);
	TAP_CHECK(cpu_ms < 30);
	return 0;
}

/*
 * Request threads (issue 16): once as many outside threads are inside
 * parallel regions as the pool has threads, ag_parallel_for runs the whole
 * range inline on its caller instead of splitting it into chunks that the
 * (busy) workers would run late.  A thread holds a region open inside its
 * chunks; the main thread's call must then come as one call over [0, n)
 * on the main thread.
 */
static atomic_int crowd_release, crowd_inside;

static void crowd_hold(int64_t b, int64_t e, void *arg)
{
	(void)b;
	(void)e;
	(void)arg;
	atomic_fetch_add(&crowd_inside, 1);
	while (!atomic_load(&crowd_release))
		sched_yield();
}

static void *crowd_thread(void *arg)
{
	(void)arg;
	ag_parallel_for(2, 1, crowd_hold, NULL);
	return NULL;
}

struct crowd_calls {
	atomic_int calls;
	atomic_llong covered;
	pthread_t caller;
	atomic_int elsewhere;
};

static void crowd_count(int64_t b, int64_t e, void *arg)
{
	struct crowd_calls *c = arg;

	atomic_fetch_add(&c->calls, 1);
	atomic_fetch_add(&c->covered, e - b);
	if (!pthread_equal(pthread_self(), c->caller))
		atomic_fetch_add(&c->elsewhere, 1);
}

static int test_crowded_runs_inline(void)
{
	struct crowd_calls c = { .caller = pthread_self() };
	pthread_t t;

	TAP_CHECK(ag_set_num_threads(2) == 0);
	atomic_store(&crowd_release, 0);
	atomic_store(&crowd_inside, 0);
	TAP_CHECK(pthread_create(&t, NULL, crowd_thread, NULL) == 0);
	while (atomic_load(&crowd_inside) < 1)
		sched_yield();
	/* two outside threads in regions, a pool of two: inline */
	TAP_CHECK(ag_parallel_for(1000, 1, crowd_count, &c) == 0);
	atomic_store(&crowd_release, 1);
	pthread_join(t, NULL);
	TAP_CHECKF(atomic_load(&c.calls) == 1, "%d calls: the range was split",
		   atomic_load(&c.calls));
	TAP_CHECK(atomic_load(&c.covered) == 1000);
	TAP_CHECK(atomic_load(&c.elsewhere) == 0);
	/* alone again: split over the pool as before */
	atomic_store(&c.calls, 0);
	TAP_CHECK(ag_parallel_for(1000, 1, crowd_count, &c) == 0);
	TAP_CHECK(atomic_load(&c.calls) > 1);
	return 0;
}

/*
 * A request thread between parallel calls still holds its core: threads
 * with a scope open count as busy.  Another thread holds a scope open (and
 * no parallel region); with the main thread's scope, a pool of two is
 * full, and the main thread's call runs inline; once the other thread
 * ends its scope, the call splits again.
 */
static atomic_int scoped_release, scoped_open;

static void *scoped_thread(void *arg)
{
	struct ag_scope *s = ag_scope_begin();

	(void)arg;
	atomic_store(&scoped_open, s != NULL);
	while (!atomic_load(&scoped_release))
		sched_yield();
	ag_scope_end(s);
	atomic_store(&scoped_open, 0);
	return NULL;
}

static int test_scoped_threads_run_inline(void)
{
	struct crowd_calls c = { .caller = pthread_self() };
	struct ag_scope *s;
	pthread_t t;

	TAP_CHECK(ag_set_num_threads(2) == 0);
	atomic_store(&scoped_release, 0);
	atomic_store(&scoped_open, 0);
	TAP_CHECK(pthread_create(&t, NULL, scoped_thread, NULL) == 0);
	while (!atomic_load(&scoped_open))
		sched_yield();
	s = ag_scope_begin();
	TAP_CHECK(s);
	TAP_CHECK(ag_parallel_for(1000, 1, crowd_count, &c) == 0);
	TAP_CHECKF(atomic_load(&c.calls) == 1,
		   "%d calls: split although two scoped threads fill the pool",
		   atomic_load(&c.calls));
	TAP_CHECK(atomic_load(&c.covered) == 1000);
	TAP_CHECK(atomic_load(&c.elsewhere) == 0);
	atomic_store(&scoped_release, 1);
	pthread_join(t, NULL);
	/* one scoped thread in a pool of two: split as before */
	atomic_store(&c.calls, 0);
	TAP_CHECK(ag_parallel_for(1000, 1, crowd_count, &c) == 0);
	TAP_CHECK(atomic_load(&c.calls) > 1);
	/* nested scopes count their thread once */
	TAP_CHECK(atomic_load(&ag__scoped_threads) == 1);
	ag_scope_end(ag_scope_begin());
	TAP_CHECK(atomic_load(&ag__scoped_threads) == 1);
	ag_scope_end(s);
	TAP_CHECK(atomic_load(&ag__scoped_threads) == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_idle_no_cpu),
	TAP_TEST(test_errors),
	TAP_TEST(test_threshold),
	TAP_TEST(test_cover),
	TAP_TEST(test_nested_3_deep),
	TAP_TEST(test_inside_tasks),
	TAP_TEST(test_many_callers),
	TAP_TEST(test_resize),
	TAP_TEST(test_resize_under_load),
	TAP_TEST(test_alloc_failure_runs_serially),
	TAP_TEST(test_crowded_runs_inline),
	TAP_TEST(test_scoped_threads_run_inline),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
