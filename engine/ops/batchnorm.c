// SPDX-License-Identifier: MIT
/*
 * Batch normalisation over dim 1.  x is read as [N, C, S] (S the product
 * of the dims after C) from a dense copy when it is not dense already.
 * Every pass walks the buffer in memory order with an f64 accumulator per
 * channel: a channel's elements are S-long runs C * S apart, and for
 * [N, C] single elements C apart, which a walk per channel would take one
 * cache line each.  y = x alpha + beta per channel with alpha = invstd w
 * and beta = b - mean alpha, as torch's CPU kernel.
 *
 * Runs of BN_SPAN_MIN elements or more (images) go channel by channel
 * instead, channels in parallel: a channel's statistics, then its output,
 * while its runs are still in cache.  Each channel is summed by one thread
 * in a fixed order, so the result does not depend on the thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>
#include <ag/pool.h>

#include "ops.h"

enum { BN_INPUT, BN_WEIGHT, BN_MEAN, BN_VAR };

struct bn_node {
	struct ag_node node;
	bool training;
	double eps;
	int64_t n, c, s;
	/*
	 * input, weight, then training: the batch mean and 1 / std (f64
	 * tensors [C]); eval: the running mean and variance used.
	 */
	struct ag_saved saved[4];
};

static const char *const bn_train_saved[] = { "input", "weight", "save_mean",
					      "save_invstd" };
static const char *const bn_eval_saved[] = { "input", "weight", "running_mean",
					     "running_var" };

struct bn_dims {
	int64_t n, c, s, count; /* count = n * s, values per channel */
};

static struct bn_dims bn_dims(const struct ag_tensor *x)
{
	struct bn_dims d = { x->shape[0], x->shape[1], 1, 0 };

	d.s = ag__dims_prod(x->ndim, x->shape, 2, x->ndim);
	d.count = ag__dims_prod(x->ndim, x->shape, 0, 1) * d.s;
	return d;
}

/* Runs the statements for element i, of channel c, of a dense buffer. */
#define BN_PASS(d, ...)                                                \
	for (int64_t n_ = 0, i = 0; n_ < (d)->n; n_++)                 \
		for (int64_t c = 0; c < (d)->c; c++)                   \
			for (int64_t e_ = 0; e_ < (d)->s; e_++, i++) { \
				__VA_ARGS__                            \
			}

/* Runs of at least this many elements go to simd/'s span kernels. */
#define BN_SPAN_MIN 16

/* Elements of a parallel chunk; a channel is n * s of them. */
#define BN_CHUNK 16384

static int64_t bn_grain(const struct bn_dims *d)
{
	return d->count >= BN_CHUNK ? 1 : BN_CHUNK / d->count;
}

static int64_t run_at(const struct bn_dims *d, int64_t n, int64_t c)
{
	return (n * d->c + c) * d->s;
}

/*
 * Mean and biased variance per channel, in f64, for short runs: two plain
 * passes in memory order.
 */
static void bn_stats(const struct ag_tensor *x, const struct bn_dims *d,
		     double *mean, double *var)
{
	const float *xf = ag__data(x);
	const double *xd = ag__data(x);

	for (int64_t c = 0; c < d->c; c++)
		mean[c] = var[c] = 0;
	if (x->dtype == AG_F32) {
		BN_PASS(d, mean[c] += xf[i];)
	} else {
		BN_PASS(d, mean[c] += xd[i];)
	}
	for (int64_t c = 0; c < d->c; c++)
		mean[c] /= (double)d->count;
	if (x->dtype == AG_F32) {
		BN_PASS(d, double t = xf[i] - mean[c]; var[c] += t * t;)
	} else {
		BN_PASS(d, double t = xd[i] - mean[c]; var[c] += t * t;)
	}
	for (int64_t c = 0; c < d->c; c++)
		var[c] /= (double)d->count;
}

/*
 * The same for channel c from its runs: each run's two-pass mean and
 * variance from the kernel (the second pass reads the run from cache),
 * merged in order by Chan et al.'s update, which does not cancel.
 */
