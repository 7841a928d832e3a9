// SPDX-License-Identifier: MIT
/*
 * Binary elementwise ops with NumPy broadcasting.  The gradient of a
 * broadcast operand is summed back to its shape.
 */
#include <string.h>

#include <ag/mode.h>

#include "ops.h"

struct binary_node {
	struct ag_node node;
	enum ag_k_binary op;
	bool bcast; /* an input's shape differs from the output's */
	int ndim[2];
	/*
	 * self and other for mul and div, nothing for add and sub; then,
	 * only when bcast, the inputs' shapes (else they are the output's).
	 */
	struct ag_saved saved[];
};

/* Row i of the broadcast shapes kept after the saved slots. */
static int64_t *bcast_shape(struct binary_node *b, int i)
{
	return (int64_t *)(b->saved + b->node.num_saved) + i * AG_MAX_DIMS;
}

static const int64_t *in_shape(struct binary_node *b, int i)
{
	return b->bcast ? bcast_shape(b, i) : b->node.in_meta[0].shape;
}

static const char *const saved_names[] = { "self", "other" };

static struct ag_tensor *reduce(struct binary_node *b, int i,
				struct ag_tensor *g)
{
	struct ag_tensor *r;

	if (!g)
		return NULL;
	r = ag__sum_to(g, b->ndim[i], in_shape(b, i));
	ag_tensor_put(g);
	return r;
}

static bool dense_as(const struct ag_tensor *t, const struct ag_tensor *g)
{
	return !t || (t->ndim == g->ndim &&
		      ag__shape_eq(g->ndim, t->shape, g->shape) &&
		      ag_tensor_is_contiguous(t));
}

/*
 * One pass of the fused simd/ derivative kernel when nothing is broadcast
 * and no graph is being built; 1 when it does not apply.
 */
static int fused(struct ag_node *n, struct ag_tensor *g, struct ag_tensor *x,
		 struct ag_tensor *y, struct ag_tensor **out)
{
	struct binary_node *b = ag_container_of(n, struct binary_node, node);
	struct ag_tensor *ga = NULL, *gb = NULL;

	/* add's gradient is g itself: passed on by reference, no copy */
	if (b->op == AG_K_ADD || ag__mode.grad || !dense_as(g, g) ||
	    !dense_as(x, g) || !dense_as(y, g))
		return 1;
	for (int i = 0; i < 2; i++)
		if (b->ndim[i] != g->ndim ||
		    !ag__shape_eq(g->ndim, in_shape(b, i), g->shape))
			return 1;
	/* the kernel reads a only for gb and b only for ga (mul, div) */
	if ((b->op == AG_K_MUL || b->op == AG_K_DIV) &&
	    ((n->next[0].node && !y) || (n->next[1].node && (!x || !y))))
		return 1;
	if (n->next[0].node && !(ga = ag__tensor_like(g)))
		return ag__err_last();
	if (n->next[1].node && !(gb = ag__tensor_like(g))) {
		ag_tensor_put(ga);
		return ag__err_last();
	}
	ag__k_binary_bwd(g->dtype, b->op, g->numel, ag__data(g),
			 x ? ag__data(x) : ag__data(g),
			 y ? ag__data(y) : ag__data(g),
			 ga ? ag__data(ga) : NULL, gb ? ag__data(gb) : NULL);
	out[0] = ga;
	out[1] = gb;
	return 0;
}

/* x as a dense plain tensor of the output's shape (broadcast copied). */
static struct ag_tensor *dense_at(struct ag_tensor *x,
				  const struct ag_tensor *g)
{
	int64_t st[AG_MAX_DIMS];
	struct ag_tensor *v, *d;

	ag__broadcast_strides(x, g->ndim, g->shape, st);
	v = ag__tensor_view(x, g->ndim, g->shape, st, x->offset);
	d = v ? ag__contiguous_copy(v) : NULL;
	ag_tensor_put(v);
	return d;
}

