// SPDX-License-Identifier: MIT
/*
 * dist: data-parallel training over MPI (libag-dist), run as
 *
 *	mpirun -np N ag-bench --workload dist --threads 1
 *
 * Every rank trains the mlp workload's 784-512-512-10 network, and the cnn
 * workload's network (its BatchNorm statistics broadcast from rank 0 at
 * each forward), under DDP on its own batch of B = 128; rank 0 reports the
 * global samples per second (cases "mlp,B=128,np=N", "cnn,B=128,np=N"),
 * and the all-reduce cost behind the cost model of docs/distributed.md:
 * the latency of an 8-byte all-reduce and the bandwidth of a 4 MiB one
 * (case "allreduce,np=N").  Only by name: the other workloads never start
 * MPI.  Ranks other than 0 print nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ag/dist.h>
#include <ag/nn.h>

#include "common.h"
#include "fmnist_models.h" /* examples/: the training example's cnn */

#define BIG_BYTES (4 << 20)

/* A model trained under DDP on this rank's batch. */
struct dist_model {
	struct ag_module *m;
	struct ag_ddp *ddp;
	struct ag_tensor **p;
	int np;
	struct ag_tensor *x, *targets;
	char case_name[64];
	int64_t b;
	int steps; /* timed per repetition */
};

struct dist_state {
	struct dist_model mlp, cnn;
	struct ag_tensor *small, *big; /* for the all-reduce figures */
	char case_ar[64];
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

/*
 * Takes over m.  Every rank draws the same model, then its own batch (as
 * each would read its own shard).
 */
static void model_init(struct dist_model *dm, struct ag_module *m,
		       const char *name, int ndim, const int64_t *xs,
		       int64_t classes, int steps, struct ag_generator *g)
{
	if (!m)
		die("dist: %s", ag_errmsg());
	dm->m = m;
	dm->ddp = ag_ddp_new(m, NULL);
	if (!dm->ddp)
		die("ag_ddp_new: %s", ag_errmsg());
	must_ok(ag_module_parameters(m, &dm->p, &dm->np));
	for (int r = 0; r <= ag_dist_rank(); r++) {
		ag_tensor_put(dm->x);
		ag_tensor_put(dm->targets);
		dm->x = uniform(g, AG_F32, ndim, xs, -1, 1, false);
		dm->targets = random_targets(g, xs[0], classes);
	}
	dm->b = xs[0];
	dm->steps = steps;
	snprintf(dm->case_name, sizeof(dm->case_name), "%s,B=%lld,np=%d", name,
		 (long long)dm->b, ag_dist_world_size());
}

static void model_free(struct dist_model *dm)
{
	ag_ddp_free(dm->ddp);
	ag_module_put(dm->m);
	ag_tensor_put(dm->x);
	ag_tensor_put(dm->targets);
}

static void *dist_setup(const struct config *c, struct ag_generator *g)
{
	struct dist_state *st = xmalloc(sizeof(*st));
	int64_t xs[2] = { c->mlp_b, c->mlp_dims[0] };
	int64_t hw = c->quick ? 8 : 28, cs[4] = { c->cnn_b, 1, hw, hw };
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
	model_init(&st->mlp, dist_mlp(c->mlp_dims, g), "mlp", 2, xs,
		   c->mlp_dims[3], c->quick ? 2 : 4 * c->mlp_steps, g);
	model_init(&st->cnn, fmnist_cnn(hw, g), "cnn", 4, cs, 10,
		   c->quick ? 1 : 2 * c->cnn_steps, g);
	st->small = must(ag_zeros(AG_F64, 1, &n_small));
	st->big = must(ag_zeros(AG_F32, 1, &n_big));
	snprintf(st->case_ar, sizeof(st->case_ar), "allreduce,np=%d",
		 st->world);
	return st;
}

static double dist_step(struct dist_model *dm)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = must(
		ag_cross_entropy(ag_ddp_forward(dm->ddp, dm->x), dm->targets));
	double v;

	must_ok(ag_backward(loss, NULL, NULL));
	v = ag_tensor_item(loss);
	sgd_step(dm->p, dm->np, 0.01);
	ag_scope_end(s);
	return v;
}

/*
 * After DDP steps every rank must hold the same parameters, bitwise: the
 * gradients were averaged, not left local.  MAX(p) + MAX(-p) over ranks.
 */
static void model_check(struct dist_model *dm, int threads)
{
	double first, last = 0, worst = 0;

	first = dist_step(dm);
	for (int i = 0; i < 10; i++)
		last = dist_step(dm);
	for (int i = 0; i < dm->np; i++) {
		struct ag_tensor *hi = must(ag_clone(dm->p[i]));
		struct ag_tensor *lo = must(ag_neg(dm->p[i]));
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
		dm->case_name, threads, worst);
	check_report(
		last < first,
		"dist %s threads=%d: loss falls over 11 DDP steps (%.6g -> %.6g)",
		dm->case_name, threads, first, last);
}

static void dist_check(void *arg, const struct config *c, int threads,
		       struct ag_generator *g)
{
	struct dist_state *st = arg;

	(void)c;
	(void)g;
	model_check(&st->mlp, threads);
	model_check(&st->cnn, threads);
}

/* Global samples per second over dm->steps, timed between barriers. */
static void model_run(struct dist_model *dm, int world, int threads)
{
	double t0, t;

	must_ok(ag_dist_barrier());
	t0 = bench_now();
	for (int i = 0; i < dm->steps; i++)
		dist_step(dm);
	must_ok(ag_dist_barrier());
	t = (bench_now() - t0) / dm->steps;
	record("dist", dm->case_name, threads, "samples_per_s", "samples/s",
	       (double)(dm->b * world) / t);
	record("dist", dm->case_name, threads, "step_ms", "ms", t * 1e3);
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
	double small, big;

	model_run(&st->mlp, st->world, threads);
	model_run(&st->cnn, st->world, threads);
	small = allreduce_s(st->small, c->quick ? 10 : 200);
	big = allreduce_s(st->big, c->quick ? 2 : 20);
	record("dist", st->case_ar, threads, "latency_us", "us", small * 1e6);
	record("dist", st->case_ar, threads, "bandwidth_GBps", "GB/s",
	       BIG_BYTES / big * 1e-9);
}

static void dist_free(void *arg)
{
	struct dist_state *st = arg;

	model_free(&st->mlp);
	model_free(&st->cnn);
	ag_tensor_put(st->small);
	ag_tensor_put(st->big);
	free(st);
	ag_dist_finalize();
}

const struct workload wl_dist = {
	.name = "dist",
	.description =
		"the mlp and cnn under DDP on mpirun's ranks: global samples/s, all-reduce latency and bandwidth",
	.needs_libag = true,
	.only_by_name = true,
	.setup = dist_setup,
	.check = dist_check,
	.run = dist_run,
	.free = dist_free,
};
