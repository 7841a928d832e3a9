// SPDX-License-Identifier: MIT
/*
 * Synchronised batch normalisation, as torch's SyncBatchNorm: the batch
 * statistics of every rank's shard together.
 *
 * Forward (the caller's thread, so every rank reaches it in program
 * order): one MPI_Allreduce makes every rank agree that every rank's
 * arguments are valid and hold the same channel count, so a bad call
 * fails everywhere instead of leaving the others in the next collective;
 * one MPI_Allgather then hands every rank every rank's count, mean and
 * sum of squared deviations per channel (two-pass, in f64), which each
 * rank merges in rank order by Chan et al.'s update, so the statistics
 * are the same bits everywhere and nothing cancels.  The normalisation
 * itself is a custom function (ag/function.h).
 *
 * Backward sums dy and dy (x - mean) per channel over the ranks.  It may
 * run on any pool thread, in an order that differs between ranks, beside
 * DDP's bucket all-reduces and other synced layers' backwards: a
 * collective would be matched against the wrong one.  So the exchange is
 * point to point (libag-dist sends no other point-to-point message),
 * tagged with the forward's sequence number, which every rank counts
 * alike; the lock is let go between tests of the requests, so two synced
 * layers' backwards on one rank cannot hold each other up.
 */
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ag/function.h>
#include <ag/mode.h>
#include <ag/pool.h>

#include "dist_internal.h"

/* What one synced forward found, for its backward. */
struct sbn_stats {
	int64_t c, count; /* channels; values per channel over every rank */
	int tag;
	bool has_w, has_b;
	double *mean, *var, *invstd; /* [c] each, in this block; var biased */
};

static unsigned long sbn_seq; /* synced forwards so far, under the lock */

static struct sbn_stats *stats_new(int64_t c)
{
	struct sbn_stats *st =
		calloc(1, sizeof(*st) + 3 * (size_t)c * sizeof(double));

	if (!st)
		return NULL;
	st->c = c;
	st->mean = (double *)(st + 1);
	st->var = st->mean + c;
	st->invstd = st->var + c;
	return st;
}

static void stats_free(void *p)
{
	free(p);
}

static struct sbn_stats *stats_copy(const struct sbn_stats *st)
{
	struct sbn_stats *cp = stats_new(st->c);

	if (!cp)
		return NULL;
	memcpy(cp->mean, st->mean, 3 * (size_t)st->c * sizeof(double));
	cp->count = st->count;
	cp->tag = st->tag;
	cp->has_w = st->has_w;
	cp->has_b = st->has_b;
	return cp;
}

/* x as [n, c, s] */
struct sbn_dims {
	int64_t n, c, s;
};

static struct sbn_dims dims_of(struct ag_tensor *x)
{
	const int64_t *sh = ag_tensor_shape(x);
	struct sbn_dims d = { sh[0], sh[1], 1 };

	for (int i = 2; i < ag_tensor_ndim(x); i++)
		d.s *= sh[i];
	return d;
}