/*
 * d(x op y)/dx and /dy at g's shape as plain tensors, from the fused
 * kernel on a gradient of ones: for maximum and minimum (1, 0, or 1/2 at
 * ties) they are constants, so g * them is right for double backward too.
 */
static int slopes(enum ag_k_binary op, struct ag_tensor *g, struct ag_tensor *x,
		  struct ag_tensor *y, struct ag_tensor **dx,
		  struct ag_tensor **dy)
{
	struct ag_tensor *xd = dense_at(x, g), *yd = dense_at(y, g);
	struct ag_tensor *ones = ag__tensor_like(g);
	int rc = 0;

	*dx = ag__tensor_like(g);
	*dy = ag__tensor_like(g);
	if (!xd || !yd || !ones || !*dx || !*dy || ag_fill_(ones, 1.0)) {
		rc = ag__err_last();
		goto out;
	}
	ag__k_binary_bwd(g->dtype, op, g->numel, ag__data(ones), ag__data(xd),
			 ag__data(yd), ag__data(*dx), ag__data(*dy));
	rc = 0;
out:
	if (rc) {
		ag_tensor_put(*dx);
		ag_tensor_put(*dy);
		*dx = *dy = NULL;
	}
	ag_tensor_put(xd);
	ag_tensor_put(yd);
	ag_tensor_put(ones);
	return rc;
}

/* Element i of a dense f32 or f64 tensor. */
static void set_elem(struct ag_tensor *t, int64_t i, double v)
{
	if (t->dtype == AG_F32)
		((float *)ag__data(t))[i] = (float)v;
	else
		((double *)ag__data(t))[i] = v;
}

/* 1 at g's shape where x == 0 and y >= 0 (a0), and where y == 0 (b0). */
static int pow_masks(struct ag_tensor *g, struct ag_tensor *x,
		     struct ag_tensor *y, struct ag_tensor **a0,
		     struct ag_tensor **b0)
{
	struct ag_tensor *xd = dense_at(x, g), *yd = dense_at(y, g);
	int rc = -AG_ENOMEM;

	*a0 = ag__tensor_like(g);
	*b0 = ag__tensor_like(g);
	if (!xd || !yd || !*a0 || !*b0)
		goto out;
	for (int64_t i = 0; i < g->numel; i++) {
		double u = ag__get(xd, i), v = ag__get(yd, i);

		set_elem(*a0, i, u == 0 && v >= 0);
		set_elem(*b0, i, v == 0);
	}
	rc = 0;
out:
	if (rc) {
		ag_tensor_put(*a0);
		ag_tensor_put(*b0);
		*a0 = *b0 = NULL;
	}
	ag_tensor_put(xd);
	ag_tensor_put(yd);
	return rc;
}

/*
 * pow's gradients as ops, for create_graph, as torch: g * where(y == 0, 0,
 * y x^(y-1)) and g * where(x == 0 & y >= 0, 0, x^y log(x)).  where, not a
 * product with a mask, keeps the NaN and inf of the other branch out.
 */
static int pow_composite(struct binary_node *b, struct ag_tensor *g,
			 struct ag_tensor *x, struct ag_tensor *y, bool need0,
			 bool need1, struct ag_tensor **out)
{
	struct ag_tensor *t[8] = { NULL }, *a0, *b0, *zero;
	int rc = pow_masks(g, x, y, &a0, &b0);

	if (rc)
		return rc;
	zero = ag_scalar(g->dtype, 0);
	if (need0 && zero) {
		t[0] = ag_add_scalar(y, -1);
		t[1] = t[0] ? ag_pow(x, t[0]) : NULL;
		t[2] = t[1] ? ag_mul(y, t[1]) : NULL;
		t[3] = t[2] ? ag_where(b0, zero, t[2]) : NULL;
		out[0] = t[3] ? reduce(b, 0, ag_mul(g, t[3])) : NULL;
	}
	if (need1 && zero) {
		t[4] = ag_pow(x, y);
		t[5] = t[4] ? ag_log(x) : NULL;
		t[6] = t[5] ? ag_mul(t[4], t[5]) : NULL;
		t[7] = t[6] ? ag_where(a0, zero, t[6]) : NULL;
		out[1] = t[7] ? reduce(b, 1, ag_mul(g, t[7])) : NULL;
	}
	for (int i = 0; i < 8; i++)
		ag_tensor_put(t[i]);
	ag_tensor_put(zero);
	ag_tensor_put(a0);
	ag_tensor_put(b0);
	return 0;
}

