// SPDX-License-Identifier: MIT
/*
 * ag_dist_batch_norm and ag_dist_sync_batchnorm under mpirun (-np 2,
 * -np 4): N ranks on shards of an f64 batch give what one process running
 * ag_batch_norm on the whole batch gives: outputs, input gradients and
 * running stats within 1e-12 (relative to the largest value), and the
 * ranks' weight and bias gradients sum to the whole batch's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ag/ag.h>
#include <ag/dist.h>
#include <ag/nn.h>
#include <ag/optim.h>
#include <ag/pool.h>

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

#define TOL 1e-12

/*
 * How the batch is cut: equal shards, shards growing with the rank (rank
 * r holds r + 1 parts), or rank 0 holding nothing (rank r holds r parts).
 */
enum cut { EQUAL, GROWING, FIRST_EMPTY };

/* rank's rows [lo, hi) of n; parts: how many parts n must be a multiple of */
static int64_t parts(enum cut cut)
{
	switch (cut) {
	case EQUAL:
		return world;
	case GROWING:
		return (int64_t)world * (world + 1) / 2;
	default:
		return (int64_t)world * (world - 1) / 2;
	}
}

static void rows(enum cut cut, int64_t n, int64_t *lo, int64_t *hi)
{
	int64_t per = n / parts(cut), a, b;

	switch (cut) {
	case EQUAL:
		a = rank;
		b = rank + 1;
		break;
	case GROWING:
		a = (int64_t)rank * (rank + 1) / 2;
		b = a + rank + 1;
		break;
	default:
		a = (int64_t)rank * (rank - 1) / 2;
		b = a + rank;
		break;
	}
	*lo = a * per;
	*hi = b * per;
}

/*
 * max |a - b| <= tol max |b| over the elements, a and b of one shape and
 * dtype (any layout: read through dense f64 copies); tol is TOL in f64,
 * F32_TOL in f32.
 */
#define F32_TOL 1e-5

static int check_close(const char *what, struct ag_tensor *a,
		       struct ag_tensor *b)
{
	int64_t n = ag_tensor_numel(b), at = 0;
	double *da, *db, big = 0, err = 0, tol = TOL, ea, eb;

	TAP_CHECKF(a && ag_tensor_numel(a) == n, "%s: %p, %lld", what,
		   (void *)a, (long long)n);
	TAP_CHECK(ag_tensor_dtype(a) == ag_tensor_dtype(b));
	if (ag_tensor_dtype(a) == AG_F32) {
		tol = F32_TOL;
		a = ag_to(a, AG_F64);
		b = ag_to(b, AG_F64);
	}
	da = malloc(n * sizeof(double) + 1);
	db = malloc(n * sizeof(double) + 1);
	ag_tensor_copy_to(a, da, n * sizeof(double));
	ag_tensor_copy_to(b, db, n * sizeof(double));
	for (int64_t i = 0; i < n; i++) {
		big = fmax(big, fabs(db[i]));
		if (fabs(da[i] - db[i]) > err) {
			err = fabs(da[i] - db[i]);
			at = i;
		}
	}
	ea = n ? da[at] : 0;
	eb = n ? db[at] : 0;
	free(da);
	free(db);
	TAP_CHECKF(err <= tol * big,
		   "%s[%lld]: %.17g, one process %.17g (max %.3g, error %.3g)",
		   what, (long long)at, ea, eb, big, err);
	return 0;
}

/* standard normal values of shape, from seed */
static struct ag_tensor *randn(uint64_t seed, int ndim, const int64_t *shape)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_tensor *t = ag_randn(g, AG_F64, ndim, shape);

	ag_generator_free(g);
	return t;
}

/* A leaf that requires grad, a copy of t. */
static struct ag_tensor *leaf(struct ag_tensor *t)
{
	struct ag_tensor *c = ag_clone(t);

	ag_tensor_set_requires_grad(c, true);
	return c;
}

/* A dense copy of rows [lo, hi) of t. */
static struct ag_tensor *part(struct ag_tensor *t, int64_t lo, int64_t hi)
{
	return ag_clone(ag_slice(t, 0, lo, hi, 1));
}

