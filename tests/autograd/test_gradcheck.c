// SPDX-License-Identifier: MIT
/*
 * ag_gradcheck and ag_gradgradcheck over the first op set, with
 * broadcasting and non-contiguous inputs, and checks that fail when the
 * backward is wrong.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"
#include "torch_refs.h"

static struct ag_generator *gen;

static void setup(void)
{
	gen = ag_generator_new(1234);
}

static void teardown(void)
{
	ag_generator_free(gen);
}

TestSuite(gradcheck, .init = setup, .fini = teardown);

/* A leaf requiring grad, uniform in [lo, hi); away from 0 if lo < 0 < hi. */
static struct ag_tensor *input(int ndim, const int64_t *shape, double lo,
			       double hi)
{
	struct ag_tensor *t = ag_rand(gen, AG_F64, ndim, shape);
	double *p = ag_tensor_data(t);

	for (int64_t i = 0; i < ag_tensor_numel(t); i++) {
		p[i] = lo + (hi - lo) * p[i];
		if (lo < 0 && hi > 0 && fabs(p[i]) < 0.1)
			p[i] = p[i] < 0 ? -0.1 - p[i] : 0.1 + p[i];
	}
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define IN(...)                                             \
	input(sizeof(SHAPE(__VA_ARGS__)) / sizeof(int64_t), \
	      SHAPE(__VA_ARGS__), -1, 1)

static void check(ag_fn f, void *arg, struct ag_tensor **in, int nin,
		  const char *what)
{
	int rc = ag_gradcheck(f, arg, in, nin, NULL);

	cr_assert_eq(rc, 0, "%s: gradcheck: %s", what, ag_errmsg());
	rc = ag_gradgradcheck(f, arg, in, nin, NULL);
	cr_assert_eq(rc, 0, "%s: gradgradcheck: %s", what, ag_errmsg());
	for (int i = 0; i < nin; i++)
		ag_tensor_put(in[i]);
}

static int ret(struct ag_tensor *t, struct ag_tensor **out)
{
	*out = t;
	return t ? 0 : -ag_errcode();
}

/* ---- binary ops, broadcasting ---- */

#define BINARY(name, op)                                      \
	static int name(struct ag_tensor *const *in, int nin, \
			struct ag_tensor **out, void *arg)    \
	{                                                     \
		(void)nin;                                    \
		(void)arg;                                    \
		return ret(op(in[0], in[1]), out);            \
	}

BINARY(f_add, ag_add)
BINARY(f_sub, ag_sub)
BINARY(f_mul, ag_mul)
BINARY(f_div, ag_div)
BINARY(f_matmul, ag_matmul)
BINARY(f_maximum, ag_maximum)
BINARY(f_minimum, ag_minimum)

Test(gradcheck, add_broadcast)
{
	struct ag_tensor *in[2] = { IN(3, 4), IN(4) };

	check(f_add, NULL, in, 2, "[3,4] + [4]");
	in[0] = IN(3, 1);
	in[1] = IN(1, 4);
	check(f_add, NULL, in, 2, "[3,1] + [1,4]");
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, sub_broadcast)
{
	struct ag_tensor *in[2] = { IN(3, 4), IN(3, 1) };

	check(f_sub, NULL, in, 2, "[3,4] - [3,1]");
	in[0] = IN(4);
	in[1] = IN(2, 4);
	check(f_sub, NULL, in, 2, "[4] - [2,4]");
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, mul_broadcast)
{
	struct ag_tensor *in[2] = { IN(3, 1), IN(1, 4) };

	check(f_mul, NULL, in, 2, "[3,1] * [1,4]");
	in[0] = IN(3, 4);
	in[1] = IN(3, 4);
	check(f_mul, NULL, in, 2, "[3,4] * [3,4]");
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, div_broadcast)
{
	struct ag_tensor *in[2] = { IN(3, 4), input(1, SHAPE(4), 0.5, 1.5) };

	check(f_div, NULL, in, 2, "[3,4] / [4]");
	in[0] = IN(3, 1);
	in[1] = input(2, SHAPE(1, 4), -1.5, -0.5);
	check(f_div, NULL, in, 2, "[3,1] / [1,4]");
	AG_ASSERT_NO_LEAKS();
}

/* Random values tie with probability 0: no half gradients here. */
Test(gradcheck, maximum_minimum_broadcast)
{
	struct ag_tensor *in[2];

	in[0] = IN(3, 4);
	in[1] = IN(4);
	check(f_maximum, NULL, in, 2, "maximum");
	in[0] = IN(3, 1);
	in[1] = IN(2, 1, 4);
	check(f_minimum, NULL, in, 2, "minimum");
	in[0] = IN(3, 4);
	in[1] = IN(3, 4);
	check(f_maximum, NULL, in, 2, "maximum, same shape");
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, maximum_minimum_errors)
{
	struct ag_tensor *a = IN(3), *b = IN(4);
	struct ag_tensor *f = ag_zeros(AG_F32, 1, SHAPE(3));

	cr_assert_null(ag_maximum(a, b));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_maximum: shapes [3] and [4] cannot be broadcast");
	cr_assert_null(ag_minimum(a, f));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_minimum: expected both operands to have the same dtype");
	cr_assert_null(ag_maximum(NULL, a));
	AG_ASSERT_ERR(AG_EINVAL, "ag_maximum");
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(f);
	AG_ASSERT_NO_LEAKS();
}

/* Values, NaN, and ties: each side gets half, as torch 1.13. */
Test(gradcheck, maximum_minimum_values_and_ties)
{
	static const double av[4] = { 1, -2, 3, NAN };
	static const double bv[4] = { 1, 5, -3, 0 };
	struct ag_tensor *a = ag_from_data(AG_F64, 1, SHAPE(4), av);
	struct ag_tensor *b = ag_from_data(AG_F64, 1, SHAPE(4), bv);
	struct ag_tensor *mx, *mn, *l, *sum, *ga, *gb;
	static const double want_ga[4] = { 0.5 + 0.5, 0 + 1, 1 + 0, 1 + 1 };
	static const double want_gb[4] = { 0.5 + 0.5, 1 + 0, 0 + 1, 1 + 1 };

	ag_tensor_set_requires_grad(a, true);
	ag_tensor_set_requires_grad(b, true);
	mx = ag_maximum(a, b);
	mn = ag_minimum(a, b);
	cr_assert(mx && mn);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(ag__get(mx, i), fmax(av[i], bv[i]));
		cr_assert_eq(ag__get(mn, i), fmin(av[i], bv[i]));
	}
	cr_assert(isnan(ag__get(mx, 3)) && isnan(ag__get(mn, 3)));
	l = ag_add(mx, mn);
	sum = ag_sum(l);
	cr_assert_eq(ag_backward(sum, NULL, NULL), 0, "%s", ag_errmsg());
	ga = ag_tensor_grad(a);
	gb = ag_tensor_grad(b);
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(ag__get(ga, i), want_ga[i], "ga[%d]", i);
		cr_assert_eq(ag__get(gb, i), want_gb[i], "gb[%d]", i);
	}
	ag_tensor_put(ga);
	ag_tensor_put(gb);
	ag_tensor_put(sum);
	ag_tensor_put(l);
	ag_tensor_put(mx);
	ag_tensor_put(mn);
	ag_tensor_put(a);
	ag_tensor_put(b);
	AG_ASSERT_NO_LEAKS();
}

