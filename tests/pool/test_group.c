// SPDX-License-Identifier: MIT
/*
 * Task groups: completion, isolation (a waiter never runs another group's
 * task, except that one outside any task helps the groups opened under
 * its own), nested waits from inside tasks to depth 100, many external
 * threads at once; with 1, 2 and 16 threads (16 oversubscribes the
 * machine).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>

#include "../tsan/tap.h"
#include "internal.h"
#include "pool/pool.h"
#include "util.h"

static const int sizes[] = { 1, 2, 16 };

/*
 * The stack of groups this thread is waiting on.  A task may only run on a
 * thread whose innermost wait is for the task's own group, or on a thread
 * outside the pool in its outermost wait (so in no task) for the family
 * the task's group belongs to.
 */
static _Thread_local struct ag_group *waiting[256];
static _Thread_local int nwaiting;
static atomic_int violations, family_helps;

static void wait_group(struct ag_group *g)
{
	waiting[nwaiting++] = g;
	ag__group_wait(g);
	nwaiting--;
}

static void check_isolation(struct ag_group *g)
{
	if (!nwaiting || waiting[nwaiting - 1] == g)
		return;
	if (nwaiting == 1 && !ag__pool_is_worker() && g->family == waiting[0])
		atomic_fetch_add(&family_helps, 1);
	else
		atomic_fetch_add(&violations, 1);
}

/* ---- a fan-out tree inside one group ---- */

struct tree_task {
	struct ag_task task;
	int depth;
	atomic_long *count;
};

static void tree_run(struct ag_task *t)
{
	struct tree_task *tt = ag_container_of(t, struct tree_task, task);

	check_isolation(t->group);
	atomic_fetch_add_explicit(tt->count, 1, memory_order_relaxed);
	if (tt->depth > 0) {
		for (int i = 0; i < 2; i++) {
			struct tree_task *c = malloc(sizeof(*c));

			ag__task_init(&c->task, tree_run);
			c->depth = tt->depth - 1;
			c->count = tt->count;
			/* Submitting to our own group keeps it open. */
			ag__group_submit(t->group, &c->task);
		}
	}
	burn(200);
	free(tt);
}

static long tree_size(int depth)
{
	return (1L << (depth + 1)) - 1;
}

static int run_tree(int depth)
{
	struct ag_group g;
	atomic_long count = 0;
	struct tree_task *root = malloc(sizeof(*root));

	ag__group_init(&g);
	ag__task_init(&root->task, tree_run);
	root->depth = depth;
	root->count = &count;
	ag__group_submit(&g, &root->task);
	wait_group(&g);
	TAP_CHECK(ag__group_done(&g));
	TAP_CHECKF(atomic_load(&count) == tree_size(depth), "%ld != %ld",
		   atomic_load(&count), tree_size(depth));
	return 0;
}

static int test_tree(void)
{
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		TAP_CHECK(ag_set_num_threads(sizes[i]) == 0);
		TAP_CHECK(run_tree(UNDER_TSAN ? 9 : 12) == 0);
		TAP_CHECK(ag_get_num_threads() == sizes[i]);
	}
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

/* ---- nested waits ---- */

struct nest_task {
	struct ag_task task;
	int depth;
	int max;
	atomic_long *leaves;
	atomic_int *deepest;
};

static void nest_run(struct ag_task *t);

static void leaf_run(struct ag_task *t)
{
	struct nest_task *nt = ag_container_of(t, struct nest_task, task);

	check_isolation(t->group);
	burn(100);
	atomic_fetch_add(nt->leaves, 1);
}

/*
 * Each level opens a new group, puts a leaf and the next level in it and
 * waits: depth max nested waits, each from inside a task of the level
 * above, the shape of backward run inside a custom function's backward.
 */
