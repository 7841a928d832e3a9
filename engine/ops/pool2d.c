// SPDX-License-Identifier: MIT
/*
 * 2-D pooling as torch's max_pool2d, avg_pool2d and adaptive_avg_pool2d
 * (ceil_mode false, count_include_pad true, dilation 1).
 *
 * Every backward here is linear in the gradient, so each op's derivative is
 * a plain op of this file and double backward needs nothing more:
 *
 *   max pool       y = gather(x, idx)    backward: scatter(g, idx)
 *   scatter        dx = scatter(g, idx)  backward: gather(gg, idx)
 *   avg pools      y = P x               backward: P^T g
 *   P^T            dx = P^T g            backward: P gg
 *
 * idx holds, per output element, the flat index (row * W + column) of the
 * input element chosen in its plane, as torch's indices.  Planes (one per
 * batch and channel) run in parallel; a plane's gradient is summed by one
 * thread in a fixed order.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <ag/pool.h>

#include "ops.h"

enum pool_kind { POOL_MAX, POOL_AVG, POOL_ADAPTIVE };

/* What an op computes: the pool itself, or one of its derivatives. */
enum pool_op {
	P_FWD, /* y from x; for max also idx */
	P_BWD, /* avg pools: dx = P^T g */
	P_GATHER, /* max: y-shaped from x-shaped by idx */
	P_SCATTER, /* max: x-shaped, summing a y-shaped g at idx */
};

struct pool_geom {
	enum pool_kind kind;
	bool batched; /* [N, C, H, W], else [C, H, W] and n is 1 */
	int64_t n, c, h, w, oh, ow;
	int64_t kh, kw, sh, sw, ph, pw; /* max and avg */
};

struct pool_node {
	struct ag_node node;
	struct pool_geom pg;
	enum pool_op op;
	struct ag_saved saved[1]; /* max: indices */
};

/* ---- windows ---- */

/*
 * Window i along dim 0 (rows) or 1 (columns): inputs [*s, *e), and its
 * span for the divisor (avg pool counts the padding in).
 */
static inline __attribute__((always_inline)) void
window(const struct pool_geom *pg, int dim, int64_t i, int64_t *s, int64_t *e,
       int64_t *span)
{
	int64_t in = dim ? pg->w : pg->h, out = dim ? pg->ow : pg->oh;
	int64_t k = dim ? pg->kw : pg->kh, st = dim ? pg->sw : pg->sh;
	int64_t p = dim ? pg->pw : pg->ph;

	if (pg->kind == POOL_ADAPTIVE) {
		/* i * in and (i + 1) * in < out * in, checked at setup */
		*s = i * in / out;
		*e = ((i + 1) * in + out - 1) / out;
		*span = *e - *s;
		return;
	}
	*s = i * st - p;
	*e = *s + k < in + p ? *s + k : in + p;
	*span = *e - *s;
	*s = *s > 0 ? *s : 0;
	*e = *e < in ? *e : in;
}

