// SPDX-License-Identifier: MIT
/*
 * Selection: where (differentiable in both branches), argmax and the
 * comparisons eq, lt and gt (neither recorded).  Elements are read per
 * position through the strided walker: these ops have no simd/ kernel.
 */
#include <string.h>

#include "ops.h"

/* Element at storage offset off of t, as a double (i64 exactly enough). */
static double load(const struct ag_tensor *t, int64_t off)
{
	const void *p = t->storage->data;

	switch (t->dtype) {
	case AG_F32:
		return ((const float *)p)[off];
	case AG_F64:
		return ((const double *)p)[off];
	default:
		return (double)((const int64_t *)p)[off];
	}
}

static bool truth(const struct ag_tensor *t, int64_t off)
{
	if (t->dtype == AG_I64)
		return ((const int64_t *)t->storage->data)[off] != 0;
	return load(t, off) != 0; /* NaN is nonzero: true, as torch */
}

/* The broadcast shape of n tensors, or AG_ESHAPE naming them all. */
static int broadcast_n(const char *fn, struct ag_tensor *const *t, int n,
		       int *ndim, int64_t *shape)
{
	int nd = 0;

	for (int k = 0; k < n; k++)
		nd = t[k]->ndim > nd ? t[k]->ndim : nd;
	for (int i = 0; i < nd; i++) {
		shape[i] = 1;
		for (int k = 0; k < n; k++) {
			int d = t[k]->ndim - nd + i;
			int64_t s = d >= 0 ? t[k]->shape[d] : 1;
			struct ag__shape_str a, b, c;

			if (s == 1 || s == shape[i] || shape[i] == 1) {
				shape[i] = s == 1 ? shape[i] : s;
				continue;
			}
			return ag__err(
				AG_ESHAPE,
				"%s: shapes %s, %s%s%s cannot be broadcast (dim %d)",
				fn, ag__shape_of(&a, t[0]),
				ag__shape_of(&b, t[1]), n > 2 ? " and " : "",
				n > 2 ? ag__shape_of(&c, t[n - 1]) : "", i);
		}
	}
	*ndim = nd;
	return 0;
}

/* ---- where ---- */

struct where_node {
	struct ag_node node;
	int ndim[2];
	int64_t shape[2][AG_MAX_DIMS]; /* a's and b's */
	struct ag_saved saved[1]; /* condition */
};

static const char *const where_saved[] = { "condition" };

static int where_apply(struct ag_node *n, struct ag_tensor **grads,
		       struct ag_tensor **out)
{
	struct where_node *w = ag_container_of(n, struct where_node, node);
	struct ag_tensor *cond, *zero, *t;
	int rc = 0;

	if (!grads[0])
		return 0;
	cond = ag__unpack(n, 0);
	zero = cond ? ag_scalar(grads[0]->dtype, 0) : NULL;
	for (int i = 0; i < 2 && zero; i++) {
		if (!n->next[i].node)
			continue;
		/* where itself routes g: differentiable under create_graph */
		t = i ? ag_where(cond, zero, grads[0]) :
			ag_where(cond, grads[0], zero);
		out[i] = t ? ag__sum_to(t, w->ndim[i], w->shape[i]) : NULL;
		ag_tensor_put(t);
		if (!out[i])
			break;
	}
	if (!zero || (n->next[0].node && !out[0]) ||
	    (n->next[1].node && !out[1]))
		rc = -ag_errcode();
	ag_tensor_put(zero);
	ag_tensor_put(cond);
	return rc;
}

static const struct ag_node_ops where_ops = {
	.name = "WhereBackward",
	.apply = where_apply,
	.saved_names = where_saved,
};

