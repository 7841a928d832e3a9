// SPDX-License-Identifier: MIT
/*
 * Shape ops that return views sharing the input's storage, and their
 * backward nodes.  A view remembers its base (meta->view_base) so that an
 * in-place write through it can be refused when autograd would need
 * PyTorch's CopySlices to get the base's gradient right.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>

#include "ops.h"

enum view_kind {
	V_RESHAPE,
	V_TRANSPOSE,
	V_PERMUTE,
	V_SLICE,
	V_EXPAND,
	V_CLONE
};

struct view_node {
	struct ag_node node;
	enum view_kind kind;
	int ndim;
	int64_t shape[AG_MAX_DIMS]; /* input shape */
	int d0, d1;
	int perm[AG_MAX_DIMS];
	int64_t start, step;
};

static struct ag_tensor *slice_scatter(struct ag_tensor *g, int ndim,
				       const int64_t *shape, int dim,
				       int64_t start, int64_t step);

static int view_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out)
{
	struct view_node *v = ag_container_of(n, struct view_node, node);
	struct ag_tensor *g = grads[0];
	int inv[AG_MAX_DIMS];

	if (!g || !n->next[0].node)
		return 0;
	switch (v->kind) {
	case V_RESHAPE:
		out[0] = ag_reshape(g, v->ndim, v->shape);
		break;
	case V_TRANSPOSE:
		out[0] = ag_transpose(g, v->d0, v->d1);
		break;
	case V_PERMUTE:
		for (int d = 0; d < v->ndim; d++)
			inv[v->perm[d]] = d;
		out[0] = ag_permute(g, inv);
		break;
	case V_SLICE:
		out[0] = slice_scatter(g, v->ndim, v->shape, v->d0, v->start,
				       v->step);
		break;
	case V_EXPAND:
		out[0] = ag__sum_to(g, v->ndim, v->shape);
		break;
	case V_CLONE:
		out[0] = ag_tensor_get(g);
		break;
	}
	return out[0] ? 0 : -ag_errcode();
}

#define VIEW_OPS(ident, label)                    \
	static const struct ag_node_ops ident = { \
		.name = label,                    \
		.apply = view_apply,              \
	}

VIEW_OPS(reshape_ops, "ViewBackward");
VIEW_OPS(transpose_ops, "TransposeBackward");
VIEW_OPS(permute_ops, "PermuteBackward");
VIEW_OPS(slice_ops, "SliceBackward");
VIEW_OPS(expand_ops, "ExpandBackward");
VIEW_OPS(squeeze_ops, "SqueezeBackward");
VIEW_OPS(unsqueeze_ops, "UnsqueezeBackward");
VIEW_OPS(clone_ops, "CloneBackward");

/* Records node kind for out = view(a); takes over out. */
static struct ag_tensor *
finish_view(const char *fn, const struct ag_node_ops *ops, struct ag_tensor *a,
	    struct ag_tensor *out, const struct view_node *proto, bool is_view)
{
	struct view_node *v;

	if (!out)
		return NULL;
	if (is_view) {
		struct ag_tensor *base =
			a->meta && a->meta->view_base ? a->meta->view_base : a;

		if (!ag__meta(out)) {
			ag_tensor_put(out);
			return NULL;
		}
		out->meta->view_base = ag_tensor_get(base);
	}
	if (!ag__should_record(&a, 1))
		return ag__scope_add(out);
	v = (struct view_node *)ag__node_alloc(ops, sizeof(*v), 0, 1, 1, NULL,
					       0);
	if (!v) {
		ag_tensor_put(out);
		return NULL;
	}
	memcpy((char *)v + sizeof(v->node),
	       (const char *)proto + sizeof(v->node),
	       sizeof(*v) - sizeof(v->node));
	v->ndim = a->ndim;
	ag__dims_copy(v->shape, a->shape, a->ndim);
	return ag__finish(out, &v->node, &a, 1, fn);
}

