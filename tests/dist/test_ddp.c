// SPDX-License-Identifier: MIT
/*
 * libag-dist under mpirun (-np 2, -np 4): collectives, and DDP training
 * that matches one process on the whole batch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ag/ag.h>
#include <ag/dist.h>
#include <ag/nn.h>
#include <ag/optim.h>
#include <ag/pool.h>

#include "dist_internal.h"
#include "internal.h"
#include "sgd_step.h"
#include "tap_mpi.h"

static int rank, world;

#define NO_LEAKS()                                                         \
	TAP_CHECKF(ag__live_tensors() == 0 && ag__live_nodes() == 0 &&     \
			   ag__live_hooks() == 0 && ag__live_bytes() == 0, \
		   "leaked %ld tensors, %ld nodes, %ld hooks, %ld bytes",  \
		   ag__live_tensors(), ag__live_nodes(), ag__live_hooks(), \
		   ag__live_bytes())

static int test_collectives(void)
{
	int64_t n = 5;
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a = ag_zeros(AG_F64, 1, &n);
	struct ag_tensor *f = ag_zeros(AG_F32, 1, &n);
	struct ag_tensor *m = ag_zeros(AG_I64, 1, &n);
	double *ad = ag_tensor_data(a);
	float *fd = ag_tensor_data(f);
	int64_t *md = ag_tensor_data(m);
	double sum_r = world * (world - 1) / 2.0;

	for (int i = 0; i < n; i++) {
		ad[i] = rank + 0.5 * i;
		fd[i] = (float)(rank * i);
		md[i] = (int64_t)rank * 10 + i;
	}
	TAP_CHECKF(ag_dist_all_reduce(a, AG_DIST_SUM) == 0, "%s", ag_errmsg());
	TAP_CHECKF(ag_dist_all_reduce(f, AG_DIST_MEAN) == 0, "%s", ag_errmsg());
	TAP_CHECKF(ag_dist_all_reduce(m, AG_DIST_MAX) == 0, "%s", ag_errmsg());
	for (int i = 0; i < n; i++) {
		TAP_CHECKF(ad[i] == sum_r + world * 0.5 * i, "sum[%d] %g", i,
			   ad[i]);
		TAP_CHECKF(fd[i] == (float)(sum_r * i / world), "mean[%d] %g",
			   i, fd[i]);
		TAP_CHECKF(md[i] == (int64_t)(world - 1) * 10 + i,
			   "max[%d] %lld", i, (long long)md[i]);
	}
	for (int i = 0; i < n; i++)
		ad[i] = rank == world - 1 ? 7.0 * i : -1;
	TAP_CHECKF(ag_dist_broadcast(a, world - 1) == 0, "%s", ag_errmsg());
	for (int i = 0; i < n; i++)
		TAP_CHECKF(ad[i] == 7.0 * i, "bcast[%d] %g", i, ad[i]);
	TAP_CHECK(ag_dist_barrier() == 0);
	/* argument errors, the same on every rank: nothing is sent */
	TAP_CHECK(ag_dist_all_reduce(m, AG_DIST_MEAN) == -AG_EDTYPE);
	TAP_CHECK(ag_dist_broadcast(a, world) == -AG_EINVAL);
	TAP_CHECK(strstr(ag_errmsg(), "root"));
	TAP_CHECK(ag_dist_all_reduce(
			  ag_transpose(ag_zeros(AG_F64, 2, (int64_t[]){ 2, 3 }),
				       0, 1),
			  AG_DIST_SUM) == -AG_EINVAL);
	TAP_CHECK(strstr(ag_errmsg(), "contiguous"));
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/* An MPI error code becomes an AG_E* code with MPI's own words. */
static int test_mpi_errors_map(void)
{
	char want[MPI_MAX_ERROR_STRING];
	int len;

	TAP_CHECK(ag__dist_check(MPI_SUCCESS, "f", "x") == 0);
	TAP_CHECK(ag__dist_check(MPI_ERR_NO_MEM, "f", "MPI_X") == -AG_ENOMEM);
	TAP_CHECK(ag__dist_check(MPI_ERR_COUNT, "f", "MPI_X") == -AG_EINVAL);
	TAP_CHECK(ag__dist_check(MPI_ERR_OTHER, "f", "MPI_X") == -AG_EIO);
	MPI_Error_string(MPI_ERR_OTHER, want, &len);
	TAP_CHECKF(strstr(ag_errmsg(), "f: MPI_X failed: ") &&
			   strstr(ag_errmsg(), want),
		   "%s", ag_errmsg());
	/*
	 * A real one: the communicator returns errors instead of aborting.
	 * A negative count is refused before any message is sent.
	 */
	ag__dist_lock();
	len = MPI_Bcast(want, -1, MPI_CHAR, 0, ag__dist_comm());
	ag__dist_unlock();
	TAP_CHECKF(ag__dist_check(len, "f", "MPI_Bcast") == -AG_EINVAL, "%s",
		   ag_errmsg());
	return 0;
}