static double get(const void *p, enum ag_dtype dt, int64_t i)
{
	return dt == AG_F32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

static void put(void *p, enum ag_dtype dt, int64_t i, double v)
{
	if (dt == AG_F32)
		((float *)p)[i] = (float)v;
	else
		((double *)p)[i] = v;
}

/* Element i of a 1-D tensor of any stride; NULL: dflt. */
static double vget(struct ag_tensor *t, int64_t i, double dflt)
{
	if (!t)
		return dflt;
	return get(ag_tensor_data(t), ag_tensor_dtype(t),
		   i * ag_tensor_strides(t)[0]);
}

static void vset(struct ag_tensor *t, int64_t i, double v)
{
	put(ag_tensor_data(t), ag_tensor_dtype(t), i * ag_tensor_strides(t)[0],
	    v);
}

/* A pass over the elements of a dense [n, c, s] buffer. */
enum sbn_kind {
	SBN_STATS, /* o1 = mean, o2 = sum of squared deviations, of x */
	SBN_AFFINE, /* y = x coef[ch] + coef[c + ch] */
	SBN_GSUMS, /* o1 = sum(g), o2 = sum(g (x - mean)) */
	SBN_DX, /* y = g coef[ch] + (x - mean) coef[c + ch] + coef[2c + ch] */
};

struct sbn_pass {
	enum sbn_kind kind;
	bool f32; /* else f64 */
	const struct sbn_dims *d;
	const void *x, *g;
	void *y;
	const double *mean, *coef;
	double *o1, *o2; /* [c] each, zeroed by the caller */
};

/*
 * Channels [c0, c1), a run of s elements at a time (one channel of one
 * sample) in memory order, each run summed into four f64 partial sums (one
 * chain of dependent additions runs at the adder's latency), then into its
 * channel's: no dtype test per element.  A channel is summed by one thread
 * in a fixed order, so the result does not depend on the thread count.
 */
#define SBN_RUNS(p, c0, c1)                                           \
	for (int64_t n_ = 0; n_ < (p)->d->n; n_++)                    \
		for (int64_t ch = (c0),                               \
			     o = (n_ * (p)->d->c + (c0)) * (p)->d->s; \
		     ch < (c1); ch++, o += (p)->d->s)

/* a[0..4) += the terms f(j) of run o, j = o + e; t: the sum of a's */
#define SBN_SUM4(p, a, f)                                \
	do {                                             \
		int64_t e_ = 0, j;                       \
		for (; e_ + 4 <= (p)->d->s; e_ += 4)     \
			for (int k_ = 0; k_ < 4; k_++) { \
				j = o + e_ + k_;         \
				a[k_] += (f);            \
			}                                \
		for (; e_ < (p)->d->s; e_++) {           \
			j = o + e_;                      \
			a[0] += (f);                     \
		}                                        \
	} while (0)

#define SBN_KERNELS(T, S)                                                      \
	static void stats_##S(const struct sbn_pass *p, int64_t c0,            \
			      int64_t c1)                                      \
	{                                                                      \
		const T *x = p->x;                                             \
		double cnt = (double)(p->d->n * p->d->s);                      \
                                                                               \
		SBN_RUNS(p, c0, c1)                                            \
		{                                                              \
			double a[4] = { 0 };                                   \
			SBN_SUM4(p, a, x[j]);                                  \
			p->o1[ch] += (a[0] + a[1]) + (a[2] + a[3]);            \
		}                                                              \
		for (int64_t ch = c0; ch < c1; ch++)                           \
			p->o1[ch] /= cnt;                                      \
		SBN_RUNS(p, c0, c1)                                            \
		{                                                              \
			double a[4] = { 0 }, m = p->o1[ch];                    \
			SBN_SUM4(p, a, (x[j] - m) * (x[j] - m));               \
			p->o2[ch] += (a[0] + a[1]) + (a[2] + a[3]);            \
		}                                                              \
	}                                                                      \
	static void affine_##S(const struct sbn_pass *p, int64_t c0,           \
			       int64_t c1)                                     \
	{                                                                      \
		const T *x = p->x;                                             \
		T *y = p->y;                                                   \
                                                                               \
		SBN_RUNS(p, c0, c1)                                            \
		{                                                              \
			double a = p->coef[ch], b = p->coef[p->d->c + ch];     \
			for (int64_t e = 0; e < p->d->s; e++)                  \
				y[o + e] = (T)(x[o + e] * a + b);              \
		}                                                              \
	}                                                                      \
	static void gsums_##S(const struct sbn_pass *p, int64_t c0,            \
			      int64_t c1)                                      \
	{                                                                      \
		const T *x = p->x, *g = p->g;                                  \
                                                                               \
		SBN_RUNS(p, c0, c1)                                            \
		{                                                              \
			double a[4] = { 0 }, b[4] = { 0 }, m = p->mean[ch];    \
			SBN_SUM4(p, a, g[j]);                                  \
			SBN_SUM4(p, b, (double)g[j] * (x[j] - m));             \
			p->o1[ch] += (a[0] + a[1]) + (a[2] + a[3]);            \
			p->o2[ch] += (b[0] + b[1]) + (b[2] + b[3]);            \
		}                                                              \
	}                                                                      \
	static void dx_##S(const struct sbn_pass *p, int64_t c0, int64_t c1)   \
	{                                                                      \
		const T *x = p->x, *g = p->g;                                  \
		T *dx = p->y;                                                  \
		int64_t c = p->d->c;                                           \
                                                                               \
		SBN_RUNS(p, c0, c1)                                            \
		{                                                              \
			double a = p->coef[ch], b = p->coef[c + ch];           \
			double k = p->coef[2 * c + ch], m = p->mean[ch];       \
			for (int64_t e = 0; e < p->d->s; e++)                  \
				dx[o + e] =                                    \
					(T)(g[o + e] * a +                     \
					    ((double)x[o + e] - m) * b + k);   \
		}                                                              \
	}                                                                      \
	static void pass_##S(const struct sbn_pass *p, int64_t c0, int64_t c1) \
	{                                                                      \
		switch (p->kind) {                                             \
		case SBN_STATS:                                                \
			stats_##S(p, c0, c1);                                  \
			break;                                                 \
		case SBN_AFFINE:                                               \
			affine_##S(p, c0, c1);                                 \
			break;                                                 \
		case SBN_GSUMS:                                                \
			gsums_##S(p, c0, c1);                                  \
			break;                                                 \
		case SBN_DX:                                                   \
			dx_##S(p, c0, c1);                                     \
			break;                                                 \
		}                                                              \
	}

