// SPDX-License-Identifier: MIT
/*
 * Reductions: sum and mean, over everything or a dim; max and var over a
 * dim.  Sums accumulate in double through simd/'s pairwise kernels.
 */
#include <string.h>

#include "ops.h"

struct reduce_node {
	struct ag_node node;
	int ndim;
	int64_t shape[AG_MAX_DIMS]; /* input shape */
	int dim; /* -1: all dims */
	bool keepdim;
	double scale; /* 1 for sum, 1/n for mean */
};

static double row_sum(const struct ag_tensor *t, int64_t off, int64_t n,
		      int64_t inc)
{
	if (t->dtype == AG_F32)
		return ag_k_sum_f32(n, (const float *)t->storage->data + off,
				    inc);
	return ag_k_sum_f64(n, (const double *)t->storage->data + off, inc);
}

static void store(struct ag_tensor *t, int64_t i, double v)
{
	if (t->dtype == AG_F32)
		((float *)t->storage->data)[i] = (float)v;
	else
		((double *)t->storage->data)[i] = v;
}

/* Plain sum over `dim` (or all dims when dim < 0), times scale. */
static struct ag_tensor *sum_fwd(const char *fn, struct ag_tensor *a, int dim,
				 bool keepdim, double scale)
{
	int64_t oshape[AG_MAX_DIMS], kshape[AG_MAX_DIMS];
	int64_t kstr[AG_MAX_DIMS], ostr[AG_MAX_DIMS];
	const int64_t *strides[2] = { a->strides, kstr };
	int64_t base[2] = { a->offset, 0 };
	struct ag_tensor *out;
	struct ag_walk w;
	int ondim = 0;

	if (dim < 0) {
		double s = 0;

		out = ag__tensor_new(fn, a->dtype, 0, NULL);
		if (!out)
			return NULL;
		ag__walk_init(&w, a->ndim, a->shape, 1, strides, base);
		while (ag__walk_next(&w))
			s += row_sum(a, w.off[0], w.inner, w.inc[0]);
		store(out, 0, s * scale);
		return out;
	}
	for (int d = 0; d < a->ndim; d++) {
		kshape[d] = d == dim ? 1 : a->shape[d];
		if (d != dim || keepdim)
			oshape[ondim++] = kshape[d];
	}
	out = ag__tensor_new(fn, a->dtype, ondim, oshape);
	if (!out)
		return NULL;
	ag__contiguous_strides(a->ndim, kshape, ostr);
	memcpy(kstr, ostr, sizeof(kstr));
	ag__walk_init(&w, a->ndim, kshape, 2, strides, base);
	while (ag__walk_next(&w))
		for (int64_t i = 0; i < w.inner; i++)
			store(out, w.off[1] + i * w.inc[1],
			      scale * row_sum(a, w.off[0] + i * w.inc[0],
					      a->shape[dim], a->strides[dim]));
	return out;
}

static int reduce_apply(struct ag_node *n, struct ag_tensor **grads,
			struct ag_tensor **out)
{
	struct reduce_node *r = ag_container_of(n, struct reduce_node, node);
	struct ag_tensor *g = grads[0], *u = NULL, *s = NULL;