static void nest_run(struct ag_task *t)
{
	struct nest_task *nt = ag_container_of(t, struct nest_task, task);
	struct nest_task child, leaf;
	struct ag_group g;
	int d;

	if (t->group)
		check_isolation(t->group);
	d = atomic_load(nt->deepest);
	while (nt->depth > d &&
	       !atomic_compare_exchange_weak(nt->deepest, &d, nt->depth))
		;
	if (nt->depth == nt->max)
		return;
	ag__group_init(&g);
	leaf = *nt;
	ag__task_init(&leaf.task, leaf_run);
	child = *nt;
	child.depth = nt->depth + 1;
	ag__task_init(&child.task, nest_run);
	ag__group_submit(&g, &leaf.task);
	ag__group_submit(&g, &child.task);
	wait_group(&g);
}

static int run_nest(int max)
{
	atomic_long leaves = 0;
	atomic_int deepest = 0;
	struct nest_task root = { .depth = 0, .max = max };

	root.leaves = &leaves;
	root.deepest = &deepest;
	ag__task_init(&root.task, nest_run);
	nest_run(&root.task); /* level 0 runs on the caller */
	TAP_CHECK(atomic_load(&deepest) == max);
	TAP_CHECK(atomic_load(&leaves) == max);
	return 0;
}

static int test_nested_depth_100(void)
{
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		TAP_CHECK(ag_set_num_threads(sizes[i]) == 0);
		for (int rep = 0; rep < SCALE(40); rep++)
			TAP_CHECK(run_nest(100) == 0);
	}
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

/* Nested waits started from many pool tasks at once. */
struct multi_task {
	struct ag_task task;
	int rc;
};

static void multi_run(struct ag_task *t)
{
	struct multi_task *m = ag_container_of(t, struct multi_task, task);

	check_isolation(t->group);
	m->rc = run_nest(20);
}

static int test_nested_from_many_tasks(void)
{
	enum { N = 32 };
	struct multi_task m[N];
	struct ag_group g;

	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		TAP_CHECK(ag_set_num_threads(sizes[i]) == 0);
		ag__group_init(&g);
		for (int j = 0; j < N; j++) {
			ag__task_init(&m[j].task, multi_run);
			m[j].rc = -1;
			ag__group_submit(&g, &m[j].task);
		}
		wait_group(&g);
		for (int j = 0; j < N; j++)
			TAP_CHECK(m[j].rc == 0);
	}
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

/* ---- isolation between external threads ---- */

static void *external(void *arg)
{
	long rc = 0;

	(void)arg;
	for (int rep = 0; rep < SCALE(20) && !rc; rep++)
		rc = run_tree(7);
	return (void *)rc;
}

static int test_isolation_many_callers(void)
{
	enum { T = 4 };
	pthread_t th[T];

	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		TAP_CHECK(ag_set_num_threads(sizes[i]) == 0);
		for (int j = 0; j < T; j++)
			TAP_CHECK(pthread_create(&th[j], NULL, external,
						 NULL) == 0);
		for (int j = 0; j < T; j++) {
			void *rc;

			pthread_join(th[j], &rc);
			TAP_CHECK(rc == NULL);
		}
	}
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

/*
 * More outside threads than there are outside deque slots (64) at once:
 * the rest submit through the injection queue.
 */
static pthread_barrier_t crowd_barrier;

static void *crowd_member(void *arg)
{
	long rc = 0;

	(void)arg;
	pthread_barrier_wait(&crowd_barrier);
	for (int rep = 0; rep < 3 && !rc; rep++)
		rc = run_tree(5);
	/* Hold the slots until everyone is done. */
	pthread_barrier_wait(&crowd_barrier);
	return (void *)rc;
}