static void run_stats(const struct ag_tensor *x, const struct bn_dims *d,
		      int64_t c, double *mean, double *var)
{
	double cnt = 0, mu = 0, m2 = 0, len = (double)d->s;

	for (int64_t n = 0; n < d->n; n++) {
		int64_t o = run_at(d, n, c);
		double rm, v, delta, tot = cnt + len;

		if (x->dtype == AG_F32)
			v = ag_k_var_f32(d->s, (const float *)ag__data(x) + o,
					 1, 0, &rm);
		else
			v = ag_k_var_f64(d->s, (const double *)ag__data(x) + o,
					 1, 0, &rm);
		delta = rm - mu;
		mu += delta * len / tot;
		m2 += v * len + delta * delta * cnt * len / tot;
		cnt = tot;
	}
	*mean = mu;
	*var = m2 / cnt;
}

/* y = x a + b over channel c's runs, rounded as bn_affine: x a, then + b */
static void run_affine(const struct ag_tensor *x, struct ag_tensor *y,
		       const struct bn_dims *d, int64_t c, double a, double b)
{
	int64_t o = run_at(d, 0, c), ld = d->c * d->s;

	if (x->dtype == AG_F32)
		ag_k_bn_affine_f32(d->n, d->s, ld,
				   (const float *)ag__data(x) + o,
				   (float *)ag__data(y) + o, (float)a,
				   (float)b);
	else
		ag_k_bn_affine_f64(d->n, d->s, ld,
				   (const double *)ag__data(x) + o,
				   (double *)ag__data(y) + o, a, b);
}

/* t[i] of a 1-D tensor, any layout, NULL: dflt */
static double at1(const struct ag_tensor *t, int64_t i, double dflt)
{
	return t ? ag__get(t, i) : dflt;
}

static void set1(struct ag_tensor *t, int64_t i, double v)
{
	int64_t off = t->offset + i * t->strides[0];

	if (t->dtype == AG_F32)
		((float *)t->storage->data)[off] = (float)v;
	else
		((double *)t->storage->data)[off] = v;
}

/* y = x alpha[c] + beta[c], dense buffers */
static void bn_affine(const struct ag_tensor *x, struct ag_tensor *y,
		      const struct bn_dims *d, const double *alpha,
		      const double *beta)
{
	if (x->dtype == AG_F32) {
		const float *xs = ag__data(x);
		float *ys = ag__data(y);

		BN_PASS(d, ys[i] = xs[i] * (float)alpha[c] + (float)beta[c];)
	} else {
		const double *xs = ag__data(x);
		double *ys = ag__data(y);

		BN_PASS(d, ys[i] = xs[i] * alpha[c] + beta[c];)
	}
}

struct bn_args {
	struct ag_tensor *x, *rm, *rv, *w, *b;
	bool training;
	double momentum, eps;
};

/*
 * Channel c's alpha (ab[c]) and beta (ab[C + c]) from its statistics:
 * mean[c] and, in training, the variance in invstd[c], which becomes
 * 1 / std; the running stats are updated when training.
 */
static void bn_params(const struct bn_args *a, const struct bn_dims *d,
		      int64_t c, double *mean, double *invstd, double *ab)
{
	double m, v;

	if (a->training) {
		if (!d->count) { /* nothing to normalise or learn */
			mean[c] = invstd[c] = 0;
			return;
		}
		m = mean[c];
		v = invstd[c];
	} else {
		m = mean[c] = at1(a->rm, c, 0);
		v = at1(a->rv, c, 1);
	}
	invstd[c] = 1.0 / sqrt(v + a->eps);
	ab[c] = invstd[c] * at1(a->w, c, 1);
	ab[d->c + c] = at1(a->b, c, 0) - m * ab[c];
	if (a->training && a->rm) {
		double mo = a->momentum;

		set1(a->rm, c, (1 - mo) * at1(a->rm, c, 0) + mo * m);
		set1(a->rv, c,
		     (1 - mo) * at1(a->rv, c, 0) +
			     mo * v * (double)d->count /
				     (double)(d->count - 1));
	}
}

/* What the channels of a forward by runs share. */
struct bn_fwd_run {
	const struct bn_args *a;
	const struct bn_dims *d;
	const struct ag_tensor *x;
	struct ag_tensor *y;
	double *mean, *invstd, *ab;
};