/* sum(y r): the ranks' losses add up to the whole batch's */
static int backward_of(struct ag_tensor *y, struct ag_tensor *r)
{
	struct ag_tensor *loss = ag_sum(ag_mul(y, r));

	return loss ? ag_backward(loss, NULL, NULL) : -ag_errcode();
}

/* rank's shard's gradient summed over the ranks */
static struct ag_tensor *summed(struct ag_tensor *t)
{
	struct ag_tensor *g = ag_clone(ag_tensor_grad(t));

	if (g && ag_dist_all_reduce(g, AG_DIST_SUM))
		return NULL;
	return g;
}

/* How a case runs, beside the batch's shape. */
struct how {
	enum cut cut;
	bool affine; /* weight and bias */
	bool running; /* running stats */
	bool f32; /* else f64 */
	bool strided; /* [N, C] only: the shard is a transposed view */
	int threads; /* pool threads; 0: 1 */
};

/*
 * A batch of shape [N, C, ...] (N a multiple of the cut's parts), cut
 * over the ranks: two training steps of forward and backward on the
 * shard through ag_dist_batch_norm against the whole batch through
 * ag_batch_norm.
 */
static int against_whole_batch(int ndim, const int64_t *shape, struct how h)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(5);
	enum ag_dtype dt = h.f32 ? AG_F32 : AG_F64;
	int64_t c = shape[1], lo, hi;
	struct ag_tensor *x, *r, *w = NULL, *b = NULL, *y = NULL, *ys = NULL;
	struct ag_tensor *xf, *wf = NULL, *bf = NULL, *rmf = NULL, *rvf = NULL;
	struct ag_tensor *xs, *ws = NULL, *bs = NULL, *rms = NULL, *rvs = NULL;
	struct ag_tensor *rs, *xl, *gxs;
	bool affine = h.affine, running = h.running;

	/* far from 0 mean: a naive sum of squares would lose digits */
	x = ag_add_scalar(ag_mul_scalar(ag_randn(g, dt, ndim, shape), 3), 50);
	r = ag_randn(g, dt, ndim, shape);
	if (affine) {
		w = ag_randn(g, dt, 1, &c);
		b = ag_randn(g, dt, 1, &c);
	}
	ag_generator_free(g);
	TAP_CHECK(ag_set_num_threads(h.threads ? h.threads : 1) == 0);
	rows(h.cut, shape[0], &lo, &hi);
	xf = leaf(x);
	if (h.strided) {
		/* the leaf is [C, n]; the input its transpose */
		xl = leaf(ag_contiguous(ag_transpose(part(x, lo, hi), 0, 1)));
	} else {
		xl = leaf(part(x, lo, hi));
	}
	rs = part(r, lo, hi);
	if (affine) {
		wf = leaf(w);
		bf = leaf(b);
		ws = leaf(w);
		bs = leaf(b);
	}
	if (running) {
		rmf = ag_zeros(dt, 1, &c);
		rvf = ag_ones(dt, 1, &c);
		rms = ag_zeros(dt, 1, &c);
		rvs = ag_ones(dt, 1, &c);
	}
	for (int step = 0; step < 2; step++) {
		xs = h.strided ? ag_transpose(xl, 0, 1) : xl;
		TAP_CHECK(ag_tensor_is_contiguous(xs) == !h.strided);
		y = ag_batch_norm(xf, rmf, rvf, wf, bf, true, 0.3, 1e-5);
		ys = ag_dist_batch_norm(xs, rms, rvs, ws, bs, true, 0.3, 1e-5);
		TAP_CHECKF(ys, "%s", ag_errmsg());
		TAP_CHECKF(backward_of(y, r) == 0, "%s", ag_errmsg());
		TAP_CHECKF(backward_of(ys, rs) == 0, "%s", ag_errmsg());
	}
	TAP_CHECK(ag_set_num_threads(1) == 0);
	gxs = ag_tensor_grad(xl);
	if (h.strided)
		gxs = ag_transpose(gxs, 0, 1);
	if (check_close("y", ys, part(y, lo, hi)) ||
	    check_close("x.grad", gxs, part(ag_tensor_grad(xf), lo, hi)))
		return 1;
	if (running && (check_close("running_mean", rms, rmf) ||
			check_close("running_var", rvs, rvf)))
		return 1;
	if (affine &&
	    (check_close("sum of weight.grad", summed(ws),
			 ag_tensor_grad(wf)) ||
	     check_close("sum of bias.grad", summed(bs), ag_tensor_grad(bf))))
		return 1;
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

