// SPDX-License-Identifier: MIT
/*
 * Custom functions under ThreadSanitizer: backward nodes of custom
 * functions run on pool workers, many threads apply functions at once,
 * several graph tasks run the same retained node concurrently, and custom
 * backwards call ag_backward() re-entrantly from inside the pool.
 */
#include <math.h>
#include <pthread.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "internal.h"

#define N 64
#define K 8

/* cube: y = x^3, saves x (an input) and y (an output) */
static int cube_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, int nout)
{
	struct ag_tensor *keep[2];

	(void)nin;
	(void)nout;
	out[0] = ag_pow_scalar(in[0], 3.0);
	keep[0] = in[0];
	keep[1] = out[0];
	return out[0] ? ag_ctx_save_for_backward(ctx, keep, 2) : -ag_errcode();
}

/* dx = g * 3 y / x, written as g * 3 x^2 with the output checked */
static int cube_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g, int nout,
		    struct ag_tensor **gi, int nin)
{
	struct ag_tensor **s, *x2, *d;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	(void)nout;
	(void)nin;
	if (rc)
		return rc;
	if (n != 2 || !s[0] || !s[1])
		return ag__err(AG_EINTERNAL, "cube: bad saved tensors");
	x2 = ag_mul(s[0], s[0]);
	d = ag_mul_scalar(x2, 3.0);
	gi[0] = ag_mul(g[0], d);
	ag_tensor_put(x2);
	ag_tensor_put(d);
	return gi[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops cube = {
	.name = "Cube",
	.forward = cube_fwd,
	.backward = cube_bwd,
};

static struct ag_tensor *leaf(double scale)
{
	double v[N];
	int64_t n = N;
	struct ag_tensor *t;

	for (int i = 0; i < N; i++)
		v[i] = scale * (i - N / 2) / N;
	t = ag_from_data(AG_F64, 1, &n, v);
	ag_tensor_set_requires_grad(t, true);
	return t;
}

/* loss = sum_k sum(cube(x * (k + 1))); dloss/dx_i = sum 3 (k+1)^3 x_i^2 */
static struct ag_tensor *wide_loss(struct ag_tensor *x)
{
	struct ag_tensor *loss = NULL;

	for (int k = 0; k < K; k++) {
		struct ag_tensor *h = ag_mul_scalar(x, k + 1), *y = NULL;

		if (ag_function_apply(&cube, &h, 1, &y, 1, NULL))
			return NULL;
		loss = loss ? ag_add(loss, ag_sum(y)) : ag_sum(y);
	}
	return loss;
}

static int check_grad(struct ag_tensor *x, struct ag_tensor *g, double times)
{
	double c = 0;

	for (int k = 1; k <= K; k++)
		c += 3.0 * k * k * k;
	TAP_CHECK(g);
	for (int i = 0; i < N; i++) {
		double xv = ag__get(x, i), want = times * c * xv * xv;

		TAP_CHECKF(fabs(ag__get(g, i) - want) <= 1e-12 * (1 + want),
			   "element %d: %g vs %g", i, ag__get(g, i), want);
	}
	return 0;
}

struct job {
	int reps, rc;
	struct ag_tensor *loss, *x; /* shared graph, or NULL: own graphs */
};

static void *own_graphs(void *arg)
{
	struct job *j = arg;

	for (int r = 0; r < j->reps && !j->rc; r++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x = leaf(1.0 + r), *loss = wide_loss(x), *g;

		j->rc = loss ? ag_backward(loss, NULL, NULL) : -ag_errcode();
		g = j->rc ? NULL : ag_tensor_grad(x);
		if (!j->rc && check_grad(x, g, 1))
			j->rc = -AG_EINTERNAL;
		ag_scope_end(s);
	}
	return NULL;
}

static int test_concurrent_applies(void)
{
	struct job jobs[4];
	pthread_t th[4];

	ag_set_num_threads(4);
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct job){ .reps = 5 };
		pthread_create(&th[i], NULL, own_graphs, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		TAP_CHECKF(jobs[i].rc == 0, "job %d: %d", i, jobs[i].rc);
	}
	TAP_CHECK(ag__live_nodes() == 0);
	TAP_CHECK(ag__live_tensors() == 0);
	return 0;
}

/* Many graph tasks over one retained graph: the same nodes at once. */
static void *shared_graph(void *arg)
{
	struct job *j = arg;
	struct ag_grad_opts o = { .retain_graph = true };

	for (int r = 0; r < j->reps && !j->rc; r++) {
		struct ag_tensor *g = NULL;

		j->rc = ag_grad(&j->loss, NULL, 1, &j->x, 1, &g, &o);
		if (!j->rc && check_grad(j->x, g, 1))
			j->rc = -AG_EINTERNAL;
		ag_tensor_put(g);
	}
	return NULL;
}

static int test_same_nodes_in_concurrent_tasks(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = leaf(1.0), *loss = wide_loss(x);
	struct job jobs[4];
	pthread_t th[4];

	TAP_CHECK(loss);
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct job){ .reps = 5, .loss = loss, .x = x };
		pthread_create(&th[i], NULL, shared_graph, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		TAP_CHECKF(jobs[i].rc == 0, "job %d: %d %s", i, jobs[i].rc,
			   ag_errmsg());
	}
	ag_scope_end(s);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

/*
 * Re-entrant: each of K branches has a custom backward that runs a whole
 * inner backward (of the wide cube graph) from the pool worker it is on.
 */
static atomic_int inner_ok;

static int outer_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g, int nout,
		     struct ag_tensor **gi, int nin)
{
	struct ag_tensor *x, *loss, *gx;
	int rc;

	(void)ctx;
	(void)nout;
	(void)nin;
	{
		AG_ENABLE_GRAD_SCOPE();
		struct ag_scope *s = ag_scope_begin();

		x = leaf(0.5);
		loss = wide_loss(x);
		rc = loss ? ag_backward(loss, NULL, NULL) : -ag_errcode();
		gx = rc ? NULL : ag_tensor_grad(x);
		if (!rc && check_grad(x, gx, 1) == 0)
			atomic_fetch_add(&inner_ok, 1);
		ag_scope_end(s);
	}
	if (rc)
		return rc;
	gi[0] = ag_mul_scalar(g[0], 2.0);
	return gi[0] ? 0 : -ag_errcode();
}

static int ident_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, int nout)
{
	(void)ctx;
	(void)nin;
	(void)nout;
	out[0] = ag_mul_scalar(in[0], 2.0);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops outer = {
	.name = "Outer",
	.forward = ident_fwd,
	.backward = outer_bwd,
};

static int test_reentrant_on_the_pool(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = leaf(1.0), *loss = NULL, *g;

	atomic_store(&inner_ok, 0);
	for (int k = 0; k < K; k++) {
		struct ag_tensor *h = ag_mul_scalar(x, 1.0), *y = NULL;

		TAP_CHECK(ag_function_apply(&outer, &h, 1, &y, 1, NULL) == 0);
		loss = loss ? ag_add(loss, ag_sum(y)) : ag_sum(y);
	}
	TAP_CHECKF(ag_backward(loss, NULL, NULL) == 0, "%s", ag_errmsg());
	TAP_CHECK(atomic_load(&inner_ok) == K);
	g = ag_tensor_grad(x);
	for (int i = 0; i < N; i++)
		TAP_CHECK(ag__get(g, i) == 2.0 * K);
	ag_scope_end(s);
	TAP_CHECK(ag__live_nodes() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_concurrent_applies),
	TAP_TEST(test_same_nodes_in_concurrent_tasks),
	TAP_TEST(test_reentrant_on_the_pool),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