static void bn_fwd_chans(int64_t c0, int64_t c1, void *arg)
{
	struct bn_fwd_run *r = arg;
	const struct bn_dims *d = r->d;

	for (int64_t c = c0; c < c1; c++) {
		if (r->a->training)
			run_stats(r->x, d, c, &r->mean[c], &r->invstd[c]);
		bn_params(r->a, d, c, r->mean, r->invstd, r->ab);
		run_affine(r->x, r->y, d, c, r->ab[c], r->ab[d->c + c]);
	}
}

/*
 * The plain forward.  mean and invstd [C] (f64) get the statistics used;
 * the running stats are updated when training.
 */
static struct ag_tensor *bn_fwd(const struct bn_args *a, struct ag_tensor *xc,
				double *mean, double *invstd)
{
	struct bn_dims d = bn_dims(xc);
	struct ag_tensor *y = ag__tensor_like(xc);
	double *ab = ag__malloc((size_t)(2 * d.c + 1) * sizeof(double));

	if (!y || !ab) {
		if (!ab)
			ag__err(AG_ENOMEM, "ag_batch_norm: out of memory");
		ag__mfree(ab);
		ag_tensor_put(y);
		return NULL;
	}
	if (d.count && d.s >= BN_SPAN_MIN) {
		struct bn_fwd_run r = { a, &d, xc, y, mean, invstd, ab };

		ag_parallel_for(d.c, bn_grain(&d), bn_fwd_chans, &r);
	} else {
		/* invstd holds the variance until it is final */
		if (a->training && d.count)
			bn_stats(xc, &d, mean, invstd);
		for (int64_t c = 0; c < d.c; c++)
			bn_params(a, &d, c, mean, invstd, ab);
		if (d.count)
			bn_affine(xc, y, &d, ab, ab + d.c);
	}
	ag__mfree(ab);
	if (a->training && a->rm && d.count) {
		ag__storage_bump(a->rm->storage, "ag_batch_norm");
		ag__storage_bump(a->rv->storage, "ag_batch_norm");
	}
	return y;
}

/* ---- backward ---- */

static struct ag_tensor *dense(struct ag_tensor *t)
{
	return ag_tensor_is_contiguous(t) ? ag_tensor_get(t) :
					    ag__contiguous_copy(t);
}

static struct ag_tensor *vec_new(enum ag_dtype dt, int64_t c)
{
	return ag__tensor_new("ag_batch_norm", dt, 1, &c);
}

/* sg[c] = sum(g), sgx[c] = sum(g (x - m[c])) per channel, in f64 */
static void bn_grad_sums(const struct ag_tensor *g, const struct ag_tensor *x,
			 const struct bn_dims *d, const double *m, double *sg,
			 double *sgx)
{
	for (int64_t c = 0; c < d->c; c++)
		sg[c] = sgx[c] = 0;
	if (g->dtype == AG_F32) {
		const float *gs = ag__data(g), *xs = ag__data(x);

		BN_PASS(d, sg[c] += gs[i];
			sgx[c] += (double)gs[i] * ((double)xs[i] - m[c]);)
	} else {
		const double *gs = ag__data(g), *xs = ag__data(x);

		BN_PASS(d, sg[c] += gs[i]; sgx[c] += gs[i] * (xs[i] - m[c]);)
	}
}

/* The same for channel c from its runs (the kernel's order of additions). */
static void run_grad_sums(const struct ag_tensor *g, const struct ag_tensor *x,
			  const struct bn_dims *d, int64_t c, double m,
			  double *sg, double *sgx)
{
	int64_t o = run_at(d, 0, c), ld = d->c * d->s;

	if (g->dtype == AG_F32)
		ag_k_bn_sums_f32(d->n, d->s, ld, (const float *)ag__data(g) + o,
				 (const float *)ag__data(x) + o, m, sg, sgx);
	else
		ag_k_bn_sums_f64(d->n, d->s, ld,
				 (const double *)ag__data(g) + o,
				 (const double *)ag__data(x) + o, m, sg, sgx);
}

/* dx = g A[c] + (x - m[c]) B[c] + C[c] */
static void bn_dx(const struct ag_tensor *g, const struct ag_tensor *x,
		  struct ag_tensor *dx, const struct bn_dims *d,
		  const double *m, const double *A, const double *B,
		  const double *C)
{
	if (g->dtype == AG_F32) {
		const float *gs = ag__data(g), *xs = ag__data(x);
		float *ys = ag__data(dx);

		BN_PASS(d,
			ys[i] = (float)(gs[i] * A[c] +
					((double)xs[i] - m[c]) * B[c] + C[c]);)
	} else {
		const double *gs = ag__data(g), *xs = ag__data(x);
		double *ys = ag__data(dx);

		BN_PASS(d, ys[i] = gs[i] * A[c] + (xs[i] - m[c]) * B[c] + C[c];)
	}
}