/* Strides for viewing (a) as shape, or false if the layout forbids it. */
static bool view_strides(const struct ag_tensor *a, int ndim,
			 const int64_t *shape, int64_t *strides)
{
	int64_t chunk_base_stride, tensor_numel = 1, view_numel = 1;
	int view_d = ndim - 1;

	if (a->numel == 0 || a->ndim == 0) {
		ag__contiguous_strides(ndim, shape, strides);
		return true;
	}
	/* walk a's dims from the back, grouping dims that are contiguous
	 * with each other, and carve each group into view dims */
	chunk_base_stride = a->strides[a->ndim - 1];
	for (int d = a->ndim - 1; d >= 0; d--) {
		tensor_numel *= a->shape[d];
		if (d == 0 ||
		    (a->shape[d - 1] != 1 &&
		     a->strides[d - 1] != tensor_numel * chunk_base_stride)) {
			while (view_d >= 0 && (view_numel < tensor_numel ||
					       shape[view_d] == 1)) {
				strides[view_d] =
					view_numel * chunk_base_stride;
				view_numel *= shape[view_d];
				view_d--;
			}
			if (view_numel != tensor_numel)
				return false;
			if (d > 0) {
				chunk_base_stride = a->strides[d - 1];
				tensor_numel = 1;
				view_numel = 1;
			}
		}
	}
	return view_d == -1;
}

struct ag_tensor *ag_reshape(struct ag_tensor *a, int ndim,
			     const int64_t *shape)
{
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS], known = 1;
	struct view_node proto = { .kind = V_RESHAPE };
	struct ag_tensor *out, *c;
	bool zero = false;
	int infer = -1;
	struct ag__shape_str buf;

	if (!a)
		return ag__null_arg("ag_reshape", "a");
	if (ndim < 0 || ndim > AG_MAX_DIMS) {
		ag__err(AG_EINVAL,
			"ag_reshape: %d dims requested; a tensor has 0 to %d dims",
			ndim, AG_MAX_DIMS);
		return NULL;
	}
	if (ndim && !shape) {
		ag__err(AG_EINVAL, "ag_reshape: shape is NULL for %d dims",
			ndim);
		return NULL;
	}
	/* with a 0 anywhere the count is 0, however large the other dims */
	for (int d = 0; d < ndim; d++)
		if (!shape[d])
			zero = true;
	for (int d = 0; d < ndim; d++) {
		sh[d] = shape[d];
		if (shape[d] == -1 && infer < 0) {
			infer = d;
			continue;
		}
		if (shape[d] < 0)
			goto bad;
		if (zero) {
			known = 0;
			continue;
		}
		if (known > INT64_MAX / shape[d])
			goto bad;
		known *= shape[d];
	}
	if (infer >= 0) {
		if (known == 0 || a->numel % known)
			goto bad;
		sh[infer] = a->numel / known;
		known = a->numel;
	}
	if (known != a->numel)
		goto bad;
	if (view_strides(a, ndim, sh, st)) {
		out = ag__tensor_view(a, ndim, sh, st, a->offset);
		return finish_view("ag_reshape", &reshape_ops, a, out, &proto,
				   true);
	}
	c = ag__contiguous_copy(a);
	if (!c)
		return NULL;
	ag__contiguous_strides(ndim, sh, st);
	out = ag__tensor_view(c, ndim, sh, st, 0);
	ag_tensor_put(c);
	return finish_view("ag_reshape", &reshape_ops, a, out, &proto, false);
bad:
	ag__err(AG_ESHAPE,
		"ag_reshape: shape %s is invalid for a tensor of %" PRId64
		" elements",
		ag__shape_fmt(&buf, ndim, shape), a->numel);
	return NULL;
}

struct ag_tensor *ag_transpose(struct ag_tensor *a, int d0, int d1)
{
	struct view_node proto = { .kind = V_TRANSPOSE };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS], t;

	if (!a)
		return ag__null_arg("ag_transpose", "a");
	if (ag__wrap_dim("ag_transpose", d0, a->ndim, &d0) ||
	    ag__wrap_dim("ag_transpose", d1, a->ndim, &d1))
		return NULL;
	memcpy(sh, a->shape, sizeof(*sh) * (size_t)a->ndim);
	memcpy(st, a->strides, sizeof(*st) * (size_t)a->ndim);
	if (a->ndim) {
		t = sh[d0], sh[d0] = sh[d1], sh[d1] = t;
		t = st[d0], st[d0] = st[d1], st[d1] = t;
	}
	proto.d0 = d0;
	proto.d1 = d1;
	return finish_view("ag_transpose", &transpose_ops, a,
			   ag__tensor_view(a, a->ndim, sh, st, a->offset),
			   &proto, true);
}