SBN_KERNELS(float, f32)
SBN_KERNELS(double, f64)

static void pass_chunk(int64_t c0, int64_t c1, void *arg)
{
	const struct sbn_pass *p = arg;

	if (p->f32)
		pass_f32(p, c0, c1);
	else
		pass_f64(p, c0, c1);
}

/* Runs of at least this many elements: channels in parallel on the pool. */
#define SBN_SPAN_MIN 16
/* Elements of a parallel chunk; a channel is n * s of them. */
#define SBN_CHUNK 16384

/*
 * One pass over every channel: in parallel for images (whole runs of a
 * channel are lines of their own), in memory order on this thread for
 * short runs ([N, C]: a channel's elements are c apart).
 */
static void run_pass(struct sbn_pass p, enum ag_dtype dt)
{
	int64_t per = p.d->n * p.d->s;

	p.f32 = dt == AG_F32;
	if (p.d->s >= SBN_SPAN_MIN && per)
		ag_parallel_for(p.d->c, per >= SBN_CHUNK ? 1 : SBN_CHUNK / per,
				pass_chunk, &p);
	else
		pass_chunk(0, p.d->c, &p);
}

/* ---- checks ---- */

static int check_vec(const char *what, struct ag_tensor *v, struct ag_tensor *x,
		     bool written)
{
	const char *fn = "ag_dist_batch_norm";
	int64_t c = ag_tensor_shape(x)[1];

	if (!v)
		return 0;
	if (ag_tensor_dtype(v) != ag_tensor_dtype(x))
		return ag_set_error(AG_EDTYPE,
				    "%s: %s has dtype %s but the input has %s",
				    fn, what, ag_dtype_name(ag_tensor_dtype(v)),
				    ag_dtype_name(ag_tensor_dtype(x)));
	if (ag_tensor_ndim(v) != 1 || ag_tensor_shape(v)[0] != c)
		return ag_set_error(
			AG_ESHAPE,
			"%s: %s should contain %lld elements not %lld", fn,
			what, (long long)c, (long long)ag_tensor_numel(v));
	if (written && c > 1 && ag_tensor_strides(v)[0] == 0)
		return ag_set_error(
			AG_EINVAL,
			"%s: %s is an expanded tensor whose elements share memory; it cannot be updated in place",
			fn, what);
	if (written && ag_tensor_is_inference(v) &&
	    !ag_is_inference_mode_enabled())
		return ag_set_error(
			AG_EINFERENCE,
			"%s: %s is an inference tensor; it cannot be updated in place outside inference mode",
			fn, what);
	return 0;
}

