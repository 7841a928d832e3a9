// SPDX-License-Identifier: MIT
/*
 * The parallel engine under ThreadSanitizer: wide graphs on the pool,
 * concurrent backward calls on independent graphs and on shared leaves,
 * and an error in one branch cancelling the rest.
 */
#include <math.h>
#include <pthread.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "internal.h"

#define K 8
#define L 6
#define N 256

/* loss = sum_k sum(tanh^L(x * w_k)); returns 0 and checks x's grad. */
static int wide_once(struct ag_tensor *x, struct ag_tensor **w)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = NULL;
	int rc;

	for (int k = 0; k < K; k++) {
		struct ag_tensor *h = ag_mul(x, w[k]);

		for (int i = 0; i < L; i++)
			h = ag_tanh(h);
		h = ag_sum(h);
		loss = loss ? ag_add(loss, h) : h;
	}
	rc = ag_backward(loss, NULL, NULL);
	ag_scope_end(s);
	return rc;
}

/* d/dx of tanh^L(x w) summed over k, for element value xv, weight wv. */
static double expect(double xv, double wv)
{
	double h = xv * wv, d = wv;

	for (int i = 0; i < L; i++) {
		h = tanh(h);
		d *= 1 - h * h;
	}
	return d;
}

static int make_leaves(struct ag_tensor **x, struct ag_tensor **w,
		       uint64_t seed)
{
	struct ag_generator *g = ag_generator_new(seed);
	int64_t n = N;

	*x = ag_rand(g, AG_F64, 1, &n);
	ag_tensor_set_requires_grad(*x, true);
	for (int k = 0; k < K; k++) {
		w[k] = ag_rand(g, AG_F64, 1, &n);
		ag_tensor_set_requires_grad(w[k], true);
	}
	ag_generator_free(g);
	return 0;
}

static void put_leaves(struct ag_tensor *x, struct ag_tensor **w)
{
	ag_tensor_put(x);
	for (int k = 0; k < K; k++)
		ag_tensor_put(w[k]);
}

static int check_grad(struct ag_tensor *x, struct ag_tensor **w, int times)
{
	struct ag_tensor *g = ag_tensor_grad(x);

	TAP_CHECK(g);
	for (int i = 0; i < N; i++) {
		double want = 0;

		for (int k = 0; k < K; k++)
			want += expect(ag__get(x, i), ag__get(w[k], i));
		want *= times;
		TAP_CHECKF(fabs(ag__get(g, i) - want) < 1e-12 * times,
			   "element %d: %g vs %g", i, ag__get(g, i), want);
	}
	ag_tensor_put(g);
	return 0;
}

static int test_wide_parallel(void)
{
	struct ag_tensor *x, *w[K];

	ag_set_num_threads(4);
	make_leaves(&x, w, 1);
	TAP_CHECK(wide_once(x, w) == 0);
	TAP_CHECK(check_grad(x, w, 1) == 0);
	put_leaves(x, w);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

struct job {
	struct ag_tensor *x, **w;
	int reps, rc;
};

static void *job_run(void *arg)
{
	struct job *j = arg;

	for (int r = 0; r < j->reps && !j->rc; r++)
		j->rc = wide_once(j->x, j->w);
	return NULL;
}

static int test_concurrent_independent_and_shared(void)
{
	struct ag_tensor *x[3], *w[3][K];
	struct job jobs[4];
	pthread_t th[4];

	for (int i = 0; i < 3; i++)
		make_leaves(&x[i], w[i], 10 + i);
	/* threads 0-2 own a graph each; thread 3 shares leaves with 0 */
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct job){ x[i % 3], w[i % 3], 3, 0 };
		pthread_create(&th[i], NULL, job_run, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		TAP_CHECK(jobs[i].rc == 0);
	}
	TAP_CHECK(check_grad(x[0], w[0], 6) == 0);
	TAP_CHECK(check_grad(x[1], w[1], 3) == 0);
	for (int i = 0; i < 3; i++)
		put_leaves(x[i], w[i]);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

static int test_error_cancels_and_pool_recovers(void)
{
	struct ag_tensor *x, *w[K];
	struct ag_scope *s;
	struct ag_tensor *loss = NULL;

	make_leaves(&x, w, 3);
	s = ag_scope_begin();
	for (int k = 0; k < K; k++) {
		struct ag_tensor *h = ag_tanh(ag_mul(x, w[k]));

		loss = loss ? ag_add(loss, ag_sum(h)) : ag_sum(h);
	}
	/* a saved result modified in place: one branch must fail */
	{
		AG_NO_GRAD_SCOPE();
		ag_mul_scalar_(w[0], 2.0);
	}
	TAP_CHECK(ag_backward(loss, NULL, NULL) == -AG_EVERSION);
	ag_scope_end(s);
	ag_clear_error();
	TAP_CHECK(wide_once(x, w) == 0);
	put_leaves(x, w);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_wide_parallel),
	TAP_TEST(test_concurrent_independent_and_shared),
	TAP_TEST(test_error_cancels_and_pool_recovers),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