static struct ag_tensor *where_fwd(struct ag_tensor *const *t, int ndim,
				   const int64_t *shape)
{
	int64_t st[3][AG_MAX_DIMS];
	const int64_t *strides[4];
	int64_t base[4];
	size_t es = ag_dtype_size(t[1]->dtype);
	struct ag_tensor *out;
	struct ag_walk w;

	out = ag__tensor_new("ag_where", t[1]->dtype, ndim, shape);
	if (!out)
		return NULL;
	for (int k = 0; k < 3; k++) {
		ag__broadcast_strides(t[k], ndim, shape, st[k]);
		strides[k] = st[k];
		base[k] = t[k]->offset;
	}
	strides[3] = out->strides;
	base[3] = 0;
	ag__walk_init(&w, ndim, shape, 4, strides, base);
	while (ag__walk_next(&w)) {
		for (int64_t i = 0; i < w.inner; i++) {
			int k = truth(t[0], w.off[0] + i * w.inc[0]) ? 1 : 2;

			memcpy((char *)out->storage->data +
				       (size_t)(w.off[3] + i * w.inc[3]) * es,
			       (char *)t[k]->storage->data +
				       (size_t)(w.off[k] + i * w.inc[k]) * es,
			       es);
		}
	}
	return out;
}

struct ag_tensor *ag_where(struct ag_tensor *cond, struct ag_tensor *a,
			   struct ag_tensor *b)
{
	const char *fn = "ag_where";
	struct ag_tensor *t[3] = { cond, a, b }, *out;
	int64_t shape[AG_MAX_DIMS];
	struct where_node *w;
	int ndim;

	if (!cond)
		return ag__null_arg(fn, "cond");
	if (!a)
		return ag__null_arg(fn, "a");
	if (!b)
		return ag__null_arg(fn, "b");
	if (a->dtype != b->dtype) {
		ag__err(AG_EDTYPE,
			"%s: a has dtype %s and b %s; they must match", fn,
			ag_dtype_name(a->dtype), ag_dtype_name(b->dtype));
		return NULL;
	}
	if (broadcast_n(fn, t, 3, &ndim, shape))
		return NULL;
	out = where_fwd(t, ndim, shape);
	if (!out || !ag__should_record(t + 1, 2))
		return ag__scope_add(out);
	w = (struct where_node *)ag__node_alloc(&where_ops, sizeof(*w), 0, 1, 2,
						NULL, 0);
	if (!w) {
		ag_tensor_put(out);
		return NULL;
	}
	w->node.saved = w->saved;
	w->node.num_saved = 1;
	for (int i = 0; i < 2; i++) {
		w->ndim[i] = t[i + 1]->ndim;
		ag__dims_copy(w->shape[i], t[i + 1]->shape, t[i + 1]->ndim);
	}
	if (ag__save(&w->node, 0, cond, false, 0)) {
		ag__node_put(&w->node);
		ag_tensor_put(out);
		return NULL;
	}
	return ag__finish(out, &w->node, t + 1, 2, fn);
}

/* ---- argmax ---- */

struct argmax_ctx {
	struct ag_tensor *x, *y;
	int dim;
};

static void argmax_lane(void *arg, const int64_t *off)
{
	struct argmax_ctx *c = arg;
	int64_t n = ag__lane_len(c->x, c->dim), ix = ag__lane_inc(c->x, c->dim);
	int64_t at = 0;
	const void *p = c->x->storage->data;

	if (c->x->dtype == AG_F32) {
		ag_k_max_f32(n, (const float *)p + off[0], ix, &at);
	} else if (c->x->dtype == AG_F64) {
		ag_k_max_f64(n, (const double *)p + off[0], ix, &at);
	} else {
		const int64_t *v = (const int64_t *)p + off[0];

		for (int64_t i = 1; i < n; i++)
			if (v[i * ix] > v[at * ix])
				at = i;
	}
	((int64_t *)c->y->storage->data)[off[1]] = at;
}

struct ag_tensor *ag_argmax(struct ag_tensor *a, int dim, bool keepdim)
{
	const char *fn = "ag_argmax";
	struct argmax_ctx c = { a, NULL, 0 };
	int64_t kshape[AG_MAX_DIMS];
	struct ag_tensor *ts[2];