/* This rank's arguments alone, as ag_batch_norm checks them. */
static int check_local(struct ag_tensor *x, struct ag_tensor *rm,
		       struct ag_tensor *rv, struct ag_tensor *w,
		       struct ag_tensor *b)
{
	const char *fn = "ag_dist_batch_norm";
	enum ag_dtype dt;

	if (!x)
		return ag_errcode() ?
			       -ag_errcode() :
			       ag_set_error(AG_EINVAL, "%s: x is NULL", fn);
	dt = ag_tensor_dtype(x);
	if (dt != AG_F32 && dt != AG_F64)
		return ag_set_error(AG_EDTYPE,
				    "%s: x has dtype %s; f32 or f64 expected",
				    fn, ag_dtype_name(dt));
	if (ag_tensor_ndim(x) < 2)
		return ag_set_error(
			AG_ESHAPE,
			"%s: expected an input of 2 or more dims [N, C, ...], got %d-d",
			fn, ag_tensor_ndim(x));
	if (ag_tensor_shape(x)[1] > (INT32_MAX - 1) / 2)
		return ag_set_error(AG_EINVAL,
				    "%s: %lld channels, MPI counts stop at %d",
				    fn, (long long)ag_tensor_shape(x)[1],
				    INT32_MAX);
	if (!rm != !rv)
		return ag_set_error(
			AG_EINVAL,
			"%s: running_mean and running_var must be given together",
			fn);
	if (check_vec("running_mean", rm, x, true) ||
	    check_vec("running_var", rv, x, true) ||
	    check_vec("weight", w, x, false) || check_vec("bias", b, x, false))
		return -ag_errcode();
	return 0;
}

/*
 * Every rank's verdict on its own arguments, and its channel count, in one
 * MPI_Allreduce (MAX) of fixed size, so that it cannot fail for want of
 * memory on one rank only: the lowest failing rank, and the largest and
 * smallest C.  A rank that failed keeps its own message.
 */
static int agree(const char *fn, int rc, int64_t c)
{
	int rank = ag_dist_rank(), world = ag_dist_world_size();
	int64_t v[3] = { rc ? world - rank : 0, rc ? INT64_MIN + 1 : c,
			 rc ? INT64_MIN + 1 : -c };
	int mrc;

	ag__dist_lock();
	mrc = ag__dist_check(MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T,
					   MPI_MAX, ag__dist_comm()),
			     fn, "MPI_Allreduce");
	ag__dist_unlock();
	if (rc)
		return rc;
	if (mrc)
		return mrc;
	if (v[0])
		return ag_set_error(
			AG_EINVAL,
			"%s: rank %lld failed its argument checks (its own error says why)",
			fn, (long long)(world - v[0]));
	if (v[1] != -v[2])
		return ag_set_error(
			AG_ESHAPE,
			"%s: the ranks' inputs have different channel counts, from %lld to %lld; every rank must pass the same C",
			fn, (long long)-v[2], (long long)v[1]);
	return 0;
}

/* ---- statistics ---- */

/* This rank's count, then mean [c] and sum of squared deviations [c]. */
static void local_stats(struct ag_tensor *xc, double *out)
{
	struct sbn_dims d = dims_of(xc);
	enum ag_dtype dt = ag_tensor_dtype(xc);
	const void *p = ag_tensor_data(xc);
	double *mean = out + 1, *m2 = mean + d.c;
	double cnt = (double)(d.n * d.s);

	out[0] = cnt;
	memset(mean, 0, 2 * (size_t)d.c * sizeof(double));
	if (!cnt)
		return;
	run_pass((struct sbn_pass){ .kind = SBN_STATS,
				    .d = &d,
				    .x = p,
				    .o1 = mean,
				    .o2 = m2 },
		 dt);
}

