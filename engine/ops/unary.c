// SPDX-License-Identifier: MIT
/*
 * Unary elementwise ops.  One node type serves them all: it saves the
 * input ("self") and/or the output ("result") as the op's derivative needs.
 * Backward uses the fused simd/ derivative kernel; when the backward itself
 * is being recorded (create_graph) it composes the formula from ops so that
 * it can be differentiated again.
 */
#include <math.h>

#include <ag/mode.h>

#include "ops.h"

/*
 * Every derivative reads the input ("self") or the output ("result"), never
 * both: one saved slot at most, sized in the allocation.
 */
struct unary_node {
	struct ag_node node;
	enum ag_k_unary op;
	struct ag_k_params p;
	struct ag_saved saved[];
};

static struct unary_node *to_unary(struct ag_node *n)
{
	return ag_container_of(n, struct unary_node, node);
}

static struct ag_tensor *mul_scalar_or_null(struct ag_tensor *t, double s)
{
	return t ? ag_mul_scalar(t, s) : NULL;
}

/*
 * f'(x) of op as a plain tensor, from the fused kernel on a gradient of
 * ones: for a piecewise constant derivative (abs, clamp, leaky_relu) that
 * is exact for double backward too, the second derivative being 0.
 */
static struct ag_tensor *slope(enum ag_k_unary op, const struct ag_k_params *p,
			       struct ag_tensor *x)
{
	struct ag_tensor *ones = ag__tensor_like(x), *d;

	if (!ones)
		return NULL;
	if (ag_fill_(ones, 1.0)) {
		ag_tensor_put(ones);
		return NULL;
	}
	d = ag__unary_bwd(op, p, &ones, x, NULL);
	ag_tensor_put(ones);
	return d;
}

/* g * d, taking over d; NULL (error kept) when d is. */
static struct ag_tensor *times(struct ag_tensor *g, struct ag_tensor *d)
{
	struct ag_tensor *r = d ? ag_mul(g, d) : NULL;

	ag_tensor_put(d);
	return r;
}

/* Puts the temporaries of a chain of ops; errors propagate as NULL. */
static void put_all(struct ag_tensor **t, int n)
{
	for (int i = 0; i < n; i++)
		ag_tensor_put(t[i]);
}

/* gelu'(x) = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2 */
static struct ag_tensor *gelu_slope(struct ag_tensor *x)
{
	struct ag_tensor *t[9] = { NULL }, *r;

	t[0] = ag_mul_scalar(x, 0.70710678118654752440);
	t[1] = t[0] ? ag_erf(t[0]) : NULL;
	t[2] = t[1] ? ag_add_scalar(t[1], 1) : NULL;
	t[3] = t[2] ? ag_mul_scalar(t[2], 0.5) : NULL; /* Phi */
	t[4] = t[3] ? ag_mul(x, x) : NULL;
	t[5] = t[4] ? ag_mul_scalar(t[4], -0.5) : NULL;
	t[6] = t[5] ? ag_exp(t[5]) : NULL;
	t[7] = t[6] ? ag_mul_scalar(t[6], 0.39894228040143267794) : NULL;
	t[8] = t[7] ? ag_mul(x, t[7]) : NULL; /* x phi */
	r = t[8] ? ag_add(t[3], t[8]) : NULL;
	put_all(t, 9);
	return r;
}

/* erf'(x) = 2 / sqrt(pi) exp(-x^2) */
static struct ag_tensor *erf_slope(struct ag_tensor *x)
{
	struct ag_tensor *t[3] = { NULL }, *r;

	t[0] = ag_mul(x, x);
	t[1] = t[0] ? ag_mul_scalar(t[0], -1) : NULL;
	t[2] = t[1] ? ag_exp(t[1]) : NULL;
	r = t[2] ? ag_mul_scalar(t[2], 1.12837916709551257390) : NULL;
	put_all(t, 3);
	return r;
}

/* silu'(x) = s (1 + x (1 - s)), s = sigmoid(x) */
static struct ag_tensor *silu_slope(struct ag_tensor *x)
{
	struct ag_tensor *t[4] = { NULL }, *r;

	t[0] = ag_sigmoid(x);
	t[1] = t[0] ? ag_rsub_scalar(t[0], 1) : NULL;
	t[2] = t[1] ? ag_mul(x, t[1]) : NULL;
	t[3] = t[2] ? ag_add_scalar(t[2], 1) : NULL;
	r = t[3] ? ag_mul(t[0], t[3]) : NULL;
	put_all(t, 4);
	return r;
}

