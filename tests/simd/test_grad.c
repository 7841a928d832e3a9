// SPDX-License-Identifier: MIT
/*
 * Derivative kernels: against central finite differences of the forward
 * kernels in f64 on every ISA path, and against the hand formulas and
 * torch's conventions at the points where finite differences say nothing
 * (kinks, ties, thresholds, special exponents).
 */
#include <criterion/criterion.h>
#include <stdio.h>

#include "common.h"

static double f1(const struct ag_k_isa *t, enum ag_k_unary op, double x,
		 const struct ag_k_params *p)
{
	double y;

	t->unary_f64(op, 1, &x, 1, &y, 1, p);
	return y;
}

/* where the derivative has a kink or the domain ends */
static bool near_kink(enum ag_k_unary op, double x, const struct ag_k_params *p)
{
	switch (op) {
	case AG_K_ABS:
	case AG_K_RELU:
	case AG_K_LEAKY_RELU:
		return fabs(x) < 1e-3;
	case AG_K_CLAMP:
		return fabs(x - p->p0) < 1e-3 || fabs(x - p->p1) < 1e-3;
	case AG_K_TAN:
		return fabs(cos(x)) < 0.05;
	default:
		return false;
	}
}

static void fd_unary(const struct ag_k_isa *t, enum ag_k_unary op,
		     const struct ag_k_params *p)
{
	struct rng r = { 4242 + (uint64_t)op };
	unsigned needs = ag_k_unary_bwd_needs(op);
	int i;

	for (i = 0; i < 300; i++) {
		double lo = -2.5, hi = 2.5, x, h, fd, y, g, gx;

		if (op == AG_K_LOG || op == AG_K_SQRT || op == AG_K_RSQRT ||
		    op == AG_K_POW_SCALAR)
			lo = 0.1, hi = 3;
		if (op == AG_K_LOG1P)
			lo = -0.8;
		if (op == AG_K_SOFTPLUS && i % 3 == 0)
			lo = 15, hi = 25; /* around the threshold */
		x = rng_range(&r, lo, hi);
		if (near_kink(op, x, p) ||
		    (op == AG_K_SOFTPLUS && fabs(x - 20) < 1e-3))
			continue;
		/* steps scale with |x| so 1/x near 0 stays resolved */
		h = 1e-5 * fmax(0.01, fabs(x));
		fd = (f1(t, op, x + h, p) - f1(t, op, x - h, p)) / (2 * h);
		y = f1(t, op, x, p);
		g = rng_range(&r, -2, 2);
		t->unary_bwd_f64(op, 1, &g, 1, needs & AG_K_NEEDS_X ? &x : NULL,
				 1, needs & AG_K_NEEDS_Y ? &y : NULL, 1, &gx, 1,
				 p);
		cr_assert(
			fabs(gx - g * fd) <= 2e-7 * (1 + fabs(g * fd)),
			"%s op %d x=%.17g: g f'(x) = %.17g, finite difference %.17g",
			t->name, op, x, gx, g * fd);
	}
}

Test(grad, unary_finite_differences)
{
	static const double exps[] = { 0, 1, 2, 3, 0.5, -1, -2, -0.5, 1.7 };
	int k, op;
	size_t e;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (op = 0; op < AG_K_UNARY_COUNT; op++) {
			struct ag_k_params p = { -0.7, 1.2 };

			if (op == AG_K_LEAKY_RELU || op == AG_K_MUL_SCALAR ||
			    op == AG_K_ADD_SCALAR || op == AG_K_RSUB_SCALAR)
				p.p0 = 0.3;
			if (op != AG_K_POW_SCALAR) {
				fd_unary(t, op, &p);
				continue;
			}
			for (e = 0; e < sizeof(exps) / sizeof(exps[0]); e++) {
				p.p0 = exps[e];
				fd_unary(t, op, &p);
			}
		}
	}
}