/*
 * Merges the ranks' statistics (world blocks of 1 + 2c) in rank order:
 * st->mean, st->count and, for now, the sum of squared deviations in
 * st->var.
 */
static void merge(struct sbn_stats *st, const double *all, int world)
{
	int64_t c = st->c;
	double cnt = 0;

	for (int64_t ch = 0; ch < c; ch++)
		st->mean[ch] = st->var[ch] = 0;
	for (int r = 0; r < world; r++) {
		const double *blk = all + (size_t)r * (size_t)(1 + 2 * c);
		double len = blk[0], tot = cnt + len;

		if (!len)
			continue;
		for (int64_t ch = 0; ch < c; ch++) {
			double delta = blk[1 + ch] - st->mean[ch];

			st->mean[ch] += delta * len / tot;
			st->var[ch] += blk[1 + c + ch] +
				       delta * delta * cnt * len / tot;
		}
		cnt = tot;
	}
	st->count = (int64_t)cnt;
}

/*
 * The global statistics of x's channels: one MPI_Allgather.  all holds
 * world blocks of 1 + 2c doubles.  Fails on every rank alike, but for an
 * MPI failure.
 */
static int global_stats(struct ag_tensor *xc, struct sbn_stats *st, double *all,
			double eps)
{
	const char *fn = "ag_dist_batch_norm";
	int world = ag_dist_world_size(), n = (int)(1 + 2 * st->c), rc;
	double *mine = all + (size_t)ag_dist_rank() * (size_t)n;

	local_stats(xc, mine);
	ag__dist_lock();
	rc = ag__dist_check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL,
					  all, n, MPI_DOUBLE, ag__dist_comm()),
			    fn, "MPI_Allgather");
	st->tag = (int)(sbn_seq++ % 32768); /* MPI_TAG_UB is at least 32767 */
	ag__dist_unlock();
	if (rc)
		return rc;
	merge(st, all, world);
	if (st->count == 1)
		return ag_set_error(
			AG_EINVAL,
			"%s: Expected more than 1 value per channel when training, got 1 over %d ranks",
			fn, world);
	for (int64_t ch = 0; ch < st->c && st->count; ch++) {
		st->var[ch] /= (double)st->count;
		st->invstd[ch] = 1.0 / sqrt(st->var[ch] + eps);
	}
	return 0;
}

/* running = (1 - momentum) running + momentum batch, variance unbiased */
static void update_running(struct ag_tensor *rm, struct ag_tensor *rv,
			   const struct sbn_stats *st, double mo)
{
	double k = (double)st->count / (double)(st->count - 1);

	if (!rm || !st->count)
		return;
	for (int64_t ch = 0; ch < st->c; ch++) {
		vset(rm, ch, (1 - mo) * vget(rm, ch, 0) + mo * st->mean[ch]);
		vset(rv, ch, (1 - mo) * vget(rv, ch, 0) + mo * st->var[ch] * k);
	}
	ag_tensor_bump_version(rm);
	ag_tensor_bump_version(rv);
}

/* ---- backward's exchange ---- */

/*
 * Cancels and completes the requests posted so far, after a failure: a
 * peer's matching message is then dropped or never sent.
 */
static void drop_requests(MPI_Request *req, int n)
{
	for (int i = 0; i < n; i++)
		MPI_Cancel(&req[i]);
	MPI_Waitall(n, req, MPI_STATUSES_IGNORE);
}

/*
 * v[n] = the sum of every rank's v[n], added in rank order so every rank
 * gets the same bits: each rank sends its v to every other with the
 * forward's tag and receives theirs.  The lock is held only to post and
 * to test.
 */