/* softplus'(x) = sigmoid(x), and 1 past the threshold (20), as torch */
static struct ag_tensor *softplus_slope(struct ag_tensor *x)
{
	const struct ag_k_params below = { -INFINITY, 20 };
	struct ag_tensor *t[4] = { NULL }, *r;

	t[0] = slope(AG_K_CLAMP, &below, x); /* 1 up to 20, else 0 */
	t[1] = t[0] ? ag_rsub_scalar(t[0], 1) : NULL;
	t[2] = t[1] ? ag_sigmoid(x) : NULL;
	t[3] = t[2] ? ag_mul(t[2], t[0]) : NULL;
	r = t[3] ? ag_add(t[3], t[1]) : NULL;
	put_all(t, 4);
	return r;
}

/* The derivative as ops, for create_graph. */
static struct ag_tensor *composite(struct unary_node *u, struct ag_tensor *g,
				   struct ag_tensor *x, struct ag_tensor *y)
{
	struct ag_tensor *a = NULL, *b = NULL, *r = NULL;

	switch (u->op) {
	case AG_K_ABS:
	case AG_K_CLAMP:
	case AG_K_LEAKY_RELU:
		return times(g, slope(u->op, &u->p, x));
	case AG_K_EXPM1: /* g * (y + 1) */
		a = ag_add_scalar(y, 1);
		r = a ? ag_mul(g, a) : NULL;
		break;
	case AG_K_LOG1P: /* g / (x + 1) */
		a = ag_add_scalar(x, 1);
		r = a ? ag_div(g, a) : NULL;
		break;
	case AG_K_SQRT: /* g / (2 y) */
		a = ag_mul_scalar(y, 2);
		r = a ? ag_div(g, a) : NULL;
		break;
	case AG_K_RSQRT: /* -g y^3 / 2 */
		a = ag_pow_scalar(y, 3);
		b = a ? ag_mul(g, a) : NULL;
		r = b ? ag_mul_scalar(b, -0.5) : NULL;
		break;
	case AG_K_SQUARE: /* 2 g x */
		a = ag_mul_scalar(x, 2);
		r = a ? ag_mul(g, a) : NULL;
		break;
	case AG_K_RECIPROCAL: /* -g y^2 */
		a = ag_mul(y, y);
		b = a ? ag_mul(g, a) : NULL;
		r = b ? ag_neg(b) : NULL;
		break;
	case AG_K_TAN: /* g (1 + y^2) */
		a = ag_mul(y, y);
		b = a ? ag_add_scalar(a, 1) : NULL;
		r = b ? ag_mul(g, b) : NULL;
		break;
	case AG_K_GELU:
		return times(g, gelu_slope(x));
	case AG_K_SILU:
		return times(g, silu_slope(x));
	case AG_K_SOFTPLUS:
		return times(g, softplus_slope(x));
	case AG_K_ERF:
		return times(g, erf_slope(x));
	case AG_K_ATAN: /* g / (1 + x^2) */
		a = ag_mul(x, x);
		b = a ? ag_add_scalar(a, 1) : NULL;
		r = b ? ag_div(g, b) : NULL;
		break;
	case AG_K_RSUB_SCALAR:
		return ag_neg(g);
	case AG_K_NEG:
		return ag_neg(g);
	case AG_K_EXP:
		return ag_mul(g, y);
	case AG_K_LOG:
		return ag_div(g, x);
	case AG_K_TANH: /* g * (1 - y^2) = g - g * y^2 */
		a = ag_mul(y, y);
		b = ag_mul(g, a);
		r = ag_sub(g, b);
		break;
	case AG_K_SIGMOID: /* g * (y - y^2) */
		a = ag_mul(y, y);
		b = ag_sub(y, a);
		r = ag_mul(g, b);
		break;
	case AG_K_RELU: /* the kernel saves only y; y > 0 <=> x > 0 */
		a = ag__positive_mask(x ? x : y);
		r = a ? ag_mul(g, a) : NULL;
		break;
	case AG_K_POW_SCALAR: /* g * p * x^(p-1) */
		if (u->p.p0 == 0.0)
			return ag_mul_scalar(g, 0.0);
		a = ag_pow_scalar(x, u->p.p0 - 1.0);
		b = mul_scalar_or_null(a, u->p.p0);
		r = b ? ag_mul(g, b) : NULL;
		break;
	case AG_K_SIN: /* g * cos(x) */
		a = ag_cos(x);
		r = ag_mul(g, a);
		break;
	case AG_K_COS: /* -g * sin(x) */
		a = ag_sin(x);
		b = ag_mul(g, a);
		r = ag_neg(b);
		break;
	case AG_K_MUL_SCALAR:
		return ag_mul_scalar(g, u->p.p0);
	case AG_K_ADD_SCALAR:
		return ag_tensor_get(g);
	default:
		ag__err(AG_EINTERNAL, "%s: no composite derivative",
			u->node.ops->name);
		return NULL;
	}
	/* the temporaries of a chain: put all, errors propagate as NULL */
	ag_tensor_put(a);
	ag_tensor_put(b);
	return r;
}