/* f32, b broadcast over a's rows: b's gradient sums where it won. */
Test(gradcheck, maximum_f32_broadcast_sums)
{
	static const float av[6] = { 0, 5, 2, 4, -1, 2 };
	static const float bv[3] = { 1, 1, 2 };
	static const float want_gb[3] = { 1, 1, 1 }; /* 1+0, 0+1, 0.5+0.5 */
	struct ag_tensor *a = ag_from_data(AG_F32, 2, SHAPE(2, 3), av);
	struct ag_tensor *b = ag_from_data(AG_F32, 1, SHAPE(3), bv);
	struct ag_tensor *m, *sum, *gb;

	ag_tensor_set_requires_grad(b, true);
	m = ag_maximum(a, b);
	sum = ag_sum(m);
	cr_assert_eq(ag_backward(sum, NULL, NULL), 0, "%s", ag_errmsg());
	gb = ag_tensor_grad(b);
	cr_assert_not_null(gb);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ag__get(gb, i), want_gb[i], "gb[%d]", i);
	ag_tensor_put(gb);
	ag_tensor_put(sum);
	ag_tensor_put(m);
	ag_tensor_put(a);
	ag_tensor_put(b);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, matmul)
{
	struct ag_tensor *in[2] = { IN(3, 4), IN(4, 2) };

	check(f_matmul, NULL, in, 2, "[3,4] @ [4,2]");
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, constant_input_is_not_checked)
{
	struct ag_tensor *in[2] = { IN(3, 4), IN(4) };

	ag_tensor_set_requires_grad(in[1], false);
	check(f_mul, NULL, in, 2, "[3,4] * constant [4]");
	AG_ASSERT_NO_LEAKS();
}

/* ---- unary ops ---- */

#define UNARY(name, expr)                                     \
	static int name(struct ag_tensor *const *in, int nin, \
			struct ag_tensor **out, void *arg)    \
	{                                                     \
		struct ag_tensor *a = in[0];                  \
		double s = arg ? *(const double *)arg : 0;    \
		(void)nin;                                    \
		(void)s;                                      \
		return ret(expr, out);                        \
	}

UNARY(f_neg, ag_neg(a))
UNARY(f_exp, ag_exp(a))
UNARY(f_log, ag_log(a))
UNARY(f_tanh, ag_tanh(a))
UNARY(f_sin, ag_sin(a))
UNARY(f_cos, ag_cos(a))
UNARY(f_sigmoid, ag_sigmoid(a))
UNARY(f_relu, ag_relu(a))
UNARY(f_pow, ag_pow_scalar(a, s))
UNARY(f_mul_scalar, ag_mul_scalar(a, s))
UNARY(f_add_scalar, ag_add_scalar(a, s))

Test(gradcheck, unary_math_gradients)
{
	struct ag_tensor *in[1];

	in[0] = IN(3, 4);
	check(f_neg, NULL, in, 1, "neg");
	in[0] = IN(3, 4);
	check(f_exp, NULL, in, 1, "exp");
	in[0] = input(2, SHAPE(3, 4), 0.5, 2);
	check(f_log, NULL, in, 1, "log");
	in[0] = IN(3, 4);
	check(f_tanh, NULL, in, 1, "tanh");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_sin, NULL, in, 1, "sin");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_cos, NULL, in, 1, "cos");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_sigmoid, NULL, in, 1, "sigmoid");
	in[0] = IN(3, 4); /* |x| >= 0.1: away from the kink */
	check(f_relu, NULL, in, 1, "relu");
	AG_ASSERT_NO_LEAKS();
}

UNARY(f_abs, ag_abs(a))
UNARY(f_expm1, ag_expm1(a))
UNARY(f_log1p, ag_log1p(a))
UNARY(f_sqrt, ag_sqrt(a))
UNARY(f_rsqrt, ag_rsqrt(a))
UNARY(f_square, ag_square(a))
UNARY(f_reciprocal, ag_reciprocal(a))
UNARY(f_tan, ag_tan(a))
UNARY(f_gelu, ag_gelu(a))
UNARY(f_silu, ag_silu(a))
UNARY(f_softplus, ag_softplus(a))
UNARY(f_erf, ag_erf(a))
UNARY(f_atan, ag_atan(a))
UNARY(f_clamp, ag_clamp(a, -0.5, 0.5))
UNARY(f_leaky_relu, ag_leaky_relu(a, 0.1))
UNARY(f_rsub_scalar, ag_rsub_scalar(a, s))

/* A leaf with the given values (f64). */
static struct ag_tensor *values(const double *v, int64_t n)
{
	struct ag_tensor *t = ag_from_data(AG_F64, 1, &n, v);

	cr_assert_not_null(t);
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

/* The rest of the unary ops of include/ag/ops.h: first and second derivatives. */
Test(gradcheck, unary_gradients_near_kinks_and_thresholds)
{
	/* away from clamp's bounds (+-0.5) and from 0 */
	static const double around_bounds[] = { -0.9, -0.6, -0.3, 0.2,
						0.45, 0.55, 0.8 };
	/* both sides of softplus's threshold (20) */
	static const double threshold[] = { -3, 0.7, 19, 21, 30 };
	struct ag_tensor *in[1];
	double s = 2.5;

	in[0] = IN(3, 4); /* |x| >= 0.1: away from the kink */
	check(f_abs, NULL, in, 1, "abs");
	in[0] = IN(3, 4);
	check(f_expm1, NULL, in, 1, "expm1");
	in[0] = input(2, SHAPE(3, 4), -0.5, 2);
	check(f_log1p, NULL, in, 1, "log1p");
	in[0] = input(2, SHAPE(3, 4), 0.5, 2);
	check(f_sqrt, NULL, in, 1, "sqrt");
	in[0] = input(2, SHAPE(3, 4), 0.5, 2);
	check(f_rsqrt, NULL, in, 1, "rsqrt");
	in[0] = IN(3, 4);
	check(f_square, NULL, in, 1, "square");
	in[0] = input(2, SHAPE(3, 4), 0.5, 2);
	check(f_reciprocal, NULL, in, 1, "reciprocal");
	in[0] = IN(3, 4);
	check(f_tan, NULL, in, 1, "tan");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_gelu, NULL, in, 1, "gelu");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_silu, NULL, in, 1, "silu");
	in[0] = input(2, SHAPE(3, 4), -3, 3);
	check(f_softplus, NULL, in, 1, "softplus");
	in[0] = values(threshold, 5);
	check(f_softplus, NULL, in, 1, "softplus past the threshold");
	in[0] = input(2, SHAPE(3, 4), -2, 2);
	check(f_erf, NULL, in, 1, "erf");
	in[0] = input(2, SHAPE(3, 4), -2, 2);
	check(f_atan, NULL, in, 1, "atan");
	in[0] = values(around_bounds, 7);
	check(f_clamp, NULL, in, 1, "clamp");
	in[0] = IN(3, 4);
	check(f_leaky_relu, NULL, in, 1, "leaky_relu");
	in[0] = IN(3, 4);
	check(f_rsub_scalar, &s, in, 1, "rsub_scalar");
	AG_ASSERT_NO_LEAKS();
}

/* x Phi(x), with erfc so that the far negative tail keeps its digits */
static double gelu_ref(double x)
{
	return 0.5 * x * erfc(-x / sqrt(2));
}