/* dx = g A + (x - m) B + C over channel c's runs, in f64 as bn_dx */
static void run_dx(const struct ag_tensor *g, const struct ag_tensor *x,
		   struct ag_tensor *dx, const struct bn_dims *d, int64_t c,
		   double m, double A, double B, double C)
{
	int64_t o = run_at(d, 0, c), ld = d->c * d->s;

	if (g->dtype == AG_F32)
		ag_k_bn_dx_f32(d->n, d->s, ld, (const float *)ag__data(g) + o,
			       (const float *)ag__data(x) + o,
			       (float *)ag__data(dx) + o, m, A, B, C);
	else
		ag_k_bn_dx_f64(d->n, d->s, ld, (const double *)ag__data(g) + o,
			       (const double *)ag__data(x) + o,
			       (double *)ag__data(dx) + o, m, A, B, C);
}

/* What the plain backward's channels share; m, is, sg, sgx [C] in f64. */
struct bn_bwd {
	struct bn_node *b;
	const struct bn_dims *d;
	const struct ag_tensor *g, *x, *w;
	struct ag_tensor **out;
	double *m, *is, *sg, *sgx, *A, *B, *C;
};

/* dw[c], db[c] and channel c's coefficients of dx, from its sums */
static void bn_chan_grads(const struct bn_bwd *r, int64_t c)
{
	int64_t count = r->d->count;
	double *A = r->A, *B = r->B, *C = r->C, *is = r->is;

	if (r->out[1])
		set1(r->out[1], c, r->sgx[c] * is[c]);
	if (r->out[2])
		set1(r->out[2], c, r->sg[c]);
	A[c] = at1(r->w, c, 1) * is[c];
	B[c] = C[c] = 0;
	if (r->b->training && count) {
		B[c] = -A[c] * is[c] * is[c] * r->sgx[c] / (double)count;
		C[c] = -A[c] * r->sg[c] / (double)count;
	}
}

static void bn_bwd_chans(int64_t c0, int64_t c1, void *arg)
{
	struct bn_bwd *r = arg;
	const struct bn_dims *d = r->d;

	for (int64_t c = c0; c < c1; c++) {
		run_grad_sums(r->g, r->x, d, c, r->m[c], &r->sg[c], &r->sgx[c]);
		bn_chan_grads(r, c);
		if (r->out[0])
			run_dx(r->g, r->x, r->out[0], d, c, r->m[c], r->A[c],
			       r->B[c], r->C[c]);
	}
}

/*
 * One pass for the sums, one for dx: db = sum(g),
 * dw = sum(g xhat) with xhat = (x - mean) invstd, and
 *   training: dx = w invstd (g - db / count - xhat dw / count)
 *   eval:     dx = w invstd g
 */
static int bn_plain_grads(struct bn_node *b, struct ag_tensor *g,
			  struct ag_tensor **out)
{
	struct ag_node *n = &b->node;
	struct ag_tensor *x = ag__unpack(n, BN_INPUT), *w = NULL;
	struct ag_tensor *sm = NULL, *si = NULL, *xc = NULL, *gc = NULL;
	double *m = NULL, *is, *sg, *sgx, *A, *B, *C;
	struct bn_bwd r;
	struct bn_dims d;
	int rc = 0;

