// SPDX-License-Identifier: MIT
/*
 * The parallel engine under ThreadSanitizer: wide graphs on the pool,
 * concurrent backward calls on independent graphs and on shared leaves,
 * and an error in one branch cancelling the rest.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "internal.h"
#include "../pool/util.h"

#if UNDER_TSAN
/* The child of test_backward_after_fork starts a fresh pool: see
 * tests/pool/test_fork.c for why this is safe. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "die_after_fork=0";
}
#endif

#define K 8
#define L 6
#define N 256

/* sum_k sum(tanh^l(x * w_k)), k < nk, in the caller's scope. */
static struct ag_tensor *wide_loss(struct ag_tensor *x, struct ag_tensor **w,
				   int nk, int l)
{
	struct ag_tensor *loss = NULL;

	for (int k = 0; k < nk; k++) {
		struct ag_tensor *h = ag_mul(x, w[k]);

		for (int i = 0; i < l; i++)
			h = ag_tanh(h);
		h = ag_sum(h);
		loss = loss ? ag_add(loss, h) : h;
	}
	return loss;
}

/* Backward of wide_loss with K branches of L tanh. */
static int wide_once(struct ag_tensor *x, struct ag_tensor **w)
{
	struct ag_scope *s = ag_scope_begin();
	int rc;

	rc = ag_backward(wide_loss(x, w, K, L), NULL, NULL);
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

/*
 * 32 branches of f32 fan into x's AccumulateGrad and into a shared mid
 * node: with the deterministic option the sums come out bitwise equal for
 * 1 and 8 threads.
 */
static int det_grad(int threads, float *out)
{
	struct ag_generator *g = ag_generator_new(7);
	struct ag_backward_opts o = { .deterministic = true };
	int64_t n = 1024;
	struct ag_tensor *x = ag_randn(g, AG_F32, 1, &n), *loss = NULL, *gx;
	struct ag_scope *s;
	int rc;

	ag_tensor_set_requires_grad(x, true);
	ag_set_num_threads(threads);
	s = ag_scope_begin();
	{
		struct ag_tensor *mid = ag_tanh(x);

		for (int k = 0; k < 32; k++) {
			struct ag_tensor *w = ag_randn(g, AG_F32, 1, &n);
			struct ag_tensor *h = ag_mul(ag_sigmoid(ag_mul(mid, w)),
						     ag_exp(ag_mul(x, w)));

			loss = loss ? ag_add(loss, ag_sum(h)) : ag_sum(h);
		}
	}
	rc = ag_backward(loss, NULL, &o);
	ag_scope_end(s);
	gx = ag_tensor_grad(x);
	if (!rc)
		rc = ag_tensor_copy_to(gx, out, sizeof(float) * 1024);
	ag_tensor_put(gx);
	ag_tensor_put(x);
	ag_generator_free(g);
	return rc;
}

static int test_deterministic_bitwise(void)
{
	static float a[1024], b[1024];

	TAP_CHECK(det_grad(1, a) == 0);
	TAP_CHECK(det_grad(8, b) == 0);
	TAP_CHECK(memcmp(a, b, sizeof(a)) == 0);
	ag_set_num_threads(0);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

/* After fork() the child gets a fresh pool and backward works there. */
static int test_backward_after_fork(void)
{
	struct ag_tensor *x, *w[K];
	int status;
	pid_t pid;

	ag_set_num_threads(2);
	make_leaves(&x, w, 5);
	TAP_CHECK(wide_once(x, w) == 0); /* the parent's pool is running */
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0) {
		ag_tensor_zero_grad(x);
		_exit(wide_once(x, w) == 0 && check_grad(x, w, 1) == 0 ? 0 : 1);
	}
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	TAP_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	put_leaves(x, w);
	return 0;
}

/*
 * The caller's no-grad mode does not reach the workers: a create_graph
 * backward records there, and the caller's mode is intact afterwards.
 */
static int test_modes_installed_per_task(void)
{
	struct ag_tensor *x, *w[K], *g = NULL, *loss = NULL;
	struct ag_grad_opts o = { .create_graph = true };
	struct ag_scope *s;
	int rc;

	ag_set_num_threads(4);
	make_leaves(&x, w, 6);
	s = ag_scope_begin();
	for (int k = 0; k < K; k++) {
		struct ag_tensor *h = ag_sum(ag_tanh(ag_mul(x, w[k])));

		loss = loss ? ag_add(loss, h) : h;
	}
	ag_set_grad_enabled(false);
	rc = ag_grad(&loss, NULL, 1, &x, 1, &g, &o);
	TAP_CHECK(!ag_is_grad_enabled());
	ag_set_grad_enabled(true);
	TAP_CHECK(rc == 0);
	TAP_CHECK(ag_tensor_requires_grad(g)); /* recorded on the workers */
	ag_scope_end(s);
	put_leaves(x, w);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

/*
 * Roots where one is reachable from the other: the reachable one must run
 * once, after the other sent to it, even when the pool starts the first
 * root before the caller has looked at the second.
 */
static int test_roots_reachable_from_each_other(void)
{
	int64_t shape[1] = { 4 };
	struct ag_tensor *x = ag_ones(AG_F64, 1, shape);

	ag_set_num_threads(4);
	TAP_CHECK(x && ag_tensor_set_requires_grad(x, true) == 0);
	for (int it = 0; it < 300; it++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *y = ag_sum(ag_mul_scalar(x, 2.0));
		struct ag_tensor *z = ag_mul_scalar(ag_tanh(y), 3.0);
		struct ag_tensor *roots[2] = { z, y }, *g;
		double want = 2.0 + 3.0 * (1.0 - tanh(8.0) * tanh(8.0)) * 2.0;

		TAP_CHECK(ag_backward_many(roots, NULL, 2, NULL) == 0);
		g = ag_tensor_grad(x);
		TAP_CHECK(g);
		for (int i = 0; i < 4; i++)
			TAP_CHECKF(
				fabs(ag__get(g, i) - want) < 1e-12,
				"iteration %d: x.grad[%d] = %.17g, want %.17g",
				it, i, ag__get(g, i), want);
		/* g is the scope's reference: no put of our own */
		ag_tensor_zero_grad(x);
		ag_scope_end(s);
	}
	ag_tensor_put(x);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

/*
 * One long graph (1,801 nodes: several state chunks) run backward by four
 * threads at once, through ag_grad with retain_graph, three times each:
 * every task but the first to reach a node keeps that node's state through
 * its foreign table.  Every result must match the closed form.
 */
#define CHAIN_STEPS 600

struct chain_job {
	struct ag_tensor *loss, *x;
	int rc;
	double got[4];
};

static void *chain_job_run(void *arg)
{
	struct chain_job *j = arg;
	struct ag_grad_opts o = { .retain_graph = true };

	for (int r = 0; r < 3 && !j->rc; r++) {
		struct ag_tensor *g = NULL;

		j->rc = ag_grad(&j->loss, NULL, 1, &j->x, 1, &g, &o);
		for (int i = 0; i < 4 && !j->rc; i++)
			j->got[i] = ag__get(g, i);
		ag_tensor_put(g);
	}
	return NULL;
}

static int test_long_graph_shared_by_tasks(void)
{
	double v[4] = { -0.9, -0.1, 0.4, 1.3 };
	int64_t four = 4;
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &four, v);
	struct ag_tensor *y, *loss;
	struct chain_job jobs[4];
	pthread_t th[4];
	struct ag_scope *s;

	TAP_CHECK(x);
	ag_tensor_set_requires_grad(x, true);
	s = ag_scope_begin();
	y = x;
	for (int k = 0; k < CHAIN_STEPS; k++)
		y = ag_add(y, ag_mul_scalar(ag_tanh(y), 0.001));
	loss = ag_tensor_get(ag_sum(y));
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct chain_job){ loss, x, 0, { 0 } };
		pthread_create(&th[i], NULL, chain_job_run, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		TAP_CHECKF(jobs[i].rc == 0, "job %d: %s", i, ag_errmsg());
	}
	for (int e = 0; e < 4; e++) {
		double yk = v[e], d = 1;

		for (int k = 0; k < CHAIN_STEPS; k++) {
			double t = tanh(yk);

			d *= 1 + 0.001 * (1 - t * t);
			yk += 0.001 * t;
		}
		for (int i = 0; i < 4; i++)
			TAP_CHECKF(fabs(jobs[i].got[e] - d) < 1e-12,
				   "job %d element %d: %.17g vs %.17g", i, e,
				   jobs[i].got[e], d);
	}
	ag_scope_end(s);
	ag_tensor_put(loss);
	ag_tensor_put(x);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

/*
 * Branches whose nodes are big enough to split with ag_parallel_for: the
 * caller, waiting on the graph task, also runs the chunks of nodes that
 * run on workers (their groups are of its family).  Gradients must be the
 * closed form's, in deterministic mode bitwise the same for 1 and 4
 * threads.
 */
#define BIG_K 3
#define BIG_L 2
#define BIG_N 32768 /* over 2 x the tanh grain (8192): split */

static int big_once(struct ag_tensor *x, struct ag_tensor **w, bool det,
		    double *out)
{
	struct ag_backward_opts o = { .deterministic = det };
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *g;
	int rc;

	rc = ag_backward(wide_loss(x, w, BIG_K, BIG_L), NULL, &o);
	ag_scope_end(s);
	if (rc)
		return rc;
	g = ag_tensor_grad(x);
	for (int64_t i = 0; i < BIG_N; i++)
		out[i] = ag__get(g, i);
	ag_tensor_put(g);
	return ag_tensor_zero_grad(x);
}

static int test_parallel_for_inside_nodes(void)
{
	static double got[2][BIG_N];
	struct ag_generator *gen = ag_generator_new(7);
	int64_t n = BIG_N;
	struct ag_tensor *x, *w[BIG_K];
	const int threads[2] = { 1, 4 };

	x = ag_rand(gen, AG_F64, 1, &n);
	ag_tensor_set_requires_grad(x, true);
	for (int k = 0; k < BIG_K; k++) {
		w[k] = ag_rand(gen, AG_F64, 1, &n);
		ag_tensor_set_requires_grad(w[k], true);
	}
	for (int t = 0; t < 2; t++) {
		TAP_CHECK(ag_set_num_threads(threads[t]) == 0);
		TAP_CHECK(big_once(x, w, false, got[t]) == 0);
		for (int64_t i = 0; i < BIG_N; i++) {
			double want = 0;

			for (int k = 0; k < BIG_K; k++) {
				double h = ag__get(x, i) * ag__get(w[k], i);
				double d = ag__get(w[k], i);

				for (int j = 0; j < BIG_L; j++) {
					h = tanh(h);
					d *= 1 - h * h;
				}
				want += d;
			}
			TAP_CHECKF(fabs(got[t][i] - want) < 1e-12,
				   "%d threads, element %lld: %.17g vs %.17g",
				   threads[t], (long long)i, got[t][i], want);
		}
		TAP_CHECK(big_once(x, w, true, got[t]) == 0);
	}
	TAP_CHECK(memcmp(got[0], got[1], sizeof(got[0])) == 0);
	ag_tensor_put(x);
	for (int k = 0; k < BIG_K; k++)
		ag_tensor_put(w[k]);
	ag_generator_free(gen);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_parallel_for_inside_nodes),
	TAP_TEST(test_roots_reachable_from_each_other),
	TAP_TEST(test_backward_after_fork),
	TAP_TEST(test_modes_installed_per_task),
	TAP_TEST(test_deterministic_bitwise),
	TAP_TEST(test_wide_parallel),
	TAP_TEST(test_concurrent_independent_and_shared),
	TAP_TEST(test_error_cancels_and_pool_recovers),
	TAP_TEST(test_long_graph_shared_by_tasks),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
