// SPDX-License-Identifier: MIT
/*
 * Reductions and the rest of simd.h: pairwise sums within their documented
 * bound, dot, axpy/acc/fill, max/argmax with NaN, logsumexp and the
 * softmax family at the edges, variance, GEMM against a long double
 * product (transposes, leading dimensions, beta 0 over NaN, k = 0), and
 * the intra-op parallel hook.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* docs/simd.md: |sum - exact| <= (256 / (4 W) + ceil(log2(n / 256)) + 6)
 * u sum |x|, u = 2^-53 (f32 data is summed in f64); W = 1 bounds every
 * path. */
static double sum_bound(int64_t n, double abs_sum)
{
	double levels = n > 256 ? ceil(log2((double)n / 256)) : 0;

	return (64 + levels + 6) * 0x1p-53 * abs_sum;
}

Test(reduce, sums)
{
	int64_t n = test_inputs();
	float *x = malloc(n * sizeof(float));
	double *d = malloc(n * sizeof(double));
	struct rng r = { 5 };
	long double ref32 = 0, ref64 = 0, abs32 = 0, abs64 = 0;
	int64_t i;
	int k;

	cr_assert(x && d);
	for (i = 0; i < n; i++) {
		/* mixed magnitudes and signs, so cancellation is real */
		double m = exp2(rng_range(&r, -20, 20));

		x[i] = (float)((rng_next(&r) & 1 ? m : -m) * rng_unit(&r));
		d[i] = (rng_next(&r) & 1 ? m : -m) * rng_unit(&r);
		ref32 += x[i];
		ref64 += d[i];
		abs32 += fabsf(x[i]);
		abs64 += fabs(d[i]);
	}
	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		double s32, s64, s32s, s64s;
		long double r32s = 0, r64s = 0, a32s = 0, a64s = 0;

		if (!t)
			continue;
		s32 = t->sum_f32(n, x, 1);
		s64 = t->sum_f64(n, d, 1);
		fprintf(stderr,
			"sum %-7s n=%lld f32 err %.3g (bound %.3g)  f64 err %.3g (bound %.3g)\n",
			t->name, (long long)n, (double)fabsl(s32 - ref32),
			sum_bound(n, (double)abs32), (double)fabsl(s64 - ref64),
			sum_bound(n, (double)abs64));
		cr_assert(fabsl(s32 - ref32) <= sum_bound(n, (double)abs32));
		cr_assert(fabsl(s64 - ref64) <= sum_bound(n, (double)abs64));
		/* strided, backwards from the end */
		for (i = 0; i < n / 3; i++) {
			r32s += x[n - 1 - 3 * i];
			r64s += d[n - 1 - 3 * i];
			a32s += fabsf(x[n - 1 - 3 * i]);
			a64s += fabs(d[n - 1 - 3 * i]);
		}
		s32s = t->sum_f32(n / 3, x + n - 1, -3);
		s64s = t->sum_f64(n / 3, d + n - 1, -3);
		cr_assert(fabsl(s32s - r32s) <= sum_bound(n / 3, (double)a32s));
		cr_assert(fabsl(s64s - r64s) <= sum_bound(n / 3, (double)a64s));
		/* small and degenerate spans */
		cr_assert(t->sum_f32(0, x, 1) == 0);
		cr_assert(t->sum_f64(5, d, 0) == 5 * d[0]);
		cr_assert(t->sum_f32(3, x, 1) ==
			  (double)x[0] + (double)x[1] + (double)x[2]);
	}
	cr_assert(ag_k_sum_f32(3, x, 1) == (double)x[0] + x[1] + x[2]);
	free(x);
	free(d);
}