static double silu_ref(double x)
{
	return x / (1 + exp(-x));
}

static double softplus_ref(double x)
{
	return x > 20 ? x : log1p(exp(x));
}

/* Forward values in f64 against libm, including the special points. */
Test(gradcheck, unary_values_and_gradients_against_formulas)
{
	static const double v[] = { -25,  -3,	-1.5, -0.5, -0.1, -0.0, 0.0,
				    1e-8, 0.25, 0.75, 1.2,  3,	  19.5, 20.5 };
	int64_t n = sizeof(v) / sizeof(v[0]);
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, v);
	/*
	 * rel: the relative bound asserted.  gelu's far negative tail (x =
	 * -25) is good to ~1e-13 relative; torch 1.13 returns -0 there.
	 */
	struct {
		const char *name;
		struct ag_tensor *y;
		double (*ref)(double);
		double rel;
	} cases[] = {
		{ "abs", ag_abs(x), fabs, 0 },
		{ "expm1", ag_expm1(x), expm1, 4e-16 },
		{ "erf", ag_erf(x), erf, 4e-16 },
		{ "atan", ag_atan(x), atan, 4e-16 },
		{ "square", ag_square(x), NULL, 0 },
		{ "gelu", ag_gelu(x), gelu_ref, 2e-13 },
		{ "silu", ag_silu(x), silu_ref, 4e-16 },
		{ "softplus", ag_softplus(x), softplus_ref, 4e-16 },
		{ "tan", ag_tan(x), tan, 4e-16 },
	};
	struct ag_tensor *c = ag_clamp(x, -0.5, 1), *lk = ag_leaky_relu(x, 0.2);
	struct ag_tensor *rs = ag_rsub_scalar(x, 3), *swap = ag_clamp(x, 1, -1);

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		cr_assert_not_null(cases[k].y, "%s: %s", cases[k].name,
				   ag_errmsg());
		for (int64_t i = 0; i < n; i++) {
			double want = cases[k].ref ? cases[k].ref(v[i]) :
						     v[i] * v[i];
			double got = ag__get(cases[k].y, i);

			cr_assert(fabs(got - want) <=
					  cases[k].rel * fabs(want) + 1e-300,
				  "%s(%.17g) = %.17g, want %.17g",
				  cases[k].name, v[i], got, want);
		}
		ag_tensor_put(cases[k].y);
	}
	for (int64_t i = 0; i < n; i++) {
		cr_assert_eq(ag__get(c, i), fmin(fmax(v[i], -0.5), 1));
		cr_assert_eq(ag__get(lk, i), v[i] > 0 ? v[i] : 0.2 * v[i]);
		cr_assert_eq(ag__get(rs, i), 3 - v[i]);
		cr_assert_eq(ag__get(swap, i), -1.0); /* hi wins, as torch */
	}
	ag_tensor_put(c);
	ag_tensor_put(lk);
	ag_tensor_put(rs);
	ag_tensor_put(swap);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/*
 * At NaN, torch's relu backward (result <= 0 ? 0 : g) passes the
 * gradient and leaky_relu's (x > 0 ? g : g * slope) scales it; checked
 * against torch 1.13: relu [1.5, 0, 0, 1.5], leaky_relu(0.25) [0.375,
 * 0.375, 0.375, 1.5] for x = [nan, -1, 0, 2] and g = 1.5.  Through the
 * fused kernel, the composite (create_graph) path and relu_.
 */
static void relu_grads(enum ag_dtype dt, int which, bool create_graph)
{
	const double v[4] = { NAN, -1, 0, 2 }, relu_g[4] = { 1.5, 0, 0, 1.5 };
	const double leaky_g[4] = { 0.375, 0.375, 0.375, 1.5 };
	const double *want = which == 1 ? leaky_g : relu_g;
	struct ag_grad_opts o = { .create_graph = create_graph };
	struct ag_tensor *x = ag_zeros(dt, 1, SHAPE(4)), *y, *c = NULL;
	struct ag_tensor *g = ag_full(dt, 1, SHAPE(4), 1.5), *gx = NULL;

	for (int i = 0; i < 4; i++) {
		struct ag_tensor *e = ag_slice(x, 0, i, i + 1, 1);

		cr_assert_eq(ag_fill_(e, v[i]), 0);
		ag_tensor_put(e);
	}
	ag_tensor_set_requires_grad(x, true);
	if (which == 2) { /* relu_ on a non-leaf */
		y = c = ag_mul_scalar(x, 1);
		cr_assert_eq(ag_relu_(c), 0, "%s", ag_errmsg());
		ag_tensor_get(y);
	} else {
		y = which ? ag_leaky_relu(x, 0.25) : ag_relu(x);
	}
	cr_assert_not_null(y, "%s", ag_errmsg());
	cr_assert_eq(ag_grad(&y, &g, 1, &x, 1, &gx, &o), 0, "%s", ag_errmsg());
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ag__get(gx, i), want[i],
			     "op %d %s cg %d: g[%d] = %g, want %g", which,
			     ag_dtype_name(dt), create_graph, i, ag__get(gx, i),
			     want[i]);
	ag_tensor_put(gx);
	ag_tensor_put(c);
	ag_tensor_put(y);
	ag_tensor_put(g);
	ag_tensor_put(x);
}

Test(gradcheck, relu_gradient_at_nan)
{
	for (int which = 0; which < 3; which++)
		for (int cg = 0; cg < 2; cg++) {
			relu_grads(AG_F64, which, cg);
			relu_grads(AG_F32, which, cg);
		}
	AG_ASSERT_NO_LEAKS();
}

/*
 * mean is sum / n, as torch, and its backward g / n: 7 * (1 / 3) is an
 * ulp below 7 / 3 in double, and so is 0.30000000000000004 * (1 / 3)
 * below its quotient (torch 1.13 gives the quotients: 0x1.2aaaaaaaaaaabp+1
 * and 0x1.999999999999bp-4; f32 0x1.2aaaaap+1).
 */
static void mean_division(enum ag_dtype dt, bool dim, bool create_graph)
{
	const double v[3] = { 1, 2, 4 }, gv = 0.30000000000000004;
	struct ag_grad_opts o = { .create_graph = create_graph };
	struct ag_tensor *x = ag_zeros(dt, 1, SHAPE(3)), *m, *g, *gx = NULL;
	double want = dt == AG_F32 ? (double)(7.0f / 3.0f) : 7.0 / 3;
	double want_g = dt == AG_F32 ? (double)((float)gv / 3.0f) : gv / 3;

	for (int i = 0; i < 3; i++) {
		struct ag_tensor *e = ag_slice(x, 0, i, i + 1, 1);

		cr_assert_eq(ag_fill_(e, v[i]), 0);
		ag_tensor_put(e);
	}
	ag_tensor_set_requires_grad(x, true);
	m = dim ? ag_mean_dim(x, 0, false) : ag_mean(x);
	g = ag_scalar(dt, gv);
	cr_assert_not_null(m, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_item(m), want, "%s dim %d: %a, want %a",
		     ag_dtype_name(dt), dim, ag_tensor_item(m), want);
	cr_assert_eq(ag_grad(&m, &g, 1, &x, 1, &gx, &o), 0, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ag__get(gx, i), want_g,
			     "%s dim %d cg %d: g[%d] = %a, want %a",
			     ag_dtype_name(dt), dim, create_graph, i,
			     ag__get(gx, i), want_g);
	ag_tensor_put(gx);
	ag_tensor_put(g);
	ag_tensor_put(m);
	ag_tensor_put(x);
}