	if (!a)
		return ag__null_arg(fn, "a");
	if (ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	c.dim = a->ndim ? dim : 0;
	if (a->ndim && !a->shape[dim]) {
		ag__err(AG_EINVAL,
			"%s: cannot take the argmax over dim %d of size 0", fn,
			dim);
		return NULL;
	}
	for (int d = 0; d < a->ndim; d++)
		kshape[d] = d == dim ? 1 : a->shape[d];
	c.y = ag__tensor_new(fn, AG_I64, a->ndim, kshape);
	if (!c.y)
		return NULL;
	ts[0] = a;
	ts[1] = c.y;
	ag__for_lanes(a->ndim, a->shape, c.dim, 2, ts, argmax_lane, &c);
	return ag__scope_add(ag__lanes_result(c.y, c.dim, keepdim));
}

/* ---- comparisons ---- */

enum cmp_op { CMP_EQ, CMP_LT, CMP_GT };

static bool compare(enum cmp_op op, const struct ag_tensor *a, int64_t ia,
		    const struct ag_tensor *b, int64_t ib)
{
	if (a->dtype == AG_I64) {
		int64_t x = ((const int64_t *)a->storage->data)[ia];
		int64_t y = ((const int64_t *)b->storage->data)[ib];

		return op == CMP_EQ ? x == y : op == CMP_LT ? x < y : x > y;
	} else {
		double x = load(a, ia), y = load(b, ib);

		return op == CMP_EQ ? x == y : op == CMP_LT ? x < y : x > y;
	}
}

static void store(struct ag_tensor *t, int64_t off, bool v)
{
	void *p = t->storage->data;

	if (t->dtype == AG_F32)
		((float *)p)[off] = v;
	else if (t->dtype == AG_F64)
		((double *)p)[off] = v;
	else
		((int64_t *)p)[off] = v;
}

static struct ag_tensor *cmp(const char *fn, enum cmp_op op,
			     struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_tensor *t[2] = { a, b }, *out;
	int64_t shape[AG_MAX_DIMS], sa[AG_MAX_DIMS], sb[AG_MAX_DIMS];
	const int64_t *strides[3] = { sa, sb, NULL };
	int64_t base[3];
	struct ag_walk w;
	int ndim;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!b)
		return ag__null_arg(fn, "b");
	if (a->dtype != b->dtype) {
		ag__err(AG_EDTYPE,
			"%s: expected both operands to have the same dtype, got %s and %s",
			fn, ag_dtype_name(a->dtype), ag_dtype_name(b->dtype));
		return NULL;
	}
	if (broadcast_n(fn, t, 2, &ndim, shape))
		return NULL;
	out = ag__tensor_new(fn, a->dtype, ndim, shape);
	if (!out)
		return NULL;
	ag__broadcast_strides(a, ndim, shape, sa);
	ag__broadcast_strides(b, ndim, shape, sb);
	strides[2] = out->strides;
	base[0] = a->offset;
	base[1] = b->offset;
	base[2] = 0;
	ag__walk_init(&w, ndim, shape, 3, strides, base);
	while (ag__walk_next(&w))
		for (int64_t i = 0; i < w.inner; i++)
			store(out, w.off[2] + i * w.inc[2],
			      compare(op, a, w.off[0] + i * w.inc[0], b,
				      w.off[1] + i * w.inc[1]));
	return ag__scope_add(out);
}

struct ag_tensor *ag_eq(struct ag_tensor *a, struct ag_tensor *b)
{
	return cmp("ag_eq", CMP_EQ, a, b);
}

struct ag_tensor *ag_lt(struct ag_tensor *a, struct ag_tensor *b)
{
	return cmp("ag_lt", CMP_LT, a, b);
}

struct ag_tensor *ag_gt(struct ag_tensor *a, struct ag_tensor *b)
{
	return cmp("ag_gt", CMP_GT, a, b);
}