Test(reduce, dot_axpy_acc_fill)
{
	enum { N = 1001 };
	float a[N], b[N], y[N], y2[N];
	double ad[N], bd[N], yd[N];
	struct rng r = { 11 };
	int i, k;

	for (i = 0; i < N; i++) {
		a[i] = (float)rng_range(&r, -1, 1);
		b[i] = (float)rng_range(&r, -1, 1);
		ad[i] = a[i];
		bd[i] = b[i];
	}
	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		long double ref = 0, mag = 0;

		if (!t)
			continue;
		for (i = 0; i < N; i++) {
			ref += (long double)a[i] * b[i];
			mag += fabsl((long double)a[i] * b[i]);
		}
		/* products round in f32 (u/2 each), then the f64 sum */
		cr_assert(fabsl(t->dot_f32(N, a, 1, b, 1) - ref) <=
			  mag * FLT_EPSILON);
		cr_assert(fabsl(t->dot_f64(N, ad, 1, bd, 1) - ref) <=
			  mag * 1e-15);
		cr_assert(fabsl(t->dot_f32(N / 2, a, 2, b + N - 1, -2) -
				t->dot_f64(N / 2, ad, 2, bd + N - 1, -2)) <=
			  mag * FLT_EPSILON);
		for (i = 0; i < N; i++)
			y[i] = y2[i] = b[i];
		t->axpy_f32(N, 0.5f, a, 1, y, 1);
		for (i = 0; i < N; i++)
			cr_assert(y[i] == fmaf(0.5f, a[i], y2[i]));
		for (i = 0; i < N; i++)
			yd[i] = bd[i];
		t->axpy_f64(N / 2, -2, ad + 1, 2, yd, 2);
		for (i = 0; i < N; i++)
			cr_assert(yd[i] == (i % 2 == 0 && i / 2 < N / 2 ?
						    fma(-2, ad[i + 1], bd[i]) :
						    bd[i]));
	}
	for (i = 0; i < N; i++)
		y[i] = b[i];
	ag_k_acc_f32(N, a, 1, y, 1);
	for (i = 0; i < N; i++)
		cr_assert(y[i] == a[i] + b[i], "acc is an exact y + x");
	ag_k_fill_f32(N / 3, 7, y, 3);
	for (i = 0; i < N; i++)
		cr_assert(y[i] ==
			  (i % 3 == 0 && i / 3 < N / 3 ? 7 : a[i] + b[i]));
	ag_k_fill_f64(N, -1, yd, 1);
	for (i = 0; i < N; i++)
		cr_assert(yd[i] == -1);
}

Test(reduce, max_logsumexp_softmax_var)
{
	double x[9] = { 1, 5, -2, 5, 3, 0, -1, 4, 2 };
	double y[9], z[9];
	float xf[9], yf[9];
	int64_t am;
	int i, k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);
		double mean, s = 0, v, ref;
		long double lse = 0;

		if (!t)
			continue;
		/* first maximum; NaN wins, as torch.max */
		cr_assert(t->max_f64(9, x, 1, &am) == 5 && am == 1);
		cr_assert(t->max_f64(5, x + 8, -2, &am) == 3 && am == 2);
		x[6] = NAN;
		cr_assert(isnan(t->max_f64(9, x, 1, &am)) && am == 6);
		x[6] = -1;
		for (i = 0; i < 9; i++)
			lse += expl(x[i]);
		cr_assert(fabs(t->logsumexp_f64(9, x, 1) - (double)logl(lse)) <
			  1e-15 * 5);
		for (i = 0; i < 9; i++)
			y[i] = -INFINITY;
		cr_assert(t->logsumexp_f64(9, y, 1) == -INFINITY);
		y[3] = INFINITY;
		cr_assert(t->logsumexp_f64(9, y, 1) == INFINITY);
		/* softmax sums to 1 and matches the long double value */
		t->softmax_f64(9, x, 1, y, 1);
		for (i = 0; i < 9; i++) {
			s += y[i];
			cr_assert(fabs(y[i] - (double)(expl(x[i]) / lse)) <=
				  2 * DBL_EPSILON * y[i]);
		}
		cr_assert(fabs(s - 1) < 4 * DBL_EPSILON);
		t->log_softmax_f64(9, x, 1, z, 1);
		for (i = 0; i < 9; i++)
			cr_assert(fabs(z[i] - (double)(x[i] - logl(lse))) <
				  8 * DBL_EPSILON);
		/* f32, strided, in place */
		for (i = 0; i < 9; i++)
			xf[i] = (float)x[i] * 30;
		t->softmax_f32(9, xf, 1, yf, 1);
		t->softmax_f32(3, xf, 3, xf, 3);
		for (i = 0; i < 9; i += 3)
			cr_assert(isfinite(xf[i]) && xf[i] >= 0 && xf[i] <= 1);
		/* variance: two-pass, correction 0 and 1 */
		v = t->var_f64(9, x, 1, 1, &mean);
		for (i = 0, ref = 0; i < 9; i++)
			ref += (x[i] - 17.0 / 9) * (x[i] - 17.0 / 9);
		cr_assert(fabs(mean - 17.0 / 9) < 1e-15);
		cr_assert(fabs(v - ref / 8) < 1e-14, "%g vs %g", v, ref / 8);
		cr_assert(fabs(t->var_f64(9, x, 1, 0, NULL) - ref / 9) < 1e-14);
		cr_assert(isnan(t->var_f64(1, x, 1, 1, NULL)) ||
			  isinf(t->var_f64(1, x, 1, 1, NULL)));
		/* variance of a large offset stays exact (no E[x^2]-E[x]^2) */
		for (i = 0; i < 9; i++)
			xf[i] = 1e4f + (float)(i % 2);
		v = t->var_f32(9, xf, 1, 0, NULL);
		cr_assert(fabs(v - 20.0 / 81) < 1e-12, "%g", v);
	}
}