Test(gradcheck, mean_divides_by_n)
{
	for (int dim = 0; dim < 2; dim++)
		for (int cg = 0; cg < 2; cg++) {
			mean_division(AG_F64, dim, cg);
			mean_division(AG_F32, dim, cg);
		}
	cr_assert(7.0 / 3 != 7 * (1.0 / 3), "the case tells the two apart");
	AG_ASSERT_NO_LEAKS();
}

/* Positive domains: sqrt, rsqrt, reciprocal, log1p against libm. */
Test(gradcheck, positive_domain_values_from_1e_300_to_1e300)
{
	static const double v[] = { 1e-300, 1e-8, 0.25, 1, 2, 1e8, 1e300 };
	int64_t n = sizeof(v) / sizeof(v[0]);
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, v);
	struct ag_tensor *sq = ag_sqrt(x), *rsq = ag_rsqrt(x);
	struct ag_tensor *rec = ag_reciprocal(x), *l1p = ag_log1p(x);

	for (int64_t i = 0; i < n; i++) {
		cr_assert_float_eq(ag__get(sq, i), sqrt(v[i]),
				   4e-16 * sqrt(v[i]));
		cr_assert_float_eq(ag__get(rsq, i), 1 / sqrt(v[i]),
				   4e-16 / sqrt(v[i]));
		cr_assert_float_eq(ag__get(rec, i), 1 / v[i], 4e-16 / v[i]);
		cr_assert_float_eq(ag__get(l1p, i), log1p(v[i]),
				   4e-16 * log1p(v[i]));
	}
	ag_tensor_put(sq);
	ag_tensor_put(rsq);
	ag_tensor_put(rec);
	ag_tensor_put(l1p);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, unary_refuses_bad_parameters_and_dtypes)
{
	struct ag_tensor *x = IN(3);
	struct ag_tensor *i = ag_zeros(AG_I64, 1, SHAPE(3));

	cr_assert_null(ag_clamp(x, NAN, 1));
	AG_ASSERT_ERR(AG_EINVAL, "ag_clamp: bounds must not be NaN");
	cr_assert_null(ag_leaky_relu(x, INFINITY));
	AG_ASSERT_ERR(AG_EINVAL, "ag_leaky_relu: slope must be finite");
	cr_assert_null(ag_gelu(i));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_gelu: expected a floating point tensor");
	cr_assert_null(ag_sqrt(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_sqrt");
	cr_assert_null(ag_rsub_scalar(i, 1));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_rsub_scalar: expected a floating point");
	ag_tensor_put(i);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, with_scalar)
{
	static const double pows[] = { 2, 3, 0.5, -1.5, 1 };
	struct ag_tensor *in[1];
	double s;

	for (size_t i = 0; i < sizeof(pows) / sizeof(pows[0]); i++) {
		s = pows[i];
		in[0] = s == 2 || s == 3 || s == 1 ?
				IN(3, 4) :
				input(2, SHAPE(3, 4), 0.5, 2);
		check(f_pow, &s, in, 1, "pow_scalar");
	}
	s = 2.5;
	in[0] = IN(3, 4);
	check(f_mul_scalar, &s, in, 1, "mul_scalar");
	s = -1.5;
	in[0] = IN(3, 4);
	check(f_add_scalar, &s, in, 1, "add_scalar");
	AG_ASSERT_NO_LEAKS();
}

/* ---- softmax, log_softmax, logsumexp ---- */

struct lane_arg {
	int which; /* 0 softmax, 1 log_softmax, 2 logsumexp */
	int dim;
	bool keepdim;
	bool transpose; /* feed a non-contiguous view */
};

static int f_lane(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	const struct lane_arg *l = arg;
	struct ag_tensor *a = l->transpose ? ag_transpose(in[0], 0, 1) :
					     ag_tensor_get(in[0]);

	(void)nin;
	if (!a)
		return -ag_errcode();
	*out = l->which == 0 ? ag_softmax(a, l->dim) :
	       l->which == 1 ? ag_log_softmax(a, l->dim) :
			       ag_logsumexp(a, l->dim, l->keepdim);
	ag_tensor_put(a);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, softmax_family)
{
	static const struct lane_arg args[] = {
		{ 0, 1, false, false }, { 0, 0, false, false },
		{ 0, -1, false, true }, { 1, 1, false, false },
		{ 1, 0, false, true },	{ 2, 1, false, false },
		{ 2, 0, true, false },	{ 2, -1, false, true },
		{ 2, 1, true, true },
	};
	static const char *const names[] = { "softmax", "log_softmax",
					     "logsumexp" };

	for (size_t i = 0; i < sizeof(args) / sizeof(args[0]); i++) {
		struct ag_tensor *in[1] = { input(2, SHAPE(3, 4), -2, 2) };

		check(f_lane, (void *)&args[i], in, 1, names[args[i].which]);
	}
	AG_ASSERT_NO_LEAKS();
}

/* Values against a double reference; large inputs do not overflow. */
Test(gradcheck, softmax_family_values)
{
	static const double v[2][3] = { { 1, 2, 3 }, { 1000, 1001, -1000 } };
	struct ag_tensor *x = ag_from_data(AG_F64, 2, SHAPE(2, 3), v);
	struct ag_tensor *s = ag_softmax(x, 1), *ls = ag_log_softmax(x, 1);
	struct ag_tensor *lse = ag_logsumexp(x, 1, false);
	struct ag_tensor *lsek = ag_logsumexp(x, 0, true);
	struct ag_tensor *f = ag_from_data(AG_F32, 2, SHAPE(2, 3),
					   (float[]){ 1, 2, 3, 100, 100, 100 });
	struct ag_tensor *fs = ag_softmax(f, -1);

	cr_assert(s && ls && lse && lsek && fs);
	cr_assert_eq(ag_tensor_ndim(lse), 1);
	cr_assert_eq(ag_tensor_shape(lse)[0], 2);
	cr_assert_eq(ag_tensor_ndim(lsek), 2);
	cr_assert_eq(ag_tensor_shape(lsek)[0], 1);
	for (int r = 0; r < 2; r++) {
		double m = fmax(fmax(v[r][0], v[r][1]), v[r][2]), z = 0;

		for (int c = 0; c < 3; c++)
			z += exp(v[r][c] - m);
		cr_assert_float_eq(ag__get(lse, r), m + log(z), 1e-12);
		for (int c = 0; c < 3; c++) {
			double want = exp(v[r][c] - m) / z;

			cr_assert_float_eq(ag__get(s, r * 3 + c), want, 1e-15);
			cr_assert_float_eq(ag__get(ls, r * 3 + c),
					   v[r][c] - m - log(z), 1e-12);
			cr_assert_float_eq(
				ag__get(fs, r * 3 + c),
				r ? 1.0 / 3 :
				    exp(c + 1 - 3.0) /
						(exp(-2.0) + exp(-1.0) + 1),
				1e-6);
		}
	}
	for (int c = 0; c < 3; c++) {
		double m = fmax(v[0][c], v[1][c]);
		double want = m + log(exp(v[0][c] - m) + exp(v[1][c] - m));

		cr_assert_float_eq(ag__get(lsek, c), want, 1e-12);
	}
	ag_tensor_put(s);
	ag_tensor_put(ls);
	ag_tensor_put(lse);
	ag_tensor_put(lsek);
	ag_tensor_put(fs);
	ag_tensor_put(f);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, softmax_family_edges)
{
	struct ag_tensor *z = ag_scalar(AG_F64, 0.7);
	struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(2, 0));
	struct ag_tensor *i = ag_zeros(AG_I64, 1, SHAPE(3));
	struct ag_tensor *s, *l, *le;

	s = ag_softmax(z, 0);
	l = ag_logsumexp(z, -1, false);
	cr_assert(s && l);
	cr_assert_eq(ag__get(s, 0), 1.0); /* a 0-d lane of one */
	cr_assert_eq(ag__get(l, 0), 0.7);
	ag_tensor_put(s);
	ag_tensor_put(l);
	le = ag_logsumexp(e, 1, false); /* empty lanes: -inf, as torch */
	cr_assert(le && ag_tensor_numel(le) == 2);
	cr_assert(isinf(ag__get(le, 0)) && ag__get(le, 0) < 0);
	ag_tensor_put(le);
	cr_assert_null(ag_softmax(z, 1));
	AG_ASSERT_ERR(AG_EINVAL, "ag_softmax: dimension out of range");
	cr_assert_null(ag_log_softmax(i, 0));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_log_softmax: expected a floating point");
	cr_assert_null(ag_logsumexp(NULL, 0, false));
	AG_ASSERT_ERR(AG_EINVAL, "ag_logsumexp");
	ag_tensor_put(z);
	ag_tensor_put(e);
	ag_tensor_put(i);
	AG_ASSERT_NO_LEAKS();
}

struct red_arg {
	bool var; /* else max */
	int dim;
	bool flag; /* var: unbiased */
	bool keepdim;
};

static int f_red(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	const struct red_arg *r = arg;

	(void)nin;
	*out = r->var ? ag_var_dim(in[0], r->dim, r->flag, r->keepdim) :
			ag_max_dim(in[0], r->dim, r->keepdim);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, max_and_var_dim)
{
	static const struct red_arg args[] = {
		{ false, 1, false, false }, { false, 0, false, true },
		{ false, -1, false, true }, { true, 1, true, false },
		{ true, 0, false, true },   { true, -1, true, true },
	};

	for (size_t i = 0; i < sizeof(args) / sizeof(args[0]); i++) {
		struct ag_tensor *in[1] = { IN(3,
					       4) }; /* ties: probability 0 */

		check(f_red, (void *)&args[i], in, 1,
		      args[i].var ? "var_dim" : "max_dim");
	}
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, max_and_var_dim_values)
{
	static const double v[2][3] = { { 1, 4, 4 }, { -2, NAN, 7 } };
	struct ag_tensor *x = ag_from_data(AG_F64, 2, SHAPE(2, 3), v);
	struct ag_tensor *m, *mk, *var, *var1, *one, *sum, *g;
	static const double want_g[6] = { 0, 1, 0, 0, 1, 0 };

	ag_tensor_set_requires_grad(x, true);
	m = ag_max_dim(x, 1, false);
	mk = ag_max_dim(x, 0, true);
	var = ag_var_dim(x, 1, true, false);
	cr_assert(m && mk && var);
	cr_assert_eq(ag_tensor_ndim(m), 1);
	cr_assert_eq(ag__get(m, 0), 4.0);
	cr_assert(isnan(ag__get(m, 1))); /* NaN wins, as torch */
	cr_assert_eq(ag_tensor_shape(mk)[0], 1);
	cr_assert_eq(ag__get(mk, 0), 1.0);
	cr_assert_eq(ag__get(mk, 2), 7.0);
	cr_assert_float_eq(ag__get(var, 0), 3.0, 1e-15); /* mean 3: (4+1+1)/2 */
	cr_assert(isnan(ag__get(var, 1)));
	/* the gradient goes to the first maximum (index 1 of 4, 4) */
	sum = ag_sum(m);
	cr_assert_eq(ag_backward(sum, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ag__get(g, i), want_g[i], "g[%d]", i);
	one = ag_ones(AG_F64, 1, SHAPE(1));
	var1 = ag_var_dim(one, 0, true, false); /* n - 1 = 0 */
	cr_assert(var1 && isnan(ag__get(var1, 0)));
	ag_tensor_put(var1);
	ag_tensor_put(one);
	ag_tensor_put(g);
	ag_tensor_put(sum);
	ag_tensor_put(m);
	ag_tensor_put(mk);
	ag_tensor_put(var);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/*
 * The backward of a max keeps one index per lane, not a mask of the
 * input's size: over an expand of one element to 2^24, the recorded node
 * holds 8 bytes, not 64 MiB, and the gradient still reaches the first
 * maximum (all of them tie: index 0).
 */
Test(gradcheck, max_dim_saves_indices_not_a_mask)
{
	int64_t one[1] = { 1 }, big[1] = { INT64_C(1) << 24 };
	struct ag_tensor *x = ag_full(AG_F32, 1, one, 3);
	struct ag_tensor *e, *m, *g;
	long before;

	ag_tensor_set_requires_grad(x, true);
	e = ag_expand(x, 1, big);
	before = ag__live_bytes();
	m = ag_max_dim(e, 0, false);
	cr_assert_not_null(m, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_item(m), 3.0);
	cr_assert_lt(ag__live_bytes() - before, 1024, "max_dim keeps %ld bytes",
		     ag__live_bytes() - before);
	cr_assert_eq(ag_backward(m, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_eq(ag__get(g, 0), 1.0);
	ag_tensor_put(g);
	ag_tensor_put(m);
	ag_tensor_put(e);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* Address space in use, from /proc; 0 if unknown. */
static size_t vm_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long pages = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%lu", &pages) != 1)
		pages = 0;
	fclose(f);
	return pages * (size_t)sysconf(_SC_PAGESIZE);
}

/*
 * With no gradient needed nothing of the input's size is made: a max over
 * an expand to 2^28 f64 (a 2 GiB mask before) succeeds with 512 MiB of
 * address space to spare.
 */
Test(gradcheck, max_dim_without_grad_allocates_no_mask)
{
	int64_t one[1] = { 1 }, big[1] = { INT64_C(1) << 28 };
	struct ag_tensor *x, *e, *m;
	size_t vm;
	struct rlimit rl;

	/* before anything is made: a skipped test must leave nothing live */
#if defined(__SANITIZE_ADDRESS__)
	cr_skip_test("ASan reserves address space; no RLIMIT_AS under it");
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
	cr_skip_test("ASan reserves address space; no RLIMIT_AS under it");
#endif
#endif
	x = ag_full(AG_F64, 1, one, -2);
	e = ag_expand(x, 1, big);
	vm = vm_bytes();
	cr_assert_gt(vm, 0);
	rl.rlim_cur = rl.rlim_max = vm + (512u << 20);
	cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
	m = ag_max_dim(e, 0, true);
	cr_assert_not_null(m, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_item(m), -2.0);
	ag_tensor_put(m);
	ag_tensor_put(e);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, max_and_var_dim_errors)
{
	struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(2, 0));
	struct ag_tensor *i = ag_zeros(AG_I64, 1, SHAPE(3));
	struct ag_tensor *z = ag_scalar(AG_F32, 2.5), *m;

	cr_assert_null(ag_max_dim(e, 1, false));
	AG_ASSERT_ERR(AG_EINVAL,
		      "ag_max_dim: cannot take the max over dim 1 of size 0");
	cr_assert_null(ag_max_dim(e, 2, false));
	AG_ASSERT_ERR(AG_EINVAL, "ag_max_dim: dimension out of range");
	cr_assert_null(ag_var_dim(i, 0, true, false));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_var_dim: expected a floating point");
	m = ag_max_dim(z, 0, false); /* 0-d: itself */
	cr_assert(m && ag_tensor_ndim(m) == 0 && ag__get(m, 0) == 2.5);
	ag_tensor_put(m);
	ag_tensor_put(z);
	ag_tensor_put(e);
	ag_tensor_put(i);
	AG_ASSERT_NO_LEAKS();
}

/* ---- reductions ---- */

struct dim_arg {
	int dim;
	bool keepdim;
};

static int f_sum(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_sum(in[0]), out);
}

static int f_mean(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_mean(in[0]), out);
}

static int f_sum_dim(struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, void *arg)
{
	const struct dim_arg *d = arg;

	(void)nin;
	return ret(ag_sum_dim(in[0], d->dim, d->keepdim), out);
}

static int f_mean_dim(struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, void *arg)
{
	const struct dim_arg *d = arg;

	(void)nin;
	return ret(ag_mean_dim(in[0], d->dim, d->keepdim), out);
}

Test(gradcheck, reductions)
{
	static const struct dim_arg dims[] = {
		{ 0, false }, { 1, true }, { -1, false }, { 0, true }
	};
	struct ag_tensor *in[1];

	in[0] = IN(3, 4);
	check(f_sum, NULL, in, 1, "sum");
	in[0] = IN(3, 4);
	check(f_mean, NULL, in, 1, "mean");
	for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
		struct dim_arg d = dims[i];

		in[0] = IN(3, 4);
		check(f_sum_dim, &d, in, 1, "sum_dim");
		in[0] = IN(2, 3, 4);
		check(f_mean_dim, &d, in, 1, "mean_dim");
	}
	AG_ASSERT_NO_LEAKS();
}

/* ---- views ---- */

static int f_reshape(struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_reshape(in[0], 2, SHAPE(2, 6)), out);
}

