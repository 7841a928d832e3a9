// SPDX-License-Identifier: MIT
/*
 * chain: a long chain of tiny nodes, y = x; N times y = y + 0.001 tanh(y);
 * the forward and backward cost per node (docs/benchmarks.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

/*
 * y = x; N times y = y + 0.001 * tanh(y); loss = sum(y); backward.
 * 3N + 1 nodes.
 */
static void chain_once(struct ag_tensor *x, int64_t n, double *fwd_s,
		       double *bwd_s)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *y = x, *loss;
	double t0, t1, t2;

	t0 = bench_now();
	for (int64_t i = 0; i < n; i++)
		y = must(ag_add(y,
				must(ag_mul_scalar(must(ag_tanh(y)), 0.001))));
	loss = must(ag_sum(y));
	t1 = bench_now();
	must_ok(ag_backward(loss, NULL, NULL));
	t2 = bench_now();
	ag_scope_end(s);
	*fwd_s = t1 - t0;
	*bwd_s = t2 - t1;
}

struct chain_state {
	struct ag_tensor *x[2];
};

static void *chain_setup(const struct config *c, struct ag_generator *g)
{
	struct chain_state *st = xmalloc(sizeof(*st));

	for (int i = 0; i < 2; i++)
		st->x[i] = uniform(g, AG_F32, 1, &c->chain_s[i], -1, 1, true);
	return st;
}

static void chain_run(void *arg, const struct config *c, int threads)
{
	struct chain_state *st = arg;

	for (int i = 0; i < 2; i++) {
		char name[32];
		double f, b, nodes = 3.0 * (double)c->chain_n + 1;

		/* a length other than docs/benchmarks.md's is part of the case */
		if (c->chain_n == 10000 || c->quick)
			snprintf(name, sizeof(name), "S=%lld",
				 (long long)c->chain_s[i]);
		else
			snprintf(name, sizeof(name), "S=%lld,N=%lld",
				 (long long)c->chain_s[i],
				 (long long)c->chain_n);
		chain_once(st->x[i], c->chain_n, &f, &b);
		must_ok(ag_tensor_zero_grad(st->x[i]));
		record("chain", name, threads, "fwd_ns_per_node", "ns",
		       f * 1e9 / nodes);
		record("chain", name, threads, "bwd_ns_per_node", "ns",
		       b * 1e9 / nodes);
	}
}

/* d loss / d x_i = prod_k (1 + 0.001 * (1 - tanh(y_k)^2)), in f64. */
static void chain_check(void *arg, const struct config *c, int threads,
			struct ag_generator *g)
{
	struct chain_state *st = arg;

	(void)g;
	for (int i = 0; i < 2; i++) {
		struct ag_tensor *x = st->x[i];
		int64_t n = ag_tensor_numel(x), at;
		double f, b, *xs, *got, *want, w;
		struct ag_tensor *gr;

		chain_once(x, c->chain_n, &f, &b);
		gr = ag_tensor_grad(x);
		if (!gr) {
			check_report(false, "chain S=%lld: x has no grad",
				     (long long)n);
			continue;
		}
		xs = to_f64(x);
		got = to_f64(gr);
		ag_tensor_put(gr);
		want = xmalloc((size_t)n * sizeof(double));
		for (int64_t j = 0; j < n; j++) {
			double y = xs[j], d = 1;

			for (int64_t k = 0; k < c->chain_n; k++) {
				double t = tanh(y);

				d *= 1 + 0.001 * (1 - t * t);
				y += 0.001 * t;
			}
			want[j] = d;
		}
		w = worst_ratio(got, want, n, 1e-3, 1e-6, &at);
		check_report(
			w <= 1,
			"chain S=%lld N=%lld threads=%d: dloss/dx vs f64 recurrence (x[%lld]: %.7g vs %.7g)",
			(long long)n, (long long)c->chain_n, threads,
			(long long)at, got[at], want[at]);
		free(xs);
		free(got);
		free(want);
		must_ok(ag_tensor_zero_grad(x));
	}
}

static void chain_free(void *arg)
{
	struct chain_state *st = arg;

	for (int i = 0; i < 2; i++)
		ag_tensor_put(st->x[i]);
	free(st);
}

const struct workload wl_chain = {
	.name = "chain",
	.description =
		"N times y = y + 0.001 tanh(y), then backward: the cost per node",
	.needs_libag = true,
	.setup = chain_setup,
	.check = chain_check,
	.run = chain_run,
	.free = chain_free,
};