struct ag_tensor *ag_permute(struct ag_tensor *a, const int *dims)
{
	struct view_node proto = { .kind = V_PERMUTE };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS];
	bool seen[AG_MAX_DIMS] = { false };

	if (!a)
		return ag__null_arg("ag_permute", "a");
	if (!dims && a->ndim) {
		ag__err(AG_EINVAL, "ag_permute: dims is NULL");
		return NULL;
	}
	for (int d = 0; d < a->ndim; d++) {
		int s;

		if (ag__wrap_dim("ag_permute", dims[d], a->ndim, &s))
			return NULL;
		if (seen[s]) {
			ag__err(AG_EINVAL,
				"ag_permute: dim %d is repeated in the permutation",
				s);
			return NULL;
		}
		seen[s] = true;
		proto.perm[d] = s;
		sh[d] = a->shape[s];
		st[d] = a->strides[s];
	}
	return finish_view("ag_permute", &permute_ops, a,
			   ag__tensor_view(a, a->ndim, sh, st, a->offset),
			   &proto, true);
}

struct ag_tensor *ag_slice(struct ag_tensor *a, int dim, int64_t start,
			   int64_t end, int64_t step)
{
	struct view_node proto = { .kind = V_SLICE };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS], size, len;

	if (!a)
		return ag__null_arg("ag_slice", "a");
	if (a->ndim == 0) {
		ag__err(AG_EINVAL, "ag_slice: cannot slice a 0-d tensor");
		return NULL;
	}
	if (ag__wrap_dim("ag_slice", dim, a->ndim, &dim))
		return NULL;
	if (step <= 0) {
		ag__err(AG_EINVAL,
			"ag_slice: step must be positive, got %" PRId64, step);
		return NULL;
	}
	size = a->shape[dim];
	/* Python slice rules: negative counts from the end, then clamp */
	if (start < 0)
		start += size;
	if (end < 0)
		end += size;
	start = start < 0 ? 0 : (start > size ? size : start);
	end = end < start ? start : (end > size ? size : end);
	len = end > start ? (end - start - 1) / step + 1 : 0;
	/* one element or none: the step is never taken, and a huge one
	 * would overflow the stride (and the backward's) */
	if (len <= 1)
		step = 1;
	memcpy(sh, a->shape, sizeof(*sh) * (size_t)a->ndim);
	memcpy(st, a->strides, sizeof(*st) * (size_t)a->ndim);
	sh[dim] = len;
	st[dim] = a->strides[dim] * step;
	proto.d0 = dim;
	proto.start = start;
	proto.step = step;
	return finish_view("ag_slice", &slice_ops, a,
			   ag__tensor_view(a, a->ndim, sh, st,
					   a->offset + start * a->strides[dim]),
			   &proto, true);
}

struct ag_tensor *ag_expand(struct ag_tensor *a, int ndim, const int64_t *shape)
{
	struct view_node proto = { .kind = V_EXPAND };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS], numel;
	struct ag__shape_str x, y;

	if (!a)
		return ag__null_arg("ag_expand", "a");
	if (ndim < a->ndim || ndim > AG_MAX_DIMS || (ndim && !shape)) {
		ag__err(AG_EINVAL,
			"ag_expand: cannot expand a %d-dim tensor to %d dims",
			a->ndim, ndim);
		return NULL;
	}
	for (int d = 0; d < ndim; d++) {
		int s = d - (ndim - a->ndim);
		int64_t want = shape[d];

		if (s >= 0 && want == -1)
			want = a->shape[s];
		if (want < 0)
			goto bad;
		if (s >= 0 && a->shape[s] == want) {
			sh[d] = want;
			st[d] = a->strides[s];
		} else if (s < 0 || a->shape[s] == 1) {
			sh[d] = want;
			st[d] = 0;
		} else {
			goto bad;
		}
	}
	if (ag__shape_size("ag_expand", ndim, sh, a->dtype, &numel, NULL))
		return NULL;
	return finish_view("ag_expand", &expand_ops, a,
			   ag__tensor_view(a, ndim, sh, st, a->offset), &proto,
			   true);
bad:
	ag__err(AG_ESHAPE,
		"ag_expand: the shape %s cannot be expanded to %s (only size-1 dims expand)",
		ag__shape_of(&x, a), ag__shape_fmt(&y, ndim, shape));
	return NULL;
}

