// SPDX-License-Identifier: MIT
/*
 * Admission gates (ag_gate_*): never more holders than places, waiters
 * served in arrival order, yield hands a place on only after the quantum
 * and only to a waiter, a place held by an exiting thread is handed on,
 * and every misuse is an error, not a hang.  Every wait is bounded by a
 * watchdog.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "../tsan/tap.h"
#include "../tsan/watchdog.h"
#include "util.h"

static void wait_waiting(struct ag_gate *g, int n)
{
	while (ag_gate_waiting(g) != n)
		usleep(200);
}

static int test_bad_arguments(void)
{
	struct ag_gate *g;

	TAP_CHECK(!ag_gate_new(-1, 0) && ag_errcode() == AG_EINVAL);
	TAP_CHECK(!ag_gate_new(65537, 0) && ag_errcode() == AG_EINVAL);
	TAP_CHECK(!ag_gate_new(1, -1) && ag_errcode() == AG_EINVAL);
	TAP_CHECK(ag_gate_enter(NULL) == -AG_EINVAL);
	TAP_CHECK(ag_gate_leave(NULL) == -AG_EINVAL);
	TAP_CHECK(ag_gate_yield(NULL) == -AG_EINVAL);
	TAP_CHECK(ag_gate_free(NULL) == 0);
	TAP_CHECK(ag_gate_waiting(NULL) == 0);
	g = ag_gate_new(0, 0); /* the online CPUs */
	TAP_CHECK(g);
	TAP_CHECK(ag_gate_free(g) == 0);
	return 0;
}

static int test_misuse(void)
{
	struct ag_gate *a = ag_gate_new(2, 0), *b = ag_gate_new(1, 0);

	TAP_CHECK(a && b);
	TAP_CHECK(ag_gate_leave(a) == -AG_EINVAL);
	TAP_CHECK(strstr(ag_errmsg(), "holds no place"));
	TAP_CHECK(ag_gate_yield(a) == -AG_EINVAL);
	TAP_CHECK(ag_gate_enter(a) == 0);
	/* a second place, at this gate or another, would be a deadlock */
	TAP_CHECK(ag_gate_enter(a) == -AG_EINVAL);
	TAP_CHECK(ag_gate_enter(b) == -AG_EINVAL);
	TAP_CHECK(ag_gate_leave(b) == -AG_EINVAL);
	TAP_CHECK(ag_gate_free(a) == -AG_EBUSY);
	TAP_CHECK(strstr(ag_errmsg(), "1 of 2 places held"));
	TAP_CHECK(ag_gate_yield(a) == 0); /* nobody waits: stays */
	TAP_CHECK(ag_gate_leave(a) == 0);
	TAP_CHECK(ag_gate_leave(a) == -AG_EINVAL);
	TAP_CHECK(ag_gate_free(a) == 0);
	TAP_CHECK(ag_gate_free(b) == 0);
	return 0;
}

/* ---- never more holders than places ---- */

struct bound {
	struct ag_gate *g;
	atomic_int inside, most;
	atomic_long served;
	int rounds;
	bool yield; /* stay in and yield between rounds */
	atomic_int errors;
};

static void bound_round(struct bound *b)
{
	int n = atomic_fetch_add(&b->inside, 1) + 1;
	int m = atomic_load(&b->most);

	while (n > m && !atomic_compare_exchange_weak(&b->most, &m, n))
		;
	burn(2000);
	atomic_fetch_sub(&b->inside, 1);
	atomic_fetch_add(&b->served, 1);
}

static void *bound_thread(void *arg)
{
	struct bound *b = arg;

	if (b->yield && ag_gate_enter(b->g))
		atomic_fetch_add(&b->errors, 1);
	for (int i = 0; i < b->rounds; i++) {
		if (b->yield ? ag_gate_yield(b->g) : ag_gate_enter(b->g))
			atomic_fetch_add(&b->errors, 1);
		bound_round(b);
		if (!b->yield && ag_gate_leave(b->g))
			atomic_fetch_add(&b->errors, 1);
	}
	if (b->yield && ag_gate_leave(b->g))
		atomic_fetch_add(&b->errors, 1);
	return NULL;
}