/*
 * The common case without making a tensor: a dense gradient nobody else
 * holds, a dense saved slot; the kernel writes the input gradient over the
 * gradient, which is passed on.  1 when it does not apply.
 */
static int in_place(struct unary_node *u, unsigned needs,
		    struct ag_tensor **grads, struct ag_tensor **out)
{
	struct ag_tensor *g = grads[0];
	const void *s = NULL;
	int rc;

	if (ag__mode.grad || !ag__exclusive(g))
		return 1;
	if (needs) {
		rc = ag__saved_span(&u->node, 0, &s);
		if (rc)
			return rc;
	}
	ag__k_unary_bwd(g->dtype, u->op, g->numel, ag__data(g), 1,
			needs & AG_K_NEEDS_X ? s : NULL, 1,
			needs & AG_K_NEEDS_Y ? s : NULL, 1, ag__data(g), 1,
			&u->p);
	out[0] = g;
	grads[0] = NULL;
	return 0;
}

static int unary_apply(struct ag_node *n, struct ag_tensor **grads,
		       struct ag_tensor **out)
{
	struct unary_node *u = to_unary(n);
	unsigned needs = ag_k_unary_bwd_needs(u->op);
	struct ag_tensor *x = NULL, *y = NULL;
	int rc = 0;

	if (!grads[0] || !n->next[0].node)
		return 0;
	if (u->op == AG_K_ADD_SCALAR) {
		out[0] = ag_tensor_get(grads[0]);
		return 0;
	}
	rc = in_place(u, needs, grads, out);
	if (rc <= 0)
		return rc;
	rc = 0;
	if (needs & AG_K_NEEDS_X)
		x = ag__unpack(n, 0);
	else if (needs & AG_K_NEEDS_Y)
		y = ag__unpack(n, 0);
	if (needs && !x && !y)
		return -ag_errcode();
	if (ag__mode.grad)
		out[0] = composite(u, grads[0], x, y);
	else
		out[0] = ag__unary_bwd(u->op, &u->p, &grads[0], x, y);
	if (!out[0])
		rc = -ag_errcode();
	ag_tensor_put(x);
	ag_tensor_put(y);
	return rc;
}

static const char *const saved_self[] = { "self" };
static const char *const saved_result[] = { "result" };

#define UNARY_OPS(ident, label, names)            \
	static const struct ag_node_ops ident = { \
		.name = label,                    \
		.apply = unary_apply,             \
		.saved_names = names,             \
	}

UNARY_OPS(neg_ops, "NegBackward", NULL);
UNARY_OPS(exp_ops, "ExpBackward", saved_result);
UNARY_OPS(log_ops, "LogBackward", saved_self);
UNARY_OPS(tanh_ops, "TanhBackward", saved_result);
UNARY_OPS(sin_ops, "SinBackward", saved_self);
UNARY_OPS(cos_ops, "CosBackward", saved_self);
UNARY_OPS(sigmoid_ops, "SigmoidBackward", saved_result);
UNARY_OPS(relu_ops, "ReluBackward", saved_result);
UNARY_OPS(pow_ops, "PowBackward", saved_self);
UNARY_OPS(mul_scalar_ops, "MulBackward", NULL);
UNARY_OPS(add_scalar_ops, "AddBackward", NULL);
UNARY_OPS(rsub_scalar_ops, "RsubBackward", NULL);
UNARY_OPS(abs_ops, "AbsBackward", saved_self);
UNARY_OPS(expm1_ops, "Expm1Backward", saved_result);
UNARY_OPS(log1p_ops, "Log1pBackward", saved_self);
UNARY_OPS(sqrt_ops, "SqrtBackward", saved_result);
UNARY_OPS(rsqrt_ops, "RsqrtBackward", saved_result);
UNARY_OPS(square_ops, "PowBackward", saved_self);
UNARY_OPS(reciprocal_ops, "ReciprocalBackward", saved_result);
UNARY_OPS(tan_ops, "TanBackward", saved_result);
UNARY_OPS(gelu_ops, "GeluBackward", saved_self);
UNARY_OPS(silu_ops, "SiluBackward", saved_self);
UNARY_OPS(softplus_ops, "SoftplusBackward", saved_self);
UNARY_OPS(erf_ops, "ErfBackward", saved_self);
UNARY_OPS(atan_ops, "AtanBackward", saved_self);
UNARY_OPS(clamp_ops, "ClampBackward", saved_self);
UNARY_OPS(leaky_relu_ops, "LeakyReluBackward", saved_self);