static void fd_binary(const struct ag_k_isa *t, enum ag_k_binary op)
{
	struct rng r = { 777 + (uint64_t)op };
	int i;

	for (i = 0; i < 300; i++) {
		double a = rng_range(&r, op == AG_K_POW ? 0.1 : -3, 3);
		double b = rng_range(&r, -3, 3);
		double g = rng_range(&r, -2, 2);
		double ha = 1e-5 * fmax(1, fabs(a)),
		       hb = 1e-5 * fmax(1, fabs(b));
		double ap = a + ha, am = a - ha, bp = b + hb, bm = b - hb;
		double yp, ym, fda, fdb, ga, gb;

		if (op == AG_K_DIV && fabs(b) < 0.1)
			continue;
		if ((op == AG_K_MAXIMUM || op == AG_K_MINIMUM) &&
		    fabs(a - b) < 1e-3)
			continue;
		t->binary_f64(op, 1, &ap, 1, &b, 1, &yp, 1);
		t->binary_f64(op, 1, &am, 1, &b, 1, &ym, 1);
		fda = (yp - ym) / (2 * ha);
		t->binary_f64(op, 1, &a, 1, &bp, 1, &yp, 1);
		t->binary_f64(op, 1, &a, 1, &bm, 1, &ym, 1);
		fdb = (yp - ym) / (2 * hb);
		t->binary_bwd_f64(op, 1, &g, 1, &a, 1, &b, 1, &ga, 1, &gb, 1);
		cr_assert(fabs(ga - g * fda) <= 2e-7 * (1 + fabs(g * fda)),
			  "%s binary %d a=%g b=%g: ga %.17g vs %.17g", t->name,
			  op, a, b, ga, g * fda);
		cr_assert(fabs(gb - g * fdb) <= 2e-7 * (1 + fabs(g * fdb)),
			  "%s binary %d a=%g b=%g: gb %.17g vs %.17g", t->name,
			  op, a, b, gb, g * fdb);
	}
}

Test(grad, binary_finite_differences)
{
	int k, op;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (op = 0; op < AG_K_BINARY_COUNT; op++)
			fd_binary(t, op);
	}
}

/* One unary derivative at one point, f32 and f64, every path. */
static void check_ubwd(enum ag_k_unary op, double p0, double p1, double g,
		       double x, double y, double want)
{
	struct ag_k_params p = { p0, p1 };
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		float g32 = (float)g, x32 = (float)x, y32 = (float)y, r32;
		double r64;

		if (!t)
			continue;
		t->unary_bwd_f64(op, 1, &g, 1, &x, 1, &y, 1, &r64, 1, &p);
		t->unary_bwd_f32(op, 1, &g32, 1, &x32, 1, &y32, 1, &r32, 1, &p);
		cr_assert(r64 == want || (isnan(r64) && isnan(want)),
			  "%s op %d at x=%g y=%g: %.17g, want %.17g", t->name,
			  op, x, y, r64, want);
		cr_assert(r32 == (float)want || (isnan(r32) && isnan(want)),
			  "%s f32 op %d at x=%g y=%g: %.9g, want %.9g", t->name,
			  op, x, y, r32, want);
	}
}