	if (!x)
		return -ag_errcode();
	d = bn_dims(x);
	w = ag__unpack(n, BN_WEIGHT); /* NULL: none */
	sm = ag__unpack(n, BN_MEAN);
	si = sm ? ag__unpack(n, BN_VAR) : NULL;
	xc = si ? dense(x) : NULL;
	gc = xc ? dense(g) : NULL;
	if (!gc)
		goto fail;
	m = ag__malloc((size_t)(7 * d.c + 1) * sizeof(double));
	if (!m) {
		ag__err(AG_ENOMEM, "BatchNormBackward: out of memory");
		goto fail;
	}
	is = m + d.c;
	sg = is + d.c;
	sgx = sg + d.c;
	A = sgx + d.c;
	B = A + d.c;
	C = B + d.c;
	if (n->next[0].node && !(out[0] = ag__tensor_like(xc)))
		goto fail;
	if (n->next[1].node && !(out[1] = vec_new(g->dtype, d.c)))
		goto fail;
	if (n->next[2].node && !(out[2] = vec_new(g->dtype, d.c)))
		goto fail;
	for (int64_t c = 0; c < d.c; c++) {
		m[c] = ag__get(sm, c);
		is[c] = ag__get(si, c);
		if (!b->training)
			is[c] = 1.0 / sqrt(is[c] + b->eps);
	}
	r = (struct bn_bwd){ b, &d, gc, xc, w, out, m, is, sg, sgx, A, B, C };
	if (d.count && d.s >= BN_SPAN_MIN) {
		ag_parallel_for(d.c, bn_grain(&d), bn_bwd_chans, &r);
		goto done;
	}
	bn_grad_sums(gc, xc, &d, m, sg, sgx);
	for (int64_t c = 0; c < d.c; c++)
		bn_chan_grads(&r, c);
	if (out[0])
		bn_dx(gc, xc, out[0], &d, m, A, B, C);
	goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	ag__mfree(m);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(sm);
	ag_tensor_put(si);
	ag_tensor_put(xc);
	ag_tensor_put(gc);
	return rc;
}

/* Sum of t [N, C, S] over dims 0 and 2, kept: [1, C, 1]. */
static struct ag_tensor *sum02(struct ag_tensor *t)
{
	struct ag_tensor *a = ag_sum_dim(t, 2, true), *r;

	r = a ? ag_sum_dim(a, 0, true) : NULL;
	ag_tensor_put(a);
	return r;
}

/* The same for [C], or its reshape: [1, C, 1]. */
static struct ag_tensor *as_c11(struct ag_tensor *t, int64_t c)
{
	int64_t s[3] = { 1, c, 1 };

	return ag_reshape(t, 3, s);
}

/*
 * dx = w invstd (g - db / count - xhat dw / count) in training, else
 * w invstd g; g3, xhat, invstd, db and dw as [N, C, S] or [1, C, 1].
 */
static struct ag_tensor *bn_graph_dx(struct bn_node *b, struct ag_tensor *g,
				     struct ag_tensor *g3,
				     struct ag_tensor *xhat,
				     struct ag_tensor *is, struct ag_tensor *w,
				     struct ag_tensor *db, struct ag_tensor *dw)
{
	double inv_count = 1.0 / (double)(b->n * b->s);
	struct ag_tensor *u[8] = { NULL }, *a = is, *d = g3, *r = NULL;

	if (w) {
		u[0] = as_c11(w, b->c);
		a = u[1] = u[0] ? ag_mul(u[0], is) : NULL;
	}
	if (b->training) {
		u[2] = ag_mul_scalar(db, inv_count);
		u[3] = u[2] ? ag_sub(g3, u[2]) : NULL;
		u[4] = u[3] ? ag_mul_scalar(dw, inv_count) : NULL;
		u[5] = u[4] ? ag_mul(xhat, u[4]) : NULL;
		d = u[6] = u[5] ? ag_sub(u[3], u[5]) : NULL;
	}
	u[7] = a && d ? ag_mul(d, a) : NULL;
	r = u[7] ? ag_reshape(u[7], g->ndim, g->shape) : NULL;
	for (int i = 0; i < 8; i++)
		ag_tensor_put(u[i]);
	return r;
}

/*
 * Under create_graph: the same formulas from public ops, the batch
 * statistics recomputed from x so that they are differentiated too.
 */
static int bn_graph_grads(struct bn_node *b, struct ag_tensor *g,
			  struct ag_tensor **out)
{
	struct ag_node *n = &b->node;
	struct ag_tensor *t[16] = { NULL };
	struct ag_tensor *x, *w, *x3, *g3, *xm, *is, *xhat, *db, *dw;
	int64_t s3[3] = { b->n, b->c, b->s }, cshape[1] = { b->c };
	double inv_count = 1.0 / (double)(b->n * b->s);
	int k = 0, rc = 0;