static struct ag_tensor *unary2(const char *fn, const struct ag_node_ops *ops,
				enum ag_k_unary op, double p0, double p1,
				struct ag_tensor *a)
{
	struct ag_k_params p = { p0, p1 };
	struct unary_node *u = NULL;
	struct ag_tensor *out;
	unsigned needs;

	if (!a)
		return ag__null_arg(fn, "a");
	out = ag__unary_fwd(fn, op, &p, a);
	if (!out || !ag__should_record(&a, 1))
		return ag__scope_add(out);
	needs = ag_k_unary_bwd_needs(op);
	u = (struct unary_node *)ag__node_alloc(
		ops, sizeof(*u) + (needs ? sizeof(u->saved[0]) : 0), 0, 1, 1,
		NULL, 0);
	if (!u)
		goto fail;
	u->op = op;
	u->p = p;
	u->node.saved = u->saved;
	u->node.num_saved = needs ? 1 : 0;
	if ((needs & AG_K_NEEDS_X) && ag__save(&u->node, 0, a, false, 0))
		goto fail;
	if ((needs & AG_K_NEEDS_Y) && ag__save(&u->node, 0, out, true, 0))
		goto fail;
	return ag__finish(out, &u->node, &a, 1, fn);
fail:
	if (u)
		ag__node_put(&u->node);
	ag_tensor_put(out);
	return NULL;
}

static struct ag_tensor *unary(const char *fn, const struct ag_node_ops *ops,
			       enum ag_k_unary op, double p0,
			       struct ag_tensor *a)
{
	return unary2(fn, ops, op, p0, 0, a);
}

#define UNARY_FN(name, op)                                        \
	struct ag_tensor *ag_##name(struct ag_tensor *a)          \
	{                                                         \
		return unary("ag_" #name, &name##_ops, op, 0, a); \
	}

UNARY_FN(neg, AG_K_NEG)
UNARY_FN(exp, AG_K_EXP)
UNARY_FN(log, AG_K_LOG)
UNARY_FN(tanh, AG_K_TANH)
UNARY_FN(sin, AG_K_SIN)
UNARY_FN(cos, AG_K_COS)
UNARY_FN(sigmoid, AG_K_SIGMOID)
UNARY_FN(relu, AG_K_RELU)
UNARY_FN(abs, AG_K_ABS)
UNARY_FN(expm1, AG_K_EXPM1)
UNARY_FN(log1p, AG_K_LOG1P)
UNARY_FN(sqrt, AG_K_SQRT)
UNARY_FN(rsqrt, AG_K_RSQRT)
UNARY_FN(square, AG_K_SQUARE)
UNARY_FN(reciprocal, AG_K_RECIPROCAL)
UNARY_FN(tan, AG_K_TAN)
UNARY_FN(gelu, AG_K_GELU)
UNARY_FN(silu, AG_K_SILU)
UNARY_FN(softplus, AG_K_SOFTPLUS)
UNARY_FN(erf, AG_K_ERF)
UNARY_FN(atan, AG_K_ATAN)

#define SCALAR_FN(name, ops, op)                                   \
	struct ag_tensor *ag_##name(struct ag_tensor *a, double s) \
	{                                                          \
		return unary("ag_" #name, &ops, op, s, a);         \
	}

SCALAR_FN(pow_scalar, pow_ops, AG_K_POW_SCALAR)
SCALAR_FN(mul_scalar, mul_scalar_ops, AG_K_MUL_SCALAR)
SCALAR_FN(add_scalar, add_scalar_ops, AG_K_ADD_SCALAR)
SCALAR_FN(rsub_scalar, rsub_scalar_ops, AG_K_RSUB_SCALAR)

struct ag_tensor *ag_clamp(struct ag_tensor *a, double lo, double hi)
{
	if (isnan(lo) || isnan(hi)) {
		ag__err(AG_EINVAL,
			"ag_clamp: bounds must not be NaN (got %g, %g)", lo,
			hi);
		return NULL;
	}
	return unary2("ag_clamp", &clamp_ops, AG_K_CLAMP, lo, hi, a);
}

struct ag_tensor *ag_leaky_relu(struct ag_tensor *a, double slope)
{
	if (!isfinite(slope)) {
		ag__err(AG_EINVAL,
			"ag_leaky_relu: slope must be finite (got %g)", slope);
		return NULL;
	}
	return unary("ag_leaky_relu", &leaky_relu_ops, AG_K_LEAKY_RELU, slope,
		     a);
}
