// SPDX-License-Identifier: MIT
/*
 * Reductions: sum, mean, sum over a dim.  Sums accumulate in double
 * through simd/'s pairwise kernels.
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
	memcpy(r->shape, a->shape, sizeof(r->shape));
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