static int f_transpose(struct ag_tensor *const *in, int nin,
		       struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_transpose(in[0], 0, 1), out);
}

static int f_expand(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_expand(in[0], 3, SHAPE(2, 3, 4)), out);
}

static int f_slice(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		   void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_slice(in[0], 1, 1, 5, 2), out);
}

/* a view, then an op that reads it through its strides */
static int f_transpose_tanh(struct ag_tensor *const *in, int nin,
			    struct ag_tensor **out, void *arg)
{
	struct ag_tensor *t = ag_transpose(in[0], 0, 1);
	struct ag_tensor *r = ag_tanh(t);

	(void)nin;
	(void)arg;
	ag_tensor_put(t);
	return ret(r, out);
}

Test(gradcheck, views)
{
	struct ag_tensor *in[1];

	in[0] = IN(3, 4);
	check(f_reshape, NULL, in, 1, "reshape");
	in[0] = IN(3, 4);
	check(f_transpose, NULL, in, 1, "transpose");
	in[0] = IN(3, 1);
	check(f_expand, NULL, in, 1, "expand [3,1] -> [2,3,4]");
	in[0] = IN(3, 5);
	check(f_slice, NULL, in, 1, "slice 1:5:2");
	in[0] = IN(3, 4);
	check(f_transpose_tanh, NULL, in, 1, "tanh(transpose)");
	AG_ASSERT_NO_LEAKS();
}

