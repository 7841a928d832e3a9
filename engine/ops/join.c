// SPDX-License-Identifier: MIT
/*
 * Joining tensors: cat along an existing dim, stack along a new one.  The
 * gradient of each input is its slice of the output's gradient.
 */
#include <inttypes.h>
#include <string.h>

#include "ops.h"

struct cat_node {
	struct ag_node node;
	int dim;
	int64_t len[]; /* per input: its size along dim, -1 if skipped */
};

static int cat_apply(struct ag_node *n, struct ag_tensor **grads,
		     struct ag_tensor **out)
{
	struct cat_node *c = ag_container_of(n, struct cat_node, node);
	struct ag_tensor *g = grads[0];
	int64_t off = 0, zero = 0;

	if (!g)
		return 0;
	for (int k = 0; k < n->num_next; k++) {
		int64_t len = c->len[k];

		if (len < 0) { /* a skipped [0]: its gradient is empty too */
			if (n->next[k].node &&
			    !(out[k] = ag__tensor_new("CatBackward", g->dtype,
						      1, &zero)))
				return -ag_errcode();
			continue;
		}
		if (n->next[k].node &&
		    !(out[k] = ag_slice(g, c->dim, off, off + len, 1)))
			return -ag_errcode();
		off += len;
	}
	return 0;
}

static const struct ag_node_ops cat_ops = {
	.name = "CatBackward",
	.apply = cat_apply,
};

/* torch 1.13 still skips 1-d empty tensors, whatever the others' shape */
static bool skipped(const struct ag_tensor *t)
{
	return t->ndim == 1 && t->shape[0] == 0;
}

static int check_inputs(const char *fn, struct ag_tensor *const *ts, int n)
{
	if (!ts)
		return ag__err(AG_EINVAL, "%s: ts is NULL", fn);
	if (n <= 0)
		return ag__err(
			AG_EINVAL,
			"%s: expected a non-empty list of tensors, got %d", fn,
			n);
	for (int k = 0; k < n; k++) {
		char arg[32];

		if (!ts[k]) {
			snprintf(arg, sizeof(arg), "tensor %d", k);
			return ag__err_null(fn, arg);
		}
		if (ts[k]->dtype != ts[0]->dtype)
			return ag__err(
				AG_EDTYPE,
				"%s: tensor %d has dtype %s, expected %s", fn,
				k, ag_dtype_name(ts[k]->dtype),
				ag_dtype_name(ts[0]->dtype));
	}
	return 0;
}

/* Checks ts against ts[ref] in every dim but dim; sums dim into *total. */
static int check_shapes(struct ag_tensor *const *ts, int n, int ref, int dim,
			int64_t *total)
{
	const struct ag_tensor *r = ts[ref];

	*total = 0;
	for (int k = 0; k < n; k++) {
		const struct ag_tensor *t = ts[k];
		bool ok = t->ndim == r->ndim;
		struct ag__shape_str a, b;

		if (skipped(t))
			continue;
		for (int d = 0; ok && d < r->ndim; d++)
			ok = d == dim || t->shape[d] == r->shape[d];
		if (!ok)
			return ag__err(
				AG_ESHAPE,
				"ag_cat: tensor %d has shape %s, expected %s except in dim %d",
				k, ag__shape_of(&a, t), ag__shape_of(&b, r),
				dim);
		if (__builtin_add_overflow(*total, t->shape[dim], total))
			return ag__err(AG_EINVAL,
				       "ag_cat: the joined size overflows");
	}
	return 0;
}

/* Copies each input's rows into its place in out. */
static int cat_copy(struct ag_tensor *out, struct ag_tensor *const *ts, int n,
		    int dim)
{
	size_t es = ag_dtype_size(out->dtype);
	int64_t outer = ag__dims_prod(out->ndim, out->shape, 0, dim);
	int64_t inner =
		ag__dims_prod(out->ndim, out->shape, dim + 1, out->ndim);
	int64_t at = 0;
	char *dst = ag__data(out);

	/* nothing to copy, and rows of an empty shape may not even fit */
	if (!out->numel)
		return 0;
	for (int k = 0; k < n; k++) {
		struct ag_tensor *t = ts[k], *c = NULL;
		int64_t row;
		const char *src;

		if (skipped(t))
			continue;
		row = t->shape[dim] * inner;
		if (!ag_tensor_is_contiguous(t) &&
		    !(c = ag__contiguous_copy(t)))
			return -ag_errcode();
		src = ag__data(c ? c : t);
		for (int64_t o = 0; o < outer && row; o++)
			memcpy(dst + (size_t)(o * out->shape[dim] * inner +
					      at * inner) *
					       es,
			       src + (size_t)(o * row) * es, (size_t)row * es);
		at += t->shape[dim];
		ag_tensor_put(c);
	}
	return 0;
}