	x = t[k++] = ag__unpack(n, BN_INPUT);
	w = t[k++] = ag__unpack(n, BN_WEIGHT);
	if (!x)
		goto fail;
	x3 = t[k++] = ag_reshape(x, 3, s3);
	g3 = t[k++] = ag_reshape(g, 3, s3);
	if (!x3 || !g3)
		goto fail;
	if (b->training) {
		struct ag_tensor *mu, *sq, *var;

		mu = t[k++] = sum02(x3);
		mu = t[k++] = mu ? ag_mul_scalar(mu, inv_count) : NULL;
		xm = t[k++] = mu ? ag_sub(x3, mu) : NULL;
		sq = t[k++] = xm ? ag_square(xm) : NULL;
		var = t[k++] = sq ? sum02(sq) : NULL;
		var = t[k++] = var ? ag_mul_scalar(var, inv_count) : NULL;
		is = t[k++] = var ? ag_add_scalar(var, b->eps) : NULL;
	} else {
		struct ag_tensor *rm = ag__unpack(n, BN_MEAN);
		struct ag_tensor *rv = rm ? ag__unpack(n, BN_VAR) : NULL;
		struct ag_tensor *rm3 = rv ? as_c11(rm, b->c) : NULL;
		struct ag_tensor *rv3 = rm3 ? as_c11(rv, b->c) : NULL;

		xm = t[k++] = rv3 ? ag_sub(x3, rm3) : NULL;
		is = t[k++] = xm ? ag_add_scalar(rv3, b->eps) : NULL;
		ag_tensor_put(rm);
		ag_tensor_put(rv);
		ag_tensor_put(rm3);
		ag_tensor_put(rv3);
	}
	is = t[k++] = is ? ag_rsqrt(is) : NULL;
	xhat = t[k++] = is ? ag_mul(xm, is) : NULL;
	if (!xhat)
		goto fail;
	db = sum02(g3);
	if (db) {
		struct ag_tensor *gx = ag_mul(g3, xhat);

		dw = gx ? sum02(gx) : NULL;
		ag_tensor_put(gx);
	} else {
		dw = NULL;
	}
	if (!db || !dw) {
		ag_tensor_put(db);
		ag_tensor_put(dw);
		goto fail;
	}
	if (n->next[1].node)
		out[1] = ag_reshape(dw, 1, cshape);
	if (n->next[2].node)
		out[2] = ag_reshape(db, 1, cshape);
	if (n->next[0].node)
		out[0] = bn_graph_dx(b, g, g3, xhat, is, w, db, dw);
	ag_tensor_put(db);
	ag_tensor_put(dw);
	if ((n->next[0].node && !out[0]) || (n->next[1].node && !out[1]) ||
	    (n->next[2].node && !out[2]))
		goto fail;
	goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	for (int i = 0; i < k; i++)
		ag_tensor_put(t[i]);
	return rc;
}

static int bn_apply(struct ag_node *n, struct ag_tensor **grads,
		    struct ag_tensor **out)
{
	struct bn_node *b = ag_container_of(n, struct bn_node, node);

	if (!grads[0])
		return 0;
	if (ag__mode.grad)
		return bn_graph_grads(b, grads[0], out);
	return bn_plain_grads(b, grads[0], out);
}

static const struct ag_node_ops bn_train_ops = {
	.name = "BatchNormBackward",
	.apply = bn_apply,
	.saved_names = bn_train_saved,
};

static const struct ag_node_ops bn_eval_ops = {
	.name = "BatchNormBackward",
	.apply = bn_apply,
	.saved_names = bn_eval_saved,
};

/* ---- checks and the op ---- */

static int check_vec(const char *what, struct ag_tensor *v,
		     const struct ag_tensor *x, bool written)
{
	const char *fn = "ag_batch_norm";
	int64_t c = x->shape[1];

	if (!v)
		return 0;
	if (v->dtype != x->dtype)
		return ag__err(AG_EDTYPE,
			       "%s: %s has dtype %s but the input has %s", fn,
			       what, ag_dtype_name(v->dtype),
			       ag_dtype_name(x->dtype));
	if (v->ndim != 1 || v->shape[0] != c)
		return ag__err(AG_ESHAPE,
			       "%s: %s should contain %ld elements not %ld", fn,
			       what, (long)c, (long)v->numel);
	if (written && c > 1 && v->strides[0] == 0)
		return ag__err(
			AG_EINVAL,
			"%s: %s is an expanded tensor whose elements share memory; it cannot be updated in place",
			fn, what);
	if (written && v->inference && !ag__mode.inference)
		return ag__err(
			AG_EINFERENCE,
			"%s: %s is an inference tensor; it cannot be updated in place outside inference mode",
			fn, what);
	return 0;
}