static int exchange(double *v, int n, int tag)
{
	const char *fn = "SyncBatchNormBackward";
	int world = ag_dist_world_size(), me = ag_dist_rank();
	double *all = malloc((size_t)world * (size_t)n * sizeof(double));
	MPI_Request *req = malloc(2 * (size_t)world * sizeof(*req));
	MPI_Comm comm = ag__dist_comm();
	int k = 0, done = 0, rc = 0;

	if (!all || !req) {
		rc = ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
		goto out;
	}
	memcpy(all + (size_t)me * (size_t)n, v, (size_t)n * sizeof(double));
	ag__dist_lock();
	for (int r = 0; r < world && !rc; r++) {
		if (r == me)
			continue;
		rc = ag__dist_check(MPI_Irecv(all + (size_t)r * (size_t)n, n,
					      MPI_DOUBLE, r, tag, comm,
					      &req[k]),
				    fn, "MPI_Irecv");
		k += !rc;
		if (!rc)
			rc = ag__dist_check(MPI_Isend(v, n, MPI_DOUBLE, r, tag,
						      comm, &req[k]),
					    fn, "MPI_Isend");
		k += !rc;
	}
	if (rc)
		drop_requests(req, k);
	ag__dist_unlock();
	while (!rc && !done) {
		ag__dist_lock();
		rc = ag__dist_check(MPI_Testall(k, req, &done,
						MPI_STATUSES_IGNORE),
				    fn, "MPI_Testall");
		ag__dist_unlock();
		if (!rc && !done)
			sched_yield();
	}
	for (int i = 0; i < n && !rc; i++) {
		v[i] = 0;
		for (int r = 0; r < world; r++)
			v[i] += all[(size_t)r * (size_t)n + (size_t)i];
	}
out:
	free(all);
	free(req);
	return rc;
}

/* ---- the function ---- */

static int sbn_forward(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		       struct ag_tensor **out, int nout)
{
	const struct sbn_stats *st = ag_ctx_arg(ctx);
	struct ag_tensor *x = in[0], *w = st->has_w ? in[1] : NULL;
	struct ag_tensor *b = st->has_b ? in[1 + st->has_w] : NULL;
	struct ag_tensor *save[2] = { x, w }, *xc = NULL, *y = NULL;
	struct sbn_dims d = dims_of(x);
	enum ag_dtype dt = ag_tensor_dtype(x);
	struct sbn_stats *keep = stats_copy(st);
	double *ab = malloc(2 * (size_t)d.c * sizeof(double) + 1);
	int rc;

	(void)nin;
	(void)nout;
	/* the ctx frees keep with the node, or when apply returns */
	rc = ag_ctx_set_data(ctx, keep, stats_free);
	if (rc || !keep) {
		if (rc)
			free(keep);
		free(ab);
		return rc ? rc :
			    ag_set_error(AG_ENOMEM,
					 "ag_dist_batch_norm: out of memory");
	}
	xc = ab ? ag_contiguous(x) : NULL;
	y = xc ? ag_empty(dt, ag_tensor_ndim(x), ag_tensor_shape(x)) : NULL;
	if (!y) {
		rc = ab ? -ag_errcode() :
			  ag_set_error(AG_ENOMEM,
				       "ag_dist_batch_norm: out of memory");
		goto out;
	}
	/* y = x alpha + beta, alpha = invstd w, beta = b - mean alpha */
	for (int64_t ch = 0; ch < d.c; ch++) {
		ab[ch] = st->invstd[ch] * vget(w, ch, 1);
		ab[d.c + ch] = vget(b, ch, 0) - st->mean[ch] * ab[ch];
	}
	run_pass((struct sbn_pass){ .kind = SBN_AFFINE,
				    .d = &d,
				    .x = ag_tensor_data(xc),
				    .y = ag_tensor_data(y),
				    .coef = ab },
		 dt);
	rc = ag_ctx_save_for_backward(ctx, save, 2);
out:
	free(ab);
	ag_tensor_put(xc);
	if (rc) {
		ag_tensor_put(y);
		return rc;
	}
	out[0] = y;
	return 0;
}

/*
 * sg = sum(dy), sgx = sum(dy (x - mean)) per channel, this rank's, in
 * sums[0..c) and sums[c..2c).
 */