	if (!g || !n->next[0].node)
		return 0;
	if (r->dim >= 0 && !r->keepdim)
		g = u = ag_unsqueeze(g, r->dim);
	if (g && r->scale != 1.0)
		g = s = ag_mul_scalar(g, r->scale);
	out[0] = g ? ag_expand(g, r->ndim, r->shape) : NULL;
	ag_tensor_put(u);
	ag_tensor_put(s);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops sum_ops = {
	.name = "SumBackward",
	.apply = reduce_apply,
};

static const struct ag_node_ops mean_ops = {
	.name = "MeanBackward",
	.apply = reduce_apply,
};

static struct ag_tensor *reduce(const char *fn, const struct ag_node_ops *ops,
				struct ag_tensor *a, int dim, bool keepdim,
				bool mean)
{
	struct reduce_node *r;
	struct ag_tensor *out;
	double scale = 1.0;
	int64_t count;

	AG_CHECK_ARG(fn, a);
	if (ag__check_float(fn, a))
		return NULL;
	if (dim != -100 && ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	if (dim == -100 || a->ndim == 0)
		dim = -1;
	count = dim < 0 ? a->numel : a->shape[dim];
	if (mean)
		scale = 1.0 / (double)count; /* 0 elements: nan, as torch */
	out = sum_fwd(fn, a, dim, keepdim, scale);
	if (!out || !ag__should_record(&a, 1))
		return ag__ret(out);
	r = (struct reduce_node *)ag__node_alloc(ops, sizeof(*r), 0, 1, 1, NULL,
						 0);
	if (!r) {
		ag_tensor_put(out);
		return NULL;
	}
	r->ndim = a->ndim;
	ag__dims_copy(r->shape, a->shape, a->ndim);
	r->dim = dim;
	r->keepdim = keepdim || dim < 0;
	r->scale = scale;
	if (dim < 0 && a->ndim > 0)
		r->keepdim = true; /* a 0-d grad expands directly */
	return ag__finish(out, &r->node, &a, 1, fn);
}

struct ag_tensor *ag_sum(struct ag_tensor *a)
{
	return reduce("ag_sum", &sum_ops, a, -100, false, false);
}

struct ag_tensor *ag_mean(struct ag_tensor *a)
{
	return reduce("ag_mean", &mean_ops, a, -100, false, true);
}

struct ag_tensor *ag_sum_dim(struct ag_tensor *a, int dim, bool keepdim)
{
	return reduce("ag_sum_dim", &sum_ops, a, dim, keepdim, false);
}

struct ag_tensor *ag_mean_dim(struct ag_tensor *a, int dim, bool keepdim)
{
	return reduce("ag_mean_dim", &mean_ops, a, dim, keepdim, true);
}

/*
 * var along dim: the mean of squared deviations, over n - 1 when unbiased,
 * composed from the ops above (two passes, so no cancellation), which also
 * gives its derivatives.  n - 1 = 0 gives NaN, as torch.
 */
struct ag_tensor *ag_var_dim(struct ag_tensor *a, int dim, bool unbiased,
			     bool keepdim)
{
	struct ag_tensor *t[4] = { NULL }, *r = NULL;
	struct ag_scope *scope;
	int64_t n;

	AG_CHECK_ARG("ag_var_dim", a);
	if (ag__check_float("ag_var_dim", a) ||
	    ag__wrap_dim("ag_var_dim", dim, a->ndim, &dim))
		return NULL;
	n = a->ndim ? a->shape[dim] : 1;
	/* the steps are ours to put, not the caller's scope's */
	scope = ag__scope_suspend();
	t[0] = ag_mean_dim(a, dim, true);
	t[1] = t[0] ? ag_sub(a, t[0]) : NULL;
	t[2] = t[1] ? ag_mul(t[1], t[1]) : NULL;
	t[3] = t[2] ? ag_sum_dim(t[2], dim, keepdim) : NULL;
	r = t[3] ? ag_mul_scalar(t[3], 1.0 / (double)(n - unbiased)) : NULL;
	for (int i = 0; i < 4; i++)
		ag_tensor_put(t[i]);
	ag__scope_resume(scope);
	return ag__ret(r);
}

/* ---- max along a dim ---- */

struct max_node {
	struct ag_node node;
	int dim;
	bool keepdim;
	struct ag_tensor *mask; /* 1 at each lane's first maximum (or NaN) */
};

struct max_ctx {
	struct ag_tensor *x, *y, *mask;
	int dim;
};

static void max_lane(void *arg, const int64_t *off)
{
	struct max_ctx *c = arg;
	int64_t n = ag__lane_len(c->x, c->dim);
	int64_t ix = ag__lane_inc(c->x, c->dim);
	int64_t im = ag__lane_inc(c->mask, c->dim);
	int64_t at = 0;
	double v;

	if (c->x->dtype == AG_F32)
		v = ag_k_max_f32(n, (float *)c->x->storage->data + off[0], ix,
				 &at);
	else
		v = ag_k_max_f64(n, (double *)c->x->storage->data + off[0], ix,
				 &at);
	store(c->y, off[1], v);
	store(c->mask, off[2] + at * im, 1.0);
}

static void max_destroy(struct ag_node *n)
{
	ag_tensor_put(ag_container_of(n, struct max_node, node)->mask);
}

/* g, with the reduced dim back, at each lane's maximum; 0 elsewhere. */
static int max_apply(struct ag_node *n, struct ag_tensor **grads,
		     struct ag_tensor **out)
{
	struct max_node *m = ag_container_of(n, struct max_node, node);
	struct ag_tensor *g = grads[0], *u = NULL, *e = NULL;

	if (!g || !n->next[0].node)
		return 0;
	if (!m->keepdim)
		g = u = ag_unsqueeze(g, m->dim);
	e = g ? ag_expand(g, m->mask->ndim, m->mask->shape) : NULL;
	out[0] = e ? ag_mul(e, m->mask) : NULL;
	ag_tensor_put(u);
	ag_tensor_put(e);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops max_ops = {
	.name = "MaxBackward",
	.apply = max_apply,
	.destroy = max_destroy,
};

struct ag_tensor *ag_max_dim(struct ag_tensor *a, int dim, bool keepdim)
{
	const char *fn = "ag_max_dim";
	struct max_ctx c = { a, NULL, NULL, 0 };
	struct ag_tensor *ts[3], *out = NULL;
	struct max_node *m;

	AG_CHECK_ARG(fn, a);
	if (ag__check_float(fn, a) || ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	c.dim = a->ndim ? dim : 0;
	if (a->ndim && !a->shape[dim]) {
		ag__err(AG_EINVAL,
			"%s: cannot take the max over dim %d of size 0 (no identity)",
			fn, dim);
		return NULL;
	}
	c.y = ag__lanes_out(fn, a, c.dim);
	c.mask = ag__tensor_new(fn, a->dtype, a->ndim, a->shape);
	if (!c.y || !c.mask)
		goto fail;
	memset(ag__data(c.mask), 0, (size_t)a->numel * ag_dtype_size(a->dtype));
	ts[0] = a;
	ts[1] = c.y;
	ts[2] = c.mask;
	ag__for_lanes(a->ndim, a->shape, c.dim, 3, ts, max_lane, &c);
	out = ag__lanes_result(c.y, c.dim, keepdim);
	c.y = NULL;
	if (!out)
		goto fail;
	if (!ag__should_record(&a, 1)) {
		ag_tensor_put(c.mask);
		return ag__ret(out);
	}
	m = (struct max_node *)ag__node_alloc(&max_ops, sizeof(*m), 0, 1, 1,
					      NULL, 0);
	if (!m)
		goto fail;
	m->dim = c.dim;
	m->keepdim = keepdim || !a->ndim;
	m->mask = c.mask;
	return ag__finish(out, &m->node, &a, 1, fn);
fail:
	ag_tensor_put(out);
	ag_tensor_put(c.y);
	ag_tensor_put(c.mask);
	return NULL;
}
