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
	bool mean;
	double count; /* mean: the count divided by (torch's sum / n) */
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

/*
 * Plain sum over `dim` (or all dims when dim < 0), divided by div (1 for
 * a sum: exact).  A mean divides as torch does, not times 1 / n, which
 * is an ulp off: 7 / 3 is not 7 * (1 / 3) in double.
 */
static struct ag_tensor *sum_fwd(const char *fn, struct ag_tensor *a, int dim,
				 bool keepdim, double div)
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
		store(out, 0, s / div);
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
			      row_sum(a, w.off[0] + i * w.inc[0], a->shape[dim],
				      a->strides[dim]) /
				      div);
	return out;
}

static int reduce_apply(struct ag_node *n, struct ag_tensor **grads,
			struct ag_tensor **out)
{
	struct reduce_node *r = ag_container_of(n, struct reduce_node, node);
	struct ag_tensor *g = grads[0], *u = NULL, *s = NULL, *c = NULL;

	if (!g || !n->next[0].node)
		return 0;
	if (r->dim >= 0 && !r->keepdim)
		g = u = ag_unsqueeze(g, r->dim);
	/* mean: g / n, as torch's mean_backward (not g * (1 / n)) */
	if (g && r->mean) {
		c = ag_scalar(g->dtype, r->count);
		g = s = c ? ag_div(g, c) : NULL;
	}
	out[0] = g ? ag_expand(g, r->ndim, r->shape) : NULL;
	ag_tensor_put(u);
	ag_tensor_put(s);
	ag_tensor_put(c);
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
	double div = 1.0;
	int64_t count;

	if (!a)
		return ag__null_arg(fn, "a");
	if (ag__check_float(fn, a))
		return NULL;
	if (dim != -100 && ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	if (dim == -100 || a->ndim == 0)
		dim = -1;
	count = dim < 0 ? a->numel : a->shape[dim];
	if (mean)
		div = (double)count; /* 0 elements: 0 / 0 = nan, as torch */
	out = sum_fwd(fn, a, dim, keepdim, div);
	if (!out || !ag__should_record(&a, 1))
		return ag__scope_add(out);
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
	r->mean = mean;
	r->count = div;
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

	if (!a)
		return ag__null_arg("ag_var_dim", "a");
	if (ag__check_float("ag_var_dim", a) ||
	    ag__wrap_dim("ag_var_dim", dim, a->ndim, &dim))
		return NULL;
	n = a->ndim ? a->shape[dim] : 1;
	/* the steps' results are put here, not by the caller's scope */
	scope = ag__scope_suspend();
	t[0] = ag_mean_dim(a, dim, true);
	t[1] = t[0] ? ag_sub(a, t[0]) : NULL;
	t[2] = t[1] ? ag_mul(t[1], t[1]) : NULL;
	t[3] = t[2] ? ag_sum_dim(t[2], dim, keepdim) : NULL;
	r = t[3] ? ag_mul_scalar(t[3], 1.0 / (double)(n - unbiased)) : NULL;
	for (int i = 0; i < 4; i++)
		ag_tensor_put(t[i]);
	ag__scope_resume(scope);
	return ag__scope_add(r);
}

/* ---- max along a dim ---- */

/*
 * The gradient of a max goes to one element per lane: the backward saves
 * each lane's index (i64, the reduced shape, made only when recording)
 * rather than a mask of the input's size.  Moving values between a
 * full-shape tensor and one value per lane is linear, and each direction
 * is the other's derivative: scatter (g to its lane's index, zeros
 * elsewhere) for the max's backward, gather (the element at the index)
 * for the backward of that, and so on.
 */
struct pick {
	struct ag_tensor *idx; /* i64, kept shape (dim of size 1) */
	int dim, ndim;
	int64_t shape[AG_MAX_DIMS]; /* the full (input) shape */
};

struct pick_node {
	struct ag_node node;
	bool scatter; /* what apply does: the reverse of the forward */
	struct pick pk;
};

struct pick_ctx {
	struct ag_tensor *full, *kept;
	const struct pick *pk;
	bool scatter;
};

static void pick_lane(void *arg, const int64_t *off)
{
	struct pick_ctx *c = arg;
	size_t es = ag_dtype_size(c->full->dtype);
	int64_t at = ((const int64_t *)c->pk->idx->storage->data)[off[2]];
	char *f = (char *)c->full->storage->data +
		  (off[0] + at * ag__lane_inc(c->full, c->pk->dim)) * es;
	char *k = (char *)c->kept->storage->data + off[1] * es;

	if (c->scatter)
		memcpy(f, k, es);
	else
		memcpy(k, f, es);
}

static struct ag_tensor *pick(struct ag_tensor *src, const struct pick *pk,
			      bool scatter);

static int pick_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out)
{
	struct pick_node *p = ag_container_of(n, struct pick_node, node);

	if (!grads[0] || !n->next[0].node)
		return 0;
	out[0] = pick(grads[0], &p->pk, p->scatter);
	return out[0] ? 0 : -ag_errcode();
}

static void pick_destroy(struct ag_node *n)
{
	ag_tensor_put(ag_container_of(n, struct pick_node, node)->pk.idx);
}

/* the node of a scatter's output gathers, the node of a gather's scatters */
static const struct ag_node_ops scatter_ops = {
	.name = "ScatterBackward",
	.apply = pick_apply,
	.destroy = pick_destroy,
};