static int run_bound(int slots, int threads, bool yield, int64_t quantum)
{
	struct bound b = { .g = ag_gate_new(slots, quantum),
			   .rounds = SCALE(400),
			   .yield = yield };
	pthread_t th[32];

	TAP_CHECK(b.g && threads <= 32);
	watchdog_arm("gate: bound", 60);
	for (int i = 0; i < threads; i++)
		TAP_CHECK(!pthread_create(&th[i], NULL, bound_thread, &b));
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	watchdog_disarm();
	TAP_CHECK(atomic_load(&b.errors) == 0);
	TAP_CHECKF(atomic_load(&b.most) <= slots, "%d holders at %d places",
		   atomic_load(&b.most), slots);
	TAP_CHECK(atomic_load(&b.served) == (long)threads * b.rounds);
	TAP_CHECK(ag_gate_waiting(b.g) == 0);
	TAP_CHECK(ag_gate_free(b.g) == 0); /* every place came back */
	return 0;
}

static int test_bound_enter_leave(void)
{
	return run_bound(3, 16, false, 0);
}

static int test_bound_yield(void)
{
	return run_bound(2, 12, true, 0) || run_bound(1, 8, true, 50);
}

/* ---- arrival order ---- */

struct order {
	struct ag_gate *g;
	int log[8];
	atomic_int n;
};

struct order_arg {
	struct order *o;
	int id;
};

static void *order_thread(void *arg)
{
	struct order_arg *a = arg;

	if (ag_gate_enter(a->o->g))
		return NULL;
	/* one place: the log is ours alone */
	a->o->log[atomic_fetch_add(&a->o->n, 1)] = a->id;
	ag_gate_leave(a->o->g);
	return NULL;
}