/* the vector max against a plain scan: ties, NaN anywhere, +-0, tails */
Test(reduce, max_random)
{
	struct rng r = { 2024 };
	float x[300];
	double xd[300];
	int k, trial;

	for (trial = 0; trial < 400; trial++) {
		int n = 1 + (int)(rng_next(&r) % 300), i, want = 0;

		for (i = 0; i < n; i++) {
			x[i] = (float)floor(rng_range(&r, -50, 50));
			if (trial % 3 == 0)
				x[i] = -fabsf(x[i]) - 1;
			xd[i] = x[i];
		}
		if (trial % 5 == 1)
			x[rng_next(&r) % n] = NAN;
		for (i = 0; i < n; i++)
			xd[i] = x[i];
		for (i = 1; i < n && !isnan(x[want]); i++)
			if (x[i] > x[want] || isnan(x[i]))
				want = i;
		for (k = 0; k < TEST_NISA; k++) {
			const struct ag_k_isa *t = test_isa(k);
			int64_t am32, am64;
			double m32, m64;

			if (!t)
				continue;
			m32 = t->max_f32(n, x, 1, &am32);
			m64 = t->max_f64(n, xd, 1, &am64);
			cr_assert(am32 == want && am64 == want,
				  "%s n=%d: argmax %lld/%lld, want %d", t->name,
				  n, (long long)am32, (long long)am64, want);
			cr_assert((isnan(m32) && isnan(x[want])) ||
					  m32 == x[want],
				  "%s n=%d max", t->name, n);
			cr_assert((isnan(m64) && isnan(x[want])) ||
					  m64 == x[want],
				  "%s n=%d max f64", t->name, n);
		}
	}
}

static long double cref(bool ta, bool tb, int64_t i, int64_t j, int64_t k,
			const double *a, int64_t lda, const double *b,
			int64_t ldb, long double *mag)
{
	long double s = 0;
	int64_t l;

	*mag = 0;
	for (l = 0; l < k; l++) {
		long double p =
			(long double)(ta ? a[l * lda + i] : a[i * lda + l]) *
			(tb ? b[j * ldb + l] : b[l * ldb + j]);

		s += p;
		*mag += fabsl(p);
	}
	return s;
}