static int binary_apply(struct ag_node *n, struct ag_tensor **grads,
			struct ag_tensor **out)
{
	struct binary_node *b = ag_container_of(n, struct binary_node, node);
	struct ag_tensor *g = grads[0], *x = NULL, *y = NULL, *t = NULL;
	bool need0 = n->next[0].node, need1 = n->next[1].node;
	int rc = 0;

	if (!g)
		return 0;
	if (n->num_saved && b->saved[0].defined && !(x = ag__unpack(n, 0)))
		return -ag_errcode();
	if (n->num_saved && b->saved[1].defined && !(y = ag__unpack(n, 1))) {
		ag_tensor_put(x);
		return -ag_errcode();
	}
	rc = fused(n, g, x, y, out);
	if (rc <= 0) {
		ag_tensor_put(x);
		ag_tensor_put(y);
		return rc;
	}
	rc = 0;
	switch (b->op) {
	case AG_K_ADD:
		out[0] = need0 ? reduce(b, 0, ag_tensor_get(g)) : NULL;
		out[1] = need1 ? reduce(b, 1, ag_tensor_get(g)) : NULL;
		break;
	case AG_K_SUB:
		out[0] = need0 ? reduce(b, 0, ag_tensor_get(g)) : NULL;
		out[1] = need1 ? reduce(b, 1, ag_neg(g)) : NULL;
		break;
	case AG_K_MUL:
		out[0] = need0 ? reduce(b, 0, ag_mul(g, y)) : NULL;
		out[1] = need1 ? reduce(b, 1, ag_mul(g, x)) : NULL;
		break;
	case AG_K_DIV: /* d/dx = g / y, d/dy = -g * x / y^2 */
		out[0] = need0 ? reduce(b, 0, ag_div(g, y)) : NULL;
		if (need1) {
			struct ag_tensor *q = ag_div(x, y);
			struct ag_tensor *gq = ag_mul(g, q);

			t = ag_div(gq, y);
			out[1] = reduce(b, 1, ag_neg(t));
			ag_tensor_put(gq);
			ag_tensor_put(q);
		}
		break;
	case AG_K_POW:
		if (ag__mode.grad) {
			rc = pow_composite(b, g, x, y, need0, need1, out);
			break;
		}
		/* without a graph, g times the kernel's slopes */
		__attribute__((fallthrough));
	case AG_K_MAXIMUM:
	case AG_K_MINIMUM: {
		struct ag_tensor *dx, *dy;

		rc = slopes(b->op, g, x, y, &dx, &dy);
		if (rc)
			break;
		out[0] = need0 ? reduce(b, 0, ag_mul(g, dx)) : NULL;
		out[1] = need1 ? reduce(b, 1, ag_mul(g, dy)) : NULL;
		ag_tensor_put(dx);
		ag_tensor_put(dy);
		break;
	}
	default:
		rc = ag__err(AG_EINTERNAL, "%s: unsupported", n->ops->name);
	}
	ag_tensor_put(t);
	ag_tensor_put(x);
	ag_tensor_put(y);
	if (!rc && ((need0 && !out[0]) || (need1 && !out[1])))
		rc = -ag_errcode();
	return rc;
}

static bool same_shape(const struct ag_tensor *a, const struct ag_tensor *b)
{
	return a->ndim == b->ndim && ag__shape_eq(a->ndim, a->shape, b->shape);
}

