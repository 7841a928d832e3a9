// SPDX-License-Identifier: MIT
/*
 * mlp: SGD steps of a small MLP on a fixed batch, and the same step's
 * GEMMs alone (docs/benchmarks.md, docs/perf.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/*
 * 784-512-512-10 with ReLU: three ag_linear (W [out, in], as torch's
 * nn.Linear) and ag_cross_entropy (mean over the batch) against fixed
 * random targets.  (The loss was first composed from exp, sum_dim, log
 * and mul by a one-hot mask; that kept the step clear of a bug, fixed by
 * "walk: a 0-d walk has increment 1, not 0", which the f64
 * finite-difference check below caught.)
 * SGD: under no-grad, g *= lr; p -= g; then p.grad is dropped.
 */
struct mlp {
	enum ag_dtype dt;
	int64_t dims[4], b;
	struct ag_tensor *p[6]; /* W1 b1 W2 b2 W3 b3; W is [out, in] */
	struct ag_tensor *x, *targets; /* targets: i64 [B] */
	char case_name[64];
};

static void mlp_init(struct mlp *m, enum ag_dtype dt, const int64_t *dims,
		     int64_t b, struct ag_generator *g)
{
	int64_t xs[2] = { b, dims[0] };

	m->dt = dt;
	memcpy(m->dims, dims, sizeof(m->dims));
	m->b = b;
	snprintf(m->case_name, sizeof(m->case_name),
		 "%lld-%lld-%lld-%lld,B=%lld", (long long)dims[0],
		 (long long)dims[1], (long long)dims[2], (long long)dims[3],
		 (long long)b);
	for (int l = 0; l < 3; l++) {
		int64_t ws[2] = { dims[l + 1], dims[l] };
		double r = 1 / sqrt((double)dims[l]);

		m->p[2 * l] = uniform(g, dt, 2, ws, -r, r, true);
		m->p[2 * l + 1] = uniform(g, dt, 1, &ws[0], -r, r, true);
	}
	m->x = uniform(g, dt, 2, xs, -1, 1, false);
	m->targets = random_targets(g, b, dims[3]);
}

static void mlp_free(struct mlp *m)
{
	for (int i = 0; i < 6; i++)
		ag_tensor_put(m->p[i]);
	ag_tensor_put(m->x);
	ag_tensor_put(m->targets);
}

/* The loss inside the caller's scope; NULL (with ag_errmsg) on error. */
static struct ag_tensor *mlp_loss(struct mlp *m)
{
	struct ag_tensor *h = m->x;

	for (int l = 0; l < 3; l++) {
		h = ag_linear(h, m->p[2 * l], m->p[2 * l + 1]);
		if (!h)
			return NULL;
		if (l < 2 && !(h = ag_relu(h)))
			return NULL;
	}
	return ag_cross_entropy(h, m->targets);
}

/* One training step; returns the loss before the update. */
static double mlp_step(struct mlp *m, double lr)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = must(mlp_loss(m));
	double v;

	must_ok(ag_backward(loss, NULL, NULL));
	v = ag_tensor_item(loss);
	sgd_step(m->p, 6, lr);
	ag_scope_end(s);
	return v;
}

/* Times mlp_steps steps; returns the seconds per step. */
static double mlp_run(struct mlp *m, const struct config *c, int threads)
{
	double t0, t;

	t0 = bench_now();
	for (int i = 0; i < c->mlp_steps; i++)
		mlp_step(m, 0.01);
	t = (bench_now() - t0) / c->mlp_steps;
	record("mlp", m->case_name, threads, "steps_per_s", "steps/s", 1 / t);
	record("mlp", m->case_name, threads, "step_ms", "ms", t * 1e3);
	return t;
}

/*
 * The GEMMs of one step, alone: the same shapes and operand layouts
 * (transposes as strided views, which ag_matmul hands to the BLAS as
 * flags, as ag_linear does) as the step's forward and backward, on
 * operands of the step's sizes.  Per layer l with input h [B, in], weight
 * W [out, in] and output gradient g [B, out]: h W^T forward; g W (except
 * for the first layer, whose input needs no gradient) and g^T h backward.
 * This is the GEMM rate the step gets, to hold against limits' 1024^3
 * figure, and gemm_share is its part of the step's time.
 */
struct mlp_gemm {
	struct ag_tensor *h[3], *g[3], *gt[3], *wt[3];
	double flops;
};

static void mlp_gemm_init(struct mlp_gemm *mg, struct mlp *m,
			  struct ag_generator *g)
{
	struct ag_mode md = ag_no_grad_enter();

	mg->flops = 0;
	for (int l = 0; l < 3; l++) {
		int64_t in = m->dims[l], out = m->dims[l + 1];
		int64_t hs[2] = { m->b, in }, gs[2] = { m->b, out };

		mg->h[l] = l ? uniform(g, m->dt, 2, hs, 0, 1, false) :
			       ag_tensor_get(m->x);
		mg->g[l] = uniform(g, m->dt, 2, gs, -1, 1, false);
		mg->gt[l] = must(ag_transpose(mg->g[l], 0, 1));
		mg->wt[l] = must(ag_transpose(m->p[2 * l], 0, 1));
		mg->flops += 2.0 * (double)(m->b * in * out) * (l ? 3 : 2);
	}
	ag_mode_exit(md);
}

