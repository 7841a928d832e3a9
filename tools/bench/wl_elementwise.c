// SPDX-License-Identifier: MIT
/*
 * elementwise: one unary op (or a mul) and its backward over a long
 * vector, as time and as memory bandwidth (docs/benchmarks.md).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

struct ew_op {
	const char *name;
	struct ag_tensor *(*fn)(struct ag_tensor *a); /* NULL: x * w */
	double lo, hi; /* input range */
	/* nominal bytes per element of the op's own kernels, f32 */
	int fwd_bytes, bwd_bytes;
};

/*
 * Bytes: a unary forward reads x and writes y (8 B/element); its backward
 * reads the incoming gradient and one saved tensor (x or the result) and
 * writes the input gradient (12 B).  mul reads x and w and writes y (12 B)
 * forward; backward runs two such kernels, g * w and g * x (24 B).
 */
static struct ew_op ew_ops[] = {
	{ "exp", ag_exp, -1, 1, 8, 12 },
	{ "log", ag_log, 0.5, 2, 8, 12 },
	{ "sin", ag_sin, -1, 1, 8, 12 },
	{ "tanh", ag_tanh, -1, 1, 8, 12 },
	{ "sigmoid", ag_sigmoid, -1, 1, 8, 12 },
	{ "mul", NULL, -1, 1, 12, 24 },
};

struct ew_state {
	struct ag_tensor *x[ARRAY_SIZE(ew_ops)];
	struct ag_tensor *w;
};

static void *ew_setup(const struct config *c, struct ag_generator *g)
{
	struct ew_state *st = xmalloc(sizeof(*st));

	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++)
		st->x[i] = uniform(g, AG_F32, 1, &c->ew_n, ew_ops[i].lo,
				   ew_ops[i].hi, true);
	st->w = uniform(g, AG_F32, 1, &c->ew_n, -1, 1, true);
	return st;
}

static void ew_once(struct ew_state *st, size_t i, double *fwd_s, double *bwd_s)
{
	struct ag_scope *s = ag_scope_begin();
	const struct ew_op *op = &ew_ops[i];
	struct ag_tensor *x = st->x[i], *y, *loss;
	double t0, t1, t2;

	t0 = bench_now();
	if (op->fn)
		y = must(op->fn(x));
	else
		y = must(ag_mul(x, st->w));
	t1 = bench_now();
	loss = must(ag_sum(y));
	t2 = bench_now();
	must_ok(ag_backward(loss, NULL, NULL));
	*bwd_s = bench_now() - t2;
	*fwd_s = t1 - t0;
	ag_scope_end(s);
}

static void ew_run(void *arg, const struct config *c, int threads)
{
	struct ew_state *st = arg;

	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++) {
		const struct ew_op *op = &ew_ops[i];
		double f, b, n = (double)c->ew_n;

		ew_once(st, i, &f, &b);
		must_ok(ag_tensor_zero_grad(st->x[i]));
		if (!op->fn)
			must_ok(ag_tensor_zero_grad(st->w));
		record("elementwise", op->name, threads, "fwd_ms", "ms",
		       f * 1e3);
		record("elementwise", op->name, threads, "bwd_ms", "ms",
		       b * 1e3);
		record("elementwise", op->name, threads, "fwd_gbps", "GB/s",
		       op->fwd_bytes * n / f * 1e-9);
		record("elementwise", op->name, threads, "bwd_gbps", "GB/s",
		       op->bwd_bytes * n / b * 1e-9);
	}
}

static double ew_deriv(const char *name, double x)
{
	if (!strcmp(name, "exp"))
		return exp(x);
	if (!strcmp(name, "log"))
		return 1 / x;
	if (!strcmp(name, "sin"))
		return cos(x);
	if (!strcmp(name, "tanh"))
		return 1 - tanh(x) * tanh(x);
	if (!strcmp(name, "sigmoid")) {
		double s = 1 / (1 + exp(-x));

		return s * (1 - s);
	}
	return NAN;
}

/* d sum(op(x)) / dx in closed form; for mul, dx = w and dw = x. */
static void ew_check(void *arg, const struct config *c, int threads,
		     struct ag_generator *g)
{
	struct ew_state *st = arg;
	int64_t n = c->ew_n, at;

	(void)g;
	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++) {
		const struct ew_op *op = &ew_ops[i];
		struct ag_tensor *gx, *gw = NULL;
		double f, b, *xs, *ws, *got, *want, worst;

		ew_once(st, i, &f, &b);
		gx = ag_tensor_grad(st->x[i]);
		if (!op->fn)
			gw = ag_tensor_grad(st->w);
		if (!gx || (!op->fn && !gw)) {
			check_report(false, "elementwise %s: missing grad",
				     op->name);
			ag_tensor_put(gx);
			ag_tensor_put(gw);
			continue;
		}
		xs = to_f64(st->x[i]);
		ws = to_f64(st->w);
		got = to_f64(gx);
		want = xmalloc((size_t)n * sizeof(double));
		for (int64_t j = 0; j < n; j++)
			want[j] = op->fn ? ew_deriv(op->name, xs[j]) : ws[j];
		worst = worst_ratio(got, want, n, 1e-5, 1e-6, &at);
		if (gw && worst <= 1) {
			free(got);
			got = to_f64(gw);
			worst = worst_ratio(got, xs, n, 1e-6, 0, &at);
		}
		check_report(
			worst <= 1,
			"elementwise %s n=%lld threads=%d: closed-form gradient (worst at %lld: %.7g vs %.7g)",
			op->name, (long long)n, threads, (long long)at, got[at],
			gw ? xs[at] : want[at]);
		free(xs);
		free(ws);
		free(got);
		free(want);
		ag_tensor_put(gx);
		ag_tensor_put(gw);
		must_ok(ag_tensor_zero_grad(st->x[i]));
		must_ok(ag_tensor_zero_grad(st->w));
	}
}

static void ew_free(void *arg)
{
	struct ew_state *st = arg;

	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++)
		ag_tensor_put(st->x[i]);
	ag_tensor_put(st->w);
	free(st);
}

const struct workload wl_elementwise = {
	.name = "elementwise",
	.description =
		"exp, log, sin, tanh, sigmoid and mul over 2^22 floats: GB/s",
	.needs_libag = true,
	.setup = ew_setup,
	.check = ew_check,
	.run = ew_run,
	.free = ew_free,
};