#define BINARY_OPS(ident, label)                  \
	static const struct ag_node_ops ident = { \
		.name = label,                    \
		.apply = binary_apply,            \
		.saved_names = saved_names,       \
	}

BINARY_OPS(add_ops, "AddBackward");
BINARY_OPS(sub_ops, "SubBackward");
BINARY_OPS(mul_ops, "MulBackward");
BINARY_OPS(div_ops, "DivBackward");
BINARY_OPS(maximum_ops, "MaximumBackward");
BINARY_OPS(minimum_ops, "MinimumBackward");

static const char *const pow_saved_names[] = { "self", "exponent" };
static const struct ag_node_ops pow_ops = {
	.name = "PowBackward",
	.apply = binary_apply,
	.saved_names = pow_saved_names,
};

static struct ag_tensor *binary(const char *fn, const struct ag_node_ops *ops,
				enum ag_k_binary op, struct ag_tensor *a,
				struct ag_tensor *b)
{
	struct ag_tensor *in[2] = { a, b }, *out;
	struct binary_node *n = NULL;
	bool save_a = false, save_b = false, bcast;
	size_t nsaved;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!b)
		return ag__null_arg(fn, "b");
	out = ag__binary_fwd(fn, op, a, b);
	if (!out || !ag__should_record(in, 2))
		return ag__scope_add(out);
	bcast = !same_shape(a, out) || !same_shape(b, out);
	nsaved = op == AG_K_ADD || op == AG_K_SUB ? 0 : 2;
	n = (struct binary_node *)ag__node_alloc(
		ops,
		sizeof(*n) + nsaved * sizeof(n->saved[0]) +
			(bcast ? 2 * AG_MAX_DIMS * sizeof(int64_t) : 0),
		0, 1, 2, NULL, 0);
	if (!n)
		goto fail;
	n->op = op;
	n->bcast = bcast;
	n->node.saved = n->saved;
	n->node.num_saved = nsaved;
	for (int i = 0; i < 2; i++) {
		n->ndim[i] = in[i]->ndim;
		if (bcast)
			ag__dims_copy(bcast_shape(n, i), in[i]->shape,
				      in[i]->ndim);
	}
	/* save only what the wanted gradients read, as PyTorch does */
	if (op == AG_K_MUL) {
		save_a = ag__requires_grad(b);
		save_b = ag__requires_grad(a);
	} else if (op == AG_K_DIV) {
		save_a = ag__requires_grad(b);
		save_b = true;
	} else if (op == AG_K_MAXIMUM || op == AG_K_MINIMUM || op == AG_K_POW) {
		save_a = save_b = true; /* which one is larger */
	}
	if ((save_a && ag__save(&n->node, 0, a, false, 0)) ||
	    (save_b && ag__save(&n->node, 1, b, false, 0)))
		goto fail;
	return ag__finish(out, &n->node, in, 2, fn);
fail:
	if (n)
		ag__node_put(&n->node);
	ag_tensor_put(out);
	return NULL;
}

struct ag_tensor *ag_add(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_add", &add_ops, AG_K_ADD, a, b);
}

struct ag_tensor *ag_sub(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_sub", &sub_ops, AG_K_SUB, a, b);
}

struct ag_tensor *ag_mul(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_mul", &mul_ops, AG_K_MUL, a, b);
}

struct ag_tensor *ag_div(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_div", &div_ops, AG_K_DIV, a, b);
}

struct ag_tensor *ag_maximum(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_maximum", &maximum_ops, AG_K_MAXIMUM, a, b);
}

struct ag_tensor *ag_minimum(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_minimum", &minimum_ops, AG_K_MINIMUM, a, b);
}

struct ag_tensor *ag_pow(struct ag_tensor *a, struct ag_tensor *b)
{
	return binary("ag_pow", &pow_ops, AG_K_POW, a, b);
}