static int test_arrival_order(void)
{
	struct order o = { .g = ag_gate_new(1, 0) };
	struct order_arg args[6];
	pthread_t th[6];

	TAP_CHECK(o.g && ag_gate_enter(o.g) == 0);
	watchdog_arm("gate: arrival order", 60);
	for (int i = 0; i < 6; i++) {
		args[i] = (struct order_arg){ &o, i };
		TAP_CHECK(
			!pthread_create(&th[i], NULL, order_thread, &args[i]));
		wait_waiting(o.g, i + 1); /* queued before the next starts */
	}
	TAP_CHECK(ag_gate_leave(o.g) == 0);
	for (int i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	watchdog_disarm();
	TAP_CHECK(atomic_load(&o.n) == 6);
	for (int i = 0; i < 6; i++)
		TAP_CHECKF(o.log[i] == i, "position %d: thread %d", i,
			   o.log[i]);
	TAP_CHECK(ag_gate_free(o.g) == 0);
	return 0;
}

/* ---- yield and its quantum ---- */

static int test_yield_quantum(void)
{
	struct order o = { .g = ag_gate_new(1, 3600LL * 1000000) };
	struct order_arg a = { &o, 7 };
	pthread_t th;

	TAP_CHECK(o.g && ag_gate_enter(o.g) == 0);
	watchdog_arm("gate: yield", 60);
	TAP_CHECK(!pthread_create(&th, NULL, order_thread, &a));
	wait_waiting(o.g, 1);
	/* an hour's quantum is not used up: the place stays here */
	TAP_CHECK(ag_gate_yield(o.g) == 0);
	TAP_CHECK(ag_gate_waiting(o.g) == 1 && atomic_load(&o.n) == 0);
	TAP_CHECK(ag_gate_leave(o.g) == 0);
	pthread_join(th, NULL);
	TAP_CHECK(atomic_load(&o.n) == 1 && o.log[0] == 7);
	TAP_CHECK(ag_gate_free(o.g) == 0);

	/* quantum 0: the place goes to the waiter and comes back after */
	o = (struct order){ .g = ag_gate_new(1, 0) };
	a.o = &o;
	TAP_CHECK(o.g && ag_gate_enter(o.g) == 0);
	TAP_CHECK(!pthread_create(&th, NULL, order_thread, &a));
	wait_waiting(o.g, 1);
	TAP_CHECK(ag_gate_yield(o.g) == 0);
	TAP_CHECK(atomic_load(&o.n) == 1 && o.log[0] == 7);
	TAP_CHECK(ag_gate_leave(o.g) == 0);
	pthread_join(th, NULL);
	watchdog_disarm();
	TAP_CHECK(ag_gate_free(o.g) == 0);
	return 0;
}

/* ---- a thread that exits holding a place ---- */

static void *enter_and_exit(void *arg)
{
	ag_gate_enter(arg);
	return NULL; /* no leave */
}

static int test_exit_hands_on(void)
{
	struct ag_gate *g = ag_gate_new(1, 0);
	pthread_t th;

	TAP_CHECK(g);
	watchdog_arm("gate: a place held at thread exit", 60);
	TAP_CHECK(!pthread_create(&th, NULL, enter_and_exit, g));
	pthread_join(th, NULL);
	TAP_CHECK(ag_gate_enter(g) == 0); /* hangs if the place was lost */
	TAP_CHECK(ag_gate_leave(g) == 0);
	watchdog_disarm();
	TAP_CHECK(ag_gate_free(g) == 0);
	return 0;
}

/* ---- fork(): the child's gates are as its one thread finds them ---- */

struct holding {
	struct ag_gate *g;
	pthread_mutex_t m;
	pthread_cond_t c;
	bool let_go;
};

/* Holds a place until told to let go. */
static void *hold_place(void *arg)
{
	struct holding *h = arg;

	if (ag_gate_enter(h->g))
		return NULL;
	pthread_mutex_lock(&h->m);
	while (!h->let_go)
		pthread_cond_wait(&h->c, &h->m);
	pthread_mutex_unlock(&h->m);
	ag_gate_leave(h->g);
	return NULL;
}

/* In the child: 0 if the gate is usable and whole. */
static int child_checks(struct ag_gate *g)
{
	alarm(30); /* a hang kills the child, and fails the test */
	if (ag_gate_waiting(g) != 0)
		return 1;
	if (ag_gate_free(g) != -AG_EBUSY) /* our place is still ours */
		return 2;
	if (ag_gate_yield(g) || ag_gate_leave(g))
		return 3;
	if (ag_gate_enter(g) || ag_gate_leave(g)) /* a free place */
		return 4;
	return ag_gate_free(g) ? 5 : 0; /* every place came back */
}

static int test_fork_child_resets(void)
{
	struct holding h = { .g = ag_gate_new(2, 0),
			     .m = PTHREAD_MUTEX_INITIALIZER,
			     .c = PTHREAD_COND_INITIALIZER };
	struct order o = { .g = h.g };
	struct order_arg a = { &o, 1 };
	pthread_t holder, waiter;
	int status = -1;
	pid_t pid;

	TAP_CHECK(h.g && ag_gate_enter(h.g) == 0);
	watchdog_arm("gate: fork", 60);
	TAP_CHECK(!pthread_create(&holder, NULL, hold_place, &h));
	TAP_CHECK(!pthread_create(&waiter, NULL, order_thread, &a));
	wait_waiting(h.g, 1); /* both places held, one thread queued */
	pid = fork();
	if (pid == 0)
		_exit(child_checks(h.g));
	TAP_CHECK(pid > 0);
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	TAP_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child status %#x", status);
	pthread_mutex_lock(&h.m);
	h.let_go = true;
	pthread_cond_signal(&h.c);
	pthread_mutex_unlock(&h.m);
	pthread_join(holder, NULL);
	pthread_join(waiter, NULL);
	TAP_CHECK(atomic_load(&o.n) == 1);
	TAP_CHECK(ag_gate_leave(h.g) == 0);
	watchdog_disarm();
	TAP_CHECK(ag_gate_free(h.g) == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_bad_arguments),
	TAP_TEST(test_misuse),
	TAP_TEST(test_bound_enter_leave),
	TAP_TEST(test_bound_yield),
	TAP_TEST(test_arrival_order),
	TAP_TEST(test_yield_quantum),
	TAP_TEST(test_exit_hands_on),
	TAP_TEST(test_fork_child_resets),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
