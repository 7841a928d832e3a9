// SPDX-License-Identifier: MIT
/*
 * Hooks registered and removed on one thread while another runs backward
 * through the node they hang on: removal only flags the hook and drops the
 * handle's reference, so it is safe at any point of the backward.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "internal.h"
#include "pool/pool.h"
#include "tap.h"
#include "watchdog.h"

#define ROUNDS 300

static atomic_int calls;

static struct ag_tensor *count_hook(struct ag_tensor *g, void *arg)
{
	(void)arg;
	atomic_fetch_add(&calls, 1);
	return ag_mul_scalar(g, 1.0);
}

struct shared {
	struct ag_tensor *y;
	atomic_bool done;
	int registered;
};

static void *churn(void *arg)
{
	struct shared *s = arg;

	while (!atomic_load(&s->done)) {
		struct ag_hook *h =
			ag_tensor_register_hook(s->y, count_hook, NULL);

		if (!h)
			break;
		s->registered++;
		ag_hook_remove(h);
	}
	return NULL;
}

static int test_register_remove_during_backward(void)
{
	double v[4] = { 0.5, -1, 2, 0.25 };
	int64_t n = 4;
	struct ag_backward_opts keep = { .retain_graph = true };
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, v);
	struct ag_tensor *t, *yy, *loss, *g;
	struct shared s = { 0 };
	struct ag_hook *fixed;
	pthread_t th;
	int rc = 0;

	ag_tensor_set_requires_grad(x, true);
	t = ag_tanh(x);
	s.y = ag_mul_scalar(t, 3);
	yy = ag_mul(s.y, s.y);
	loss = ag_sum(yy);
	fixed = ag_tensor_register_hook(s.y, count_hook, NULL);
	TAP_CHECK(fixed);
	pthread_create(&th, NULL, churn, &s);
	for (int i = 0; i < ROUNDS && !rc; i++)
		rc = ag_backward(loss, NULL, &keep);
	atomic_store(&s.done, true);
	pthread_join(th, NULL);
	TAP_CHECKF(rc == 0, "%s", ag_errmsg());
	/* the fixed hook ran every time; churned ones at most then */
	TAP_CHECKF(atomic_load(&calls) >= ROUNDS, "%d calls",
		   atomic_load(&calls));
	g = ag_tensor_grad(x);
	TAP_CHECK(g);
	for (int i = 0; i < 4; i++) {
		double th2 = tanh(v[i]);
		double want = ROUNDS * 18 * th2 * (1 - th2 * th2);

		TAP_CHECKF(fabs(ag__get(g, i) - want) <= 1e-9 * fabs(want),
			   "x.grad[%d] = %g, want %g", i, ag__get(g, i), want);
	}
	ag_tensor_put(g);
	ag_hook_remove(fixed);
	ag_tensor_put(loss);
	ag_tensor_put(yy);
	ag_tensor_put(s.y);
	ag_tensor_put(t);
	ag_tensor_put(x);
	TAP_CHECKF(ag__live_tensors() == 0 && ag__live_nodes() == 0 &&
			   ag__live_hooks() == 0,
		   "leaked %ld tensors, %ld nodes, %ld hooks",
		   ag__live_tensors(), ag__live_nodes(), ag__live_hooks());
	return 0;
}

/*
 * A hook that fails on a pool worker: its code and message reach the
 * thread that called backward (issue 12, item 9), with no race on the way.
 */
#define FB 8

static atomic_int worker_failed;

static struct ag_tensor *fail_on_worker(struct ag_tensor *g, void *arg)
{
	(void)g;
	if (ag__pool_is_worker()) {
		atomic_store(&worker_failed, 1);
		ag_set_error(AG_ENOMEM, "hook %d: simulated failure",
			     (int)(intptr_t)arg);
		return NULL;
	}
	/* the caller holds on so that a worker runs another branch */
	for (int i = 0; i < 50000 && !atomic_load(&worker_failed); i++)
		usleep(100);
	return NULL;
}

static int test_hook_error_from_a_worker(void)
{
	int64_t n = 16;

	watchdog_arm("hook error from a worker", 60);
	TAP_CHECK(ag_set_num_threads(4) == 0);
	for (int r = 0; r < 10; r++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *loss = NULL;
		struct ag_hook *h[FB];
		int rc;

		atomic_store(&worker_failed, 0);
		ag_tensor_set_requires_grad(x, true);
		for (int k = 0; k < FB; k++) {
			struct ag_tensor *y = ag_mul_scalar(x, k + 1);

			h[k] = ag_tensor_register_hook(y, fail_on_worker,
						       (void *)(intptr_t)k);
			loss = loss ? ag_add(loss, ag_sum(y)) : ag_sum(y);
		}
		ag_clear_error();
		rc = ag_backward(loss, NULL, NULL);
		TAP_CHECKF(rc == -AG_ENOMEM, "round %d: %d %s", r, rc,
			   ag_errmsg());
		TAP_CHECK(atomic_load(&worker_failed));
		TAP_CHECKF(strstr(ag_errmsg(),
				  "a tensor hook on MulBackward") &&
				   strstr(ag_errmsg(), "simulated failure"),
			   "message: %s", ag_errmsg());
		TAP_CHECK(ag_tensor_grad(x) == NULL);
		for (int k = 0; k < FB; k++)
			ag_hook_remove(h[k]);
		ag_scope_end(s);
	}
	watchdog_disarm();
	TAP_CHECK(ag__live_tensors() == 0);
	TAP_CHECK(ag__live_nodes() == 0);
	TAP_CHECK(ag__live_hooks() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_register_remove_during_backward),
	TAP_TEST(test_hook_error_from_a_worker),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
