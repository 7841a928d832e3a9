// SPDX-License-Identifier: MIT
/*
 * dist: data-parallel training over MPI (libag-dist), run as
 *
 *	mpirun -np N ag-bench --workload dist
 *
 * Every rank trains the mlp workload's 784-512-512-10 network under DDP on
 * its own batch of B = 128; rank 0 reports the global samples per second
 * (case "mlp,B=128,np=N"), and the all-reduce cost behind the cost model
 * of docs/distributed.md: the latency of an 8-byte all-reduce and the
 * bandwidth of a 4 MiB one (case "allreduce,np=N").  Only by name: the
 * other workloads never start MPI.  Ranks other than 0 print nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ag/dist.h>
#include <ag/nn.h>

#include "common.h"

#define BIG_BYTES (4 << 20)

struct dist_state {
	struct ag_module *m;
	struct ag_ddp *ddp;
	struct ag_tensor **p;
	int np;
	struct ag_tensor *x, *targets;
	struct ag_tensor *small, *big; /* for the all-reduce figures */
	char case_mlp[64], case_ar[64];
	int world;
};

static struct ag_module *dist_mlp(const int64_t *dims, struct ag_generator *g)
{
	struct ag_module *m[] = {
		ag_linear_new(dims[0], dims[1], true, g), ag_relu_new(),
		ag_linear_new(dims[1], dims[2], true, g), ag_relu_new(),
		ag_linear_new(dims[2], dims[3], true, g),
	};

	return ag_sequential_new(m, ARRAY_SIZE(m));
}

static void *dist_setup(const struct config *c, struct ag_generator *g)
{
	struct dist_state *st = xmalloc(sizeof(*st));
	int64_t xs[2] = { c->mlp_b, c->mlp_dims[0] };
	int64_t n_small = 1, n_big = BIG_BYTES / sizeof(float);

	memset(st, 0, sizeof(*st));
	must_ok(ag_dist_init(NULL, NULL));
	st->world = ag_dist_world_size();
	if (ag_dist_rank()) {
		bench_silent = true; /* rank 0 reports */
		if (!freopen("/dev/null", "w", stdout) ||
		    !freopen("/dev/null", "w", stderr))
			die("freopen /dev/null");
	}
	st->m = dist_mlp(c->mlp_dims, g);
	if (!st->m)
		die("dist: %s", ag_errmsg());
	st->ddp = ag_ddp_new(st->m, NULL);
	if (!st->ddp)
		die("ag_ddp_new: %s", ag_errmsg());
	must_ok(ag_module_parameters(st->m, &st->p, &st->np));
	/* each rank its own batch, as each would read its own shard */
	for (int r = 0; r <= ag_dist_rank(); r++) {
		ag_tensor_put(st->x);
		ag_tensor_put(st->targets);
		st->x = uniform(g, AG_F32, 2, xs, -1, 1, false);
		st->targets = random_targets(g, c->mlp_b, c->mlp_dims[3]);
	}
	st->small = must(ag_zeros(AG_F64, 1, &n_small));
	st->big = must(ag_zeros(AG_F32, 1, &n_big));
	snprintf(st->case_mlp, sizeof(st->case_mlp), "mlp,B=%lld,np=%d",
		 (long long)c->mlp_b, st->world);
	snprintf(st->case_ar, sizeof(st->case_ar), "allreduce,np=%d",
		 st->world);
	return st;
}

static double dist_step(struct dist_state *st)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = must(
		ag_cross_entropy(ag_ddp_forward(st->ddp, st->x), st->targets));
	double v;

	must_ok(ag_backward(loss, NULL, NULL));
	v = ag_tensor_item(loss);
	sgd_step(st->p, st->np, 0.01);
	ag_scope_end(s);
	return v;
}

/*
 * After a step every rank must hold the same parameters, bitwise: the
 * gradients were averaged, not left local.  A MAX and a MIN over ranks.
 */
static void dist_check(void *arg, const struct config *c, int threads,
		       struct ag_generator *g)
{
	struct dist_state *st = arg;
	double first, last = 0, worst = 0;

	(void)c;
	(void)g;
	first = dist_step(st);
	for (int i = 0; i < 10; i++)
		last = dist_step(st);
	for (int i = 0; i < st->np; i++) {
		struct ag_tensor *hi = must(ag_clone(st->p[i]));
		struct ag_tensor *lo = must(ag_neg(st->p[i]));
		const float *h = ag_tensor_data(hi), *l = ag_tensor_data(lo);

		must_ok(ag_dist_all_reduce(hi, AG_DIST_MAX));
		must_ok(ag_dist_all_reduce(lo, AG_DIST_MAX));
		for (int64_t k = 0; k < ag_tensor_numel(hi); k++)
			if (h[k] + l[k] > worst)
				worst = h[k] + l[k];
		ag_tensor_put(hi);
		ag_tensor_put(lo);
	}
	check_report(
		worst == 0,
		"dist %s threads=%d: parameters bitwise equal on every rank after 11 DDP steps (max spread %g)",
		st->case_mlp, threads, worst);
	check_report(
		last < first,
		"dist %s threads=%d: loss falls over 11 DDP steps (%.6g -> %.6g)",
		st->case_mlp, threads, first, last);
}

/* Seconds per all-reduce of t, over n of them, timed between barriers. */
static double allreduce_s(struct ag_tensor *t, int n)
{
	double t0;

	must_ok(ag_dist_barrier());
	t0 = bench_now();
	for (int i = 0; i < n; i++)
		must_ok(ag_dist_all_reduce(t, AG_DIST_SUM));
	return (bench_now() - t0) / n;
}

static void dist_run(void *arg, const struct config *c, int threads)
{
	struct dist_state *st = arg;
	int steps = c->quick ? 2 : 4 * c->mlp_steps;
	double t0, t, small, big;

	must_ok(ag_dist_barrier());
	t0 = bench_now();
	for (int i = 0; i < steps; i++)
		dist_step(st);
	must_ok(ag_dist_barrier());
	t = (bench_now() - t0) / steps;
	record("dist", st->case_mlp, threads, "samples_per_s", "samples/s",
	       (double)(c->mlp_b * st->world) / t);
	record("dist", st->case_mlp, threads, "step_ms", "ms", t * 1e3);
	small = allreduce_s(st->small, c->quick ? 10 : 200);
	big = allreduce_s(st->big, c->quick ? 2 : 20);
	record("dist", st->case_ar, threads, "latency_us", "us", small * 1e6);
	record("dist", st->case_ar, threads, "bandwidth_GBps", "GB/s",
	       BIG_BYTES / big * 1e-9);
}

static void dist_free(void *arg)
{
	struct dist_state *st = arg;

	ag_ddp_free(st->ddp);
	ag_module_put(st->m);
	ag_tensor_put(st->x);
	ag_tensor_put(st->targets);
	ag_tensor_put(st->small);
	ag_tensor_put(st->big);
	free(st);
	ag_dist_finalize();
}

const struct workload wl_dist = {
	.name = "dist",
	.description =
		"784-512-512-10 MLP under DDP on mpirun's ranks: global samples/s, all-reduce latency and bandwidth",
	.needs_libag = true,
	.only_by_name = true,
	.setup = dist_setup,
	.check = dist_check,
	.run = dist_run,
	.free = dist_free,
};