Test(grad, hand_formulas_and_torch_conventions)
{
	double g = 1.5, y = 0.375;

	/* fused formulas read y, as torch's saved result */
	check_ubwd(AG_K_TANH, 0, 0, g, 9, y, g * (1 - y * y));
	check_ubwd(AG_K_SIGMOID, 0, 0, g, 9, y, g * (y * (1 - y)));
	check_ubwd(AG_K_EXP, 0, 0, g, 9, y, g * y);
	check_ubwd(AG_K_EXPM1, 0, 0, g, 9, y, g * (y + 1));
	check_ubwd(AG_K_SQRT, 0, 0, g, 9, y, g / (2 * y));
	check_ubwd(AG_K_RECIPROCAL, 0, 0, g, 9, y, -g * (y * y));
	check_ubwd(AG_K_RSQRT, 0, 0, g, 9, y, -0.5 * g * (y * y * y));
	check_ubwd(AG_K_TAN, 0, 0, g, 9, y, g * (1 + y * y));
	/* relu'(0) = 0, from the output as torch's threshold_backward */
	check_ubwd(AG_K_RELU, 0, 0, g, 0, 0, 0);
	check_ubwd(AG_K_RELU, 0, 0, g, 2, 2, g);
	check_ubwd(AG_K_RELU, 0, 0, g, -2, 0, 0);
	/* result <= 0 ? 0 : g: at NaN the gradient passes */
	check_ubwd(AG_K_RELU, 0, 0, g, NAN, NAN, g);
	/* abs: sgn(0) = 0 */
	check_ubwd(AG_K_ABS, 0, 0, g, 0, 0, 0);
	check_ubwd(AG_K_ABS, 0, 0, g, -3, 3, -g);
	/* clamp passes the gradient on lo <= x <= hi, bounds included */
	check_ubwd(AG_K_CLAMP, -1, 2, g, -1, -1, g);
	check_ubwd(AG_K_CLAMP, -1, 2, g, 2, 2, g);
	check_ubwd(AG_K_CLAMP, -1, 2, g, 2.5, 2, 0);
	check_ubwd(AG_K_CLAMP, -1, 2, g, -1.5, -1, 0);
	check_ubwd(AG_K_CLAMP, -1, 2, g, NAN, NAN, 0);
	/* leaky relu: x > 0 ? g : g * slope, so slope at 0 */
	check_ubwd(AG_K_LEAKY_RELU, 0.25, 0, g, 0, 0, g * 0.25);
	check_ubwd(AG_K_LEAKY_RELU, 0.25, 0, g, NAN, NAN, g * 0.25);
	/* softplus: the identity's gradient above the threshold 20 */
	check_ubwd(AG_K_SOFTPLUS, 0, 0, g, 20.5, 20.5, g);
	/* gelu'(0) = 1/2, silu'(0) = 1/2 */
	check_ubwd(AG_K_GELU, 0, 0, g, 0, 0, g * 0.5);
	check_ubwd(AG_K_SILU, 0, 0, g, 0, 0, g * 0.5);
	/* pow: exponent 0 gives zeros, even at 0 */
	check_ubwd(AG_K_POW_SCALAR, 0, 0, g, 0, 1, 0);
	check_ubwd(AG_K_POW_SCALAR, 2, 0, g, 3, 9, g * 6);
	check_ubwd(AG_K_NEG, 0, 0, g, 1, -1, -g);
	check_ubwd(AG_K_RSUB_SCALAR, 4, 0, g, 1, 3, -g);
	check_ubwd(AG_K_MUL_SCALAR, 4, 0, g, 1, 4, g * 4);
}

static void check_bbwd(enum ag_k_binary op, double g, double a, double b,
		       double wa, double wb)
{
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		double ga, gb;
		float g32 = (float)g, a32 = (float)a, b32 = (float)b, ga32,
		      gb32;

		if (!t)
			continue;
		t->binary_bwd_f64(op, 1, &g, 1, &a, 1, &b, 1, &ga, 1, &gb, 1);
		t->binary_bwd_f32(op, 1, &g32, 1, &a32, 1, &b32, 1, &ga32, 1,
				  &gb32, 1);
		cr_assert((ga == wa || (isnan(ga) && isnan(wa))) &&
				  (gb == wb || (isnan(gb) && isnan(wb))),
			  "%s binary %d a=%g b=%g: %g %g, want %g %g", t->name,
			  op, a, b, ga, gb, wa, wb);
		cr_assert((ga32 == (float)wa || (isnan(ga32) && isnan(wa))) &&
				  (gb32 == (float)wb ||
				   (isnan(gb32) && isnan(wb))),
			  "%s f32 binary %d a=%g b=%g", t->name, op, a, b);
	}
}