static struct ag_tensor *record_cat(struct ag_tensor *out,
				    struct ag_tensor *const *ts, int n, int dim)
{
	struct cat_node *c = (struct cat_node *)ag__node_alloc(
		&cat_ops, sizeof(*c) + (size_t)n * sizeof(c->len[0]), 0, 1, n,
		NULL, 0);

	if (!c) {
		ag_tensor_put(out);
		return NULL;
	}
	c->dim = dim;
	for (int k = 0; k < n; k++)
		c->len[k] = skipped(ts[k]) ? -1 : ts[k]->shape[dim];
	return ag__finish(out, &c->node, ts, n, "ag_cat");
}

struct ag_tensor *ag_cat(struct ag_tensor *const *ts, int n, int dim)
{
	int64_t shape[AG_MAX_DIMS], total;
	struct ag_tensor *out;
	int ref = -1;

	if (check_inputs("ag_cat", ts, n))
		return NULL;
	for (int k = 0; k < n && ref < 0; k++)
		if (!skipped(ts[k]))
			ref = k;
	if (ref >= 0 && !ts[ref]->ndim) {
		ag__err(AG_EINVAL,
			"ag_cat: tensor %d is 0-d and cannot be concatenated",
			ref);
		return NULL;
	}
	/* only skipped tensors: the result is the [0] they all are, and
	 * torch does not look at dim then */
	if (ref >= 0 && (ag__wrap_dim("ag_cat", dim, ts[ref]->ndim, &dim) ||
			 check_shapes(ts, n, ref, dim, &total)))
		return NULL;
	if (ref < 0) {
		shape[0] = 0;
		out = ag__tensor_new("ag_cat", ts[0]->dtype, 1, shape);
	} else {
		ag__dims_copy(shape, ts[ref]->shape, ts[ref]->ndim);
		shape[dim] = total;
		out = ag__tensor_new("ag_cat", ts[0]->dtype, ts[ref]->ndim,
				     shape);
	}
	if (!out)
		return NULL;
	if (ref >= 0 && cat_copy(out, ts, n, dim)) {
		ag_tensor_put(out);
		return NULL;
	}
	if (!ag__should_record(ts, n))
		return ag__scope_add(out);
	return record_cat(out, ts, n, dim);
}

/*
 * stack = cat of the inputs unsqueezed at dim; the unsqueeze views are
 * temporaries, so the thread's scope is suspended while they live.
 */
struct ag_tensor *ag_stack(struct ag_tensor *const *ts, int n, int dim)
{
	struct ag_tensor *u[64], **us = u, *out = NULL;
	struct ag_scope *scope;
	int made = 0;

	if (check_inputs("ag_stack", ts, n))
		return NULL;
	for (int k = 1; k < n; k++) {
		struct ag__shape_str a, b;

		if (ts[k]->ndim == ts[0]->ndim &&
		    ag__shape_eq(ts[0]->ndim, ts[k]->shape, ts[0]->shape))
			continue;
		ag__err(AG_ESHAPE,
			"ag_stack: tensor %d has shape %s, expected %s", k,
			ag__shape_of(&a, ts[k]), ag__shape_of(&b, ts[0]));
		return NULL;
	}
	if (ts[0]->ndim == AG_MAX_DIMS) {
		ag__err(AG_EINVAL,
			"ag_stack: the inputs already have the maximum of %d dims",
			AG_MAX_DIMS);
		return NULL;
	}
	if (ag__wrap_dim("ag_stack", dim, ts[0]->ndim + 1, &dim))
		return NULL;
	if (n > 64 && !(us = ag__alloc((size_t)n * sizeof(*us)))) {
		ag__err(AG_ENOMEM, "ag_stack: out of memory");
		return NULL;
	}
	scope = ag__scope_suspend();
	for (; made < n; made++)
		if (!(us[made] = ag_unsqueeze(ts[made], dim)))
			break;
	if (made == n)
		out = ag_cat(us, n, dim);
	for (int k = 0; k < made; k++)
		ag_tensor_put(us[k]);
	ag__scope_resume(scope);
	if (us != u)
		ag__free(us);
	return ag__scope_add(out);
}