static int test_more_threads_than_slots(void)
{
	enum { T = 72 };
	pthread_t th[T];

	TAP_CHECK(ag_set_num_threads(2) == 0);
	TAP_CHECK(pthread_barrier_init(&crowd_barrier, NULL, T) == 0);
	for (int j = 0; j < T; j++)
		TAP_CHECK(pthread_create(&th[j], NULL, crowd_member, NULL) ==
			  0);
	for (int j = 0; j < T; j++) {
		void *rc;

		pthread_join(th[j], &rc);
		TAP_CHECK(rc == NULL);
	}
	pthread_barrier_destroy(&crowd_barrier);
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

/*
 * A burst of submits must reach every sleeping worker, not just the first
 * one woken: N tasks that only finish once all N run at the same time.
 */
struct meet_task {
	struct ag_task task;
	atomic_int *arrived;
	int n;
	bool met;
};

static void meet_run(struct ag_task *t)
{
	struct meet_task *m = ag_container_of(t, struct meet_task, task);
	uint64_t t0 = now_ns();

	atomic_fetch_add(m->arrived, 1);
	while (atomic_load(m->arrived) < m->n && now_ns() - t0 < 5000000000ull)
		usleep(100);
	m->met = atomic_load(m->arrived) >= m->n;
}

static int test_burst_wakes_all(void)
{
	enum { N = 4 }; /* the caller and three workers */
	struct meet_task m[N];
	struct ag_group g;
	atomic_int arrived = 0;

	TAP_CHECK(ag_set_num_threads(N) == 0);
	TAP_CHECK(run_tree(3) == 0); /* start the pool */
	usleep(50000); /* let every worker fall asleep */
	ag__group_init(&g);
	for (int i = 0; i < N; i++) {
		ag__task_init(&m[i].task, meet_run);
		m[i].arrived = &arrived;
		m[i].n = N;
		m[i].met = false;
		ag__group_submit(&g, &m[i].task);
	}
	wait_group(&g);
	for (int i = 0; i < N; i++)
		TAP_CHECK(m[i].met);
	return 0;
}

/* ---- worker identity and errors ---- */

struct id_task {
	struct ag_task task;
	int id;
	bool worker;
};

static void id_run(struct ag_task *t)
{
	struct id_task *it = ag_container_of(t, struct id_task, task);

	it->worker = ag__pool_is_worker();
	it->id = ag__pool_worker_id();
	/* Resizing from inside the pool is refused, not deadlocked. */
	if (it->worker && ag_set_num_threads(3) != -AG_EINVAL)
		it->id = -100;
}

static int test_worker_identity(void)
{
	struct id_task it[64];
	struct ag_group g;

	TAP_CHECK(!ag__pool_is_worker());
	TAP_CHECK(ag__pool_worker_id() == -1);
	TAP_CHECK(ag_set_num_threads(-1) == -AG_EINVAL);
	TAP_CHECK(ag_set_num_threads(100000) == -AG_EINVAL);
	TAP_CHECK(ag_errcode() == AG_EINVAL);
	TAP_CHECK(ag_set_num_threads(4) == 0);
	ag__group_init(&g);
	for (int i = 0; i < 64; i++) {
		ag__task_init(&it[i].task, id_run);
		ag__group_submit(&g, &it[i].task);
	}
	ag__group_wait(&g);
	for (int i = 0; i < 64; i++) {
		TAP_CHECK(it[i].id != -100);
		if (it[i].worker)
			TAP_CHECK(it[i].id >= 0 && it[i].id < 3);
		else
			TAP_CHECK(it[i].id == -1);
	}
	TAP_CHECK(ag_set_num_threads(0) == 0);
	TAP_CHECK(ag_get_num_threads() >= 1);
	return 0;
}

/* ---- sleeping and waking, many times ---- */

struct nap_task {
	struct ag_task task;
	int us;
	atomic_int *ran;
};

static void nap_run(struct ag_task *t)
{
	struct nap_task *n = ag_container_of(t, struct nap_task, task);

	if (n->us)
		usleep((useconds_t)n->us);
	atomic_fetch_add(n->ran, 1);
}

/*
 * Tasks that sleep past the spin, with gaps, so owners and workers park
 * and wake thousands of times: a lost wake-up hangs here (meson's timeout
 * catches it).
 */
static int test_park_unpark(void)
{
	unsigned seed = 7;

	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		TAP_CHECK(ag_set_num_threads(sizes[i]) == 0);
		for (int rep = 0; rep < SCALE(300); rep++) {
			struct nap_task n[3];
			struct ag_group g;
			atomic_int ran = 0;
			int k = 1 + (int)(rand_r(&seed) % 3);

			ag__group_init(&g);
			for (int j = 0; j < k; j++) {
				ag__task_init(&n[j].task, nap_run);
				n[j].us = (int)(rand_r(&seed) % 120);
				n[j].ran = &ran;
				ag__group_submit(&g, &n[j].task);
			}
			wait_group(&g);
			TAP_CHECK(atomic_load(&ran) == k);
			if (rep % 4 == 0)
				usleep(rand_r(&seed) % 200);
		}
	}
	return 0;
}