Test(grad, binary_torch_conventions)
{
	double g = 3;

	/* maximum/minimum: ties split the gradient in halves (torch 1.13) */
	check_bbwd(AG_K_MAXIMUM, g, 2, 2, 1.5, 1.5);
	check_bbwd(AG_K_MINIMUM, g, 2, 2, 1.5, 1.5);
	check_bbwd(AG_K_MAXIMUM, g, 3, 2, g, 0);
	check_bbwd(AG_K_MAXIMUM, g, 1, 2, 0, g);
	check_bbwd(AG_K_MINIMUM, g, 3, 2, 0, g);
	/* NaN compares unordered: both masks stay open, as torch's */
	check_bbwd(AG_K_MAXIMUM, g, NAN, 2, g, g);
	/* pow: d/da is 0 where b == 0; d/db is 0 where a == 0 and b >= 0 */
	check_bbwd(AG_K_POW, g, 0, 0, 0, 0);
	check_bbwd(AG_K_POW, g, 0, 2, 0, 0);
	check_bbwd(AG_K_POW, g, 5, 0, 0, g * log(5));
	check_bbwd(AG_K_POW, g, 2, 3, g * 3 * 4, g * (8 * log(2)));
	/* div: -g (a / b) / b */
	check_bbwd(AG_K_DIV, g, 3, 4, g / 4, -g * ((3.0 / 4) / 4));
	check_bbwd(AG_K_SUB, g, 3, 4, g, -g);
}

/* softmax, log_softmax and logsumexp gradients by finite differences */
Test(grad, softmax_family)
{
	enum { N = 37 };
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		struct rng r = { 31337 };
		double x[N], y[N], g[N], gx[N], gl[N], yl[N], xp[N], yp[N];
		double ym[N];
		int i, j;

		if (!t)
			continue;
		for (i = 0; i < N; i++) {
			x[i] = rng_range(&r, -3, 3);
			g[i] = rng_range(&r, -1, 1);
		}
		t->softmax_f64(N, x, 1, y, 1);
		t->log_softmax_f64(N, x, 1, yl, 1);
		t->softmax_bwd_f64(N, g, 1, y, 1, gx, 1);
		t->log_softmax_bwd_f64(N, g, 1, yl, 1, gl, 1);
		for (j = 0; j < N; j++) {
			double h = 1e-6, fs = 0, fl = 0, lp, lm;

			memcpy(xp, x, sizeof(x));
			xp[j] = x[j] + h;
			t->softmax_f64(N, xp, 1, yp, 1);
			lp = t->logsumexp_f64(N, xp, 1);
			for (i = 0; i < N; i++)
				fs += g[i] * yp[i];
			t->log_softmax_f64(N, xp, 1, yp, 1);
			for (i = 0; i < N; i++)
				fl += g[i] * yp[i];
			xp[j] = x[j] - h;
			t->softmax_f64(N, xp, 1, ym, 1);
			lm = t->logsumexp_f64(N, xp, 1);
			for (i = 0; i < N; i++)
				fs -= g[i] * ym[i];
			t->log_softmax_f64(N, xp, 1, ym, 1);
			for (i = 0; i < N; i++)
				fl -= g[i] * ym[i];
			cr_assert(fabs(gx[j] - fs / (2 * h)) < 1e-7,
				  "%s softmax bwd [%d]: %g vs %g", t->name, j,
				  gx[j], fs / (2 * h));
			cr_assert(fabs(gl[j] - fl / (2 * h)) < 1e-7,
				  "%s log_softmax bwd [%d]: %g vs %g", t->name,
				  j, gl[j], fl / (2 * h));
			/* d logsumexp / dx = softmax */
			cr_assert(fabs((lp - lm) / (2 * h) - y[j]) < 1e-7,
				  "%s logsumexp grad [%d]", t->name, j);
		}
	}
}