static int test_nc_equal_shards(void)
{
	int64_t sh[2] = { 4 * parts(EQUAL), 3 };

	return against_whole_batch(
		2, sh,
		(struct how){ .cut = EQUAL, .affine = true, .running = true });
}

static int test_nc_unequal_shards(void)
{
	int64_t sh[2] = { 2 * parts(GROWING), 5 };

	return against_whole_batch(2, sh,
				   (struct how){ .cut = GROWING,
						 .affine = true,
						 .running = true });
}

/* [N, C, H, W]: H W >= 16 takes ag_batch_norm's channel-by-channel path */
static int test_nchw(void)
{
	int64_t sh[4] = { 2 * parts(GROWING), 3, 4, 5 };

	return against_whole_batch(4, sh,
				   (struct how){ .cut = GROWING,
						 .affine = true,
						 .running = true });
}

static int test_nchw_small_planes_no_affine(void)
{
	int64_t sh[4] = { parts(EQUAL), 4, 2, 3 };

	return against_whole_batch(
		       4, sh, (struct how){ .cut = EQUAL, .running = true }) ||
	       against_whole_batch(
		       4, sh, (struct how){ .cut = EQUAL, .affine = true });
}

/* rank 0 holds no sample */
static int test_a_rank_with_an_empty_shard(void)
{
	int64_t sh[3] = { 2 * parts(FIRST_EMPTY), 3, 2 };

	return against_whole_batch(3, sh,
				   (struct how){ .cut = FIRST_EMPTY,
						 .affine = true,
						 .running = true });
}

/* f32 (the modules' dtype), within 1e-5 */
static int test_f32(void)
{
	int64_t sh4[4] = { 2 * parts(GROWING), 3, 4, 5 };
	int64_t sh2[2] = { 4 * parts(EQUAL), 3 };

	return against_whole_batch(4, sh4,
				   (struct how){ .cut = GROWING,
						 .affine = true,
						 .running = true,
						 .f32 = true }) ||
	       against_whole_batch(2, sh2,
				   (struct how){ .cut = EQUAL,
						 .affine = true,
						 .running = true,
						 .f32 = true });
}

/*
 * Planes large enough for the channels to be split over 2 pool threads
 * (each channel summed by one thread in a fixed order): the same bits as
 * on one thread.
 */
static int test_nchw_2_threads(void)
{
	int64_t sh[4] = { 8 * parts(GROWING), 4, 32, 32 }, lo, hi;
	struct ag_scope *s;
	struct ag_tensor *x, *y1, *y2;

	if (against_whole_batch(4, sh,
				(struct how){ .cut = GROWING,
					      .affine = true,
					      .running = true,
					      .threads = 2 }))
		return 1;
	s = ag_scope_begin();
	rows(GROWING, sh[0], &lo, &hi);
	x = part(randn(13, 4, sh), lo, hi);
	y1 = ag_dist_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECK(ag_set_num_threads(2) == 0);
	y2 = ag_dist_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECK(ag_set_num_threads(1) == 0);
	TAP_CHECK(y1 && y2 && ag_equal(y1, y2));
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/* a shard that is not contiguous: a transposed view */
static int test_strided_input(void)
{
	int64_t sh[2] = { 2 * parts(GROWING), 5 };

	return against_whole_batch(2, sh,
				   (struct how){ .cut = GROWING,
						 .affine = true,
						 .running = true,
						 .strided = true });
}

/*
 * Two synced layers in parallel branches, each rank's backward reaching
 * them in its own order (a hook on one branch's output sleeps, the branch
 * depending on the rank), on 2 pool threads: the exchanges are matched
 * by tag, not by order.
 */
static struct ag_tensor *nap(struct ag_tensor *g, void *arg)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	(void)arg;
	nanosleep(&ts, NULL);
	return ag_tensor_get(g);
}