/* ---- non-contiguous inputs ---- */

/* A leaf requiring grad that is a transposed view: [rows, cols]. */
static struct ag_tensor *transposed_input(int64_t rows, int64_t cols)
{
	struct ag_tensor *base = ag_rand(gen, AG_F64, 2, SHAPE(cols, rows));
	struct ag_tensor *t = ag_transpose(base, 0, 1);

	ag_tensor_put(base);
	cr_assert(!ag_tensor_is_contiguous(t));
	cr_assert(ag_tensor_is_leaf(t));
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

/* A leaf requiring grad that is every other column of a [rows, 2 cols]. */
static struct ag_tensor *strided_input(int64_t rows, int64_t cols)
{
	struct ag_tensor *base =
		ag_randn(gen, AG_F64, 2, SHAPE(rows, 2 * cols));
	struct ag_tensor *t = ag_slice(base, 1, 0, 2 * cols, 2);

	ag_tensor_put(base);
	cr_assert(!ag_tensor_is_contiguous(t));
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

Test(gradcheck, non_contiguous_inputs)
{
	struct ag_tensor *in[2];
	struct dim_arg d = { 1, false };
	double s = 3;

	in[0] = transposed_input(3, 4);
	check(f_tanh, NULL, in, 1, "tanh of a transposed leaf");
	in[0] = transposed_input(3, 4);
	in[1] = IN(4);
	check(f_mul, NULL, in, 2, "transposed [3,4] * [4]");
	in[0] = transposed_input(3, 4);
	in[1] = transposed_input(4, 2);
	check(f_matmul, NULL, in, 2, "transposed @ transposed");
	in[0] = transposed_input(3, 4);
	check(f_sum_dim, &d, in, 1, "sum_dim of a transposed leaf");
	in[0] = strided_input(3, 4);
	check(f_pow, &s, in, 1, "pow of a strided leaf");
	in[0] = strided_input(3, 4);
	in[1] = transposed_input(3, 4);
	check(f_div, NULL, in, 2, "strided / transposed");
	AG_ASSERT_NO_LEAKS();
}

/* ---- a composite, against torch ---- */

/* sum(sigmoid(x)^3 * x): first and second derivative as gen_refs.py */
static int f_sig3(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	struct ag_tensor *s = ag_sigmoid(in[0]);
	struct ag_tensor *c = ag_pow_scalar(s, 3);
	struct ag_tensor *m = ag_mul(c, in[0]);

	(void)nin;
	(void)arg;
	*out = ag_sum(m);
	ag_tensor_put(s);
	ag_tensor_put(c);
	ag_tensor_put(m);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, composite_matches_torch)
{
	int64_t n = 4;
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, REF_X);
	struct ag_tensor *y, *g, *gs, *gg;
	struct ag_grad_opts cg = { .create_graph = true };