static void mlp_gemm_free(struct mlp_gemm *mg)
{
	for (int l = 0; l < 3; l++) {
		ag_tensor_put(mg->h[l]);
		ag_tensor_put(mg->g[l]);
		ag_tensor_put(mg->gt[l]);
		ag_tensor_put(mg->wt[l]);
	}
}

/* step_s: the step's time in the same repetition. */
static void mlp_gemm_run(struct mlp_gemm *mg, struct mlp *m,
			 const struct config *c, int threads, double step_s)
{
	struct ag_mode md = ag_no_grad_enter();
	double t0, t;

	t0 = bench_now();
	for (int i = 0; i < c->mlp_steps; i++) {
		struct ag_scope *s = ag_scope_begin();

		for (int l = 0; l < 3; l++) {
			must(ag_matmul(mg->h[l], mg->wt[l]));
			if (l)
				must(ag_matmul(mg->g[l], m->p[2 * l]));
			must(ag_matmul(mg->gt[l], mg->h[l]));
		}
		ag_scope_end(s);
	}
	t = (bench_now() - t0) / c->mlp_steps;
	ag_mode_exit(md);
	record("mlp", m->case_name, threads, "gemm_ms", "ms", t * 1e3);
	record("mlp", m->case_name, threads, "gemm_gflops", "GFLOP/s",
	       mg->flops / t * 1e-9);
	record("mlp", m->case_name, threads, "gemm_share", "%",
	       100 * t / step_s);
}

static double mlp_loss_value(struct mlp *m)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode md = ag_no_grad_enter();
	struct ag_tensor *l = mlp_loss(m);
	double v = l ? ag_tensor_item(l) : NAN;

	ag_mode_exit(md);
	ag_scope_end(s);
	return v;
}

static double mlp_loss_fd(void *m)
{
	return mlp_loss_value(m);
}

/*
 * In f64, central finite differences on one element of each parameter
 * against the backward pass; then, in f32 at the benchmark's layout, the
 * loss must fall over SGD steps on the fixed batch.
 */
static void mlp_check(const struct config *c, int threads,
		      struct ag_generator *g)
{
	static const int64_t small[4] = { 12, 16, 8, 10 };
	struct mlp m;
	struct ag_tensor *loss;
	struct ag_scope *s;
	double first, last = 0;

	mlp_init(&m, AG_F64, small, 6, g);
	s = ag_scope_begin();
	loss = mlp_loss(&m);
	if (!loss) {
		fprintf(stderr,
			"check skip: mlp f64 finite differences (f64 forward failed: %s)\n",
			ag_errmsg());
		ag_clear_error();
	} else {
		must_ok(ag_backward(loss, NULL, NULL));
		for (int i = 0; i < 6; i++)
			check_param_fd("mlp", threads, i, m.p[i], mlp_loss_fd,
				       &m);
	}
	ag_scope_end(s);
	mlp_free(&m);

	mlp_init(&m, AG_F32, c->mlp_dims, c->mlp_b, g);
	first = mlp_step(&m, 0.01);
	for (int i = 0; i < 30; i++)
		last = mlp_step(&m, 0.01);
	check_report(
		last < first && isfinite(last),
		"mlp f32 %s threads=%d: loss falls over 31 SGD steps (%.6g -> %.6g)",
		m.case_name, threads, first, last);
	mlp_free(&m);
}

/* The workload's state: the network and its GEMMs alone. */
struct mlp_state {
	struct mlp m;
	struct mlp_gemm mg;
};

static void *mlp_setup(const struct config *c, struct ag_generator *g)
{
	struct mlp_state *st = xmalloc(sizeof(*st));

	mlp_init(&st->m, AG_F32, c->mlp_dims, c->mlp_b, g);
	mlp_gemm_init(&st->mg, &st->m, g);
	return st;
}

static void mlp_check_wl(void *arg, const struct config *c, int threads,
			 struct ag_generator *g)
{
	(void)arg;
	mlp_check(c, threads, g);
}

static void mlp_run_wl(void *arg, const struct config *c, int threads)
{
	struct mlp_state *st = arg;

	double step_s = mlp_run(&st->m, c, threads);

	mlp_gemm_run(&st->mg, &st->m, c, threads, step_s);
}

static void mlp_free_wl(void *arg)
{
	struct mlp_state *st = arg;

	mlp_gemm_free(&st->mg);
	mlp_free(&st->m);
	free(st);
}

const struct workload wl_mlp = {
	.name = "mlp",
	.description =
		"784-512-512-10 MLP, B=128: SGD steps per second and its GEMMs",
	.needs_libag = true,
	.setup = mlp_setup,
	.check = mlp_check_wl,
	.run = mlp_run_wl,
	.free = mlp_free_wl,
};