static int bn_check(const struct bn_args *a)
{
	const char *fn = "ag_batch_norm";
	struct ag_tensor *x = a->x;
	struct ag__shape_str s;

	if (ag__check_float(fn, x))
		return -ag_errcode();
	if (x->ndim < 2)
		return ag__err(
			AG_ESHAPE,
			"%s: expected an input of 2 or more dims [N, C, ...], got %s",
			fn, ag__shape_of(&s, x));
	if (!a->rm != !a->rv)
		return ag__err(
			AG_EINVAL,
			"%s: running_mean and running_var must be given together",
			fn);
	if (!a->training && !a->rm)
		return ag__err(
			AG_EINVAL,
			"%s: running_mean must be defined in evaluation mode",
			fn);
	if (check_vec("running_mean", a->rm, x, a->training) ||
	    check_vec("running_var", a->rv, x, a->training) ||
	    check_vec("weight", a->w, x, false) ||
	    check_vec("bias", a->b, x, false))
		return -ag_errcode();
	if (a->training && bn_dims(x).count == 1)
		return ag__err(
			AG_EINVAL,
			"%s: Expected more than 1 value per channel when training, got input size %s",
			fn, ag__shape_of(&s, x));
	return 0;
}

/* Records the node; saves x, weight and the statistics backward reads. */
static struct ag_tensor *bn_record(const struct bn_args *a, struct ag_tensor *y,
				   struct ag_tensor *mean,
				   struct ag_tensor *invstd)
{
	struct ag_tensor *in[3] = { a->x, a->w, a->b };
	struct bn_dims d = bn_dims(a->x);
	struct bn_node *b;

	b = (struct bn_node *)ag__node_alloc(a->training ? &bn_train_ops :
							   &bn_eval_ops,
					     sizeof(*b), 0, 1, 3, NULL, 0);
	if (!b)
		goto fail;
	b->node.saved = b->saved;
	b->node.num_saved = 4;
	b->training = a->training;
	b->eps = a->eps;
	b->n = d.n;
	b->c = d.c;
	b->s = d.s;
	if (ag__save(&b->node, BN_INPUT, a->x, false, 0) ||
	    ag__save(&b->node, BN_WEIGHT, a->w, false, 0) ||
	    ag__save(&b->node, BN_MEAN, a->training ? mean : a->rm, false, 0) ||
	    ag__save(&b->node, BN_VAR, a->training ? invstd : a->rv, false,
		     0)) {
		ag__node_put(&b->node);
		goto fail;
	}
	return ag__finish(y, &b->node, in, 3, "ag_batch_norm");
fail:
	ag_tensor_put(y);
	return NULL;
}

struct ag_tensor *ag_batch_norm(struct ag_tensor *x,
				struct ag_tensor *running_mean,
				struct ag_tensor *running_var,
				struct ag_tensor *weight,
				struct ag_tensor *bias, bool training,
				double momentum, double eps)
{
	struct bn_args a = { x,	   running_mean, running_var, weight,
			     bias, training,	 momentum,    eps };
	struct ag_tensor *in[3] = { x, weight, bias };
	struct ag_tensor *xc = NULL, *mean = NULL, *invstd = NULL, *y = NULL;

	if (!x)
		return ag__null_arg("ag_batch_norm", "x");
	if (bn_check(&a))
		return NULL;
	xc = ag_tensor_is_contiguous(x) ? ag_tensor_get(x) :
					  ag__contiguous_copy(x);
	mean = xc ? vec_new(AG_F64, x->shape[1]) : NULL;
	invstd = mean ? vec_new(AG_F64, x->shape[1]) : NULL;
	y = invstd ? bn_fwd(&a, xc, ag__data(mean), ag__data(invstd)) : NULL;
	ag_tensor_put(xc);
	if (y && ag__should_record(in, 3))
		y = bn_record(&a, y, mean, invstd);
	else
		y = ag__scope_add(y);
	ag_tensor_put(mean);
	ag_tensor_put(invstd);
	return y;
}
