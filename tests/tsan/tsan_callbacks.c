// SPDX-License-Identifier: MIT
/*
 * Post-accumulate-grad hooks on many leaves, run by pool workers at once,
 * each publishing its leaf's .grad to a shared table, and a callback
 * queued by whichever hook runs first that reads the whole table: the
 * engine's ordering (every hook before any callback) is what makes the
 * table race-free.  Another thread registers and removes hooks meanwhile.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "internal.h"
#include "tap.h"
#include "watchdog.h"

#define NLEAF 12
#define LEN 64
#define ROUNDS 200

struct table {
	double sum[NLEAF]; /* written by the leaf's hook, read by the callback */
	atomic_bool queued;
	double total;
	int callbacks;
};

struct leaf {
	struct table *t;
	int k;
};

static int read_table(void *arg)
{
	struct table *t = arg;

	t->total = 0;
	for (int k = 0; k < NLEAF; k++)
		t->total += t->sum[k];
	t->callbacks++;
	return 0;
}

static int publish(struct ag_tensor *grad, void *arg)
{
	struct leaf *l = arg;
	double s = 0;

	for (int i = 0; i < LEN; i++)
		s += ag__get(grad, i);
	l->t->sum[l->k] = s;
	if (!atomic_exchange(&l->t->queued, true))
		return ag_queue_callback(read_table, l->t);
	return 0;
}

static int nothing(struct ag_tensor *grad, void *arg)
{
	(void)grad;
	(void)arg;
	return 0;
}

struct churn {
	struct ag_tensor *x;
	atomic_bool done;
};

static void *churn_main(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load(&c->done)) {
		struct ag_hook *h =
			ag_tensor_register_post_accumulate_grad_hook(
				c->x, nothing, NULL);

		if (!h)
			break;
		ag_hook_remove(h);
	}
	return NULL;
}

static int test_hooks_then_callback(void)
{
	int64_t len = LEN;
	struct ag_tensor *x[NLEAF], *loss = NULL;
	struct ag_hook *h[NLEAF];
	struct leaf args[NLEAF];
	struct table t = { 0 };
	struct churn c = { 0 };
	struct ag_scope *sc;
	pthread_t th;
	double want = 0;

	watchdog_arm("post hooks and callbacks", 120);
	TAP_CHECK(ag_set_num_threads(4) == 0);
	sc = ag_scope_begin(); /* owns every tensor made here */
	for (int k = 0; k < NLEAF; k++) {
		struct ag_tensor *s;

		x[k] = ag_ones(AG_F64, 1, &len);
		ag_tensor_set_requires_grad(x[k], true);
		/* loss = sum_k (k+1) * sum(tanh(x_k)): some work per branch */
		s = ag_mul_scalar(ag_sum(ag_tanh(x[k])), k + 1);
		loss = loss ? ag_add(loss, s) : s;
		args[k] = (struct leaf){ &t, k };
		h[k] = ag_tensor_register_post_accumulate_grad_hook(
			x[k], publish, &args[k]);
		TAP_CHECK(h[k]);
		want += (k + 1) * LEN * (1 - tanh(1) * tanh(1));
	}
	TAP_CHECKF(loss, "%s", ag_errmsg());
	c.x = x[0];
	pthread_create(&th, NULL, churn_main, &c);
	for (int r = 1; r <= ROUNDS; r++) {
		struct ag_backward_opts keep = { .retain_graph = true };
		int rc;

		atomic_store(&t.queued, false);
		rc = ag_backward(loss, NULL, &keep);
		TAP_CHECKF(rc == 0, "%s", ag_errmsg());
		TAP_CHECKF(t.callbacks == r, "%d callbacks in round %d",
			   t.callbacks, r);
		TAP_CHECKF(fabs(t.total - r * want) <= 1e-9 * r * want,
			   "round %d: %.17g, want %.17g", r, t.total, r * want);
	}
	atomic_store(&c.done, true);
	pthread_join(th, NULL);
	for (int k = 0; k < NLEAF; k++)
		ag_hook_remove(h[k]);
	ag_scope_end(sc);
	watchdog_disarm();
	TAP_CHECKF(ag__live_tensors() == 0 && ag__live_nodes() == 0 &&
			   ag__live_hooks() == 0,
		   "leaked %ld tensors, %ld nodes, %ld hooks",
		   ag__live_tensors(), ag__live_nodes(), ag__live_hooks());
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_hooks_then_callback),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