static void grad_sums(struct ag_tensor *g, struct ag_tensor *x,
		      const struct sbn_stats *st, double *sums)
{
	struct sbn_dims d = dims_of(x);
	enum ag_dtype dt = ag_tensor_dtype(x);
	const void *gs = ag_tensor_data(g), *xs = ag_tensor_data(x);
	double *sg = sums, *sgx = sums + d.c;

	memset(sums, 0, 2 * (size_t)d.c * sizeof(double));
	run_pass((struct sbn_pass){ .kind = SBN_GSUMS,
				    .d = &d,
				    .x = xs,
				    .g = gs,
				    .mean = st->mean,
				    .o1 = sg,
				    .o2 = sgx },
		 dt);
}

/* a [c] tensor of dt: v[i] scale[i] (scale NULL: 1) */
static struct ag_tensor *vec_of(enum ag_dtype dt, int64_t c, const double *v,
				const double *scale)
{
	struct ag_tensor *t = ag_empty(dt, 1, &c);

	for (int64_t ch = 0; t && ch < c; ch++)
		put(ag_tensor_data(t), dt, ch, v[ch] * (scale ? scale[ch] : 1));
	return t;
}

/*
 * dx = w invstd (dy - SG / count - (x - mean) invstd^2 SGX / count) with
 * SG and SGX summed over the ranks; dw and db from this rank's sums (DDP
 * averages them later), as torch's SyncBatchNorm.
 */
static struct ag_tensor *grad_x(struct ag_tensor *g, struct ag_tensor *x,
				struct ag_tensor *w, const struct sbn_stats *st,
				const double *sums)
{
	struct sbn_dims d = dims_of(x);
	enum ag_dtype dt = ag_tensor_dtype(x);
	struct ag_tensor *dx;
	double *abc = malloc(3 * (size_t)d.c * sizeof(double) + 1);
	double n = (double)st->count;

	dx = abc ? ag_empty(dt, ag_tensor_ndim(x), ag_tensor_shape(x)) : NULL;
	if (!dx) {
		if (!abc)
			ag_set_error(AG_ENOMEM,
				     "SyncBatchNormBackward: out of memory");
		free(abc);
		return NULL;
	}
	for (int64_t ch = 0; ch < d.c; ch++) {
		double is = st->invstd[ch], a = vget(w, ch, 1) * is;

		abc[ch] = a;
		abc[d.c + ch] = -a * is * is * sums[d.c + ch] / n;
		abc[2 * d.c + ch] = -a * sums[ch] / n;
	}
	run_pass((struct sbn_pass){ .kind = SBN_DX,
				    .d = &d,
				    .x = ag_tensor_data(x),
				    .g = ag_tensor_data(g),
				    .y = ag_tensor_data(dx),
				    .mean = st->mean,
				    .coef = abc },
		 dt);
	free(abc);
	return dx;
}

static int sbn_backward(struct ag_ctx *ctx, struct ag_tensor *const *grad_out,
			int nout, struct ag_tensor **grad_in, int nin)
{
	const char *fn = "SyncBatchNormBackward";
	struct sbn_stats *st = ag_ctx_data(ctx);
	struct ag_tensor **saved, *g = NULL, *x = NULL;
	int iw = 1, ib = 1 + st->has_w, n, rc;
	double *sums = NULL;

	(void)nout;
	(void)nin;
	if (ag_is_grad_enabled())
		return ag_set_error(
			AG_EINVAL,
			"%s: not twice differentiable (backward with create_graph)",
			fn);
	rc = ag_ctx_saved_tensors(ctx, &saved, &n);
	if (rc)
		return rc;
	x = ag_contiguous(saved[0]);
	g = x ? ag_contiguous(grad_out[0]) : NULL;
	sums = g ? malloc(2 * (size_t)st->c * sizeof(double) + 1) : NULL;
	if (!sums) {
		rc = g ? ag_set_error(AG_ENOMEM, "%s: out of memory", fn) :
			 -ag_errcode();
		goto out;
	}
	grad_sums(g, x, st, sums);
	if (st->has_w && ag_ctx_needs_input_grad(ctx, iw) &&
	    !(grad_in[iw] = vec_of(ag_tensor_dtype(x), st->c, sums + st->c,
				   st->invstd)))
		goto fail;
	if (st->has_b && ag_ctx_needs_input_grad(ctx, ib) &&
	    !(grad_in[ib] = vec_of(ag_tensor_dtype(x), st->c, sums, NULL)))
		goto fail;
	if (!ag_ctx_needs_input_grad(ctx, 0))
		goto out;
	rc = exchange(sums, (int)(2 * st->c), st->tag);
	if (!rc && !(grad_in[0] = grad_x(g, x, saved[1], st, sums)))
		goto fail;
	goto out;
fail:
	rc = -ag_errcode();
out:
	free(sums);
	ag_tensor_put(x);
	ag_tensor_put(g);
	return rc;
}