/* ---- kernels ---- */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE double ld(const void *p, int64_t i, const bool f32)
{
	return f32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

ALWAYS_INLINE void st(void *p, int64_t i, double v, const bool f32)
{
	if (f32)
		((float *)p)[i] = (float)v;
	else
		((double *)p)[i] = v;
}

/* p[i] += v in the element type, as torch sums gradients */
ALWAYS_INLINE void acc(void *p, int64_t i, double v, const bool f32)
{
	if (f32)
		((float *)p)[i] += (float)v;
	else
		((double *)p)[i] += v;
}

/* What the chunks of one op share. */
struct pool_run {
	const struct pool_geom *pg;
	enum pool_op op;
	const void *src; /* x-shaped (strided) for P_FWD, P_GATHER; else dense */
	int64_t ss[4]; /* src's strides when x-shaped, 0 for a missing batch */
	void *dst; /* dense */
	int64_t *idx; /* dense, y's shape */
};

/* Offset of element (0, 0) of plane p of the x-shaped source. */
static int64_t src_plane(const struct pool_run *r, int64_t p)
{
	return (p / r->pg->c) * r->ss[0] + (p % r->pg->c) * r->ss[1];
}

/*
 * The max of a window, as torch: the first largest, or the last NaN (NaN
 * is the max); *at is its flat index in the plane.
 */
ALWAYS_INLINE double win_max(const struct pool_run *r, const void *src,
			     int64_t hs, int64_t he, int64_t ws, int64_t we,
			     int64_t *at, const bool f32)
{
	int64_t s2 = r->ss[2], s3 = r->ss[3], w = r->pg->w;
	double m = -INFINITY;

	*at = hs * w + ws;
	for (int64_t ih = hs; ih < he; ih++) {
		for (int64_t iw = ws; iw < we; iw++) {
			double v = ld(src, ih * s2 + iw * s3, f32);

			if (v > m || isnan(v)) {
				m = v;
				*at = ih * w + iw;
			}
		}
	}
	return m;
}

static bool is_max2(const struct pool_geom *pg)
{
	return pg->kind == POOL_MAX && pg->kh == 2 && pg->kw == 2 &&
	       pg->sh == 2 && pg->sw == 2 && pg->ph == 0 && pg->pw == 0;
}

/*
 * 2x2 windows at stride 2 inside the input, rows dense (the common case):
 * the whole plane in one simd kernel.
 */
ALWAYS_INLINE void max2_plane(const struct pool_run *r, const void *src,
			      int64_t o, const bool f32)
{
	const struct pool_geom *pg = r->pg;
	/* no indices when nothing will differentiate (inference) */
	int64_t *idx = r->idx ? r->idx + o : NULL;

	if (f32)
		ag_k_maxpool2_f32(pg->oh, pg->ow, src, r->ss[2], pg->w,
				  (float *)r->dst + o, idx);
	else
		ag_k_maxpool2_f64(pg->oh, pg->ow, src, r->ss[2], pg->w,
				  (double *)r->dst + o, idx);
}

ALWAYS_INLINE void fwd_plane(const struct pool_run *r, int64_t p,
			     const bool f32)
{
	const struct pool_geom *pg = r->pg;
	int64_t o = p * pg->oh * pg->ow;
	const void *src =
		(const char *)r->src + src_plane(r, p) * (f32 ? 4 : 8);

	if (is_max2(pg) && r->ss[3] == 1) {
		max2_plane(r, src, o, f32);
		return;
	}
	for (int64_t oy = 0; oy < pg->oh; oy++) {
		int64_t hs, he, hspan;

		window(pg, 0, oy, &hs, &he, &hspan);
		for (int64_t ox = 0; ox < pg->ow; ox++, o++) {
			int64_t ws, we, wspan, at;
			double s = 0;

			window(pg, 1, ox, &ws, &we, &wspan);
			if (pg->kind == POOL_MAX) {
				st(r->dst, o,
				   win_max(r, src, hs, he, ws, we, &at, f32),
				   f32);
				if (r->idx)
					r->idx[o] = at;
				continue;
			}
			for (int64_t ih = hs; ih < he; ih++)
				for (int64_t iw = ws; iw < we; iw++)
					s += ld(src,
						ih * r->ss[2] + iw * r->ss[3],
						f32);
			st(r->dst, o, s / (double)(hspan * wspan), f32);
		}
	}
}

/* dx = P^T g: each gradient spread evenly over its window. */
ALWAYS_INLINE void bwd_plane(const struct pool_run *r, int64_t p,
			     const bool f32)
{
	const struct pool_geom *pg = r->pg;
	int64_t hw = pg->h * pg->w, o = p * pg->oh * pg->ow;
	void *dx = (char *)r->dst + p * hw * (f32 ? 4 : 8);

	memset(dx, 0, (size_t)hw * (f32 ? 4 : 8));
	for (int64_t oy = 0; oy < pg->oh; oy++) {
		int64_t hs, he, hspan;

		window(pg, 0, oy, &hs, &he, &hspan);
		for (int64_t ox = 0; ox < pg->ow; ox++, o++) {
			int64_t ws, we, wspan;
			double v;

			window(pg, 1, ox, &ws, &we, &wspan);
			v = ld(r->src, o, f32) / (double)(hspan * wspan);
			if (f32) /* torch divides in the element type */
				v = (float)v;
			for (int64_t ih = hs; ih < he; ih++)
				for (int64_t iw = ws; iw < we; iw++)
					acc(dx, ih * pg->w + iw, v, f32);
		}
	}
}

ALWAYS_INLINE void gather_plane(const struct pool_run *r, int64_t p,
				const bool f32)
{
	const struct pool_geom *pg = r->pg;
	int64_t l = pg->oh * pg->ow;
	const void *src =
		(const char *)r->src + src_plane(r, p) * (f32 ? 4 : 8);

	for (int64_t o = p * l; o < (p + 1) * l; o++) {
		int64_t at = r->idx[o];

		st(r->dst, o,
		   ld(src, at / pg->w * r->ss[2] + at % pg->w * r->ss[3], f32),
		   f32);
	}
}

ALWAYS_INLINE void scatter_plane(const struct pool_run *r, int64_t p,
				 const bool f32)
{
	const struct pool_geom *pg = r->pg;
	int64_t l = pg->oh * pg->ow, hw = pg->h * pg->w;
	void *dx = (char *)r->dst + p * hw * (f32 ? 4 : 8);

	/* 2x2 windows at stride 2 tile the plane: each element written once,
	 * no pass to zero it first */
	if (is_max2(pg)) {
		if (f32)
			ag_k_maxpool2_bwd_f32(pg->h, pg->w,
					      (const float *)r->src + p * l,
					      r->idx + p * l, dx);
		else
			ag_k_maxpool2_bwd_f64(pg->h, pg->w,
					      (const double *)r->src + p * l,
					      r->idx + p * l, dx);
		return;
	}
	memset(dx, 0, (size_t)hw * (f32 ? 4 : 8));
	for (int64_t o = p * l; o < (p + 1) * l; o++)
		acc(dx, r->idx[o], ld(r->src, o, f32), f32);
}

ALWAYS_INLINE void planes(const struct pool_run *r, int64_t b, int64_t e,
			  const bool f32)
{
	for (int64_t p = b; p < e; p++) {
		switch (r->op) {
		case P_FWD:
			fwd_plane(r, p, f32);
			break;
		case P_BWD:
			bwd_plane(r, p, f32);
			break;
		case P_GATHER:
			gather_plane(r, p, f32);
			break;
		case P_SCATTER:
			scatter_plane(r, p, f32);
			break;
		}
	}
}

static void planes_f32(int64_t b, int64_t e, void *arg)
{
	planes(arg, b, e, true);
}

static void planes_f64(int64_t b, int64_t e, void *arg)
{
	planes(arg, b, e, false);
}

/* ---- plain (unrecorded) ops ---- */

static struct ag_tensor *new_plane_tensor(const char *fn,
					  const struct pool_geom *pg,
					  enum ag_dtype dt, bool out)
{
	int64_t shape[4] = { pg->n, pg->c, out ? pg->oh : pg->h,
			     out ? pg->ow : pg->w };

	if (pg->batched)
		return ag__tensor_new(fn, dt, 4, shape);
	return ag__tensor_new(fn, dt, 3, shape + 1);
}

static const char *pool_fn(const struct pool_geom *pg)
{
	static const char *const names[] = {
		[POOL_MAX] = "ag_max_pool2d",
		[POOL_AVG] = "ag_avg_pool2d",
		[POOL_ADAPTIVE] = "ag_adaptive_avg_pool2d",
	};

	return names[pg->kind];
}

/*
 * Runs op over every plane.  src is x-shaped for P_FWD and P_GATHER, else
 * y-shaped; *idxp is made by a max pool's P_FWD (none if idxp is NULL),
 * read by the others.
 */
static struct ag_tensor *pool_plain(enum pool_op op, const struct pool_geom *pg,
				    struct ag_tensor *src,
				    struct ag_tensor **idxp)
{
	bool x_in = op == P_FWD || op == P_GATHER;
	struct ag_tensor *s = NULL, *out, *idx = NULL;
	int64_t per, work, grain;
	struct pool_run r = { .pg = pg, .op = op };
	int lead = src->ndim == 4 ? 0 : 1;

	out = new_plane_tensor(pool_fn(pg), pg, src->dtype, x_in);
	if (!out)
		return NULL;
	if (op == P_FWD && pg->kind == POOL_MAX && idxp) {
		idx = new_plane_tensor(pool_fn(pg), pg, AG_I64, true);
		if (!idx)
			goto fail;
		*idxp = idx;
	}
	if (x_in) { /* read in place, any strides */
		r.src = ag__data(src);
		for (int d = 0; d < src->ndim; d++)
			r.ss[d + lead] = src->strides[d];
	} else {
		s = ag_tensor_is_contiguous(src) ? ag_tensor_get(src) :
						   ag__contiguous_copy(src);
		if (!s)
			goto fail;
		r.src = ag__data(s);
	}
	r.dst = ag__data(out);
	if (idxp && *idxp)
		r.idx = ag__data(*idxp);
	/* about 32k elements touched per chunk */
	per = pg->oh * pg->ow + pg->h * pg->w;
	work = per > 0 ? per : 1;
	grain = work >= 32768 ? 1 : 32768 / work;
	ag_parallel_for(pg->n * pg->c, grain,
			src->dtype == AG_F32 ? planes_f32 : planes_f64, &r);
	ag_tensor_put(s);
	return out;
fail:
	if (idx) {
		ag_tensor_put(idx);
		*idxp = NULL;
	}
	ag_tensor_put(out);
	return NULL;
}

/* ---- recording ---- */

static int pool_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out);