static int test_branches_in_any_order(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(9);
	int64_t sh[2] = { 4 * world, 3 }, lo = rank * 4, hi = lo + 4;
	struct ag_tensor *x = ag_randn(g, AG_F64, 2, sh);
	struct ag_tensor *r = ag_randn(g, AG_F64, 2, sh);
	struct ag_tensor *xf = leaf(x), *xs = leaf(part(x, lo, hi));
	struct ag_tensor *yf, *ys, *a, *b;
	struct ag_hook *h;

	ag_generator_free(g);
	TAP_CHECK(ag_set_num_threads(2) == 0);
	yf = ag_add(ag_batch_norm(xf, NULL, NULL, NULL, NULL, true, 0.1, 1e-5),
		    ag_batch_norm(ag_square(xf), NULL, NULL, NULL, NULL, true,
				  0.1, 1e-5));
	a = ag_dist_batch_norm(xs, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
	b = ag_dist_batch_norm(ag_square(xs), NULL, NULL, NULL, NULL, true, 0.1,
			       1e-5);
	h = ag_tensor_register_hook(rank % 2 ? a : b, nap, NULL);
	ys = ag_add(a, b);
	TAP_CHECKF(backward_of(yf, r) == 0, "%s", ag_errmsg());
	TAP_CHECKF(backward_of(ys, part(r, lo, hi)) == 0, "%s", ag_errmsg());
	ag_hook_remove(h);
	TAP_CHECK(ag_set_num_threads(1) == 0);
	if (check_close("y", ys, part(yf, lo, hi)) ||
	    check_close("x.grad", ag_tensor_grad(xs),
			part(ag_tensor_grad(xf), lo, hi)))
		return 1;
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/* Eval mode is ag_batch_norm's, bit for bit, and sends nothing. */
static int test_eval_is_batch_norm(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(11 + rank);
	int64_t sh[4] = { 2 + rank, 3, 2, 2 }, c = 3;
	struct ag_tensor *x = ag_randn(g, AG_F64, 4, sh);
	struct ag_tensor *rm = ag_randn(g, AG_F64, 1, &c);
	struct ag_tensor *rv = ag_add_scalar(ag_rand(g, AG_F64, 1, &c), 0.5);
	struct ag_tensor *w = ag_randn(g, AG_F64, 1, &c);
	struct ag_tensor *x1 = leaf(x), *x2 = leaf(x), *w1 = leaf(w),
			 *w2 = leaf(w);
	struct ag_tensor *y1 = NULL, *y2 = NULL,
			 *r = ag_randn(g, AG_F64, 4, sh);

	ag_generator_free(g);
	/* a different number of calls per rank: no collective */
	for (int i = 0; i <= rank; i++) {
		y1 = ag_batch_norm(x1, rm, rv, w1, NULL, false, 0.1, 1e-5);
		y2 = ag_dist_batch_norm(x2, rm, rv, w2, NULL, false, 0.1, 1e-5);
		TAP_CHECKF(y2, "%s", ag_errmsg());
		TAP_CHECK(ag_equal(y1, y2));
	}
	TAP_CHECK(backward_of(y1, r) == 0 && backward_of(y2, r) == 0);
	TAP_CHECK(ag_equal(ag_tensor_grad(x1), ag_tensor_grad(x2)));
	TAP_CHECK(ag_equal(ag_tensor_grad(w1), ag_tensor_grad(w2)));
	/* eval needs running stats, as ag_batch_norm */
	TAP_CHECK(!ag_dist_batch_norm(x2, NULL, NULL, w2, NULL, false, 0.1,
				      1e-5));
	TAP_CHECK(strstr(ag_errmsg(), "running_mean must be defined"));
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/*
 * Different channel counts fail on every rank, as does a rank whose own
 * arguments are bad, and no rank is left in a collective: a synced call
 * right after works.
 */
static int test_errors_on_every_rank(void)
{
	struct ag_scope *s = ag_scope_begin();
	int64_t c = rank == world - 1 ? 4 : 3, sh[2] = { 4, c }, c3 = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 2, sh);
	struct ag_tensor *rm = ag_zeros(AG_F64, 1, &c);
	struct ag_tensor *rv = ag_ones(AG_F64, 1, &c);
	struct ag_tensor *x3 = randn(1, 2, (int64_t[]){ 4, 3 });
	struct ag_tensor *w = ag_ones(AG_F64, 1, (int64_t[]){ rank ? 3 : 2 });
	struct ag_tensor *y;
	char msg[256];

	y = ag_dist_batch_norm(x, rm, rv, NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECK(!y && ag_errcode() == AG_ESHAPE);
	snprintf(
		msg, sizeof(msg),
		"ag_dist_batch_norm: the ranks' inputs have different channel counts, from 3 to 4");
	TAP_CHECKF(strstr(ag_errmsg(), msg), "%s", ag_errmsg());
	/* the running stats are untouched */
	TAP_CHECK(ag_equal(rm, ag_zeros(AG_F64, 1, &c)));
	TAP_CHECK(ag_equal(rv, ag_ones(AG_F64, 1, &c)));

	/* rank 0's weight has 2 elements for 3 channels */
	y = ag_dist_batch_norm(x3, NULL, NULL, w, NULL, true, 0.1, 1e-5);
	TAP_CHECK(!y);
	if (!rank) {
		TAP_CHECKF(
			ag_errcode() == AG_ESHAPE &&
				strstr(ag_errmsg(),
				       "weight should contain 3 elements not 2"),
			"%s", ag_errmsg());
	} else {
		TAP_CHECKF(ag_errcode() == AG_EINVAL &&
				   strstr(ag_errmsg(),
					  "rank 0 failed its argument checks"),
			   "%s", ag_errmsg());
	}
	/* x NULL on the last rank (an earlier op failed there) */
	ag_set_error(AG_EINVAL, "some earlier failure");
	y = ag_dist_batch_norm(rank == world - 1 ? NULL : x3, NULL, NULL, NULL,
			       NULL, true, 0.1, 1e-5);
	TAP_CHECK(!y);
	snprintf(msg, sizeof(msg), "rank %d failed", world - 1);
	TAP_CHECKF(strstr(ag_errmsg(),
			  rank == world - 1 ? "some earlier failure" : msg),
		   "%s", ag_errmsg());
	/* an i64 input */
	y = ag_dist_batch_norm(rank ? x3 : ag_zeros(AG_I64, 2, sh), NULL, NULL,
			       NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECK(!y);
	TAP_CHECKF(!rank ? ag_errcode() == AG_EDTYPE :
			   strstr(ag_errmsg(), "rank 0 failed") != NULL,
		   "%s", ag_errmsg());
	/* one value per channel over all the ranks */
	y = ag_dist_batch_norm(ag_slice(x3, 0, 0, rank ? 0 : 1, 1), NULL, NULL,
			       NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECKF(!y && ag_errcode() == AG_EINVAL &&
			   strstr(ag_errmsg(),
				  "Expected more than 1 value per channel"),
		   "%s", ag_errmsg());
	/* a 1-d input */
	y = ag_dist_batch_norm(ag_zeros(AG_F64, 1, &c3), NULL, NULL, NULL, NULL,
			       true, 0.1, 1e-5);
	TAP_CHECKF(!y && ag_errcode() == AG_ESHAPE &&
			   strstr(ag_errmsg(), "2 or more dims"),
		   "%s", ag_errmsg());
	/* every rank is still in step */
	y = ag_dist_batch_norm(x3, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
	TAP_CHECKF(y, "%s", ag_errmsg());
	TAP_CHECK(ag_dist_sync_batchnorm(NULL) == -AG_EINVAL);
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/* Backward of backward is refused on every rank, before any exchange. */
static int test_create_graph_refused(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = leaf(randn(2, 2, (int64_t[]){ 3, 2 }));
	struct ag_tensor *y, *loss;

	y = ag_dist_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
	loss = ag_sum(ag_square(y));
	TAP_CHECK(ag_backward(loss, NULL,
			      &(struct ag_backward_opts){
				      .create_graph = true }) == -AG_EINVAL);
	TAP_CHECKF(strstr(ag_errmsg(), "SyncBatchNormBackward: not twice "
				       "differentiable"),
		   "%s", ag_errmsg());
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

/* ---- modules ---- */

/* f32 parameters and running stats of m's tree to f64 copies */
static void to_f64(struct ag_module *m)
{
	static const char *const pn[2] = { "weight", "bias" };
	static const char *const bn[2] = { "running_mean", "running_var" };
	char name[16];

	for (int k = 0; k < 2; k++) {
		struct ag_tensor *p = ag_module_get_parameter(m, pn[k]);
		struct ag_tensor *v = ag_module_get_buffer(m, bn[k]);

		if (p) {
			struct ag_tensor *d = ag_to(p, AG_F64);
			struct ag_tensor *q = ag_parameter(d);

			ag_module_set_parameter(m, pn[k], q);
			ag_tensor_put(q);
			ag_tensor_put(d);
		}
		if (v) {
			struct ag_tensor *d = ag_to(v, AG_F64);

			ag_module_set_buffer(m, bn[k], d);
			ag_tensor_put(d);
		}
	}
	for (int i = 0;; i++) {
		struct ag_module *c;

		snprintf(name, sizeof(name), "%d", i);
		c = ag_module_get_child(m, name);
		if (!c)
			break;
		to_f64(c);
	}
}

#define IN 6
#define HID 4
#define OUT 3
#define PER 4 /* rows per rank */

/*
 * Linear(IN,HID), BatchNorm1d(HID), Tanh, [Linear(HID,OUT),
 * BatchNorm1d(OUT)] in f64: two BatchNorms, one in a nested Sequential.
 */
static struct ag_module *model(void)
{
	struct ag_generator *g = ag_generator_new(3);
	struct ag_module *inner[2] = { ag_linear_new(HID, OUT, true, g),
				       ag_batchnorm1d_new(OUT, 1e-5, 0.1) };
	struct ag_module *mods[4] = { ag_linear_new(IN, HID, true, g),
				      ag_batchnorm1d_new(HID, 1e-5, 0.1),
				      ag_tanh_new(),
				      ag_sequential_new(inner, 2) };
	struct ag_module *m = ag_sequential_new(mods, 4);

	ag_generator_free(g);
	to_f64(m);
	return m;
}

/* m's parameters and buffers against ref's */
static int same_state(struct ag_module *m, struct ag_module *ref)
{
	const char *const *names, *const *rn;
	struct ag_tensor *const *t, *const *rt;
	int n, nr;

	ag_module_named_parameters(m, &names, &t, &n);
	ag_module_named_parameters(ref, &rn, &rt, &nr);
	TAP_CHECK(n == nr && n == 8);
	for (int i = 0; i < n; i++)
		if (check_close(names[i], t[i], rt[i]))
			return 1;
	ag_module_named_buffers(m, &names, &t, &n);
	ag_module_named_buffers(ref, &rn, &rt, &nr);
	TAP_CHECK(n == nr && n == 6);
	for (int i = 0; i < n; i++) {
		if (ag_tensor_dtype(t[i]) == AG_I64)
			TAP_CHECKF(ag_equal(t[i], rt[i]), "%s", names[i]);
		else if (check_close(names[i], t[i], rt[i]))
			return 1;
	}
	return 0;
}

/*
 * A converted model under DDP on equal shards trains as one process on
 * the whole batch (the mean loss of equal shards averages to the whole
 * batch's): parameters and BatchNorm statistics after 3 SGD steps.
 * Without the conversion each rank's BatchNorm would see its shard alone.
 */
static int test_converted_model_under_ddp(void)
{
	struct ag_module *ref = model(), *m = model();
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(21);
	int64_t lo = rank * PER, hi = lo + PER;
	struct ag_tensor *x =
		ag_randn(g, AG_F64, 2, (int64_t[]){ PER * world, IN });
	struct ag_tensor *y =
		ag_randn(g, AG_F64, 2, (int64_t[]){ PER * world, OUT });
	struct ag_tensor *xs = part(x, lo, hi), *ys = part(y, lo, hi);
	struct ag_optim *oref = sgd(ref), *om = sgd(m);
	struct ag_ddp *d;

	ag_generator_free(g);
	TAP_CHECK(ag_dist_sync_batchnorm(m) == 2);
	d = ag_ddp_new(m, NULL);
	TAP_CHECKF(d, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++) {
		TAP_CHECKF(step(ref, NULL, oref, x, y) == 0, "%s", ag_errmsg());
		TAP_CHECKF(step(m, d, om, xs, ys) == 0, "step %d: %s", i,
			   ag_errmsg());
	}
	if (same_state(m, ref))
		return 1;
	/* eval: the running stats, no communication */
	ag_module_eval(m);
	ag_module_eval(ref);
	if (check_close("eval output", ag_module_forward(m, xs),
			part(ag_module_forward(ref, x), lo, hi)))
		return 1;
	/* undone: the shard's own statistics again */
	TAP_CHECK(ag_module_set_batch_norm_fn(m, NULL) == 2);
	TAP_CHECK(ag_module_set_batch_norm_fn(ag_module_get_child(m, "0"),
					      ag_dist_batch_norm) == 0);
	ag_ddp_free(d);
	ag_optim_free(oref);
	ag_optim_free(om);
	ag_module_put(ref);
	ag_module_put(m);
	ag_scope_end(s);
	NO_LEAKS();
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_nc_equal_shards),
	TAP_TEST(test_nc_unequal_shards),
	TAP_TEST(test_nchw),
	TAP_TEST(test_nchw_small_planes_no_affine),
	TAP_TEST(test_a_rank_with_an_empty_shard),
	TAP_TEST(test_f32),
	TAP_TEST(test_nchw_2_threads),
	TAP_TEST(test_strided_input),
	TAP_TEST(test_branches_in_any_order),
	TAP_TEST(test_eval_is_batch_norm),
	TAP_TEST(test_errors_on_every_rank),
	TAP_TEST(test_create_graph_refused),
	TAP_TEST(test_converted_model_under_ddp),
	{ 0 },
};

/* One rank (before init): ag_batch_norm itself, bit for bit. */
static int one_rank_is_batch_norm(void)
{
	struct ag_scope *s = ag_scope_begin();
	int64_t sh[2] = { 5, 3 }, c = 3;
	struct ag_tensor *x = randn(3, 2, sh);
	struct ag_tensor *rm1 = ag_zeros(AG_F64, 1, &c);
	struct ag_tensor *rm2 = ag_zeros(AG_F64, 1, &c);
	struct ag_tensor *rv1 = ag_ones(AG_F64, 1, &c);
	struct ag_tensor *rv2 = ag_ones(AG_F64, 1, &c);
	struct ag_tensor *y1 =
		ag_batch_norm(x, rm1, rv1, NULL, NULL, true, 0.1, 1e-5);
	struct ag_tensor *y2 =
		ag_dist_batch_norm(x, rm2, rv2, NULL, NULL, true, 0.1, 1e-5);
	int ok = y2 && ag_equal(y1, y2) && ag_equal(rm1, rm2) &&
		 ag_equal(rv1, rv2);

	ag_scope_end(s);
	return ok && ag__live_tensors() == 0;
}

int main(int argc, char **argv)
{
	int rc;

	if (!one_rank_is_batch_norm()) {
		printf("Bail out! one rank: %s\n", ag_errmsg());
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
