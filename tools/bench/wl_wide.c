// SPDX-License-Identifier: MIT
/*
 * wide: K branches x w_k -> L tanh -> sum, added into one loss; the
 * backward has K independent chains for the pool to run in parallel
 * (docs/benchmarks.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

struct wide_state {
	struct ag_tensor *x;
	struct ag_tensor **w;
	int64_t k, l, n;
	char case_name[64];
};

static void *wide_setup(const struct config *c, struct ag_generator *g)
{
	struct wide_state *st = xmalloc(sizeof(*st));

	st->k = c->wide_k;
	st->l = c->wide_l;
	st->n = c->wide_n;
	snprintf(st->case_name, sizeof(st->case_name), "K=%lld,L=%lld,n=%lld",
		 (long long)st->k, (long long)st->l, (long long)st->n);
	st->x = uniform(g, AG_F32, 1, &st->n, -1, 1, true);
	st->w = xmalloc((size_t)st->k * sizeof(*st->w));
	for (int64_t i = 0; i < st->k; i++)
		st->w[i] = uniform(g, AG_F32, 1, &st->n, -1, 1, true);
	return st;
}

static void wide_zero(struct wide_state *st)
{
	must_ok(ag_tensor_zero_grad(st->x));
	for (int64_t i = 0; i < st->k; i++)
		must_ok(ag_tensor_zero_grad(st->w[i]));
}

static void wide_once(struct wide_state *st, double *fwd_s, double *bwd_s,
		      const char *trace_path)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = NULL;
	double t0, t1, t2;

	t0 = bench_now();
	for (int64_t k = 0; k < st->k; k++) {
		struct ag_tensor *h = must(ag_mul(st->x, st->w[k]));

		for (int64_t j = 0; j < st->l; j++)
			h = must(ag_tanh(h));
		h = must(ag_sum(h));
		loss = loss ? must(ag_add(loss, h)) : h;
	}
	t1 = bench_now();
#if HAVE_TRACE
	if (trace_path)
		must_ok(ag_trace_start(trace_path));
#else
	(void)trace_path;
#endif
	must_ok(ag_backward(loss, NULL, NULL));
	t2 = bench_now();
#if HAVE_TRACE
	if (trace_path)
		must_ok(ag_trace_stop());
#endif
	ag_scope_end(s);
	*fwd_s = t1 - t0;
	*bwd_s = t2 - t1;
}

static void wide_run(void *arg, const struct config *c, int threads)
{
	struct wide_state *st = arg;
	double f, b;

	(void)c;
	wide_once(st, &f, &b, NULL);
	wide_zero(st);
	record("wide", st->case_name, threads, "fwd_ms", "ms", f * 1e3);
	record("wide", st->case_name, threads, "bwd_ms", "ms", b * 1e3);
}

/*
 * Closed form: with h_0 = x w_k and h_j = tanh(h_{j-1}),
 * dloss/dx = sum_k w_k prod_j (1 - h_j^2) and dloss/dw_k = x prod_j (...).
 */
static void wide_check(void *arg, const struct config *c, int threads,
		       struct ag_generator *g)
{
	struct wide_state *st = arg;
	int64_t n = st->n, at;
	double f, b, *xs, *got, *want, *want_w0, *w, worst, worst_w0;
	struct ag_tensor *gx, *gw0;

	(void)c;
	(void)g;
	wide_once(st, &f, &b, NULL);
	gx = ag_tensor_grad(st->x);
	gw0 = ag_tensor_grad(st->w[0]);
	if (!gx || !gw0) {
		check_report(false, "wide: missing grad");
		ag_tensor_put(gx);
		ag_tensor_put(gw0);
		wide_zero(st);
		return;
	}
	xs = to_f64(st->x);
	want = calloc((size_t)n, sizeof(double));
	want_w0 = xmalloc((size_t)n * sizeof(double));
	if (!want)
		die("out of memory");
	for (int64_t k = 0; k < st->k; k++) {
		w = to_f64(st->w[k]);
		for (int64_t i = 0; i < n; i++) {
			double h = xs[i] * w[i], d = 1;

			for (int64_t j = 0; j < st->l; j++) {
				h = tanh(h);
				d *= 1 - h * h;
			}
			want[i] += w[i] * d;
			if (k == 0)
				want_w0[i] = xs[i] * d;
		}
		free(w);
	}
	got = to_f64(gx);
	worst = worst_ratio(got, want, n, 1e-4, 1e-6, &at);
	check_report(
		worst <= 1,
		"wide %s threads=%d: dloss/dx closed form (x[%lld]: %.7g vs %.7g)",
		st->case_name, threads, (long long)at, got[at], want[at]);
	free(got);
	got = to_f64(gw0);
	worst_w0 = worst_ratio(got, want_w0, n, 1e-4, 1e-6, &at);
	check_report(
		worst_w0 <= 1,
		"wide %s threads=%d: dloss/dw_0 closed form (w_0[%lld]: %.7g vs %.7g)",
		st->case_name, threads, (long long)at, got[at], want_w0[at]);
	free(got);
	free(xs);
	free(want);
	free(want_w0);
	ag_tensor_put(gx);
	ag_tensor_put(gw0);
	wide_zero(st);
}

/* One wide forward and backward, the backward traced into path. */
static void wide_trace(void *arg, const char *path)
{
	struct wide_state *st = arg;
	double f, b;

	wide_once(st, &f, &b, path);
	wide_zero(st);
}

static void wide_free(void *arg)
{
	struct wide_state *st = arg;

	ag_tensor_put(st->x);
	for (int64_t i = 0; i < st->k; i++)
		ag_tensor_put(st->w[i]);
	free(st->w);
	free(st);
}

const struct workload wl_wide = {
	.name = "wide",
	.description =
		"K independent branches of L tanh over n floats: backward parallelism",
	.needs_libag = true,
	.setup = wide_setup,
	.check = wide_check,
	.run = wide_run,
	.trace = wide_trace,
	.free = wide_free,
};