static const char *const idx_saved[] = { "indices" };

/* [kind][op]: the node recorded for op, named after the op it reverses */
static const struct ag_node_ops pool_ops[3][4] = {
	[POOL_MAX] = {
		[P_FWD] = {
			.name = "MaxPool2DWithIndicesBackward",
			.apply = pool_apply,
			.saved_names = idx_saved,
		},
		[P_SCATTER] = {
			.name = "MaxPool2DWithIndicesBackwardBackward",
			.apply = pool_apply,
			.saved_names = idx_saved,
		},
		[P_GATHER] = {
			.name = "MaxPool2DGatherBackward",
			.apply = pool_apply,
			.saved_names = idx_saved,
		},
	},
	[POOL_AVG] = {
		[P_FWD] = {
			.name = "AvgPool2DBackward",
			.apply = pool_apply,
		},
		[P_BWD] = {
			.name = "AvgPool2DBackwardBackward",
			.apply = pool_apply,
		},
	},
	[POOL_ADAPTIVE] = {
		[P_FWD] = {
			.name = "AdaptiveAvgPool2DBackward",
			.apply = pool_apply,
		},
		[P_BWD] = {
			.name = "AdaptiveAvgPool2DBackwardBackward",
			.apply = pool_apply,
		},
	},
};

/* op on a, recorded when a requires grad; idx for the max pool's ops. */
static struct ag_tensor *pool_op(enum pool_op op, const struct pool_geom *pg,
				 struct ag_tensor *a, struct ag_tensor *idx)
{
	struct ag_tensor *own = NULL, *out;
	struct pool_node *pn;
	bool max = pg->kind == POOL_MAX, rec = ag__should_record(&a, 1);