/* ---- training ---- */

#define IN 6
#define HID 10
#define OUT 3
#define BATCH 16
#define STEPS 5

/* Linear(IN,HID), Tanh, Linear(HID,OUT) in f64, initialised from seed. */
static struct ag_module *mlp(uint64_t seed)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_module *mods[3] = {
		ag_linear_new(IN, HID, true, g),
		ag_tanh_new(),
		ag_linear_new(HID, OUT, true, g),
	};
	struct ag_module *m = ag_sequential_new(mods, 3);
	static const char *const lin[2] = { "0", "2" };
	static const char *const pn[2] = { "weight", "bias" };

	ag_generator_free(g);
	for (int c = 0; c < 2 && m; c++) {
		struct ag_module *l = ag_module_get_child(m, lin[c]);

		for (int k = 0; k < 2; k++) {
			struct ag_tensor *p = ag_module_get_parameter(l, pn[k]);
			int64_t n = ag_tensor_numel(p);
			float *f = malloc(n * sizeof(*f));
			double *d = malloc(n * sizeof(*d));
			struct ag_tensor *t, *q;

			ag_tensor_copy_to(p, f, n * sizeof(*f));
			for (int64_t i = 0; i < n; i++)
				d[i] = f[i];
			t = ag_from_data(AG_F64, ag_tensor_ndim(p),
					 ag_tensor_shape(p), d);
			q = ag_parameter(t);
			ag_module_set_parameter(l, pn[k], q);
			ag_tensor_put(q);
			ag_tensor_put(t);
			free(f);
			free(d);
		}
	}
	return m;
}

/* The whole batch: x [BATCH, IN], y [BATCH, OUT], the same everywhere. */
static void batch(struct ag_tensor **x, struct ag_tensor **y)
{
	struct ag_generator *g = ag_generator_new(42);

	*x = ag_randn(g, AG_F64, 2, (int64_t[]){ BATCH, IN });
	*y = ag_randn(g, AG_F64, 2, (int64_t[]){ BATCH, OUT });
	ag_generator_free(g);
}

/* Every rank's params are bitwise rank 0's. */
static int same_on_every_rank(struct ag_module *m)
{
	const char *const *names;
	struct ag_tensor *const *t;
	int n;

	ag_module_named_parameters(m, &names, &t, &n);
	for (int i = 0; i < n; i++) {
		/* a reference of our own: the caller may have a scope open */
		struct ag_tensor *c = ag_tensor_get(ag_clone(t[i]));
		int differ;

		TAP_CHECK(ag_dist_broadcast(c, 0) == 0);
		differ = memcmp(ag_tensor_data(c), ag_tensor_data(t[i]),
				ag_tensor_numel(c) * sizeof(double)) != 0;
		ag_tensor_put(c);
		TAP_CHECKF(!differ, "%s differs from rank 0's", names[i]);
	}
	return 0;
}

static int train(size_t bucket_bytes, int threads, bool no_shm)
{
	struct ag_ddp_opts o = { .bucket_bytes = bucket_bytes,
				 .no_shared_memory = no_shm };
	struct ag_ddp_stats st;
	/* a different init on each rank: DDP starts from rank 0's */
	struct ag_module *ref = mlp(1), *m = mlp(1 + rank);
	struct ag_tensor *x, *y, *xs, *ys;
	struct ag_tensor *const *pr, *const *pm;
	const char *const *names;
	struct ag_optim *oref, *om;
	struct ag_ddp *d;
	int n, per = BATCH / world;

	struct ag_scope *sc = ag_scope_begin(); /* owns the data */

	TAP_CHECK(ag_set_num_threads(threads) == 0);
	batch(&x, &y);
	xs = ag_contiguous(ag_slice(x, 0, rank * per, (rank + 1) * per, 1));
	ys = ag_contiguous(ag_slice(y, 0, rank * per, (rank + 1) * per, 1));
	d = ag_ddp_new(m, &o);
	TAP_CHECKF(d, "%s", ag_errmsg());
	oref = sgd(ref);
	om = sgd(m);
	for (int s = 0; s < STEPS; s++) {
		TAP_CHECKF(step(ref, NULL, oref, x, y) == 0, "%s", ag_errmsg());
		TAP_CHECKF(step(m, d, om, xs, ys) == 0, "step %d: %s", s,
			   ag_errmsg());
	}
	ag_module_named_parameters(ref, &names, &pr, &n);
	ag_module_named_parameters(m, &names, &pm, &n);
	for (int i = 0; i < n; i++) {
		const double *a = ag_tensor_data(pr[i]);
		const double *b = ag_tensor_data(pm[i]);

		for (int64_t k = 0; k < ag_tensor_numel(pr[i]); k++)
			TAP_CHECKF(fabs(a[k] - b[k]) <= 1e-12 * fabs(a[k]),
				   "%s[%lld]: %.17g, one process %.17g",
				   names[i], (long long)k, b[k], a[k]);
	}
	if (same_on_every_rank(m))
		return 1;
	/* mpirun runs the test's ranks on one node */
	TAP_CHECK(ag_ddp_stats(d, &st) == 0 && st.shared_memory == !no_shm);
	ag_ddp_free(d);
	ag_optim_free(oref);
	ag_optim_free(om);
	ag_module_put(ref);
	ag_module_put(m);
	ag_scope_end(sc);
	TAP_CHECK(ag_set_num_threads(1) == 0);
	NO_LEAKS();
	return 0;
}