struct ag_tensor *ag_unsqueeze(struct ag_tensor *a, int dim)
{
	struct view_node proto = { .kind = V_RESHAPE };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS];

	if (!a)
		return ag__null_arg("ag_unsqueeze", "a");
	if (a->ndim == AG_MAX_DIMS) {
		ag__err(AG_EINVAL,
			"ag_unsqueeze: a tensor already has the maximum of %d dims",
			AG_MAX_DIMS);
		return NULL;
	}
	if (ag__wrap_dim("ag_unsqueeze", dim, a->ndim + 1, &dim))
		return NULL;
	for (int d = 0, s = 0; d <= a->ndim; d++) {
		if (d == dim) {
			sh[d] = 1;
			st[d] = 1;
			/* overflows only when empty: a size-1 stride is unused */
			if (s < a->ndim &&
			    __builtin_mul_overflow(a->strides[s], a->shape[s],
						   &st[d]))
				st[d] = INT64_MAX;
			continue;
		}
		sh[d] = a->shape[s];
		st[d] = a->strides[s];
		s++;
	}
	return finish_view("ag_unsqueeze", &unsqueeze_ops, a,
			   ag__tensor_view(a, a->ndim + 1, sh, st, a->offset),
			   &proto, true);
}

struct ag_tensor *ag_squeeze(struct ag_tensor *a, int dim)
{
	struct view_node proto = { .kind = V_RESHAPE };
	int64_t sh[AG_MAX_DIMS], st[AG_MAX_DIMS];
	int n = 0;

	if (!a)
		return ag__null_arg("ag_squeeze", "a");
	if (ag__wrap_dim("ag_squeeze", dim, a->ndim, &dim))
		return NULL;
	for (int d = 0; d < a->ndim; d++) {
		if (d == dim && a->shape[d] == 1)
			continue; /* a dim that is not 1 stays, as torch */
		sh[n] = a->shape[d];
		st[n++] = a->strides[d];
	}
	return finish_view("ag_squeeze", &squeeze_ops, a,
			   ag__tensor_view(a, n, sh, st, a->offset), &proto,
			   true);
}

struct ag_tensor *ag_clone(struct ag_tensor *a)
{
	struct view_node proto = { .kind = V_CLONE };

	if (!a)
		return ag__null_arg("ag_clone", "a");
	return finish_view("ag_clone", &clone_ops, a, ag__contiguous_copy(a),
			   &proto, false);
}

struct ag_tensor *ag_contiguous(struct ag_tensor *a)
{
	if (!a)
		return ag__null_arg("ag_contiguous", "a");
	if (ag_tensor_is_contiguous(a))
		return ag__scope_add(ag_tensor_get(a));
	return ag_clone(a);
}

struct ag_tensor *ag_detach(struct ag_tensor *a)
{
	if (!a)
		return ag__null_arg("ag_detach", "a");
	return ag__scope_add(
		ag__tensor_view(a, a->ndim, a->shape, a->strides, a->offset));
}

/* ---- the gradient of a slice, itself differentiable ---- */

struct scatter_node {
	struct ag_node node;
	int dim;
	int64_t start, step, len;
};

static int scatter_apply(struct ag_node *n, struct ag_tensor **grads,
			 struct ag_tensor **out)
{
	struct scatter_node *s = ag_container_of(n, struct scatter_node, node);

	if (!grads[0] || !n->next[0].node)
		return 0;
	out[0] = ag_slice(grads[0], s->dim, s->start,
			  s->start + s->len * s->step, s->step);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops scatter_ops = {
	.name = "SliceBackwardBackward",
	.apply = scatter_apply,
};

static struct ag_tensor *slice_scatter(struct ag_tensor *g, int ndim,
				       const int64_t *shape, int dim,
				       int64_t start, int64_t step)
{
	struct ag_tensor *z =
		ag__tensor_new("SliceBackward", g->dtype, ndim, shape);
	struct ag_tensor *view;
	struct scatter_node *s;
	int64_t st[AG_MAX_DIMS];

	if (!z)
		return NULL;
	memset(z->storage->data, 0, z->storage->nbytes);
	memcpy(st, z->strides, sizeof(*st) * (size_t)ndim);
	st[dim] *= step;
	view = ag__tensor_view(z, ndim, g->shape, st, start * z->strides[dim]);
	if (!view) {
		ag_tensor_put(z);
		return NULL;
	}
	ag__binary_into(AG_K_ADD, view, g);
	ag_tensor_put(view);
	if (!ag__should_record(&g, 1))
		return z;
	s = (struct scatter_node *)ag__node_alloc(&scatter_ops, sizeof(*s), 0,
						  1, 1, NULL, 0);
	if (!s) {
		ag_tensor_put(z);
		return NULL;
	}
	s->dim = dim;
	s->start = start;
	s->step = step;
	s->len = g->shape[dim];
	if (ag__record(&s->node, &g, 1, &z, 1, "SliceBackward")) {
		ag_tensor_put(z);
		return NULL;
	}
	return z;
}