static const struct ag_function_ops sbn_ops = {
	.name = "SyncBatchNorm",
	.forward = sbn_forward,
	.backward = sbn_backward,
};

/* ---- the API ---- */

/*
 * The synced training forward, with the caller's scope suspended: every
 * reference made here is put here.
 */
static struct ag_tensor *synced(struct ag_tensor *x, struct ag_tensor *rm,
				struct ag_tensor *rv, struct ag_tensor *w,
				struct ag_tensor *b, double momentum,
				double eps)
{
	const char *fn = "ag_dist_batch_norm";
	struct ag_tensor *in[3] = { x }, *xc = NULL, *y = NULL;
	struct sbn_stats *st = NULL;
	double *all = NULL;
	int64_t c = 0;
	int rc, nin = 1;

	rc = check_local(x, rm, rv, w, b);
	if (!rc) {
		c = ag_tensor_shape(x)[1];
		st = stats_new(c);
		all = malloc((size_t)ag_dist_world_size() *
			     (size_t)(1 + 2 * c) * sizeof(double));
		if (st && all) {
			/* the statistics are constants to autograd */
			struct ag_mode prev = ag_no_grad_enter();

			xc = ag_contiguous(x);
			ag_mode_exit(prev);
		}
		if (!xc)
			rc = st && all ? -ag_errcode() :
					 ag_set_error(AG_ENOMEM,
						      "%s: out of memory", fn);
	}
	rc = agree(fn, rc, c);
	if (!rc)
		rc = global_stats(xc, st, all, eps);
	if (rc)
		goto out;
	update_running(rm, rv, st, momentum);
	st->has_w = w;
	st->has_b = b;
	if (w)
		in[nin++] = w;
	if (b)
		in[nin++] = b;
	/* from here on, failures are this rank's: MPI is done until backward */
	ag_function_apply(&sbn_ops, in, nin, &y, 1, st);
out:
	free(st);
	free(all);
	ag_tensor_put(xc);
	return y;
}

struct ag_tensor *ag_dist_batch_norm(struct ag_tensor *x,
				     struct ag_tensor *running_mean,
				     struct ag_tensor *running_var,
				     struct ag_tensor *weight,
				     struct ag_tensor *bias, bool training,
				     double momentum, double eps)
{
	struct ag_scope *s;
	struct ag_tensor *y;

	if (!training || ag_dist_world_size() == 1)
		return ag_batch_norm(x, running_mean, running_var, weight, bias,
				     training, momentum, eps);
	s = ag_scope_suspend();
	y = synced(x, running_mean, running_var, weight, bias, momentum, eps);
	ag_scope_resume(s);
	return y ? ag_scope_adopt(y) : NULL;
}

int ag_dist_sync_batchnorm(struct ag_module *m)
{
	if (!m)
		return ag_errcode() ?
			       -ag_errcode() :
			       ag_set_error(
				       AG_EINVAL,
				       "ag_dist_sync_batchnorm: m is NULL");
	return ag_module_set_batch_norm_fn(m, ag_dist_batch_norm);
}