static const struct ag_node_ops gather_ops = {
	.name = "GatherBackward",
	.apply = pick_apply,
	.destroy = pick_destroy,
};

/*
 * scatter: src has the kept shape; the result the full shape, src's values
 * at the indices and zeros elsewhere.  gather: the reverse.  Recorded when
 * src needs it (create_graph), so higher derivatives follow.
 */
static struct ag_tensor *pick(struct ag_tensor *src, const struct pick *pk,
			      bool scatter)
{
	const char *fn = scatter ? "MaxBackward" : "ScatterBackward";
	int64_t kshape[AG_MAX_DIMS];
	struct pick_ctx c = { .pk = pk, .scatter = scatter };
	struct ag_tensor *ts[3], *out;
	struct pick_node *p;

	for (int d = 0; d < pk->ndim; d++)
		kshape[d] = d == pk->dim ? 1 : pk->shape[d];
	out = ag__tensor_new(fn, src->dtype, pk->ndim,
			     scatter ? pk->shape : kshape);
	if (!out)
		return NULL;
	if (scatter)
		memset(out->storage->data, 0, out->storage->nbytes);
	c.full = scatter ? out : src;
	c.kept = scatter ? src : out;
	ts[0] = c.full;
	ts[1] = c.kept;
	ts[2] = pk->idx;
	ag__for_lanes(pk->ndim, pk->shape, pk->dim, 3, ts, pick_lane, &c);
	if (!ag__should_record(&src, 1))
		return out;
	p = (struct pick_node *)ag__node_alloc(scatter ? &scatter_ops :
							 &gather_ops,
					       sizeof(*p), 0, 1, 1, NULL, 0);
	if (!p) {
		ag_tensor_put(out);
		return NULL;
	}
	/* the derivative of a scatter is a gather, and back */
	p->scatter = !scatter;
	p->pk = *pk;
	ag_tensor_get(pk->idx);
	if (ag__record(&p->node, &src, 1, &out, 1, fn)) {
		ag_tensor_put(out);
		return NULL;
	}
	return out;
}

struct max_node {
	struct ag_node node;
	bool keepdim;
	struct pick pk; /* idx: each lane's first maximum (or NaN) */
};

struct max_ctx {
	struct ag_tensor *x, *y, *idx; /* idx NULL: no backward */
	int dim;
};

static void max_lane(void *arg, const int64_t *off)
{
	struct max_ctx *c = arg;
	int64_t n = ag__lane_len(c->x, c->dim);
	int64_t ix = ag__lane_inc(c->x, c->dim);
	int64_t at = 0;
	double v;

	if (c->x->dtype == AG_F32)
		v = ag_k_max_f32(n, (float *)c->x->storage->data + off[0], ix,
				 &at);
	else
		v = ag_k_max_f64(n, (double *)c->x->storage->data + off[0], ix,
				 &at);
	store(c->y, off[1], v);
	if (c->idx)
		((int64_t *)c->idx->storage->data)[off[2]] = at;
}

static void max_destroy(struct ag_node *n)
{
	ag_tensor_put(ag_container_of(n, struct max_node, node)->pk.idx);
}

/* g, with the reduced dim back, at each lane's maximum; 0 elsewhere. */
static int max_apply(struct ag_node *n, struct ag_tensor **grads,
		     struct ag_tensor **out)
{
	struct max_node *m = ag_container_of(n, struct max_node, node);
	struct ag_tensor *g = grads[0], *u = NULL;

	if (!g || !n->next[0].node)
		return 0;
	if (!m->keepdim)
		g = u = ag_unsqueeze(g, m->pk.dim);
	out[0] = g ? pick(g, &m->pk, true) : NULL;
	ag_tensor_put(u);
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
	bool rec;

	if (!a)
		return ag__null_arg(fn, "a");
	if (ag__check_float(fn, a) || ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	c.dim = a->ndim ? dim : 0;
	if (a->ndim && !a->shape[dim]) {
		ag__err(AG_EINVAL,
			"%s: cannot take the max over dim %d of size 0 (no identity)",
			fn, dim);
		return NULL;
	}
	rec = ag__should_record(&a, 1);
	c.y = ag__lanes_out(fn, a, c.dim);
	if (!c.y)
		return NULL;
	if (rec) {
		c.idx = ag__tensor_new(fn, AG_I64, c.y->ndim, c.y->shape);
		if (!c.idx)
			goto fail;
	}
	ts[0] = a;
	ts[1] = c.y;
	ts[2] = c.idx;
	ag__for_lanes(a->ndim, a->shape, c.dim, rec ? 3 : 2, ts, max_lane, &c);
	out = ag__lanes_result(c.y, c.dim, keepdim);
	c.y = NULL;
	if (!out)
		goto fail;
	if (!rec)
		return ag__scope_add(out);
	m = (struct max_node *)ag__node_alloc(&max_ops, sizeof(*m), 0, 1, 1,
					      NULL, 0);
	if (!m)
		goto fail;
	m->keepdim = keepdim || !a->ndim;
	m->pk.idx = c.idx;
	m->pk.dim = c.dim;
	m->pk.ndim = a->ndim;
	ag__dims_copy(m->pk.shape, a->shape, a->ndim);
	return ag__finish(out, &m->node, &a, 1, fn);
fail:
	ag_tensor_put(out);
	ag_tensor_put(c.y);
	ag_tensor_put(c.idx);
	return NULL;
}