static void gemm_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
		      double alpha, double beta, struct rng *r)
{
	int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
	int64_t ar = ta ? k : m, br = tb ? n : k;
	double *a = malloc((ar * lda + 1) * sizeof(double));
	double *b = malloc((br * ldb + 1) * sizeof(double));
	double *c = malloc((m * ldc + 1) * sizeof(double));
	double *c0 = malloc((m * ldc + 1) * sizeof(double));
	float *af = malloc((ar * lda + 1) * sizeof(float));
	float *bf = malloc((br * ldb + 1) * sizeof(float));
	float *cf = malloc((m * ldc + 1) * sizeof(float));
	int64_t i, j;

	cr_assert(a && b && c && c0 && af && bf && cf);
	for (i = 0; i < ar * lda; i++)
		af[i] = (float)(a[i] = rng_range(r, -1, 1));
	for (i = 0; i < br * ldb; i++)
		bf[i] = (float)(b[i] = rng_range(r, -1, 1));
	for (i = 0; i < m * ldc; i++) {
		c0[i] = beta == 0 ? NAN : rng_range(r, -1, 1);
		c[i] = c0[i];
		cf[i] = (float)c0[i];
	}
	ag_k_gemm_f64(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
	ag_k_gemm_f32(ta, tb, m, n, k, (float)alpha, af, lda, bf, ldb,
		      (float)beta, cf, ldc);
	for (i = 0; i < m; i++) {
		for (j = 0; j < n; j++) {
			long double mag;
			long double s =
				cref(ta, tb, i, j, k, a, lda, b, ldb, &mag);
			long double want =
				alpha * s +
				(beta == 0 ? 0 : beta * c0[i * ldc + j]);
			double tol = (double)(mag * fabs(alpha)) + 1;

			cr_assert(
				fabsl(c[i * ldc + j] - want) <=
					(k + 2) * DBL_EPSILON * tol,
				"dgemm ta=%d tb=%d %lldx%lldx%lld [%lld,%lld]",
				ta, tb, (long long)m, (long long)n,
				(long long)k, (long long)i, (long long)j);
			cr_assert(
				fabsl(cf[i * ldc + j] - want) <=
					(k + 2) * FLT_EPSILON * tol,
				"sgemm ta=%d tb=%d %lldx%lldx%lld [%lld,%lld]",
				ta, tb, (long long)m, (long long)n,
				(long long)k, (long long)i, (long long)j);
		}
		/* the padding between rows of C is not written */
		for (j = n; j < ldc && i * ldc + j < m * ldc; j++)
			cr_assert(c[i * ldc + j] == c0[i * ldc + j] ||
				  (isnan(c[i * ldc + j]) &&
				   isnan(c0[i * ldc + j])));
	}
	free(a);
	free(b);
	free(c);
	free(c0);
	free(af);
	free(bf);
	free(cf);
}

Test(reduce, gemm)
{
	static const int64_t sz[] = { 1, 2, 3, 17, 64, 65 };
	struct rng r = { 99 };
	size_t i, j, l;
	int t;

	for (t = 0; t < 4; t++)
		for (i = 0; i < 6; i++)
			for (j = 0; j < 6; j += 2)
				for (l = 0; l < 6; l += 3)
					gemm_case(t & 1, t & 2, sz[i], sz[j],
						  sz[l], 1, t == 3 ? 0.5 : 0,
						  &r);
	gemm_case(false, false, 5, 7, 0, 1, 0.5, &r);
	gemm_case(false, true, 5, 7, 9, 0, 2, &r);
	gemm_case(true, false, 130, 70, 40, -0.5, 1, &r);
}

/* an absent gradient may come with any stride, 0 included */
Test(reduce, absent_gradient_any_stride)
{
	float g[5] = { 1, 2, 3, 4, 5 }, a[5] = { 1, 1, 1, 1, 1 };
	float b[5] = { 2, 2, 2, 2, 2 }, gb = 0;

	ag_k_binary_bwd_f32(AG_K_MUL, 5, g, 1, a, 1, b, 1, NULL, 0, &gb, 0);
	cr_assert(gb == 15);
	ag_k_binary_bwd_f32(AG_K_MUL, 5, g, 1, a, 1, b, 1, &gb, 0, NULL, 0);
	cr_assert(gb == 45);
}

/*
 * The f32 GEMM the process runs is the one the build and AG_GEMM choose
 * (tests/simd/meson.build runs this suite once per choice, saying which
 * it expects in AG_TEST_GEMM_F32: "onednn", or "blas" for the BLAS), so
 * the cases above cover each.
 */
Test(reduce, gemm_f32_backend)
{
	const char *want = getenv("AG_TEST_GEMM_F32");

	cr_assert_not_null(want, "run through meson test");
	if (!strcmp(want, "blas"))
		want = ag_k_blas_name();
	cr_assert_str_eq(ag_k_gemm_f32_name(), want);
}

/* a single row may come with any leading dimension */
Test(reduce, gemm_one_row_any_ld)
{
	float a[4] = { 1, 2, 3, 4 }, b[4] = { 1, 1, 1, 1 }, c[1] = { 0 };

	ag_k_gemm_f32(false, false, 1, 1, 4, 1, a, 1, b, 1, 0, c, 1);
	cr_assert(c[0] == 10);
}

static int hook_calls;

/* a stand-in for ag_parallel_for: runs the parts in order */
static int fake_pfor(int64_t n, int64_t grain,
		     void (*fn)(int64_t b, int64_t e, void *arg), void *arg)
{
	int64_t b;

	hook_calls++;
	for (b = 0; b < n; b += grain)
		fn(b, b + grain < n ? b + grain : n, arg);
	return 0;
}

Test(reduce, parallel_hook)
{
	int64_t n = 1 << 18, i;
	float *x = malloc(n * sizeof(float)), *y1 = malloc(n * sizeof(float));
	float *y2 = malloc(n * sizeof(float));
	float *a = malloc(256 * 256 * sizeof(float));
	float *c1 = malloc(256 * 256 * sizeof(float));
	float *c2 = malloc(256 * 256 * sizeof(float));
	struct rng r = { 3 };

	cr_assert(x && y1 && y2 && a && c1 && c2);
	for (i = 0; i < n; i++)
		x[i] = (float)rng_range(&r, -2, 2);
	for (i = 0; i < 256 * 256; i++)
		a[i] = (float)rng_range(&r, -1, 1);
	ag_k_unary_f32(AG_K_TANH, n, x, 1, y1, 1, NULL);
	ag_k_gemm_f32(false, true, 256, 256, 256, 1, a, 256, a, 256, 0, c1,
		      256);
	ag_k_set_parallel_for(fake_pfor);
	ag_k_unary_f32(AG_K_TANH, n, x, 1, y2, 1, NULL);
	cr_assert(hook_calls == 1);
	ag_k_gemm_f32(false, true, 256, 256, 256, 1, a, 256, a, 256, 0, c2,
		      256);
	cr_assert(hook_calls == 2);
	ag_k_binary_bwd_f32(AG_K_MUL, n, x, 1, x, 1, x, 1, y2, 1, NULL, 1);
	cr_assert(hook_calls == 3);
	/* a reducing output is never split */
	ag_k_binary_bwd_f32(AG_K_MUL, n, x, 1, x, 1, x, 1, y2, 0, NULL, 1);
	cr_assert(hook_calls == 3);
	ag_k_set_parallel_for(NULL);
	ag_k_unary_f32(AG_K_TANH, n, x, 1, y2, 1, NULL);
	cr_assert(hook_calls == 3);
	cr_assert(memcmp(y1, y2, n * sizeof(float)) == 0);
	for (i = 0; i < 256 * 256; i++)
		cr_assert(fabsf(c1[i] - c2[i]) <= 1e-4f);
	free(x);
	free(y1);
	free(y2);
	free(a);
	free(c1);
	free(c2);
}