	/* a max pool's forward makes its indices only for a backward */
	out = pool_plain(op, pg, a, op != P_FWD ? &idx : rec ? &own : NULL);
	if (!out || !rec) {
		ag_tensor_put(own);
		return ag__scope_add(out);
	}
	pn = (struct pool_node *)ag__node_alloc(&pool_ops[pg->kind][op],
						sizeof(*pn), 0, 1, 1, NULL, 0);
	if (!pn)
		goto fail;
	pn->pg = *pg;
	pn->op = op;
	if (max) {
		pn->node.saved = pn->saved;
		pn->node.num_saved = 1;
		if (ag__save(&pn->node, 0, own ? own : idx, false, 0))
			goto fail;
	}
	ag_tensor_put(own);
	return ag__finish(out, &pn->node, &a, 1, pool_fn(pg));
fail:
	if (pn)
		ag__node_put(&pn->node);
	ag_tensor_put(own);
	ag_tensor_put(out);
	return NULL;
}

static int pool_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out)
{
	struct pool_node *pn = ag_container_of(n, struct pool_node, node);
	struct ag_tensor *idx = NULL;
	enum pool_op next;

	if (!grads[0] || !n->next[0].node)
		return 0;
	if (pn->pg.kind == POOL_MAX) {
		idx = ag__unpack(n, 0);
		if (!idx)
			return -ag_errcode();
		next = pn->op == P_SCATTER ? P_GATHER : P_SCATTER;
	} else {
		next = pn->op == P_FWD ? P_BWD : P_FWD;
	}
	out[0] = pool_op(next, &pn->pg, grads[0], idx);
	ag_tensor_put(idx);
	return out[0] ? 0 : -ag_errcode();
}

/* ---- checks ---- */

static int check_input(const char *fn, struct ag_tensor *x,
		       struct pool_geom *pg)
{
	struct ag__shape_str xs;
	int lead;

	if (ag__check_float(fn, x))
		return -AG_EDTYPE;
	if (x->ndim == 3 || x->ndim == 4) {
		lead = x->ndim - 3;
		if (x->shape[lead] && x->shape[lead + 1] &&
		    x->shape[lead + 2]) {
			pg->batched = x->ndim == 4;
			pg->n = lead ? x->shape[0] : 1;
			pg->c = x->shape[lead];
			pg->h = x->shape[lead + 1];
			pg->w = x->shape[lead + 2];
			return 0;
		}
	}
	return ag__err(
		AG_ESHAPE,
		"%s: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input with non-zero C, H and W, but got input of size %s",
		fn, ag__shape_of(&xs, x));
}

static int check_window(const char *fn, const int64_t *kernel,
			const int64_t *stride, const int64_t *padding,
			struct pool_geom *pg)
{
	int64_t k[2], s[2], p[2], in[2] = { pg->h, pg->w }, o[2];