/* default buckets: the whole model in one */
static int test_ddp_matches_one_process(void)
{
	return train(0, 1, false);
}

/* a bucket per parameter, 2 pool threads per rank */
static int test_ddp_small_buckets_2_threads(void)
{
	return train(1, 2, false);
}

/* the same through MPI_Iallreduce, as across nodes */
static int test_ddp_matches_one_process_mpi(void)
{
	return train(0, 1, true);
}

static int test_ddp_small_buckets_2_threads_mpi(void)
{
	return train(1, 2, true);
}

/*
 * f32 buckets of many 64 KiB chunks (the shared path's unit of work),
 * ranks with different gradients: every rank's .grad is their mean, with
 * values chosen to be exact in f32.  loss = sum(l(x)), x = (rank + 1) *
 * (round + 1) everywhere, so weight.grad = 2 * x and bias.grad = 2.  Each
 * round a different rank is late into the reduction (a hook on the
 * output's gradient sleeps) and another late out of it (it sleeps after
 * the backward), so fast ranks refill their buckets for the next round
 * while a slow one is still in the last: a stale or early read shows as
 * the wrong round's value.
 */
static struct ag_tensor *late(struct ag_tensor *g, void *arg)
{
	struct timespec ts = { 0, 2 * 1000 * 1000 };

	(void)g;
	if (*(int *)arg % world == rank)
		nanosleep(&ts, NULL);
	return NULL;
}