/* ---- an outside caller helps the groups opened under its own ---- */

struct fam_state {
	atomic_int outer_on_worker; /* the outer task runs on a worker */
	atomic_int helped; /* chunks the caller ran */
	atomic_int ran;
	int timed_out; /* these two are written by the worker only */
	int nested_family_ok;
};

struct fam_task {
	struct ag_task task;
	struct fam_state *st;
};

/*
 * Holds its thread until the caller has run a chunk (or 2 s pass): if the
 * caller could not help, the worker would run all four, each timing out.
 */
static void fam_chunk_run(struct ag_task *t)
{
	struct fam_task *c = ag_container_of(t, struct fam_task, task);
	uint64_t deadline = now_ns() + 2000000000u;

	check_isolation(t->group);
	if (!ag__pool_is_worker())
		atomic_fetch_add(&c->st->helped, 1);
	while (!atomic_load(&c->st->helped) && now_ns() < deadline)
		burn(100);
	if (!atomic_load(&c->st->helped))
		c->st->timed_out = 1; /* only the worker writes it */
	atomic_fetch_add(&c->st->ran, 1);
}

/* Runs on the worker: a nested group of four chunks, like ag_parallel_for. */
static void fam_outer_run(struct ag_task *t)
{
	struct fam_task *o = ag_container_of(t, struct fam_task, task);
	struct fam_task chunk[4];
	struct ag_group n;

	check_isolation(t->group);
	if (!ag__pool_is_worker())
		return; /* the caller took it back: the test retries */
	atomic_store(&o->st->outer_on_worker, 1);
	usleep(20000); /* the caller spins briefly, then sleeps: wake it */
	ag__group_init(&n);
	o->st->nested_family_ok = n.family == t->group;
	for (int i = 0; i < 4; i++) {
		chunk[i].st = o->st;
		ag__task_init(&chunk[i].task, fam_chunk_run);
		ag__group_submit(&n, &chunk[i].task);
	}
	wait_group(&n);
}

static int test_caller_helps_family(void)
{
	int tries = 0;

	TAP_CHECK(ag_set_num_threads(2) == 0);
	for (;;) {
		struct fam_state st = { 0 };
		struct fam_task outer = { .st = &st };
		struct ag_group g;
		uint64_t deadline = now_ns() + 2000000000u;

		ag__group_init(&g);
		TAP_CHECK(g.family == &g);
		ag__task_init(&outer.task, fam_outer_run);
		ag__group_submit(&g, &outer.task);
		/* Leave the task to the worker, which is woken to steal it. */
		while (!atomic_load(&st.outer_on_worker) && now_ns() < deadline)
			burn(100);
		wait_group(&g);
		if (!atomic_load(&st.outer_on_worker)) {
			TAP_CHECK(++tries < 5);
			continue;
		}
		TAP_CHECK(st.nested_family_ok);
		TAP_CHECK(atomic_load(&st.ran) == 4);
		TAP_CHECKF(atomic_load(&st.helped) >= 1,
			   "the waiting caller ran none of the nested chunks");
		TAP_CHECK(!st.timed_out);
		break;
	}
	TAP_CHECK(atomic_load(&family_helps) >= 1);
	TAP_CHECK(atomic_load(&violations) == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_park_unpark),
	TAP_TEST(test_caller_helps_family),
	TAP_TEST(test_worker_identity),
	TAP_TEST(test_tree),
	TAP_TEST(test_nested_depth_100),
	TAP_TEST(test_nested_from_many_tasks),
	TAP_TEST(test_isolation_many_callers),
	TAP_TEST(test_more_threads_than_slots),
	TAP_TEST(test_burst_wakes_all),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