	if (!kernel)
		return ag__err(AG_EINVAL, "%s: kernel is NULL", fn);
	for (int i = 0; i < 2; i++) {
		k[i] = kernel[i];
		s[i] = stride && stride[i] ? stride[i] : kernel[i];
		p[i] = padding ? padding[i] : 0;
	}
	if (k[0] < 1 || k[1] < 1)
		return ag__err(
			AG_EINVAL,
			"%s: kernel size must be greater than zero, but got (%ld, %ld)",
			fn, (long)k[0], (long)k[1]);
	if (s[0] < 1 || s[1] < 1)
		return ag__err(
			AG_EINVAL,
			"%s: stride must be greater than zero, but got (%ld, %ld)",
			fn, (long)s[0], (long)s[1]);
	for (int i = 0; i < 2; i++) {
		int64_t padded;

		if (p[i] < 0 || p[i] > k[i] / 2)
			return ag__err(
				AG_EINVAL,
				"%s: pad should be non-negative and at most half of kernel size, but got pad=%ld and kernel_size=%ld",
				fn, (long)p[i], (long)k[i]);
		/* p <= k / 2, so 2 p does not overflow */
		if (__builtin_add_overflow(in[i], 2 * p[i], &padded))
			padded = INT64_MAX;
		o[i] = padded < k[i] ? 0 : (padded - k[i]) / s[i] + 1;
	}
	if (o[0] < 1 || o[1] < 1)
		return ag__err(
			AG_ESHAPE,
			"%s: given input size (%ldx%ldx%ld), calculated output size (%ldx%ldx%ld); output size is too small",
			fn, (long)pg->c, (long)pg->h, (long)pg->w, (long)pg->c,
			(long)o[0], (long)o[1]);
	pg->kh = k[0];
	pg->kw = k[1];
	pg->sh = s[0];
	pg->sw = s[1];
	pg->ph = p[0];
	pg->pw = p[1];
	pg->oh = o[0];
	pg->ow = o[1];
	return 0;
}

static struct ag_tensor *pool2d(enum pool_kind kind, struct ag_tensor *x,
				const int64_t *kernel, const int64_t *stride,
				const int64_t *padding)
{
	struct pool_geom pg = { .kind = kind };

	if (check_input(pool_fn(&pg), x, &pg) ||
	    check_window(pool_fn(&pg), kernel, stride, padding, &pg))
		return NULL;
	return pool_op(P_FWD, &pg, x, NULL);
}

struct ag_tensor *ag_max_pool2d(struct ag_tensor *x, const int64_t kernel[2],
				const int64_t stride[2],
				const int64_t padding[2])
{
	if (!x)
		return ag__null_arg("ag_max_pool2d", "x");
	return pool2d(POOL_MAX, x, kernel, stride, padding);
}

struct ag_tensor *ag_avg_pool2d(struct ag_tensor *x, const int64_t kernel[2],
				const int64_t stride[2],
				const int64_t padding[2])
{
	if (!x)
		return ag__null_arg("ag_avg_pool2d", "x");
	return pool2d(POOL_AVG, x, kernel, stride, padding);
}

struct ag_tensor *ag_adaptive_avg_pool2d(struct ag_tensor *x, int64_t out_h,
					 int64_t out_w)
{
	struct pool_geom pg = { .kind = POOL_ADAPTIVE };
	int64_t t;

	if (!x)
		return ag__null_arg("ag_adaptive_avg_pool2d", "x");
	if (check_input("ag_adaptive_avg_pool2d", x, &pg))
		return NULL;
	if (out_h < 0 || out_w < 0) {
		ag__err(AG_EINVAL,
			"ag_adaptive_avg_pool2d: output size must be non-negative, got (%ld, %ld)",
			(long)out_h, (long)out_w);
		return NULL;
	}
	/* window bounds reach out * in + out - 1 */
	if (__builtin_mul_overflow(out_h, pg.h, &t) ||
	    __builtin_add_overflow(t, out_h, &t) ||
	    __builtin_mul_overflow(out_w, pg.w, &t) ||
	    __builtin_add_overflow(t, out_w, &t)) {
		ag__err(AG_EINVAL,
			"ag_adaptive_avg_pool2d: output size (%ld, %ld) too large for input %ld x %ld",
			(long)out_h, (long)out_w, (long)pg.h, (long)pg.w);
		return NULL;
	}
	pg.oh = out_h;
	pg.ow = out_w;
	return pool_op(P_FWD, &pg, x, NULL);
}