static int f32_mean(bool no_shm)
{
	struct ag_generator *g = ag_generator_new(13);
	struct ag_module *m = ag_linear_new(700, 300, true, g);
	struct ag_ddp_opts o = { .bucket_bytes = 1, /* one per parameter */
				 .no_shared_memory = no_shm };
	struct ag_ddp_stats st;
	struct ag_ddp *d;
	int64_t xs[2] = { 2, 700 };
	struct timespec nap = { 0, 1000 * 1000 };

	ag_generator_free(g);
	d = ag_ddp_new(m, &o);
	TAP_CHECKF(d, "%s", ag_errmsg());
	for (int round = 0; round < 12; round++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x =
			ag_full(AG_F32, 2, xs, (rank + 1.0) * (round + 1));
		struct ag_tensor *w = ag_module_get_parameter(m, "weight");
		struct ag_tensor *b = ag_module_get_parameter(m, "bias");
		struct ag_tensor *out = ag_module_forward(m, x);
		/* 2 * mean of (1..world) * (round + 1) */
		float want = (float)((world + 1) * (round + 1));
		const float *gw, *gb;
		int64_t bad = -1;

		struct ag_hook *hk = ag_tensor_register_hook(out, late, &round);

		TAP_CHECKF(ag_backward(ag_sum(out), NULL, NULL) == 0, "%s",
			   ag_errmsg());
		ag_hook_remove(hk);
		if ((round + 1) % world == rank)
			nanosleep(&nap, NULL);
		gw = ag_tensor_data(ag_tensor_grad(w));
		gb = ag_tensor_data(ag_tensor_grad(b));
		for (int64_t i = 0; i < 300 * 700 && bad < 0; i++)
			if (gw[i] != want)
				bad = i;
		TAP_CHECKF(bad < 0, "round %d: weight.grad[%lld] = %g, not %g",
			   round, (long long)bad, bad < 0 ? 0 : gw[bad], want);
		for (int64_t i = 0; i < 300; i++)
			TAP_CHECKF(gb[i] == 2.0f, "bias.grad[%lld] = %g",
				   (long long)i, gb[i]);
		TAP_CHECK(ag_ddp_stats(d, &st) == 0);
		TAP_CHECKF(st.shared_memory == !no_shm && st.buckets == 2 &&
				   st.bytes ==
					   (700 * 300 + 300) * sizeof(float),
			   "shared %d, %d buckets, %zu bytes", st.shared_memory,
			   st.buckets, st.bytes);
		ag_tensor_zero_grad(w);
		ag_tensor_zero_grad(b);
		ag_scope_end(s);
	}
	ag_ddp_free(d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

static int test_f32_mean_in_chunks(void)
{
	return f32_mean(false);
}

static int test_f32_mean_in_chunks_mpi(void)
{
	return f32_mean(true);
}

/*
 * Buckets overlap the backward: by the time the gradient of the first
 * layer's output is computed (a hook on it), the last layer's buckets have
 * been started.
 */
struct overlap {
	struct ag_ddp *d;
	int started_before;
};

static struct ag_tensor *look(struct ag_tensor *g, void *arg)
{
	struct overlap *ov = arg;
	struct ag_ddp_stats st;

	(void)g;
	if (!ag_ddp_stats(ov->d, &st))
		ov->started_before = st.buckets;
	return NULL;
}

static int test_first_bucket_starts_while_nodes_pending(void)
{
	struct ag_ddp_opts o = { .bucket_bytes = 1 }; /* one per parameter */
	struct ag_module *m = mlp(7);
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x, *y, *h1, *out, *loss;
	struct overlap ov = { 0 };
	struct ag_ddp_stats st;
	struct ag_hook *h;

	batch(&x, &y);
	ov.d = ag_ddp_new(m, &o);
	TAP_CHECKF(ov.d, "%s", ag_errmsg());
	h1 = ag_module_forward(ag_module_get_child(m, "0"), x);
	out = ag_module_forward(ag_module_get_child(m, "2"),
				ag_module_forward(ag_module_get_child(m, "1"),
						  h1));
	loss = ag_mse_loss(out, y);
	h = ag_tensor_register_hook(h1, look, &ov);
	ov.started_before = -1;
	TAP_CHECKF(ag_backward(loss, NULL, NULL) == 0, "%s", ag_errmsg());
	TAP_CHECK(ag_ddp_stats(ov.d, &st) == 0);
	/* 2.bias and 2.weight, each its own bucket, were on the wire */
	TAP_CHECKF(ov.started_before >= 2, "%d buckets started before",
		   ov.started_before);
	TAP_CHECKF(st.buckets == 4 && st.buckets_overlapped == 4,
		   "%d buckets, %d overlapped", st.buckets,
		   st.buckets_overlapped);
	TAP_CHECK(st.bytes ==
		  (IN * HID + HID + HID * OUT + OUT) * sizeof(double));
	ag_hook_remove(h);
	ag_scope_end(s);
	ag_ddp_free(ov.d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/*
 * Layers used in the reverse of their registration: the first buckets
 * (the last parameters) are the last ready.  After the first backward the
 * buckets follow the order the gradients arrived in, and start early.
 */
static int test_buckets_rebuilt_in_ready_order(void)
{
	struct ag_ddp_opts o = { .bucket_bytes = 1 };
	struct ag_generator *g = ag_generator_new(13);
	struct ag_module *mods[3] = {
		ag_linear_new(4, 4, true, g),
		ag_linear_new(4, 4, true, g),
		ag_linear_new(4, 4, true, g),
	};
	struct ag_module *m = ag_sequential_new(mods, 3);
	struct overlap ov = { 0 };
	int64_t xs[2] = { 3, 4 };
	int seen[2];

	ag_generator_free(g);
	ov.d = ag_ddp_new(m, &o);
	TAP_CHECKF(ov.d, "%s", ag_errmsg());
	for (int round = 0; round < 2; round++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x = ag_ones(AG_F32, 2, xs), *h, *loss;
		struct ag_hook *hk;

		/* 2 first, then 1, then 0 */
		h = ag_module_forward(ag_module_get_child(m, "2"), x);
		hk = ag_tensor_register_hook(h, look, &ov);
		loss = ag_module_forward(ag_module_get_child(m, "1"), h);
		loss = ag_sum(
			ag_module_forward(ag_module_get_child(m, "0"), loss));
		ov.started_before = -1;
		TAP_CHECKF(ag_backward(loss, NULL, NULL) == 0, "%s",
			   ag_errmsg());
		seen[round] = ov.started_before;
		ag_hook_remove(hk);
		ag_scope_end(s);
	}
	/* bucket 0 is 2.bias at first: nothing can start before it */
	TAP_CHECKF(seen[0] == 0, "%d buckets started in the first backward",
		   seen[0]);
	/* then 0.* and 1.* lead, and are on the wire before 2.* is ready */
	TAP_CHECKF(seen[1] == 4, "%d buckets started in the second backward",
		   seen[1]);
	ag_ddp_free(ov.d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/*
 * As torch, the first bucket closes once it holds 1 MiB, so the first
 * gradients go on the wire early even with the default 25 MiB buckets:
 * three Linear(512, 512) in f32, 1 MiB weights: 2.* is the first bucket,
 * 1.* and 0.* the second.
 */
static int test_first_bucket_holds_1_mib(void)
{
	struct ag_generator *g = ag_generator_new(11);
	struct ag_module *mods[3] = {
		ag_linear_new(512, 512, true, g),
		ag_linear_new(512, 512, true, g),
		ag_linear_new(512, 512, true, g),
	};
	struct ag_module *m = ag_sequential_new(mods, 3);
	struct ag_ddp_stats st;
	struct ag_ddp *d;
	int64_t xs[2] = { 2, 512 };

	ag_generator_free(g);
	d = ag_ddp_new(m, NULL);
	TAP_CHECKF(d, "%s", ag_errmsg());
	for (int round = 0; round < 2; round++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x = ag_full(AG_F32, 2, xs, rank + 1.0);

		TAP_CHECKF(ag_backward(ag_sum(ag_module_forward(m, x)), NULL,
				       NULL) == 0,
			   "%s", ag_errmsg());
		ag_scope_end(s);
		TAP_CHECK(ag_ddp_stats(d, &st) == 0);
		TAP_CHECKF(st.buckets == 2 && st.buckets_overlapped == 2,
			   "round %d: %d buckets, %d overlapped", round,
			   st.buckets, st.buckets_overlapped);
		TAP_CHECK(st.bytes == 3 * (512 * 512 + 512) * sizeof(float));
	}
	ag_ddp_free(d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/*
 * Open MPI moves an all-reduce on only inside MPI calls.  Rank 0 holds
 * back its backward (a hook on the output's gradient sleeps), so the
 * others' first buckets cannot complete in their own hooks; then, with
 * no MPI call from the backward (a hook on the first layer's output
 * waits), they complete: libag-dist progresses them.
 */
struct waiter {
	struct ag_ddp *d;
	int done; /* buckets done early when the wait ended */
	int started;
};

static struct ag_tensor *hold_back(struct ag_tensor *g, void *arg)
{
	struct timespec ts = { 0, 100 * 1000 * 1000 };

	(void)g;
	(void)arg;
	if (rank == 0)
		nanosleep(&ts, NULL);
	return NULL;
}

static struct ag_tensor *wait_done(struct ag_tensor *g, void *arg)
{
	struct waiter *w = arg;
	struct timespec ts = { 0, 1000 * 1000 };
	struct ag_ddp_stats st = { 0 };

	(void)g;
	/* bounded: 10 s, then the check below fails */
	for (int i = 0; i < 10000; i++) {
		if (ag_ddp_stats(w->d, &st) || st.buckets_done_early >= 2)
			break;
		nanosleep(&ts, NULL);
	}
	w->done = st.buckets_done_early;
	w->started = st.buckets;
	return NULL;
}

static int test_buckets_progress_between_hooks(void)
{
	struct ag_ddp_opts o = { .bucket_bytes = 1 }; /* one per parameter */
	struct ag_module *m = mlp(7);
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x, *y, *h1, *out;
	struct ag_hook *hw, *hh;
	struct ag_ddp_stats st;
	struct waiter w = { 0 };

	batch(&x, &y);
	w.d = ag_ddp_new(m, &o);
	TAP_CHECKF(w.d, "%s", ag_errmsg());
	h1 = ag_module_forward(ag_module_get_child(m, "0"), x);
	out = ag_module_forward(ag_module_get_child(m, "2"),
				ag_module_forward(ag_module_get_child(m, "1"),
						  h1));
	hw = ag_tensor_register_hook(h1, wait_done, &w);
	hh = ag_tensor_register_hook(out, hold_back, NULL);
	TAP_CHECKF(ag_backward(ag_mse_loss(out, y), NULL, NULL) == 0, "%s",
		   ag_errmsg());
	/* 2.bias and 2.weight were on the wire and completed meanwhile */
	TAP_CHECKF(w.started == 2 && w.done == 2,
		   "%d buckets started, %d done before the first layer",
		   w.started, w.done);
	TAP_CHECK(ag_ddp_stats(w.d, &st) == 0 && st.buckets == 4);
	ag_hook_remove(hw);
	ag_hook_remove(hh);
	ag_scope_end(s);
	ag_ddp_free(w.d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/* A module that differs on one rank fails on every rank, without a hang. */
static int test_mismatched_models_fail_everywhere(void)
{
	struct ag_generator *g = ag_generator_new(3);
	struct ag_module *m =
		ag_linear_new(4, rank == world - 1 ? 5 : 4, true, g);
	struct ag_ddp *d;
	char want[64];

	ag_generator_free(g);
	ag_clear_error();
	d = ag_ddp_new(m, NULL);
	TAP_CHECK(!d);
	snprintf(want, sizeof(want), "rank %d's module differs from rank 0's",
		 world - 1);
	TAP_CHECKF(ag_errcode() == AG_EINVAL && strstr(ag_errmsg(), want), "%s",
		   ag_errmsg());
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/*
 * The last rank's backward fails before its first layer's gradients (a
 * tensor hook on that layer's output fails), so it never fills their
 * buckets.  With the buckets shared, the ranks waiting for them fail
 * too, naming it, once it frees its ddp, instead of waiting forever;
 * then every rank frees, and nothing leaks.
 */
static struct ag_tensor *fail_here(struct ag_tensor *g, void *arg)
{
	(void)g;
	(void)arg;
	ag_set_error(AG_EINVAL, "this rank's backward fails");
	return NULL;
}

static int test_failed_backward_fails_everywhere(void)
{
	struct ag_module *m = mlp(7);
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x, *y, *h1, *out;
	struct ag_hook *hk = NULL;
	struct ag_ddp_stats st;
	struct ag_ddp *d;
	char want[64];
	int rc;

	batch(&x, &y);
	d = ag_ddp_new(m, &(struct ag_ddp_opts){ .bucket_bytes = 1 });
	TAP_CHECKF(d, "%s", ag_errmsg());
	TAP_CHECK(ag_ddp_stats(d, &st) == 0 && st.shared_memory);
	h1 = ag_module_forward(ag_module_get_child(m, "0"), x);
	out = ag_module_forward(ag_module_get_child(m, "2"),
				ag_module_forward(ag_module_get_child(m, "1"),
						  h1));
	if (rank == world - 1)
		hk = ag_tensor_register_hook(h1, fail_here, NULL);
	rc = ag_backward(ag_mse_loss(out, y), NULL, NULL);
	TAP_CHECK(rc != 0);
	snprintf(want, sizeof(want), "rank %d abandoned", world - 1);
	TAP_CHECKF(strstr(ag_errmsg(), rank == world - 1 ?
					       "this rank's backward fails" :
					       want),
		   "%s", ag_errmsg());
	if (hk)
		ag_hook_remove(hk);
	ag_scope_end(s);
	ag_ddp_free(d);
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/* NULL arguments: a clear error, no collective, so no rank waits. */
static int test_null_arguments(void)
{
	struct ag_ddp_stats st;
	int64_t s2[2] = { 2, 4 };
	struct ag_tensor *x = ag_zeros(AG_F64, 2, s2);

	ag_clear_error();
	TAP_CHECK(!ag_ddp_new(NULL, NULL));
	TAP_CHECKF(ag_errcode() == AG_EINVAL &&
			   strstr(ag_errmsg(), "module is NULL"),
		   "%s", ag_errmsg());
	TAP_CHECK(!ag_ddp_forward(NULL, x));
	TAP_CHECKF(strstr(ag_errmsg(), "ddp is NULL"), "%s", ag_errmsg());
	TAP_CHECK(ag_ddp_no_sync(NULL, true) == -AG_EINVAL);
	TAP_CHECK(ag_ddp_stats(NULL, &st) == -AG_EINVAL);
	ag_ddp_free(NULL);
	ag_tensor_put(x);
	ag_clear_error();
	NO_LEAKS();
	return 0;
}

/* Options that shape the buckets must agree too: else every rank fails. */
static int test_mismatched_options_fail_everywhere(void)
{
	struct ag_generator *g = ag_generator_new(3);
	struct ag_module *m = ag_linear_new(4, 4, true, g);
	struct ag_ddp_opts o = { .bucket_bytes = rank == world - 1 ? 4096 :
								     8192 };
	struct ag_ddp *d;
	char want[64];

	ag_generator_free(g);
	ag_clear_error();
	d = ag_ddp_new(m, &o);
	TAP_CHECK(!d);
	snprintf(want, sizeof(want), "rank %d's options differ from rank 0's",
		 world - 1);
	TAP_CHECKF(ag_errcode() == AG_EINVAL && strstr(ag_errmsg(), want), "%s",
		   ag_errmsg());
	/* one rank asking for MPI while the others share memory */
	o.bucket_bytes = 0;
	o.no_shared_memory = rank == world - 1;
	ag_clear_error();
	TAP_CHECK(!ag_ddp_new(m, &o));
	TAP_CHECKF(ag_errcode() == AG_EINVAL && strstr(ag_errmsg(), want) &&
			   strstr(ag_errmsg(), "no_shared_memory 1"),
		   "%s", ag_errmsg());
	ag_module_put(m);
	NO_LEAKS();
	return 0;
}

/*
 * 3.weight/3.bias are used on the last rank only.  With
 * find_unused_parameters every rank gets their mean gradient; without, a
 * rank that did not use them fails, and none hangs.
 */
static int unused(bool find, int *rc_out, struct ag_tensor **g3)
{
	struct ag_ddp_opts o = { .find_unused_parameters = find };
	struct ag_generator *gen = ag_generator_new(5);
	struct ag_module *mods[4] = {
		ag_linear_new(IN, OUT, true, gen),
		ag_tanh_new(),
		ag_linear_new(OUT, OUT, true, gen),
		ag_linear_new(IN, OUT, false, gen),
	};
	struct ag_module *m = ag_sequential_new(mods, 4);
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x, *y, *out, *loss;
	struct ag_ddp *d;

	ag_generator_free(gen);
	d = ag_ddp_new(m, &o);
	if (!d)
		return -ag_errcode();
	batch(&x, &y);
	x = ag_to(x, AG_F32);
	y = ag_to(y, AG_F32);
	out = ag_module_forward(ag_module_get_child(m, "0"), x);
	out = ag_module_forward(ag_module_get_child(m, "1"), out);
	out = ag_module_forward(ag_module_get_child(m, "2"), out);
	if (rank == world - 1)
		out = ag_add(out,
			     ag_module_forward(ag_module_get_child(m, "3"), x));
	loss = ag_mse_loss(out, y);
	ag_clear_error();
	*rc_out = ag_backward(loss, NULL, NULL);
	*g3 = ag_tensor_get(ag_tensor_grad(ag_module_get_parameter(
		ag_module_get_child(m, "3"), "weight")));
	ag_scope_end(s);
	ag_ddp_free(d);
	ag_module_put(m);
	return 0;
}

static int test_unused_parameters(void)
{
	struct ag_tensor *g3, *c;
	int rc = 0;

	TAP_CHECKF(unused(true, &rc, &g3) == 0, "%s", ag_errmsg());
	TAP_CHECKF(rc == 0, "%s", ag_errmsg());
	TAP_CHECK(g3);
	/* the same mean on every rank, and not zero */
	c = ag_clone(g3);
	TAP_CHECK(ag_dist_broadcast(c, world - 1) == 0);
	TAP_CHECK(memcmp(ag_tensor_data(c), ag_tensor_data(g3),
			 ag_tensor_numel(c) * sizeof(float)) == 0);
	TAP_CHECK(((float *)ag_tensor_data(g3))[0] != 0);
	ag_tensor_put(c);
	ag_tensor_put(g3);

	TAP_CHECKF(unused(false, &rc, &g3) == 0, "%s", ag_errmsg());
	if (rank == world - 1) {
		TAP_CHECKF(rc == 0, "%s", ag_errmsg());
	} else {
		TAP_CHECK(rc == -AG_EINVAL);
		TAP_CHECKF(strstr(ag_errmsg(), "'3.weight'") &&
				   strstr(ag_errmsg(),
					  "find_unused_parameters"),
			   "%s", ag_errmsg());
	}
	ag_tensor_put(g3);
	NO_LEAKS();
	return 0;
}

/* Two micro-batches under no_sync, then a synchronised one: full batch. */
static int test_no_sync_accumulates(void)
{
	struct ag_module *ref = mlp(9), *m = mlp(9);
	struct ag_tensor *x, *y;
	struct ag_tensor *const *pr, *const *pm;
	const char *const *names;
	struct ag_ddp *d;
	int n, per = BATCH / world / 2;

	batch(&x, &y);
	d = ag_ddp_new(m, NULL);
	TAP_CHECKF(d, "%s", ag_errmsg());
	for (int half = 0; half < 2; half++) {
		struct ag_scope *s = ag_scope_begin();
		int64_t at = (2 * rank + half) * per;
		struct ag_tensor *xs = ag_slice(x, 0, at, at + per, 1);
		struct ag_tensor *ys = ag_slice(y, 0, at, at + per, 1);
		/* mean over the micro-batch: half of the rank's mean */
		struct ag_tensor *loss = ag_mul_scalar(
			ag_mse_loss(ag_ddp_forward(d, xs), ys), 0.5);

		TAP_CHECK(ag_ddp_no_sync(d, half == 0) == 0);
		TAP_CHECKF(ag_backward(loss, NULL, NULL) == 0, "%s",
			   ag_errmsg());
		ag_scope_end(s);
	}
	{
		struct ag_scope *s = ag_scope_begin();

		TAP_CHECK(ag_backward(ag_mse_loss(ag_module_forward(ref, x), y),
				      NULL, NULL) == 0);
		ag_scope_end(s);
	}
	ag_module_named_parameters(ref, &names, &pr, &n);
	ag_module_named_parameters(m, &names, &pm, &n);
	for (int i = 0; i < n; i++) {
		struct ag_tensor *a = ag_tensor_grad(pr[i]);
		struct ag_tensor *b = ag_tensor_grad(pm[i]);
		const double *ad = ag_tensor_data(a), *bd = ag_tensor_data(b);

		for (int64_t k = 0; k < ag_tensor_numel(a); k++)
			TAP_CHECKF(fabs(ad[k] - bd[k]) <=
					   1e-12 * (fabs(ad[k]) + 1e-12),
				   "%s.grad[%lld]: %.17g, want %.17g", names[i],
				   (long long)k, bd[k], ad[k]);
		ag_tensor_put(a);
		ag_tensor_put(b);
	}
	ag_ddp_free(d);
	ag_module_put(ref);
	ag_module_put(m);
	ag_tensor_put(x);
	ag_tensor_put(y);
	NO_LEAKS();
	return 0;
}

/*
 * BatchNorm statistics: rank 0's reach every rank at each forward (torch's
 * broadcast_buffers), here in eval mode so the forward leaves them as is.
 */
static int test_forward_broadcasts_buffers(void)
{
	struct ag_module *bn = ag_batchnorm1d_new(3, 1e-5, 0.1);
	struct ag_tensor *mean = ag_module_get_buffer(bn, "running_mean");
	float *mv = ag_tensor_data(mean);
	struct ag_scope *s;
	struct ag_ddp *d;

	d = ag_ddp_new(bn, NULL);
	TAP_CHECKF(d, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		mv[i] = (float)(rank * 10 + i); /* drifted apart */
	ag_module_eval(bn);
	s = ag_scope_begin();
	TAP_CHECKF(ag_ddp_forward(d, ag_ones(AG_F32, 2, (int64_t[]){ 4, 3 })),
		   "%s", ag_errmsg());
	ag_scope_end(s);
	for (int i = 0; i < 3; i++)
		TAP_CHECKF(mv[i] == (float)i, "running_mean[%d] = %g", i,
			   mv[i]);
	ag_ddp_free(d);
	ag_module_put(bn);
	NO_LEAKS();
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_collectives),
	TAP_TEST(test_mpi_errors_map),
	TAP_TEST(test_ddp_matches_one_process),
	TAP_TEST(test_ddp_small_buckets_2_threads),
	TAP_TEST(test_ddp_matches_one_process_mpi),
	TAP_TEST(test_ddp_small_buckets_2_threads_mpi),
	TAP_TEST(test_f32_mean_in_chunks),
	TAP_TEST(test_f32_mean_in_chunks_mpi),
	TAP_TEST(test_first_bucket_starts_while_nodes_pending),
	TAP_TEST(test_buckets_rebuilt_in_ready_order),
	TAP_TEST(test_first_bucket_holds_1_mib),
	TAP_TEST(test_buckets_progress_between_hooks),
	TAP_TEST(test_mismatched_models_fail_everywhere),
	TAP_TEST(test_mismatched_options_fail_everywhere),
	TAP_TEST(test_failed_backward_fails_everywhere),
	TAP_TEST(test_null_arguments),
	TAP_TEST(test_unused_parameters),
	TAP_TEST(test_no_sync_accumulates),
	TAP_TEST(test_forward_broadcasts_buffers),
	{ 0 },
};

int main(int argc, char **argv)
{
	int rc;

	/* before init: a clean error, no MPI call */
	if (ag_dist_barrier() != -AG_EINVAL ||
	    !strstr(ag_errmsg(), "call ag_dist_init() first") ||
	    ag_dist_rank() != 0 || ag_dist_world_size() != 1) {
		printf("Bail out! before init: %s\n", ag_errmsg());
		return 1;
	}
	if (ag_dist_init(&argc, &argv)) {
		printf("Bail out! %s\n", ag_errmsg());
		return 1;
	}
	rank = ag_dist_rank();
	world = ag_dist_world_size();
	rc = tap_mpi_run(tests, 120);
	if (ag_dist_finalize())
		rc = 1;
	return rc;
}