	ag_tensor_set_requires_grad(x, true);
	cr_assert_eq(ag_gradcheck(f_sig3, NULL, &x, 1, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(f_sig3, NULL, &x, 1, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(f_sig3(&x, 1, &y, NULL), 0);
	cr_assert_eq(ag_grad(&y, NULL, 1, &x, 1, &g, &cg), 0, "%s",
		     ag_errmsg());
	gs = ag_sum(g);
	cr_assert_eq(ag_grad(&gs, NULL, 1, &x, 1, &gg, NULL), 0, "%s",
		     ag_errmsg());
	for (int i = 0; i < 4; i++) {
		cr_assert_float_eq(ag__get(g, i), REF_GRAD1[i], 1e-13);
		cr_assert_float_eq(ag__get(gg, i), REF_GRAD2[i], 1e-13);
	}
	ag_tensor_put(gg);
	ag_tensor_put(gs);
	ag_tensor_put(g);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* mean(exp(W @ reshape(x, [4,1]) + reshape(b, [2,1]))), as gen_refs.py */
static int f_mm_chain(struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, void *arg)
{
	struct ag_tensor *xc = ag_reshape(in[1], 2, SHAPE(4, 1));
	struct ag_tensor *bc = ag_reshape(in[2], 2, SHAPE(2, 1));
	struct ag_tensor *m = ag_matmul(in[0], xc);
	struct ag_tensor *a = ag_add(m, bc);
	struct ag_tensor *e = ag_exp(a);

	(void)nin;
	(void)arg;
	*out = ag_mean(e);
	ag_tensor_put(xc);
	ag_tensor_put(bc);
	ag_tensor_put(m);
	ag_tensor_put(a);
	ag_tensor_put(e);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, matmul_chain_matches_torch)
{
	struct ag_tensor *in[3] = {
		ag_from_data(AG_F64, 2, SHAPE(2, 4), REF_W),
		ag_from_data(AG_F64, 1, SHAPE(4), REF_X),
		ag_from_data(AG_F64, 1, SHAPE(2), REF_B),
	};
	static const double *want[3] = { REF_MM_WGRAD, REF_MM_XGRAD,
					 REF_MM_BGRAD };
	struct ag_tensor *r;

	for (int i = 0; i < 3; i++)
		ag_tensor_set_requires_grad(in[i], true);
	cr_assert_eq(f_mm_chain(in, 3, &r, NULL), 0);
	cr_assert_eq(ag_backward(r, NULL, NULL), 0, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++) {
		struct ag_tensor *g = ag_tensor_grad(in[i]);

		for (int64_t k = 0; k < ag_tensor_numel(g); k++)
			cr_assert_float_eq(ag__get(g, k), want[i][k], 1e-13,
					   "input %d element %lld", i,
					   (long long)k);
		ag_tensor_put(g);
		ag_tensor_zero_grad(in[i]);
	}
	ag_tensor_put(r);
	check(f_mm_chain, NULL, in, 3, "matmul chain");
	AG_ASSERT_NO_LEAKS();
}

/* ---- wrong gradients must fail ---- */

/* a + b * detach(b): backward sees d/db = b, the truth is 2b */
static int f_detached(struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, void *arg)
{
	struct ag_tensor *d = ag_detach(in[1]);
	struct ag_tensor *m = ag_mul(in[1], d);

	(void)nin;
	(void)arg;
	*out = ag_add(in[0], m);
	ag_tensor_put(d);
	ag_tensor_put(m);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, wrong_gradient_fails_with_message)
{
	static const double av[4] = { 0.3, -0.2, 0.7, 1.1 };
	static const double bv[4] = { 0, 0, 0, 0.25 };
	struct ag_tensor *in[2] = {
		ag_from_data(AG_F64, 1, SHAPE(4), av),
		ag_from_data(AG_F64, 1, SHAPE(4), bv),
	};

	ag_tensor_set_requires_grad(in[0], true);
	ag_tensor_set_requires_grad(in[1], true);
	cr_assert_eq(ag_gradcheck(f_detached, NULL, in, 2, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gradcheck: Jacobian mismatch for output 0 with respect to input 1, element 3: numerical 0.5, analytical 0.25");
	/* the values are restored after the perturbations */
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(ag__get(in[0], i), av[i]);
		cr_assert_eq(ag__get(in[1], i), bv[i]);
	}
	/*
	 * gradgradcheck first checks the first derivatives as create_graph
	 * computes them, and finds the same mismatch.
	 */
	cr_assert_eq(ag_gradgradcheck(f_detached, NULL, in, 2, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gradgradcheck: Jacobian mismatch for output 0 with respect to input 1, element 3: numerical 0.5, analytical 0.25");
	ag_tensor_put(in[0]);
	ag_tensor_put(in[1]);
	AG_ASSERT_NO_LEAKS();
}

/* first derivative right, second wrong: x^2 computed as x * detach(x) * 2 - x * detach(x) ... */
static int f_bad_second(struct ag_tensor *const *in, int nin,
			struct ag_tensor **out, void *arg)
{
	/*
	 * y = x^3 / 3 in value; its backward is taken through
	 * x^2 * detach-free ops, but the forward splits x^3 as
	 * detach(x)^2 * x - detach(x)^3 * 2/3: first derivative
	 * detach(x)^2 = x^2 (right), second derivative 0 (wrong: 2x).
	 */
	struct ag_tensor *d = ag_detach(in[0]);
	struct ag_tensor *d2 = ag_mul(d, d);
	struct ag_tensor *d3 = ag_mul(d2, d);
	struct ag_tensor *a = ag_mul(d2, in[0]);
	struct ag_tensor *b = ag_mul_scalar(d3, 2.0 / 3.0);

	(void)nin;
	(void)arg;
	*out = ag_sub(a, b);
	ag_tensor_put(d);
	ag_tensor_put(d2);
	ag_tensor_put(d3);
	ag_tensor_put(a);
	ag_tensor_put(b);
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, wrong_second_derivative_fails_gradgradcheck_only)
{
	struct ag_tensor *x = input(1, SHAPE(3), 0.5, 1.5);

	cr_assert_eq(ag_gradcheck(f_bad_second, NULL, &x, 1, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(f_bad_second, NULL, &x, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gradgradcheck: Jacobian mismatch for output 0 with respect to input 0, element 0");
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- argument errors ---- */

static int f_fail(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	(void)in;
	(void)nin;
	(void)out;
	(void)arg;
	return ag__err(AG_ESHAPE, "f_fail: deliberate");
}

static int f_to_f32_sum(struct ag_tensor *const *in, int nin,
			struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	*out = ag_zeros(AG_F32, 0, NULL);
	(void)in;
	return *out ? 0 : -ag_errcode();
}

Test(gradcheck, refuses_f32_expanded_inputs_and_bad_options)
{
	struct ag_tensor *x = IN(3);
	struct ag_tensor *f = ag_zeros(AG_F32, 1, SHAPE(3));
	struct ag_tensor *c = ag_zeros(AG_F64, 1, SHAPE(3));
	struct ag_tensor *e = ag_expand(c, 2, SHAPE(2, 3));
	struct ag_gradcheck_opts bad = { 0, 1e-5, 1e-3 };

	ag_tensor_set_requires_grad(f, true);
	cr_assert_eq(ag_gradcheck(f_tanh, NULL, &f, 1, NULL), -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "input 0 is f32");
	cr_assert_eq(ag_gradgradcheck(f_tanh, NULL, &f, 1, NULL), -AG_EDTYPE);
	ag_clear_error();
	cr_assert_eq(ag_gradcheck(f_tanh, NULL, &c, 1, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "at least one input must require grad");
	cr_assert_eq(ag_gradgradcheck(f_tanh, NULL, &c, 1, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "at least one input must require grad");
	ag_tensor_set_requires_grad(e, true);
	cr_assert_eq(ag_gradcheck(f_tanh, NULL, &e, 1, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "overlapping memory");
	cr_assert_eq(ag_gradcheck(f_fail, NULL, &x, 1, NULL), -AG_ESHAPE);
	AG_ASSERT_ERR(AG_ESHAPE, "deliberate");
	cr_assert_eq(ag_gradgradcheck(f_fail, NULL, &x, 1, NULL), -AG_ESHAPE);
	AG_ASSERT_ERR(AG_ESHAPE, "deliberate");
	cr_assert_eq(ag_gradcheck(f_to_f32_sum, NULL, &x, 1, NULL), -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "f64 outputs");
	cr_assert_eq(ag_gradcheck(f_tanh, NULL, &x, 1, &bad), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "eps > 0");
	cr_assert_eq(ag_gradcheck(NULL, NULL, &x, 1, NULL), -AG_EINVAL);
	ag_clear_error();
	cr_assert_eq(ag_gradcheck(f_tanh, NULL, NULL, 0, NULL), -AG_EINVAL);
	ag_clear_error();
	ag_tensor_put(x);
	ag_tensor_put(f);
	ag_tensor_put(c);
	ag_tensor_put(e);
	AG_ASSERT_NO_LEAKS();
}

/* ---- shapes at the edges: 0-d, size-1 dims, 3-d views ---- */

static int f_expand_row(struct ag_tensor *const *in, int nin,
			struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_expand(in[0], 2, SHAPE(3, 4)), out);
}

static int f_slice3(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_slice(in[0], 0, 1, 7, 3), out);
}

static int f_transpose3(struct ag_tensor *const *in, int nin,
			struct ag_tensor **out, void *arg)
{
	struct ag_tensor *t = ag_transpose(in[0], 0, 2);
	struct ag_tensor *r = ag_reshape(t, 2, SHAPE(4, 6));

	(void)nin;
	(void)arg;
	ag_tensor_put(t);
	return ret(r, out);
}

Test(gradcheck, edge_shapes)
{
	struct dim_arg d0 = { 0, false }, d0k = { 0, true };
	struct ag_tensor *in[2];

	in[0] = input(0, NULL, 0.5, 1.5);
	in[1] = IN(3);
	check(f_mul, NULL, in, 2, "0-d * [3]");
	in[0] = input(0, NULL, 0.5, 1.5);
	in[1] = input(0, NULL, 0.5, 1.5);
	check(f_div, NULL, in, 2, "0-d / 0-d");
	in[0] = input(0, NULL, 0.5, 1.5);
	check(f_tanh, NULL, in, 1, "tanh 0-d");
	in[0] = IN(5);
	check(f_sum_dim, &d0, in, 1, "sum_dim [5] -> 0-d");
	in[0] = IN(5);
	check(f_mean_dim, &d0k, in, 1, "mean_dim [5] keepdim");
	in[0] = IN(4);
	check(f_expand_row, NULL, in, 1, "expand [4] -> [3,4]");
	in[0] = IN(8, 2);
	check(f_slice3, NULL, in, 1, "slice 1:7:3");
	in[0] = IN(2, 3, 4);
	check(f_transpose3, NULL, in, 1, "transpose 3-d then reshape");
	in[0] = IN(1, 4);
	in[1] = IN(4, 1);
	check(f_matmul, NULL, in, 2, "[1,4] @ [4,1]");
	AG_ASSERT_NO_LEAKS();
}

static int f_identity(struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	*out = ag_tensor_get(in[0]);
	return 0;
}

static int f_constant(struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, void *arg)
{
	(void)in;
	(void)nin;
	(void)arg;
	return ret(ag_ones(AG_F64, 1, SHAPE(2)), out);
}

Test(gradcheck, identity_and_constant)
{
	struct ag_tensor *in[1] = { IN(3) };

	/* the output is the input itself: a leaf as root */
	check(f_identity, NULL, in, 1, "identity");
	in[0] = IN(3);
	cr_assert_eq(ag_gradcheck(f_constant, NULL, in, 1, NULL), 0, "%s",
		     ag_errmsg());
	ag_tensor_put(in[0]);
	AG_ASSERT_NO_LEAKS();
}

/* ---- a custom function with a wrong backward ---- */

/* forward y = x^2, backward claims grad * x (the truth is grad * 2x) */
static int square_forward(struct ag_ctx *ctx, struct ag_tensor *const *in,
			  int nin, struct ag_tensor **out, int nout)
{
	(void)nin;
	(void)nout;
	out[0] = ag_mul(in[0], in[0]);
	if (!out[0])
		return -ag_errcode();
	return ag_ctx_save_for_backward(ctx, in, 1);
}

static int square_wrong_backward(struct ag_ctx *ctx,
				 struct ag_tensor *const *grad_out, int nout,
				 struct ag_tensor **grad_in, int nin)
{
	struct ag_tensor **saved;
	int n, rc;

	(void)nout;
	(void)nin;
	rc = ag_ctx_saved_tensors(ctx, &saved, &n);
	if (rc)
		return rc;
	grad_in[0] = ag_mul(grad_out[0], saved[0]);
	return grad_in[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops square_wrong = {
	.name = "SquareWrong",
	.forward = square_forward,
	.backward = square_wrong_backward,
};

/* One input, one output, through the custom function whose ops are arg. */
static int f_custom(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	const struct ag_function_ops *ops = arg;

	(void)nin;
	return ag_function_apply(ops, in, 1, out, 1, NULL);
}

/*
 * Backward right without create_graph, 1.5 times too large with it: as an
 * op whose composed derivative (double backward's path) disagrees with its
 * fused kernel.
 */
static int square_two_paths_backward(struct ag_ctx *ctx,
				     struct ag_tensor *const *grad_out,
				     int nout, struct ag_tensor **grad_in,
				     int nin)
{
	struct ag_tensor **saved, *two_x;
	int n, rc;

	(void)nout;
	(void)nin;
	rc = ag_ctx_saved_tensors(ctx, &saved, &n);
	if (rc)
		return rc;
	two_x = ag_mul_scalar(saved[0], ag_is_grad_enabled() ? 3.0 : 2.0);
	grad_in[0] = two_x ? ag_mul(grad_out[0], two_x) : NULL;
	ag_tensor_put(two_x);
	return grad_in[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops square_two_paths = {
	.name = "SquareTwoPaths",
	.forward = square_forward,
	.backward = square_two_paths_backward,
};

Test(gradcheck, create_graph_path_is_checked)
{
	static const double xv[3] = { 0.5, -1.0, 2.0 };
	struct ag_tensor *x = ag_from_data(AG_F64, 1, SHAPE(3), xv);

	ag_tensor_set_requires_grad(x, true);
	cr_assert_eq(ag_gradcheck(f_custom, (void *)&square_two_paths, &x, 1,
				  NULL),
		     0, "%s", ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(f_custom, (void *)&square_two_paths, &x,
				      1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gradgradcheck: Jacobian mismatch for output 0 with respect to input 0, element 0: numerical 1, analytical 1.5");
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(gradcheck, wrong_custom_function_fails)
{
	static const double xv[3] = { 0.5, -1.0, 2.0 };
	struct ag_tensor *x = ag_from_data(AG_F64, 1, SHAPE(3), xv);

	ag_tensor_set_requires_grad(x, true);
	cr_assert_eq(ag_gradcheck(f_custom, (void *)&square_wrong, &x, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gradcheck: Jacobian mismatch for output 0 with respect to input 0, element 0: numerical 1, analytical 0.5");
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}
